"""The live reorder window (sources/live.py): frames leave poll() in kernel time order whatever order the
ring's records were committed in, and only once no older frame can still be unread. No privileges needed: the
filter is replaced by a script of what each read of the ring returned."""
from __future__ import annotations

import struct
import time
from typing import List, Tuple

from dnswatch.model import LINKTYPE_ETHERNET, Frame, PacketMeta
from dnswatch.sources import live, ring

MS = 1_000_000


def frame(kt: int, size: int = 80) -> Frame:
    return Frame(kt * 1e-9, LINKTYPE_ETHERNET, b"x" * size, None, PacketMeta(kt, 2, 0))


def record(f: Frame) -> Tuple[tuple, bytes]:
    """The ring record a frame came from (its header and event_meta as ring.LIVE_RECORD reads them, packet bytes)."""
    n = len(f.data)
    meta = ring.EVENT_META.pack(f.meta.ktime_ns, 0, 0, 0, f.meta.ifindex, f.meta.pkt_type, n, n, 0, 0, b"", 0, 0, 0,
                                0, 0, 1)
    return ring.LIVE_RECORD.unpack(struct.pack("<II", len(meta) + n, 0) + meta), f.data


class Rings:
    """What the rings hold, read as EventRings.read_frames reads them (records through ring.Framing)."""

    def __init__(self, frames: List[Frame]):
        self.records = [record(f) for f in frames]

    def read_frames(self, framing, last_kt, on_task, on_process) -> List[Frame]:
        framing.start(last_kt, on_task, on_process)
        return [framing.frame(fields, data) for fields, data in self.records]


class ScriptedFilter:
    """poll() #i delivers batches[i] (in the order given: the ring's read order) and returns marks[i]; once the
    script is out, nothing more comes (at the last mark)."""

    def __init__(self, cap: live.LiveCapture, script: List[Tuple[List[Frame], int]]):
        self.cap, self.script, self.timeouts = cap, list(script), []
        self.mark = 0

    def poll(self, timeout_ms: int, read):
        self.timeouts.append(timeout_ms)
        if not self.script:
            return self.mark, []
        frames, self.mark = self.script.pop(0)
        return self.mark, read(Rings(frames))

    def read(self, unpack=None):
        return []

    def close(self) -> None:
        pass


def capture(script) -> live.LiveCapture:
    cap = live.LiveCapture()
    cap.filter = ScriptedFilter(cap, script)
    return cap


def kts(frames: List[Frame]) -> List[int]:
    return [f.meta.ktime_ns for f in frames]


def test_a_response_read_before_its_query_leaves_after_it():
    q, r = frame(100 * MS), frame(100 * MS + 50_000)
    # read 1 finds the response (CPU 1) but not yet the query (CPU 0 was read just before it was written);
    # both are younger than the mark's margin, so both wait
    cap = capture([([r], 101 * MS), ([q], 103 * MS), ([], 200 * MS)])
    assert cap.poll(0) == []
    assert cap.filter.timeouts == [0]
    first = cap.poll(100)  # the query arrived; the mark (103 ms - 2 ms margin) covers both
    assert kts(first) == [100 * MS, 100 * MS + 50_000]
    assert cap.filter.timeouts == [0, 0]  # frames were held: the next read did not wait for a wakeup
    assert cap.poll(0) == [] and cap.reorder_late == 0


def test_poll_returns_held_frames_once_due_not_at_its_timeout():
    """A frame read just after it was written is held; poll() sleeps until it is due, well before its timeout."""
    now = time.monotonic_ns()

    class Clocked(ScriptedFilter):
        def poll(self, timeout_ms: int, read):
            self.timeouts.append(timeout_ms)
            return time.monotonic_ns(), read(Rings(self.script.pop(0)[0] if self.script else []))

    cap = live.LiveCapture()
    cap.filter = Clocked(cap, [([frame(now)], 0)])
    t0 = time.monotonic()
    out = cap.poll(1000)
    assert kts(out) == [now] and time.monotonic() - t0 < 0.5
    assert cap.filter.timeouts[0] > 900 and set(cap.filter.timeouts[1:]) == {0}


def test_released_in_order_across_polls_and_drained_at_the_end():
    a, b, c, d = (frame(t * MS) for t in (10, 11, 30, 31))
    cap = capture([([b, a, d], 20 * MS), ([c], 25 * MS)])
    assert kts(cap.poll(0)) == [10 * MS, 11 * MS]  # 31 ms is past the mark: held
    assert cap.poll(0) == []  # 30 and 31 ms are still younger than 25 - 2 ms
    assert kts(cap.drain()) == [30 * MS, 31 * MS]
    assert cap._held == [] and cap.reorder_late == 0


def test_late_frames_are_counted():
    cap = capture([([frame(10 * MS)], 20 * MS), ([frame(5 * MS)], 30 * MS)])
    cap.poll(0)
    assert kts(cap.poll(0)) == [5 * MS]
    assert cap.reorder_late == 1


def test_window_is_bounded_in_bytes():
    big = live.REORDER_MAX_BYTES // 4
    frames = [frame(100 * MS + i, big) for i in range(6)]
    cap = capture([(frames, 50 * MS)])  # all younger than the mark
    out = cap.poll(0)
    held = sum(len(f.data) for f in cap._held)
    assert held == live.REORDER_MAX_BYTES and len(out) == 2 and cap.reorder_forced == 2
    assert kts(out) == [100 * MS, 100 * MS + 1]  # the oldest went on, the 4 youngest fill the window
