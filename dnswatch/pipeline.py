"""One path from a frame to a stored event, shared by ``replay`` and ``watch``.

    source (pcap | live) -> frames.FrameDecoder -> dns.parse_message -> correlate.Correlator
                         -> enrich (process, container, pod) -> lookups.LookupStage -> store.Store / sinks
"""
from __future__ import annotations

import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

from dnswatch.correlate import DEFAULT_TIMEOUT, Correlator, Row
from dnswatch.dns import DECODED, Malformed, parse_message
from dnswatch.frames import FrameDecoder
from dnswatch.lookups import LookupStage
from dnswatch.model import Frame, Segment
from dnswatch.sources.pcap import PcapReader
from dnswatch.store import Store

EXPIRE_EVERY_FRAMES = 2048
CHUNK_FRAMES = 2048  # replay: frames between two looks at the clock and the stop flag (a few ms)
RECORD_EVERY = 1.0  # replay: seconds between two updates of the capture's counters in the log
MALFORMED_MAX_DATA = 4096  # bytes of a malformed message stored in malformed.data (size keeps its length)
# FrameDecoder.stats reasons that mean a DNS message could not be read from what was captured (the
# user-space decode stage of the losses); the memory-bound ones are FrameDecoder.dropped()
DECODE_LOSSES = ("truncated_l2", "truncated_l3_l4", "bad_ipv4_header", "bad_ipv6_header", "tcp_incomplete_messages",
                 "tcp_gaps", "fragment_sets_expired", "fragment_sets_incomplete")
# Order of the loss stages, from the wire up (sources add the first ones: live.LiveCapture's kernel counters)
LOSS_STAGES = ("kernel_perf_buffer", "kernel_short_payload", "kernel_too_many_questions", "decode", "memory_bounds")


@dataclass
class Summary:
    """Counters of one capture (also written to its ``captures`` row)."""

    frames: int = 0
    dns_messages: int = 0
    queries: int = 0
    responses: int = 0
    malformed: int = 0
    dropped: int = 0
    duplicates: int = 0
    retries: int = 0  # query attempts after the first (see schema: queries.attempts)
    repeated_responses: int = 0
    unanswered: int = 0
    response_only: int = 0
    rows: int = 0
    first_ts: Optional[float] = None
    last_ts: Optional[float] = None
    seconds: float = 0.0
    losses: Dict[str, int] = field(default_factory=dict)  # LOSS_STAGES -> events lost there; dropped is the sum
    lost_responses: Dict[str, int] = field(default_factory=dict)  # of which responses (stages that know)
    malformed_reasons: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    error: Optional[str] = None  # what ended a 'failed' capture
    status: str = "running"  # as in captures.status once finished

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _pause_gc() -> bool:
    """Pause the cyclic garbage collector while frames are fed (True: it ran, the caller enables it again).
    Nothing there makes reference cycles, and with several short-lived containers per frame it would spend
    ~7% of the time rescanning them."""
    collecting = gc.isenabled()
    gc.disable()
    return collecting


class Pipeline:
    """Feed frames; rows go to ``store`` (if any) and to the ``on_query``/``on_response`` callbacks."""

    def __init__(
        self,
        store: Optional[Store],
        kind: str,
        source: str,
        ports: Iterable[int] = (53,),
        timeout: float = DEFAULT_TIMEOUT,
        options: Optional[Dict[str, Any]] = None,
        on_query: Optional[Callable[[Row], None]] = None,
        on_response: Optional[Callable[[Row], None]] = None,
        enrich: Optional[Callable[[Row, Segment], None]] = None,
        row_filter: Optional[Callable[[Row], bool]] = None,
        expect_responses: bool = True,
        sinks: Iterable[Callable[[Row], None]] = (),
        lookups: bool = False,
    ):
        self.store = store
        self.ports = tuple(sorted(set(ports)))
        self.decoder = FrameDecoder(self.ports)
        opts = {"ports": list(self.ports), "timeout": timeout, **(options or {})}
        self.capture_id = store.start_capture(kind, source, opts) if store is not None else None
        self.row_filter = row_filter
        self.sinks = tuple(sinks)  # every emitted row also goes to these (top, timeout lines)
        # Without a filter every row goes to the store: the correlator calls store.add itself (one call less per
        # row in replay) and the rows are counted by how much the store's ``rows_added`` grew.
        emit: Callable[[Row], None] = self._emit
        self._rows_from: Optional[int] = None
        if store is not None and row_filter is None and not self.sinks:
            emit, self._rows_from = store.add, store.rows_added
        # the lookups stage: rows get their lookup_id (and NAT copies merge) before they are stored; the
        # correlator appends to it, and it looks at its rows when the clock advances (each chunk, poll and tick)
        self.lookups: Optional[LookupStage] = None
        if lookups:
            self.lookups = LookupStage(emit, self.capture_id, store.add_lookup if store is not None else None, timeout,
                                       live=kind == "live", expect_responses=expect_responses)
            emit = self.lookups.take
        self.correlator = Correlator(emit, self.capture_id, timeout, on_query=on_query,
                                     on_response=on_response, enrich=enrich,
                                     expect_responses=expect_responses)
        self.summary = Summary()
        self.source_losses: Dict[str, int] = {}  # losses the source counted, by stage (live: the kernel's)
        self.source_lost_responses: Dict[str, int] = {}  # the part of those that were responses, where known
        self.source_duplicates = 0  # copies the source dropped itself (live: the kernel's rule 6)
        self._malformed_reasons: Counter = Counter()
        self.malformed_truncated = 0  # malformed messages stored with only their first MALFORMED_MAX_DATA bytes
        self._started = time.monotonic()
        self._since_expire = 0

    def _emit(self, row: Row) -> None:
        if self.row_filter is not None and not self.row_filter(row):
            return
        self.summary.rows += 1
        if self.store is not None:
            self.store.add(row)
        for sink in self.sinks:
            sink(row)

    def feed(self, frame: Frame) -> None:
        self.feed_all((frame,))

    def feed_all(self, frames: Iterable[Frame]) -> None:
        """Feed every frame of ``frames``. The messages of up to EXPIRE_EVERY_FRAMES frames are decoded, then
        read and correlated together (``_messages``), then the correlator's clock advances: the same order of
        events as one frame at a time, with fewer calls. Replay passes a whole file: the per-frame counters live
        in locals meanwhile (written back to ``summary`` at the end, even on an exception)."""
        s = self.summary
        decode = self.decoder.decode
        n = 0
        first, last, since = s.first_ts, s.last_ts, self._since_expire
        segments: List[Segment] = []
        collecting = _pause_gc()
        try:
            for frame in frames:
                n += 1
                ts = frame[0]
                if first is None:
                    first = ts
                if last is None or ts > last:
                    last = ts
                segs = decode(frame)
                if segs:
                    segments += segs
                since += 1
                if since >= EXPIRE_EVERY_FRAMES:
                    since = 0
                    self._messages(segments)
                    segments = []
                    self._advance(last)
            self._messages(segments)
            lookups = self.lookups
            if lookups is not None and (n or lookups.holding):  # live: after every poll, so that rows wait HOLD_LIVE
                lookups.advance(time.time() if lookups.live else last)
        finally:
            if collecting:
                gc.enable()
            s.frames += n
            s.first_ts, s.last_ts, self._since_expire = first, last, since

    def feed_live(self, frames: List[Frame]) -> None:
        """feed_all() for live capture's polls: ``frames`` in kernel time order, their DNS messages decoded in one
        batch per EXPIRE_EVERY_FRAMES (``FrameDecoder.decode_frames``) rather than a call per frame."""
        s = self.summary
        collecting = _pause_gc()
        try:
            for at in range(0, len(frames), EXPIRE_EVERY_FRAMES):
                chunk = frames[at:at + EXPIRE_EVERY_FRAMES] if len(frames) > EXPIRE_EVERY_FRAMES else frames
                s.frames += len(chunk)
                if s.first_ts is None:
                    s.first_ts = chunk[0][0]
                last = max(chunk[0][0], chunk[-1][0])  # (ordered: the first and the last are the extremes)
                if s.last_ts is None or last > s.last_ts:
                    s.last_ts = last
                self._messages(self.decoder.decode_frames(chunk))
                self._since_expire += len(chunk)
                if self._since_expire >= EXPIRE_EVERY_FRAMES:
                    self._since_expire = 0
                    self._advance(s.last_ts)
            lookups = self.lookups
            if lookups is not None and (frames or lookups.holding):  # after every poll, so that rows wait HOLD_LIVE
                lookups.advance(time.time())
        finally:
            if collecting:
                gc.enable()

    def feed_reader(self, reader: PcapReader, stop: Callable[[], bool] = lambda: False,
                    progress: Optional[Callable[[], None]] = None) -> bool:
        """Replay ``reader`` as ``feed_file(reader.frames(), ...)`` does. A classic pcap is read from the file's
        bytes instead (``PcapReader.windows`` and ``FrameDecoder.decode_records``): the common frames never become
        Frame objects."""
        if reader.format != "pcap" or self.decoder.track_verdict:
            return self.feed_file(reader.frames(), stop, progress)
        windows = reader.windows()
        window: List[Any] = [None]  # the current one; None: ask the reader for the next

        def feed(limit: int) -> None:
            collecting = _pause_gc()
            try:
                feed_records(limit)
            finally:
                if collecting:
                    gc.enable()

        def feed_records(limit: int) -> None:
            s = self.summary
            decode_records = self.decoder.decode_records
            while limit > 0:
                buf = window[0]
                if buf is None:
                    buf = window[0] = next(windows, None)
                    if buf is None:
                        return
                want = min(limit, EXPIRE_EVERY_FRAMES - self._since_expire)
                segments, buf.pos, n, first, last = decode_records(buf.data, buf.pos, want, reader.layout)
                reader.frames_read += n
                if n < want:
                    window[0] = None  # the window's edge: the reader reads on (or ends)
                if n:
                    limit -= n
                    s.frames += n
                    if s.first_ts is None:
                        s.first_ts = first
                    if s.last_ts is None or last > s.last_ts:
                        s.last_ts = last
                    self._messages(segments)
                    self._since_expire += n
                    if self._since_expire >= EXPIRE_EVERY_FRAMES:
                        self._since_expire = 0
                        self._advance(s.last_ts)
        return self._chunks(feed, stop, progress)

    def _messages(self, segments: List[Segment]) -> None:
        """Read and correlate DNS messages."""
        if not segments:
            return
        correlator = self.correlator  # (compiled: its query and response are C calls)
        decoded = DECODED  # parse_message's own cache, looked up here first: one call less per message
        try:
            for seg in segments:
                payload = seg[6]
                msg = decoded.get(payload[2:]) or parse_message(payload)
                if type(msg) is Malformed:
                    self._malformed(seg, msg.reason)
                    continue
                head = payload  # (compiled: a C pointer to its bytes; a message is 12 bytes at least)
                if msg.qr:
                    correlator.response(seg, msg, (head[0] << 8) | head[1])
                elif msg.questions:
                    correlator.query(seg, msg, (head[0] << 8) | head[1])
                else:
                    self._malformed(seg, "query without a question")
        finally:
            self.summary.dns_messages += len(segments)

    def _advance(self, now: float) -> None:
        """Capture time reached ``now``: queries time out, held lookups go on."""
        self.summary.last_ts = now
        self.correlator.expire(now)
        if self.lookups is not None:
            self.lookups.advance(now)

    def feed_file(self, frames: Iterator[Frame], stop: Callable[[], bool] = lambda: False,
                  progress: Optional[Callable[[], None]] = None) -> bool:
        """Replay: feed ``frames`` in chunks, so that the counters in ``captures`` stay current while rows are
        stored (updated every RECORD_EVERY seconds) and ``stop()`` is asked every few milliseconds.
        ``progress()`` runs after each chunk. Returns False when ``stop()`` ended it early."""
        return self._chunks(lambda n: self.feed_all(islice(frames, n)), stop, progress)

    def _chunks(self, feed: Callable[[int], None], stop: Callable[[], bool],
                progress: Optional[Callable[[], None]]) -> bool:
        """``feed(n)`` feeds up to n more frames (fewer: the input ended) until the input ends or ``stop()``."""
        next_record = time.monotonic() + RECORD_EVERY
        chunk = CHUNK_FRAMES
        while True:
            before = self.summary.frames
            started = time.monotonic()
            feed(chunk)
            if self.summary.frames == before:
                return True
            if progress is not None:
                progress()
            if stop():
                return False
            now = time.monotonic()
            # a slow input (a pipe from tcpdump) gets smaller chunks, so that it is recorded as it comes too
            if now - started > RECORD_EVERY / 4:
                chunk = max(1, chunk // 4)
            elif chunk < CHUNK_FRAMES:
                chunk *= 2
            if now >= next_record:
                if self.store is not None:
                    self.store.flush(wait=False)  # the rows so far, then the counters that count them
                self.record_counters("running")
                next_record = now + RECORD_EVERY

    def _malformed(self, seg: Segment, reason: str) -> None:
        self.summary.malformed += 1
        self._malformed_reasons[reason.split(" (")[0]] += 1
        if self.store is not None:
            ts, src, sport, dst, dport, proto, data, ifname, meta = seg  # (replay's are plain tuples)
            payload = data
            if len(payload) > MALFORMED_MAX_DATA:
                payload = payload[:MALFORMED_MAX_DATA]
                self.malformed_truncated += 1
            self.store.add_malformed((
                self.capture_id, ts, src, sport, dst, dport, proto, reason,
                len(data), payload, meta.pid if meta else None, meta.comm if meta else None,
                (meta.ifname if meta else None) or ifname,
            ), len(payload))

    def tick(self, now: Optional[float] = None) -> None:
        """Periodic work for live capture: time out queries (wall clock), flush and record counters."""
        now = time.time() if now is None else now
        collecting = gc.isenabled()
        gc.disable()  # as in feed_all: the stage makes many short-lived containers, and keeps many lookups
        try:
            self.correlator.expire(now)
            if self.lookups is not None:
                self.lookups.advance(now)
        finally:
            if collecting:
                gc.enable()
        if self.store is not None:
            self.store.maybe_flush()

    def counters(self) -> Summary:
        s = self.summary
        c = self.correlator
        s.queries, s.responses, s.duplicates = c.queries, c.responses, c.duplicates + self.source_duplicates
        s.unanswered, s.response_only = c.unanswered, c.response_only
        s.retries, s.repeated_responses = c.retries, c.repeated_responses
        if self._rows_from is not None:
            s.rows = self.store.rows_added - self._rows_from
        stats = self.decoder.stats
        losses = dict(self.source_losses)
        losses["decode"] = sum(stats.get(k, 0) for k in DECODE_LOSSES)
        # queries the correlator gave up before their timeout (its table full) are lost there too
        losses["memory_bounds"] = self.decoder.dropped() + c.evicted + self.source_losses.get("memory_bounds", 0)
        s.losses = losses
        s.lost_responses = dict(self.source_lost_responses)
        s.dropped = sum(losses.values())  # each lost event is counted at one stage only
        s.malformed_reasons = dict(self._malformed_reasons)
        s.skipped = dict(self.decoder.stats)
        if self.malformed_truncated:
            s.skipped["malformed_data_truncated"] = self.malformed_truncated
        s.seconds = time.monotonic() - self._started
        return s

    def record_counters(self, status: Optional[str] = None) -> None:
        if self.store is None:
            return
        s = self.counters()
        update: Dict[str, Any] = {
            "frames": s.frames, "dns_messages": s.dns_messages, "queries": s.queries, "responses": s.responses,
            "malformed": s.malformed, "dropped": s.dropped, "duplicates": s.duplicates,
            "first_ts": s.first_ts, "last_ts": s.last_ts,
            "notes": {"malformed": s.malformed_reasons, "frames": s.skipped, "warnings": s.warnings, "losses": s.losses,
                      "lost_responses": s.lost_responses,
                      "unanswered": s.unanswered, "response_only": s.response_only, "retries": s.retries,
                      "repeated_responses": s.repeated_responses},
        }
        if s.error:
            update["notes"]["error"] = s.error
        bounded = {k: v for k, v in self.lookups.bounded.items() if v} if self.lookups is not None else None
        if bounded:  # what the lookups stage's memory bounds gave up (nothing is lost: see lookups.py)
            update["notes"]["lookups_bounded"] = bounded
        if status is not None:
            update["status"] = status
            if status != "running":
                update["ended"] = time.time()
        self.store.update_capture(self.capture_id, update)

    def finish(self, status: str = "complete") -> Summary:
        """End of input: pending queries become unanswered, everything is written."""
        self.summary.status = status
        self._messages(self.decoder.finish())  # TCP messages that only the end of the input completed
        self.correlator.flush()
        if self.lookups is not None:
            self.lookups.flush()
        self.record_counters(status)
        if self.store is not None:
            self.store.flush()
        return self.counters()
