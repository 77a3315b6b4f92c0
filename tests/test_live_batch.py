"""Live capture's batch paths give what the one-frame-at-a-time paths give.

``FrameDecoder.decode_frames`` (a poll's frames in one call, with decode's fast path inline) against ``decode`` per
frame, over every capture in pcaps/ (also cut into batches of any size, across the decoder's sweeps);
``Pipeline.feed_live`` against ``feed_all``; and the enricher's per-sender reuse within FRESH.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from dnswatch import frames as frames_mod
from dnswatch.correlate import I_COMM, I_PID, I_POD, I_SRC, I_TID
from dnswatch.enrich import FRESH, I_EXE, Enricher
from dnswatch.frames import FrameDecoder
from dnswatch.model import PacketMeta, Segment
from dnswatch.pipeline import Pipeline
from dnswatch.schema import QUERY_COLUMNS
from dnswatch.sources.pcap import PcapReader

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"
CAPTURES = sorted(p for p in PCAPS.iterdir() if p.name.endswith((".pcap", ".pcap.gz", ".pcapng")))


def _frames(path):
    reader = PcapReader(str(path))
    try:
        return list(reader.frames())
    finally:
        reader.close()


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_decode_frames_is_decode_per_frame(path, monkeypatch):
    monkeypatch.setattr(frames_mod, "EXPIRE_EVERY", 7)  # sweeps inside the batches too
    frames = _frames(path)
    one = FrameDecoder((53,))
    want = [s for f in frames for s in one.decode(f)] + one.finish()
    rnd = random.Random(1)
    batch = FrameDecoder((53,))
    got, at = [], 0
    while at < len(frames):
        n = rnd.randint(1, 50)
        got += batch.decode_frames(frames[at:at + n])
        at += n
    got += batch.finish()
    assert got == want
    assert dict(batch.stats) == dict(one.stats)


def test_feed_live_is_feed_all():
    frames = _frames(PCAPS / "dnsperf_small.pcap")
    results = []
    for method in ("feed_all", "feed_live"):
        rows = []
        p = Pipeline(None, "pcap", "x", sinks=[rows.append])
        for at in range(0, len(frames), 97):
            getattr(p, method)(frames[at:at + 97])
        s = p.finish()
        results.append((rows, s.frames, s.first_ts, s.last_ts, s.queries, s.responses))
    assert results[0] == results[1]


def test_enricher_reuses_a_senders_columns_for_fresh_seconds(tmp_path):
    proc = tmp_path / "proc" / "4242"
    proc.mkdir(parents=True)
    (proc / "stat").write_text("4242 (curl) S 1 4242 4242 0 -1 4194560 " + "0 " * 12 + "5000 0 0\n")
    (proc / "exe").symlink_to("/usr/bin/curl")
    (proc / "comm").write_text("curl\n")
    now = [100.0]
    enrich = Enricher(k8s_log_dir=str(tmp_path / "log"), cgroup_root_dir=str(tmp_path / "nocg"),
                      proc=str(tmp_path / "proc"), clock=lambda: now[0])

    def row():
        r = [None] * len(QUERY_COLUMNS)
        r[I_PID], r[I_TID], r[I_SRC], r[I_COMM] = 4242, 4243, "198.18.0.2", "worker"
        enrich(r, Segment(0.0, "198.18.0.2", 40000, "198.18.0.1", 53, "udp", b"", None, PacketMeta(0, 2, 4, 1)))
        return r

    assert (row()[I_COMM], row()[I_EXE], row()[I_POD]) == ("curl", "/usr/bin/curl", None)
    (proc / "comm").write_text("renamed\n")
    (proc / "exe").unlink()
    (proc / "exe").symlink_to("/usr/bin/wget")
    assert row()[I_EXE] == "/usr/bin/curl"  # within FRESH: what the first row of this sender got
    now[0] += 2.5  # past FRESH, and past the process name's own cache
    (proc / "stat").write_text("4242 (wget) S 1 4242 4242 0 -1 4194560 " + "0 " * 12 + "9000 0 0\n")  # pid reused
    assert (row()[I_COMM], row()[I_EXE]) == ("renamed", "/usr/bin/wget")
    assert FRESH < 2.5
