"""One path from a frame to a stored event, shared by ``replay`` and ``watch``.

    source (pcap | live) -> frames.FrameDecoder -> dns.parse_message -> correlate.Correlator
                         -> enrich (process, container, pod) -> store.Store / terminal callbacks
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

from dnswatch.correlate import DEFAULT_TIMEOUT, Correlator, Row
from dnswatch.dns import Malformed, parse_message
from dnswatch.frames import FrameDecoder
from dnswatch.model import Frame, Segment
from dnswatch.store import Store

EXPIRE_EVERY_FRAMES = 2048


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
    unanswered: int = 0
    response_only: int = 0
    rows: int = 0
    first_ts: Optional[float] = None
    last_ts: Optional[float] = None
    seconds: float = 0.0
    malformed_reasons: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


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
    ):
        self.store = store
        self.ports = tuple(sorted(set(ports)))
        self.decoder = FrameDecoder(self.ports)
        opts = {"ports": list(self.ports), "timeout": timeout, **(options or {})}
        self.capture_id = store.start_capture(kind, source, opts) if store is not None else None
        self.row_filter = row_filter
        self.correlator = Correlator(self._emit, self.capture_id, timeout, on_query=on_query,
                                     on_response=on_response, enrich=enrich,
                                     expect_responses=expect_responses)
        self.summary = Summary()
        self.extra_dropped = 0  # losses reported by the source (kernel buffers)
        self._malformed_reasons: Counter = Counter()
        self._started = time.monotonic()
        self._since_expire = 0

    def _emit(self, row: Row) -> None:
        if self.row_filter is not None and not self.row_filter(row):
            return
        self.summary.rows += 1
        if self.store is not None:
            self.store.add(row)

    def feed(self, frame: Frame) -> None:
        s = self.summary
        s.frames += 1
        ts = frame.ts
        if s.first_ts is None:
            s.first_ts = ts
        if s.last_ts is None or ts > s.last_ts:
            s.last_ts = ts
        for seg in self.decoder.decode(frame):
            s.dns_messages += 1
            payload = seg.payload
            msg = parse_message(payload)
            if msg.__class__ is Malformed:
                self._malformed(seg, msg.reason)
            elif not msg.questions and not msg.qr:
                self._malformed(seg, "query without a question")
            else:
                self.correlator.message(seg, msg, (payload[0] << 8) | payload[1])
        self._since_expire += 1
        if self._since_expire >= EXPIRE_EVERY_FRAMES:
            self._since_expire = 0
            self.correlator.expire(s.last_ts)

    def _malformed(self, seg: Segment, reason: str) -> None:
        self.summary.malformed += 1
        self._malformed_reasons[reason.split(" (")[0]] += 1
        if self.store is not None:
            meta = seg.meta
            self.store.add_malformed((
                self.capture_id, seg.ts, seg.src, seg.sport, seg.dst, seg.dport, seg.proto, reason,
                len(seg.payload), seg.payload, meta.pid if meta else None, meta.comm if meta else None,
                (meta.ifname if meta else None) or seg.ifname,
            ))

    def tick(self, now: Optional[float] = None) -> None:
        """Periodic work for live capture: time out queries (wall clock), flush and record counters."""
        self.correlator.expire(time.time() if now is None else now)
        if self.store is not None:
            self.store.maybe_flush()

    def counters(self) -> Summary:
        s = self.summary
        c = self.correlator
        s.queries, s.responses, s.duplicates = c.queries, c.responses, c.duplicates
        s.unanswered, s.response_only = c.unanswered, c.response_only
        s.dropped = self.decoder.dropped() + self.extra_dropped
        s.malformed_reasons = dict(self._malformed_reasons)
        s.skipped = dict(self.decoder.stats)
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
            "notes": {"malformed": s.malformed_reasons, "frames": s.skipped, "warnings": s.warnings,
                      "unanswered": s.unanswered, "response_only": s.response_only},
        }
        if status is not None:
            update["status"] = status
            if status != "running":
                update["ended"] = time.time()
        self.store.update_capture(self.capture_id, update)

    def finish(self, status: str = "complete") -> Summary:
        """End of input: pending queries become unanswered, everything is written."""
        self.decoder.finish()
        self.correlator.flush()
        self.record_counters(status)
        if self.store is not None:
            self.store.flush()
        return self.counters()
