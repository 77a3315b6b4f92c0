"""Prometheus metrics for ``watch --metrics``: a sink on the rows the log stores, served with prometheus_client.

The sink is called with every row the pipeline emits (after the watch filters, the same rows ``store.add``
gets), so ``search`` over the log and a PromQL query over the same time range count the same events.

Lookups (``lookup``, hooked to ``LookupStage.on_lookup``): every lookup as it ends, counted under its client's
labels by outcome, with the queries it sent, the search-path queries it wasted and how long it took.

Labels say who asked: ``pod_namespace``, ``pod`` and ``container`` when the sender is known to be in a pod,
otherwise ``comm`` (the process name; empty for packets no local process sent). ``server`` (the resolver's
address) is added with ``--metrics-server-label``.

Bounded cardinality: at most ``max_label_sets`` of these label sets ("identities") are exported. While there is
room, a new identity is admitted on its first row. When the table is full, rows of an identity that is not in it
are counted under the identity ``other`` (every label "other"), and in ``dnswatch_metrics_folded_rows_total``.
Every ``rebalance`` seconds, identities idle for ``idle_after`` seconds are dropped (a deleted pod's series end),
and the busiest folded identities (by recent volume, from a bounded table of candidates) take the free slots or
displace a tracked identity with less than half their volume: top-K by volume, without any series ever
going backwards. Memory and scrape size are therefore bounded by ``max_label_sets`` whatever the pod churn:
about 3 KB of /metrics text per identity (6 KB with the lookups stage's series), at most 12 KB (see README,
"Prometheus metrics").
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Callable, Dict, Iterable, Tuple

from dnswatch.correlate import (I_COMM, I_CONTAINER, I_DST, I_LATENCY, I_POD, I_POD_NS, I_QTYPE, I_RCODE, I_STATUS,
                                Row)
from dnswatch.schema import LOOKUP_COLUMNS

_L = {name: i for i, name in enumerate(LOOKUP_COLUMNS)}  # a lookups row (lookups.lookup_row), by column
# where a row, and a lookups row, keep the columns of the sender's labels (pod, namespace, container, comm, server)
_ROW_WHO = (I_POD, I_POD_NS, I_CONTAINER, I_COMM, I_DST)
_LOOKUP_WHO = (_L["pod"], _L["pod_namespace"], _L["container"], _L["comm"], _L["dst"])
L_ANSWERED, L_RCODE, L_QUERIES, L_WASTED, L_TOTAL_MS = (_L["answered_name"], _L["rcode"], _L["queries"], _L["wasted"],
                                                        _L["total_ms"])

# seconds: 0.1 ms (a resolver on the same host) to 5 s (the default timeout)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DEFAULT_MAX_LABEL_SETS = 200
DEFAULT_IDLE_AFTER = 300.0
DEFAULT_REBALANCE = 30.0
OTHER = "other"
# qtype and rcode values are kept to this known set; anything else is "other" (TYPE65280... cannot make series)
QTYPES = frozenset("A AAAA CNAME MX NS PTR SOA SRV TXT HTTPS SVCB ANY CAA DS DNSKEY NAPTR SPF AXFR IXFR".split())
RCODES = frozenset("NOERROR FORMERR SERVFAIL NXDOMAIN NOTIMP REFUSED YXDOMAIN YXRRSET NXRRSET NOTAUTH NOTZONE "
                   "BADVERS BADCOOKIE".split())
# per label set, at most this many qtype values and (qtype, rcode) pairs; more fold into "other" (the scrape
# size stays bounded even for a client that queries every type there is)
MAX_QTYPES_PER_SET = 8
MAX_RESPONSE_KEYS_PER_SET = 16
IDENTITY_LABELS = ("pod_namespace", "pod", "container", "comm")
# how a lookup (one resolver call: its search-path candidates, A/AAAA pair, retries) ended, from its final rcode
LOOKUP_OUTCOMES = {"NXDOMAIN": "nxdomain", "NOERROR": "nodata", "SERVFAIL": "servfail", "REFUSED": "refused",
                   None: "unanswered"}  # answered: a candidate came back NOERROR with records; any other rcode: other

Identity = Tuple[str, ...]
_NB = len(LATENCY_BUCKETS)


class _Series:
    """Counters of one identity."""

    __slots__ = ("queries", "responses", "unanswered", "buckets", "latency_sum", "latency_count", "last", "score",
                 "recent", "lookups", "lookup_queries", "wasted", "lookup_buckets", "lookup_sum", "lookup_count")

    def __init__(self, now: float):
        self.queries: Dict[str, int] = {}  # qtype -> n
        self.responses: Dict[Tuple[str, str], int] = {}  # (qtype, rcode) -> n
        self.unanswered: Dict[str, int] = {}
        self.buckets = [0] * (_NB + 1)  # last: above 5 s
        self.latency_sum = 0.0
        self.latency_count = 0
        self.last = now
        self.score = 0.0  # rows per rebalance period, smoothed
        self.recent = 0  # rows since the last rebalance
        self.lookups: Dict[str, int] = {}  # outcome -> n (LOOKUP_OUTCOMES' values, answered, other)
        self.lookup_queries = 0
        self.wasted = 0
        self.lookup_buckets = [0] * (_NB + 1)
        self.lookup_sum = 0.0
        self.lookup_count = 0


class MetricsSink:
    """Counts rows per identity; a prometheus_client collector exports them. Thread-safe: rows arrive on the
    capture thread, scrapes on the HTTP server's."""

    def __init__(self, max_label_sets: int = DEFAULT_MAX_LABEL_SETS, server_label: bool = False,
                 idle_after: float = DEFAULT_IDLE_AFTER, rebalance: float = DEFAULT_REBALANCE,
                 clock: Callable[[], float] = time.monotonic):
        if max_label_sets < 1:
            raise ValueError("max_label_sets must be at least 1")
        self.max_label_sets = max_label_sets
        self.server_label = server_label
        self.idle_after = idle_after
        self.rebalance_every = rebalance
        self.clock = clock
        self.labels = IDENTITY_LABELS + (("server",) if server_label else ())
        self.series: Dict[Identity, _Series] = {}
        self.other = _Series(clock())
        self.candidates: Dict[Identity, int] = {}  # folded identities -> rows since the last rebalance
        self.max_candidates = max(1000, 2 * max_label_sets)
        self.folded_rows = 0
        self.evicted = {"idle": 0, "displaced": 0}
        self.rows = 0
        self.health: Dict[str, object] = {}
        self._lock = threading.Lock()
        self._next_rebalance = clock() + rebalance

    # -- rows ----------------------------------------------------------------------------------
    def identity(self, row: Row, columns: Tuple[int, ...] = _ROW_WHO) -> Identity:
        """The label values of a row's sender (``columns``: where the row keeps them, _ROW_WHO or _LOOKUP_WHO)."""
        pod, pod_ns, container, comm, dst = columns
        if row[pod]:
            who: Identity = (row[pod_ns] or "", row[pod], row[container] or "", "")
        else:
            who = ("", "", "", row[comm] or "")
        return who + (row[dst] or "",) if self.server_label else who

    def _slot(self, who: Identity, now: float, folded: int = 1) -> _Series:
        """The series of ``who`` (a new one while there is room, else ``other``, counting ``folded`` rows there),
        under the lock."""
        s = self.series.get(who)
        if s is None:
            if len(self.series) < self.max_label_sets:
                s = self.series[who] = _Series(now)
            else:
                s = self.other
                self.folded_rows += folded
                self._candidate(who)
        s.last = now
        s.recent += 1
        return s

    def __call__(self, row: Row) -> None:
        who = self.identity(row)
        now = self.clock()
        with self._lock:
            self.rows += 1
            s = self._slot(who, now)
            status = row[I_STATUS]
            qtype = row[I_QTYPE]
            qtype = qtype if qtype in QTYPES else OTHER
            if status != "response_only":
                q = s.queries
                if qtype not in q and len(q) >= MAX_QTYPES_PER_SET:
                    qtype = OTHER
                q[qtype] = q.get(qtype, 0) + 1
            if status == "unanswered":
                u = s.unanswered
                u[qtype] = u.get(qtype, 0) + 1  # qtype is one of s.queries' already
            elif status == "answered" or status == "response_only":
                rcode = row[I_RCODE]
                key = (qtype, rcode if rcode in RCODES else OTHER)
                r = s.responses
                if key not in r and len(r) >= MAX_RESPONSE_KEYS_PER_SET:
                    key = (OTHER, OTHER)
                r[key] = r.get(key, 0) + 1
                latency = row[I_LATENCY]
                if latency is not None:
                    seconds = latency / 1000.0
                    s.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                    s.latency_sum += seconds
                    s.latency_count += 1
        if now >= self._next_rebalance:
            self.rebalance()

    def lookup(self, row: list) -> None:
        """A lookups row as the lookups stage ends it (``LookupStage.on_lookup``; every lookup, one query or
        more): counted under its client's labels, as the client's query rows are. A response whose query was not
        seen makes a lookup of no query: not counted (nobody is known to have waited for it)."""
        if not row[L_QUERIES]:
            return
        who = self.identity(row, _LOOKUP_WHO)
        rcode = row[L_RCODE]
        outcome = "answered" if row[L_ANSWERED] is not None else LOOKUP_OUTCOMES.get(rcode, OTHER)
        total_ms = row[L_TOTAL_MS]
        now = self.clock()
        with self._lock:
            s = self._slot(who, now, folded=0)  # (folded_rows counts query rows, as dnswatch_metrics_rows does)
            s.lookups[outcome] = s.lookups.get(outcome, 0) + 1
            s.lookup_queries += row[L_QUERIES]
            s.wasted += row[L_WASTED] or 0
            if total_ms is not None:
                seconds = total_ms / 1000.0
                s.lookup_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                s.lookup_sum += seconds
                s.lookup_count += 1

    def _candidate(self, who: Identity) -> None:
        c = self.candidates
        c[who] = c.get(who, 0) + 1
        if len(c) > self.max_candidates:  # keep the busier half: amortised O(log n) per new identity
            keep = sorted(c.items(), key=lambda kv: kv[1], reverse=True)[: self.max_candidates // 2]
            self.candidates = dict(keep)

    def rebalance(self) -> None:
        """Drop idle identities, then give free slots (or those of much quieter identities) to the busiest
        folded ones. Called from the row path every ``rebalance`` seconds."""
        now = self.clock()
        with self._lock:
            self._next_rebalance = now + self.rebalance_every
            for who in [w for w, s in self.series.items() if now - s.last >= self.idle_after]:
                del self.series[who]
                self.evicted["idle"] += 1
            for s in self.series.values():  # rows per period, smoothed over the last few periods
                s.score = (s.score + s.recent) / 2
                s.recent = 0
            ranked = sorted(self.candidates.items(), key=lambda kv: kv[1], reverse=True)
            self.candidates = {}
            quiet = sorted(self.series.items(), key=lambda kv: kv[1].score)
            for who, n in ranked:
                if len(self.series) < self.max_label_sets:
                    self.series[who] = _Series(now)
                elif quiet and quiet[0][1].score * 2 < n:
                    gone, _ = quiet.pop(0)
                    del self.series[gone]
                    self.evicted["displaced"] += 1
                    self.series[who] = _Series(now)
                else:
                    break

    def set_health(self, **values: object) -> None:
        """Capture counters, from the capture loop (a scrape never calls into the pipeline)."""
        with self._lock:
            self.health.update(values)
        if self.clock() >= self._next_rebalance:  # idle identities go even when no rows come
            self.rebalance()

    # -- export --------------------------------------------------------------------------------
    def collect(self) -> Iterable:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        labels = list(self.labels)
        queries = CounterMetricFamily("dnswatch_queries", "DNS queries seen (one per question), by query type.",
                                      labels=labels + ["qtype"])
        responses = CounterMetricFamily(
            "dnswatch_responses", "DNS responses (matched to their query, or without one), by query type and rcode.",
            labels=labels + ["qtype", "rcode"])
        unanswered = CounterMetricFamily(
            "dnswatch_unanswered", "Queries with no response within the timeout, by query type.",
            labels=labels + ["qtype"])
        latency = HistogramMetricFamily(
            "dnswatch_response_latency_seconds", "Time from a query to its response, as the client saw it.",
            labels=labels)
        lookups = CounterMetricFamily(
            "dnswatch_lookups", "Lookups (one resolver call: its search-path candidates, A/AAAA pair and retries), "
            "by how they ended: answered, nxdomain, nodata, servfail, refused, unanswered, other.",
            labels=labels + ["outcome"])
        lookup_queries = CounterMetricFamily(
            "dnswatch_lookup_queries", "Queries the lookups sent, retransmissions included.", labels=labels)
        wasted = CounterMetricFamily(
            "dnswatch_search_path_wasted_queries",
            "Queries for search-path candidates that came back NXDOMAIN or empty before the final one: what the "
            "search path (ndots) cost.", labels=labels)
        lookup_latency = HistogramMetricFamily(
            "dnswatch_lookup_duration_seconds",
            "First query of a lookup to its final response: how long the application waited for the name, "
            "search path included.", labels=labels)
        with self._lock:
            items = list(self.series.items())
            if self.folded_rows or self.other.lookups:
                items.append(((OTHER,) * len(labels), self.other))
            for who, s in items:
                w = list(who)
                for qtype, n in s.queries.items():
                    queries.add_metric(w + [qtype], n)
                for (qtype, rcode), n in s.responses.items():
                    responses.add_metric(w + [qtype, rcode], n)
                for qtype, n in s.unanswered.items():
                    unanswered.add_metric(w + [qtype], n)
                if s.latency_count:
                    latency.add_metric(w, _cumulative(s.buckets), s.latency_sum)
                if s.lookups:  # (no lookup series at all without the lookups stage)
                    for outcome, n in s.lookups.items():
                        lookups.add_metric(w + [outcome], n)
                    lookup_queries.add_metric(w, s.lookup_queries)
                    wasted.add_metric(w, s.wasted)
                    if s.lookup_count:
                        lookup_latency.add_metric(w, _cumulative(s.lookup_buckets), s.lookup_sum)
            tracked, folded, evicted = len(self.series), self.folded_rows, dict(self.evicted)
            rows, health = self.rows, dict(self.health)
        yield from (queries, responses, unanswered, latency, lookups, lookup_queries, wasted, lookup_latency)
        yield GaugeMetricFamily("dnswatch_metrics_label_sets", "Label sets (identities) exported now.", tracked)
        yield GaugeMetricFamily("dnswatch_metrics_label_sets_limit",
                                "At most this many label sets are exported (--metrics-max-series).",
                                self.max_label_sets)
        yield CounterMetricFamily("dnswatch_metrics_folded_rows",
                                  "Rows counted under the label set 'other' because the label set limit was reached.",
                                  folded)
        ev = CounterMetricFamily("dnswatch_metrics_label_sets_evicted",
                                 "Label sets no longer exported: idle, or displaced by a busier one.", labels=["reason"])
        for reason, n in evicted.items():
            ev.add_metric([reason], n)
        yield ev
        yield CounterMetricFamily("dnswatch_metrics_rows", "Rows counted by the metrics (the rows the log stores).",
                                  rows)
        yield from _health_metrics(health)


def _cumulative(counts) -> list:
    """A histogram's (le, cumulative count) pairs from per-bucket counts (the last: above every bound)."""
    total, out = 0, []
    for bound, n in zip(LATENCY_BUCKETS + (float("inf"),), counts):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


# -- capture health ------------------------------------------------------------------------------

def _health_metrics(h: Dict[str, object]) -> Iterable:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    losses = h.get("losses")
    if isinstance(losses, dict):
        m = CounterMetricFamily("dnswatch_lost",
                                "Events lost, by the stage where they were lost (each counted once): "
                                "kernel_perf_buffer (a record the kernel's ring buffers refused; the stage keeps "
                                "its first name), kernel_* (skipped by the filter), decode "
                                "(frames that could not be read), memory_bounds (fragments, TCP streams or waiting "
                                "queries given up at a bound).",
                                labels=["stage"])
        for stage, n in sorted(losses.items()):
            m.add_metric([stage], n)
        yield m
    skipped = h.get("skipped")
    if isinstance(skipped, dict):
        m = CounterMetricFamily("dnswatch_frames_skipped", "Frames the decoder skipped or handled, by reason.",
                                labels=["reason"])
        for reason, n in sorted(skipped.items())[:64]:
            m.add_metric([reason], n)
        yield m
    for key, name, doc in (
        ("frames", "dnswatch_frames", "Frames passed up by the kernel filter."),
        ("kernel_seen", "dnswatch_kernel_packets_seen", "Packets the socket filter looked at."),
        ("kernel_kept", "dnswatch_kernel_packets_kept", "Packets the socket filter passed up."),
        ("duplicates", "dnswatch_duplicates", "Copies of a message seen again on another interface (stored once)."),
        ("malformed", "dnswatch_malformed_messages", "DNS messages that could not be read (kept in the malformed table)."),
        ("rows_stored", "dnswatch_rows_stored",
         "Rows this process handed to the log (those a full disk refused are in dnswatch_rows_unstored)."),
        ("rows_pruned", "dnswatch_rows_pruned", "Old rows this process deleted for retention (--retain, --max-size)."),
        ("rows_unstored", "dnswatch_rows_unstored",
         "Rows and malformed messages this process could not store (disk full)."),
    ):
        if key in h:
            yield CounterMetricFamily(name, doc, h[key])
    for key, name, doc in (
        ("namespaces", "dnswatch_netns_watched", "Network namespaces captured in now."),
        ("log_bytes", "dnswatch_log_size_bytes", "Size of the SQLite log (with its WAL)."),
        ("pending", "dnswatch_pending_queries", "Queries waiting for their response now."),
        ("perf_buffer_pages", "dnswatch_perf_buffer_pages",
         "Pages of each CPU's kernel ring buffer (the name is from the perf buffers it replaced)."),
    ):
        if key in h:
            yield GaugeMetricFamily(name, doc, h[key])
    # The rings' fill level is not exported yet (EventRing could read it from the producer and consumer pages).


def capture_health(pipeline, capture=None, store=None) -> Dict[str, object]:
    """Counters for ``MetricsSink.set_health`` from the pipeline's summary and the live capture's stats."""
    s = pipeline.counters()
    stats = capture.stats() if capture is not None else {}
    # the kernel's and the memory bounds' losses, overlaid with the pipeline's per-stage counts where it keeps
    # them (Summary.losses: each lost event counted at one stage). A full perf buffer shows in both of the
    # kernel's counters, so they are not added up.
    losses = {"kernel_perf_buffer": max(int(stats.get("lost_samples", 0)), int(stats.get("emit_failures", 0))),
              "memory_bounds": int(pipeline.decoder.dropped())}
    if capture is None:
        del losses["kernel_perf_buffer"]
    staged = getattr(s, "losses", None)
    if isinstance(staged, dict):
        losses.update({str(k): int(v) for k, v in staged.items()})
    health: Dict[str, object] = {"losses": losses, "skipped": dict(s.skipped), "frames": s.frames,
                                 "malformed": s.malformed,
                                 "duplicates": s.duplicates, "rows_stored": s.rows if store is not None else 0,
                                 "pending": len(pipeline.correlator.pending)}
    for key in ("kernel_seen", "kernel_kept"):
        if key in stats:
            health[key] = int(stats[key])
    if capture is not None:
        health["namespaces"] = len(capture.netns_inodes())
        pages = getattr(capture, "page_cnt", None)
        if pages:
            health["perf_buffer_pages"] = pages
    if store is not None:
        health["log_bytes"] = sum(_size(str(store.path) + suffix) for suffix in ("", "-wal"))
        health["rows_pruned"] = int(getattr(store, "pruned", 0))
        health["rows_unstored"] = int(getattr(store, "unstored", 0))
    return health


class HealthUpdater:
    """``run_watch``'s ``on_tick``: the capture health into the sink once a second (never stops the loop)."""

    def __init__(self, sink: MetricsSink, pipeline, capture=None, store=None, every: float = 1.0):
        self.sink, self.pipeline, self.capture, self.store = sink, pipeline, capture, store
        self.every = every
        self._next = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self.sink.set_health(**capture_health(self.pipeline, self.capture, self.store))
        return True


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# -- serving -------------------------------------------------------------------------------------

class MetricsError(Exception):
    pass


def parse_listen(text: str) -> Tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT or :PORT (every address); port 0: any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise MetricsError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9553, [::1]:9553 or :9553)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


class MetricsServer:
    """/metrics on HOST:PORT in a daemon thread, with the sink and the process's own metrics."""

    def __init__(self, sink: MetricsSink, listen: str):
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.sink = sink
        self.host, self.port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(sink)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self._httpd = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        try:
            started = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {self.host}:{self.port} ({exc.strerror or exc}): "
                               "choose another --metrics address or port") from None
        self._httpd = started[0] if isinstance(started, tuple) else None
        if self._httpd is not None:
            self.port = self._httpd.server_address[1]  # port 0: the one the system chose

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def exposition(sink: MetricsSink) -> bytes:
    """The /metrics text for ``sink`` alone (tests, benchmarks)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(sink)
    return generate_latest(registry)

