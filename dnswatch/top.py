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
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

from dnswatch.correlate import (I_COMM, I_DST, I_LATENCY, I_PID, I_POD, I_POD_NS, I_QNAME, I_QTYPE, I_RCODE,
                                I_RTS, I_SRC, I_STATUS, I_TS, Row)
from dnswatch.schema import LOOKUP_COLUMNS

GROUPS = ("name", "domain", "client", "process", "pod", "server", "qtype", "rcode", "lookup")
# --by lookup: lookups (the lookups table; live, as they end) by client, ranked by the queries their search paths
# wasted. The sorts map onto its columns: count and nxdomain rank by wasted queries, servfail and unanswered by
# lookups left without an answer, p95 by the lookups' total time.
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
    __slots__ = ("count", "nxdomain", "servfail", "unanswered", "latencies", "answered", "max_ms")

    def __init__(self) -> None:
        self.count = self.nxdomain = self.servfail = self.unanswered = self.answered = 0
        self.latencies: Counter = Counter()
        self.max_ms: Optional[float] = None  # only set from rollups (raw rows: the largest of latencies)

    def largest(self) -> Optional[float]:
        if self.max_ms is not None:
            return self.max_ms
        return max(self.latencies) if self.latencies else None

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
    p95_ms: Optional[float]  # None over rollups: they keep only the sum and the largest latency
    max_ms: Optional[float] = None


@dataclass
class LookupKeyRow:
    """A client's lookups (``--by lookup``): the queries they took and what the search path wasted."""
    key: str
    count: int  # lookups
    share: float  # percent of all lookups
    queries: int
    wasted: int
    wasted_pct: float  # of its queries
    unresolved: int  # lookups that got no answer (no candidate came back with records)
    p95_ms: Optional[float]  # of the lookups' total time (first query to final response)
    max_ms: Optional[float] = None


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
    max_ms: Optional[float] = None
    rollup_hours: Optional[Tuple[int, int]] = None  # [start, end) served by the hourly rollups, else None
    lookups: int = 0  # lookups counted (--by lookup), their queries and the part wasted on search-path expansions
    lookup_queries: int = 0
    wasted: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return {
            "by": self.by, "sort": self.sort, "filter": self.filter or None, "source": self.source,
            "total": self.total, "rate_qps": round(self.rate, 3), "seconds": round(self.seconds, 3),
            "first_ts": self.first_ts, "last_ts": self.last_ts,
            "rcodes": self.rcodes, "latency_ms": {"p50": self.p50_ms, "p95": self.p95_ms, "p99": self.p99_ms,
                                                 "max": self.max_ms},
            "rollup_hours": list(self.rollup_hours) if self.rollup_hours else None,
            "unanswered": self.unanswered, "losses": self.losses, "distinct_keys": self.distinct_keys,
            "keys": [k.__dict__ for k in self.keys],
            **({"lookups": self.lookups, "lookup_queries": self.lookup_queries, "wasted": self.wasted}
               if self.by == "lookup" else {}),
        }


class _LookupAgg:
    __slots__ = ("count", "queries", "wasted", "unresolved", "totals")

    def __init__(self) -> None:
        self.count = self.queries = self.wasted = self.unresolved = 0
        self.totals: Counter = Counter()  # total_ms (rounded to the microsecond) -> lookups


def _new_agg(table: Dict[str, Any], key: str, make: Callable[[], Any] = _Agg) -> Any:
    """The aggregate of a key not in ``table`` yet: a new one, or past MAX_KEYS keys the shared OTHER one."""
    if len(table) >= MAX_KEYS:
        key = OTHER
        agg = table.get(key)
        if agg is not None:
            return agg
    agg = table[key] = make()
    return agg


# lookups rows (schema.LOOKUP_COLUMNS order, as the lookups stage writes them and the log holds them)
_L = {c: i for i, c in enumerate(LOOKUP_COLUMNS)}
_LOOKUP_READ = ("src", "comm", "pod", "pod_namespace", "queries", "wasted", "total_ms", "answered_name",
                "forwarded_for", "ts")


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
        self.rollup_hours: Optional[Tuple[int, int]] = None  # set by log_stats when rollups served these hours
        self.lookups = _LookupAgg()  # every lookup counted (--by lookup)

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
            aggs.append(agg if agg is not None else _new_agg(table, key))
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

    def add_cell(self, qname: Optional[str], qtype: Optional[str], rc: Optional[str], comm: Optional[str],
                 ns: Optional[str], pod: Optional[str], n: int, unanswered: int, answered: int,
                 lat_max: Optional[float]) -> None:
        """``n`` rows that share these values (a rollup cell): every grouping the rollups carry, no latency
        distribution (only its largest value). ``rc``: the rcode key as ``_rcode`` gives it."""
        if not n:
            return
        keys = {
            "name": (qname or "").lower() or None,
            "domain": registered_domain(qname) if qname else None,
            "process": comm,
            "pod": f"{ns or '-'}/{pod}" if pod else None,
            "qtype": qtype,
            "rcode": rc,
        }
        self.rcodes[rc or NONE_KEY] += n
        aggs = [self.all]
        for g, key in keys.items():
            key = NONE_KEY if key is None else key
            table = self.groups[g]
            agg = table.get(key)
            aggs.append(agg if agg is not None else _new_agg(table, key))
        nx, sf = rc == "NXDOMAIN", rc == "SERVFAIL"
        for agg in aggs:
            agg.count += n
            if nx:
                agg.nxdomain += n
            elif sf:
                agg.servfail += n
            agg.unanswered += unanswered
            agg.answered += answered
            if lat_max is not None and (agg.max_ms is None or lat_max > agg.max_ms):
                agg.max_ms = lat_max

    def add_lookup(self, lookup: Sequence[Any]) -> None:
        """A lookups row (LOOKUP_COLUMNS order): live, the stage's as each lookup ends; over a log, the table's.
        A server's own lookup forwarding a client's question (a hop) is left out, as in ``search --lookups``, and so
        is a response whose query was not seen (no query: no lookup, as the lookups view and the metrics have it)."""
        if lookup[_L["forwarded_for"]] is not None or not lookup[_L["queries"]]:
            return
        pod, comm = lookup[_L["pod"]], lookup[_L["comm"]]
        key = f"{lookup[_L['pod_namespace']] or '-'}/{pod}" if pod else str(comm) if comm else str(lookup[_L["src"]])
        table = self.groups["lookup"]
        agg = table.get(key)
        if agg is None:
            agg = _new_agg(table, key, _LookupAgg)
        queries, wasted, total = lookup[_L["queries"]] or 0, lookup[_L["wasted"]] or 0, lookup[_L["total_ms"]]
        self.lookups.count += 1
        self.lookups.queries += queries
        self.lookups.wasted += wasted
        agg.count += 1
        agg.queries += queries
        agg.wasted += wasted
        if lookup[_L["answered_name"]] is None:
            agg.unresolved += 1
        if total is not None:
            agg.totals[round(total, 3)] += 1

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
        rollups = self.rollup_hours is not None
        if by == "lookup":
            n = self.lookups.count
            rows = [LookupKeyRow(k, a.count, round(100.0 * a.count / n, 1) if n else 0.0, a.queries, a.wasted,
                                 round(100.0 * a.wasted / a.queries, 1) if a.queries else 0.0, a.unresolved,
                                 percentile(a.totals, sum(a.totals.values()), 95),
                                 max(a.totals) if a.totals else None) for k, a in items]
            rows.sort(key=_lookup_sort_key(sort))
        else:
            rows = [KeyRow(k, a.count, round(100.0 * a.count / total, 1) if total else 0.0, a.nxdomain, a.servfail,
                           a.unanswered, None if rollups else a.p(95), a.largest()) for k, a in items]
            rows.sort(key=_sort_key(sort))
        if reverse:
            rows.reverse()
        spark, bucket, seconds, rate = self._spark()
        if rollups:  # percentiles need every latency: the rollups have only their sum and maximum
            return Snapshot(
                by=by, total=total, rate=rate, seconds=seconds, rcodes=dict(self.rcodes.most_common()),
                p50_ms=None, p95_ms=None, p99_ms=None, unanswered=self.all.unanswered, losses=self.losses,
                spark=spark, spark_seconds=bucket, keys=rows[:limit] if limit else rows,
                distinct_keys=len(self.groups[by]), sort=sort, filter=filter, source=source,
                first_ts=self.first_ts, last_ts=self.last_ts, max_ms=self.all.largest(),
                rollup_hours=self.rollup_hours)
        return Snapshot(
            by=by, total=total, rate=rate, seconds=seconds,
            rcodes=dict(self.rcodes.most_common()), p50_ms=self.all.p(50), p95_ms=self.all.p(95),
            p99_ms=self.all.p(99), unanswered=self.all.unanswered, losses=self.losses, spark=spark,
            spark_seconds=bucket, keys=rows[:limit] if limit else rows, distinct_keys=len(self.groups[by]),
            sort=sort, filter=filter, source=source, first_ts=self.first_ts, last_ts=self.last_ts,
            max_ms=self.all.largest(), lookups=self.lookups.count, lookup_queries=self.lookups.queries,
            wasted=self.lookups.wasted,
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
        if self.rollup_hours is not None and self.span is not None:
            counts = [round(c) for c in self._buckets]  # whole hours were spread evenly: fractions
            bucket = max(self.span[1] - self.span[0], 1e-9) / SPARK_WIDTH
        elif self.span is not None:  # rows a writer added meanwhile went to the last bucket
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


def _lookup_sort_key(sort: str):
    if sort == "key":
        return lambda r: r.key
    if sort == "p95":
        return lambda r: (-(r.p95_ms if r.p95_ms is not None else -1.0), r.key)
    if sort in ("servfail", "unanswered"):
        return lambda r: (-r.unresolved, -r.count, r.key)
    if sort in ("count", "nxdomain"):
        return lambda r: (-r.wasted, -r.queries, r.key)
    raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")


# -- over a log ----------------------------------------------------------------------------------

_LOG_COLUMNS = {"ts": I_TS, "src": I_SRC, "dst": I_DST, "qname": I_QNAME, "qtype": I_QTYPE, "status": I_STATUS,
                "rcode": I_RCODE, "latency_ms": I_LATENCY, "response_ts": I_RTS, "pid": I_PID, "comm": I_COMM,
                "pod": I_POD, "pod_namespace": I_POD_NS}


ROLLUP_GROUPS = ("name", "domain", "process", "pod", "qtype", "rcode")  # what rollups_hourly can answer
ROLLUP_MIN_HOURS = 2  # whole hours in the window before the rollups take over from the raw rows


def log_stats(conn, since: Optional[float] = None, until: Optional[float] = None, rollups: bool = False) -> TopStats:
    """A ``TopStats`` over the log's rows with ``since <= ts <= until`` (the ``queries_ts`` index).

    ``rollups``: when the window holds at least ROLLUP_MIN_HOURS whole hours and the log's rollups cover them,
    those hours come from rollups_hourly and only the partial hours at both ends from raw rows. Only the
    ROLLUP_GROUPS are filled then, and no percentiles (``snapshot`` gives None; max_ms is the largest latency).
    Otherwise (and always with rollups=False) every row is read: exact, percentiles included."""
    if rollups:
        stats = _rollup_stats(conn, since, until)
        if stats is not None:
            return stats
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
    where_sql = " WHERE " + " AND ".join(where) if where else ""  # on ts: a range of query_log, ordered by ts
    sql = f"SELECT {', '.join(cols)} FROM queries{where_sql}"
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
    _log_lookups(conn, stats, where_sql, params)
    stats.losses = _losses(conn, since, until)
    return stats


def _log_lookups(conn, stats: TopStats, where_sql: str, params: List[Any]) -> None:
    """--by lookup over a log: the lookups that started in the window (an older log has no lookups table)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'lookups'").fetchone():
        return
    width = len(LOOKUP_COLUMNS)
    positions = [_L[c] for c in _LOOKUP_READ]
    add = stats.add_lookup
    for values in conn.execute(f"SELECT {', '.join(_LOOKUP_READ)} FROM lookups{where_sql}", params):
        lookup: List[Any] = [None] * width
        for i, v in zip(positions, values):
            lookup[i] = v
        add(lookup)


def _losses(conn, since: Optional[float], until: Optional[float]) -> int:
    cond, cparams = [], []
    if since is not None:
        cond.append("(last_ts IS NULL OR last_ts >= ?)")
        cparams.append(since)
    if until is not None:
        cond.append("(first_ts IS NULL OR first_ts <= ?)")
        cparams.append(until)
    sql = "SELECT coalesce(sum(dropped), 0) FROM captures" + (" WHERE " + " AND ".join(cond) if cond else "")
    return int(conn.execute(sql, cparams).fetchone()[0])


def _rollup_hours(conn, since: Optional[float], until: Optional[float]) -> Optional[Tuple[float, float, int, int]]:
    """(since, until, first whole hour, end of the last whole hour) when the rollups can serve the window."""
    from dnswatch.schema import LOG_TABLE, ROLLUPS

    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    if ROLLUPS.name not in tables or LOG_TABLE not in tables or "meta" not in tables:
        return None  # an older log: raw rows only
    # one min() or max() a statement: each is then one step down an index (both at once scan every row)
    lo_raw, hi_raw = [conn.execute(f"SELECT {f}(ts) FROM queries").fetchone()[0] for f in ("min", "max")]
    lo_roll, hi_roll = [conn.execute(f"SELECT {f} FROM {ROLLUPS.name}").fetchone()[0]
                        for f in ("min(hour)", "max(hour) + 3600")]
    oldest = [x for x in (lo_raw, lo_roll) if x is not None]
    if not oldest:
        return None
    if since is None:
        since = float(min(oldest))
    # whole hours count only where there is data: a log of an old capture (an hour of rows, days ago, --since 30d
    # or none) is read from its raw rows, percentiles included, not from the rollups of empty hours around it
    hi = min(time.time() if until is None else until, float(max(x for x in (hi_raw, hi_roll) if x is not None)))
    h0 = int(math.ceil(max(since, float(min(oldest))) / 3600.0)) * 3600
    h1 = int(hi // 3600) * 3600  # the hour starting at h1 is partial (rows up to until): raw rows
    from dnswatch.aggregate import raw_hours
    r0, r1 = raw_hours(conn, h0, h1)
    if r0 < r1:  # the size bound took rollups of hours the raw rows cover: those from the raw rows
        h1 = r0
    if h1 - h0 < ROLLUP_MIN_HOURS * 3600:
        return None
    # rows a killed writer left above aggregated_id are not in the rollups yet: then read raw rows
    done = conn.execute("SELECT value FROM meta WHERE key = 'aggregated_id'").fetchone()
    pending = conn.execute(f"SELECT min(ts) FROM {LOG_TABLE} WHERE id >= ?", (done[0] if done else 1,)).fetchone()[0]
    if pending is not None and pending < h1:
        return None
    return since, until if until is not None else math.inf, h0, h1


def _rollup_stats(conn, since: Optional[float], until: Optional[float]) -> Optional[TopStats]:
    from dnswatch.aggregate import _resolve
    from dnswatch.schema import ROLLUPS

    plan = _rollup_hours(conn, since, until)
    if plan is None:
        return None
    lo, hi, h0, h1 = plan
    dims = "qname, qtype, rcode, comm, pod_namespace, pod"
    sums = "sum(count), sum(unanswered), sum(answered), max(latency_max)"
    cells = conn.execute(f"SELECT {dims}, {sums} FROM {ROLLUPS.name} WHERE hour >= ? AND hour < ? GROUP BY {dims}",
                         (h0, h1)).fetchall()
    names = _resolve(conn, "qname", sorted({c[0] for c in cells if c[0]}))
    strings = _resolve(conn, "strings", sorted({x for c in cells for x in c[1:6] if x}))
    name = lambda i: names.get(i) if i else None  # noqa: E731  (0: none)
    text = lambda i: strings.get(i) if i else None  # noqa: E731
    # the partial hours at both ends: raw rows through the ts index, summed the same way
    edge_where = "(ts >= ? AND ts < ?) OR (ts >= ? AND ts <= ?)"
    edge_params = (lo, h0, h1, hi)
    edges = conn.execute(
        f"SELECT {dims}, count(*), total(status = 'unanswered'), count(latency_ms), max(latency_ms) FROM queries "
        f"WHERE {edge_where} GROUP BY {dims}", edge_params).fetchall()
    # the window's real first and last times: raw rows where they are kept, else the rollup hours' bounds
    first, last = conn.execute("SELECT min(ts), max(ts) FROM queries WHERE ts >= ? AND ts <= ?", (lo, hi)).fetchone()
    per_hour = conn.execute(f"SELECT hour, sum(count) FROM {ROLLUPS.name} WHERE hour >= ? AND hour < ? GROUP BY hour",
                            (h0, h1)).fetchall()
    if per_hour:  # an hour whose raw rows are gone (retention): its bound stands for them
        if first is None or first >= per_hour[0][0] + 3600:
            first = per_hour[0][0]
        if last is None or last < per_hour[-1][0]:
            last = per_hour[-1][0] + 3600
    stats = TopStats(live=False, span=(first, last) if first is not None else None)
    stats.rollup_hours = (h0, h1)
    stats.first_ts, stats.last_ts = first, last

    def add(qn, qtype, rcode, comm, ns, pod, n, un, answered, lat_max) -> None:
        n, un = int(n), int(un)
        if rcode is None:  # no rcode: unanswered, or a query seen without responses (query_only)
            stats.add_cell(qn, qtype, "unanswered", comm, ns, pod, un, un, 0, None)
            stats.add_cell(qn, qtype, "query_only", comm, ns, pod, n - un, 0, 0, None)
        else:
            stats.add_cell(qn, qtype, rcode, comm, ns, pod, n, un, int(answered), lat_max)

    for qn, qtype, rcode, comm, ns, pod, n, un, answered, lat_max in cells:
        add(name(qn), text(qtype), text(rcode), text(comm), text(ns), text(pod), n, un, answered, lat_max)
    for cell in edges:
        add(*cell)
    # the sparkline: whole hours spread evenly over their minutes, partial hours by minute
    if stats.span is not None:
        minutes = [(hour + 60 * k + 30, n / 60.0) for hour, n in per_hour for k in range(60)]
        minutes += conn.execute(f"SELECT CAST(ts / 60 AS INTEGER) * 60 + 30, count(*) FROM queries WHERE {edge_where} "
                                "GROUP BY 1", edge_params).fetchall()
        a, b = stats.span
        width = max(b - a, 1e-9) / SPARK_WIDTH
        buckets = [0.0] * SPARK_WIDTH
        for t, n in minutes:
            buckets[min(SPARK_WIDTH - 1, max(0, int((t - a) / width)))] += n
        stats._buckets = buckets
    stats.losses = _losses(conn, since, until)
    return stats


__all__ = ["GROUPS", "SORTS", "KEYS", "TopStats", "Snapshot", "KeyRow", "log_stats", "registered_domain",
           "percentile", "ROLLUP_GROUPS"]
