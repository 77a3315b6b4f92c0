"""``dnswatch top``: the numbers. Rows (the same ones the store gets) go into a ``TopStats``; a ``Snapshot``
of it is what the screen, ``--once`` and ``--json`` show.

Percentiles are nearest-rank over latencies rounded to the microsecond (``round(latency_ms, 3)``), so the
same figures come out of SQL over the log (``tests/test_top.py`` checks that).
"""
from __future__ import annotations

import functools
import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from dnswatch.correlate import (I_COMM, I_DST, I_LATENCY, I_PID, I_POD, I_POD_NS, I_QNAME, I_QTYPE, I_RCODE,
                                I_RTS, I_SRC, I_STATUS, I_TS, Row)

GROUPS = ("name", "domain", "client", "process", "pod", "server", "qtype", "rcode")
SORTS = ("count", "nxdomain", "servfail", "unanswered", "p95", "key")
MAX_KEYS = 50_000  # beyond this many keys, new ones are counted under OTHER (bounded memory in live top)
OTHER = "(other keys)"
SPARK_SECONDS = 120  # live: the sparkline's window, one bucket a second
SPARK_WIDTH = 60


_psl = None


@functools.lru_cache(maxsize=1 << 16)
def registered_domain(name: str) -> str:
    """``www.shop.example.co.uk`` -> ``example.co.uk`` (the public suffix list ships with publicsuffixlist:
    no network at run time); a name that is itself a suffix, or has none, stays as it is."""
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList

        _psl = PublicSuffixList()
    lowered = name.lower().rstrip(".")
    return _psl.privatesuffix(lowered) or lowered


def _client(row: Row) -> str:
    if row[I_POD]:
        return f"{row[I_POD_NS] or '-'}/{row[I_POD]}"
    if row[I_COMM]:
        return str(row[I_COMM])
    return str(row[I_SRC])


def _process(row: Row) -> Optional[str]:
    return row[I_COMM] if row[I_COMM] is not None else (None if row[I_PID] is None else f"pid {row[I_PID]}")


def _pod(row: Row) -> Optional[str]:
    return f"{row[I_POD_NS] or '-'}/{row[I_POD]}" if row[I_POD] else None


def _rcode(row: Row) -> Optional[str]:
    return row[I_RCODE] or (row[I_STATUS] if row[I_STATUS] in ("unanswered", "query_only") else None)


KEYS: Dict[str, Callable[[Row], Optional[str]]] = {
    "name": lambda r: (r[I_QNAME] or "").lower() or None,
    "domain": lambda r: registered_domain(r[I_QNAME]) if r[I_QNAME] else None,
    "client": _client,
    "process": _process,
    "pod": _pod,
    "server": lambda r: r[I_DST],
    "qtype": lambda r: r[I_QTYPE],
    "rcode": _rcode,
}
NONE_KEY = "-"  # rows without the key (no pod, no process): counted, shown as '-'


def percentile(counts: Counter, n: int, p: float) -> Optional[float]:
    """Nearest rank: the smallest value with at least p% of the ``n`` values at or below it."""
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100.0 * n))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return None


class _Agg:
    __slots__ = ("count", "nxdomain", "servfail", "unanswered", "latencies", "answered")

    def __init__(self) -> None:
        self.count = self.nxdomain = self.servfail = self.unanswered = self.answered = 0
        self.latencies: Counter = Counter()

    def p(self, q: float) -> Optional[float]:
        return percentile(self.latencies, self.answered, q)


@dataclass
class KeyRow:
    key: str
    count: int
    share: float  # percent of all rows
    nxdomain: int
    servfail: int
    unanswered: int
    p95_ms: Optional[float]


@dataclass
class Snapshot:
    """What top shows: one moment's numbers, whatever fed them (live rows or the log)."""

    by: str
    total: int
    rate: float  # queries per second over ``seconds``
    seconds: float
    rcodes: Dict[str, int]
    p50_ms: Optional[float]
    p95_ms: Optional[float]
    p99_ms: Optional[float]
    unanswered: int
    losses: int
    spark: List[int]  # queries per bucket, oldest first
    spark_seconds: float  # how long one bucket is
    keys: List[KeyRow]
    distinct_keys: int
    sort: str = "count"
    filter: str = ""
    source: str = ""
    first_ts: Optional[float] = None
    last_ts: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "by": self.by, "sort": self.sort, "filter": self.filter or None, "source": self.source,
            "total": self.total, "rate_qps": round(self.rate, 3), "seconds": round(self.seconds, 3),
            "first_ts": self.first_ts, "last_ts": self.last_ts,
            "rcodes": self.rcodes, "latency_ms": {"p50": self.p50_ms, "p95": self.p95_ms, "p99": self.p99_ms},
            "unanswered": self.unanswered, "losses": self.losses, "distinct_keys": self.distinct_keys,
            "keys": [k.__dict__ for k in self.keys],
        }


class TopStats:
    """Counters for every group-by at once (switching the grouping on the screen needs no re-read).

    Feed it rows with ``add`` (a pipeline sink, or rows read from the log). ``clock`` is only for the live
    sparkline and rate; over a log the rows' own times are used."""

    def __init__(self, live: bool = False, clock: Callable[[], float] = time.time,
                 span: Optional[Tuple[float, float]] = None):
        """``span``: (first, last) time of the rows to come, when known (log_stats asks the index): the
        sparkline is then counted on the fly instead of keeping every row's time."""
        self.live = live
        self.span = span
        self._buckets = [0] * SPARK_WIDTH
        self.clock = clock
        self.all = _Agg()
        self.groups: Dict[str, Dict[str, _Agg]] = {g: {} for g in GROUPS}
        self.rcodes: Counter = Counter()
        self.first_ts: Optional[float] = None
        self.last_ts: Optional[float] = None
        self.started = clock()
        self.losses = 0
        self._per_second: Deque[Tuple[int, int]] = deque()  # (second, count) for the live sparkline
        self._times: List[float] = []  # over a log: every row's time, for the sparkline

    def add(self, row: Row) -> None:
        # one row updates nine aggregates (all, and each grouping): what they need is worked out once
        rcode = row[I_RCODE]
        nx = rcode == "NXDOMAIN"
        sf = rcode == "SERVFAIL"
        un = row[I_STATUS] == "unanswered"
        latency = row[I_LATENCY]
        if latency is not None:
            latency = round(latency, 3)
        rc = _rcode(row)
        self.rcodes[rc or NONE_KEY] += 1
        ts = row[I_TS]
        if ts is not None:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
        aggs = [self.all]
        groups = self.groups
        for g, keyf in KEYS.items():
            key = keyf(row)
            key = NONE_KEY if key is None else key if key.__class__ is str else str(key)
            table = groups[g]
            agg = table.get(key)
            if agg is None:
                if len(table) >= MAX_KEYS:
                    key = OTHER
                    agg = table.get(key)
                if agg is None:
                    agg = table[key] = _Agg()
            aggs.append(agg)
        for agg in aggs:
            agg.count += 1
            if nx:
                agg.nxdomain += 1
            elif sf:
                agg.servfail += 1
            if un:
                agg.unanswered += 1
            if latency is not None:
                agg.answered += 1
                agg.latencies[latency] += 1
        if self.live:
            second = int(self.clock())
            if self._per_second and self._per_second[-1][0] == second:
                self._per_second[-1] = (second, self._per_second[-1][1] + 1)
            else:
                self._per_second.append((second, 1))
                while self._per_second and self._per_second[0][0] <= second - SPARK_SECONDS:
                    self._per_second.popleft()
        elif ts is not None:
            if self.span is not None:
                lo, hi = self.span
                width = max(hi - lo, 1e-9) / SPARK_WIDTH
                self._buckets[min(SPARK_WIDTH - 1, max(0, int((ts - lo) / width)))] += 1
            else:
                self._times.append(ts)

    def add_all(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.add(row)

    def snapshot(self, by: str = "name", sort: str = "count", filter: str = "", limit: int = 20,
                 reverse: bool = False, source: str = "") -> Snapshot:
        if by not in GROUPS:
            raise ValueError(f"unknown grouping {by!r}; use one of {', '.join(GROUPS)}")
        items = self.groups[by].items()
        if filter:
            needle = filter.lower()
            items = [(k, a) for k, a in items if needle in k.lower()]
        total = self.all.count
        rows = [KeyRow(k, a.count, round(100.0 * a.count / total, 1) if total else 0.0, a.nxdomain, a.servfail,
                       a.unanswered, a.p(95)) for k, a in items]
        rows.sort(key=_sort_key(sort))
        if reverse:
            rows.reverse()
        spark, bucket, seconds, rate = self._spark()
        return Snapshot(
            by=by, total=total, rate=rate, seconds=seconds,
            rcodes=dict(self.rcodes.most_common()), p50_ms=self.all.p(50), p95_ms=self.all.p(95),
            p99_ms=self.all.p(99), unanswered=self.all.unanswered, losses=self.losses, spark=spark,
            spark_seconds=bucket, keys=rows[:limit] if limit else rows, distinct_keys=len(self.groups[by]),
            sort=sort, filter=filter, source=source, first_ts=self.first_ts, last_ts=self.last_ts,
        )

    def _spark(self) -> Tuple[List[int], float, float, float]:
        """(buckets oldest first, seconds per bucket, seconds covered, queries per second)."""
        if self.live:
            now = int(self.clock())
            counts = dict(self._per_second)
            span = max(1, min(SPARK_SECONDS, now - int(self.started) + 1))
            buckets = [counts.get(s, 0) for s in range(now - span + 1, now + 1)]
            # live rate: over the last minute (or since start), so that it follows the traffic
            window = buckets[-60:]
            return buckets[-SPARK_WIDTH:], 1.0, float(span), sum(window) / len(window)
        if self.first_ts is None or self.last_ts is None:
            return [], 0.0, 0.0, 0.0
        span = self.last_ts - self.first_ts
        bucket = max(span, 1e-9) / SPARK_WIDTH
        if self.span is not None:  # rows a writer added meanwhile went to the last bucket
            counts = list(self._buckets)
            bucket = max(self.span[1] - self.span[0], 1e-9) / SPARK_WIDTH
        else:
            counts = [0] * SPARK_WIDTH
            for t in self._times:
                counts[min(SPARK_WIDTH - 1, int((t - self.first_ts) / bucket))] += 1
        return counts, bucket, span, (self.all.count / span if span > 0 else 0.0)


def _sort_key(sort: str):
    if sort == "key":
        return lambda r: r.key
    if sort == "p95":
        return lambda r: (-(r.p95_ms if r.p95_ms is not None else -1.0), r.key)
    if sort in ("count", "nxdomain", "servfail", "unanswered"):
        return lambda r: (-getattr(r, sort), r.key)
    raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")


# -- over a log ----------------------------------------------------------------------------------

_LOG_COLUMNS = {"ts": I_TS, "src": I_SRC, "dst": I_DST, "qname": I_QNAME, "qtype": I_QTYPE, "status": I_STATUS,
                "rcode": I_RCODE, "latency_ms": I_LATENCY, "response_ts": I_RTS, "pid": I_PID, "comm": I_COMM,
                "pod": I_POD, "pod_namespace": I_POD_NS}


def log_stats(conn, since: Optional[float] = None, until: Optional[float] = None) -> TopStats:
    """A ``TopStats`` over the log's rows with ``since <= ts <= until`` (the ``queries_ts`` index).

    The one place top reads the log: when rollups are available this is where they take over for the
    windows they cover."""
    from dnswatch.schema import QUERY_COLUMNS

    where, params = [], []
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts <= ?")
        params.append(until)
    present = {r[1] for r in conn.execute("PRAGMA table_info(queries)")}
    cols = [c for c in _LOG_COLUMNS if c in present]  # an older log may lack some
    sql = f"SELECT {', '.join(cols)} FROM queries"  # WHERE on ts: SQLite walks the queries_ts index
    if where:
        sql += " WHERE " + " AND ".join(where)
    where_sql = " WHERE " + " AND ".join(where) if where else ""
    lo, hi = conn.execute(f"SELECT min(ts), max(ts) FROM queries{where_sql}", params).fetchone()
    stats = TopStats(live=False, span=(lo, hi) if lo is not None else None)
    add = stats.add
    width = len(QUERY_COLUMNS)
    positions = [_LOG_COLUMNS[c] for c in cols]
    for values in conn.execute(sql, params):
        row: Row = [None] * width
        for i, v in zip(positions, values):
            row[i] = v
        add(row)
    cond, cparams = [], []
    if since is not None:
        cond.append("(last_ts IS NULL OR last_ts >= ?)")
        cparams.append(since)
    if until is not None:
        cond.append("(first_ts IS NULL OR first_ts <= ?)")
        cparams.append(until)
    sql = f"SELECT coalesce(sum(dropped), 0) FROM captures" + (" WHERE " + " AND ".join(cond) if cond else "")
    stats.losses = int(conn.execute(sql, cparams).fetchone()[0])
    return stats


__all__ = ["GROUPS", "SORTS", "KEYS", "TopStats", "Snapshot", "KeyRow", "log_stats", "registered_domain",
           "percentile"]
