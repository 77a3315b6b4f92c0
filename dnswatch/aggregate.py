"""Aggregates over a time window that stay fast on a log of 100M rows.

``top(conn, "qname", since, until, 20)``: whole hours inside the window come from ``key_hours`` (filled as rows
are written, kept as long as the rollups), the partial hours at either end from the raw rows through the time
index. Ranking many hourly lists without summing all of them is Fagin's threshold algorithm: read every hour's
list from its largest count down, total each key seen (one index range), and stop once the n-th best total is at
least the sum of the counts just read (no key not yet seen can beat it). On Zipf-like data that reads a few
dozen entries per hour instead of every (key, hour) pair.
"""
from __future__ import annotations

import heapq
import math
import sqlite3
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from dnswatch.schema import COMBOS, KEY_HOURS, KEY_KINDS, LOG_TABLE, QUERIES

KEYS = tuple(KEY_KINDS)  # what top() can rank: qname comm pod pod_namespace rcode qtype src
_STORE = {c.name: c.store for c in QUERIES.columns}
_FETCH = 64


def _resolve(conn: sqlite3.Connection, key: str, ids: Sequence[int]) -> Dict[int, Optional[str]]:
    table, column = ("names", "name") if key == "qname" else ("strings", "s")
    out: Dict[int, Optional[str]] = {}
    for i in range(0, len(ids), 500):
        chunk = list(ids[i:i + 500])
        out.update(conn.execute(f"SELECT id, {column} FROM {table} WHERE id IN ({', '.join('?' * len(chunk))})",
                                chunk).fetchall())
    return out


def raw_counts(conn: sqlite3.Connection, key: str, since: float, until: float,
               filters: Optional[Mapping[str, Sequence[object]]] = None) -> Dict[int, int]:
    """id of ``key`` -> rows with since <= ts < until, from the raw rows (a range of query_log, which is in time order). ``filters``:
    column -> allowed values (texts for text columns), e.g. {"pod_namespace": ["shop"]}."""
    where, params = ["l.ts >= ?", "l.ts < ?"], [since, until]
    combo = COMBOS.get(_STORE[key])
    shape = combo is not None
    if not shape:
        where.append(f"l.[{key}] IS NOT NULL")
    for column, values in (filters or {}).items():
        if column not in _STORE:
            raise ValueError(f"unknown column {column!r}")
        marks = ", ".join("?" * len(values))
        if _STORE[column] == "str":
            where.append(f"l.[{column}] IN (SELECT id FROM strings WHERE s IN ({marks}))")
        elif _STORE[column] in COMBOS:
            where.append(f"l.{_STORE[column]} IN (SELECT id FROM {COMBOS[_STORE[column]].name} WHERE [{column}] IN "
                         f"({marks}))")
        elif _STORE[column] == "name":
            where.append(f"l.[{column}] IN (SELECT id FROM names WHERE name IN ({marks}))")
        else:
            where.append(f"l.[{column}] IN ({marks})")
        params.extend(values)
    sql = (f"SELECT l.[{_STORE[key] if shape else key}], count(*) FROM {LOG_TABLE} l WHERE {' AND '.join(where)} "
           "GROUP BY 1")
    counts = dict(conn.execute(sql, params).fetchall())
    if not shape:
        return counts
    out: Dict[int, int] = {}  # shape/sender ids -> the strings ids key_hours uses for the text
    table = combo.name
    for sid, text_id in conn.execute(f"SELECT {table}.id, strings.id FROM {table} JOIN strings ON strings.s = "
                                     f"{table}.[{key}]").fetchall():
        if sid in counts:
            out[text_id] = out.get(text_id, 0) + counts[sid]
    return out


def raw_hours(conn: sqlite3.Connection, h0: int, h1: int) -> Tuple[int, int]:
    """The whole hours [r0, r1) of [h0, h1) to count from the raw rows instead of the rollups and key_hours (none
    when r0 >= r1): those the size bound took aggregates of while raw rows still cover them (meta
    'aggregates_partial_before', layout.LogWriter._size_step)."""
    found = conn.execute("SELECT value FROM meta WHERE key = 'aggregates_partial_before'").fetchone()
    if not found or not found[0] or found[0] <= h0:
        return h1, h1
    first = conn.execute(f"SELECT ts FROM {LOG_TABLE} ORDER BY ts LIMIT 1").fetchone()
    if first is None:
        return h1, h1
    return max(h0, int(first[0] // 3600) * 3600), min(h1, found[0])


def top(conn: sqlite3.Connection, key: str = "qname", since: Optional[float] = None, until: Optional[float] = None,
        n: int = 20, filters: Optional[Mapping[str, Sequence[object]]] = None) -> List[Tuple[Optional[str], int]]:
    """The ``n`` values of column ``key`` (one of KEYS) with the most rows in since <= ts < until (Unix seconds;
    None: from the oldest data / up to now), most first, as (value, rows). Ties: smaller id (first stored) first.

    Whole hours come from key_hours, so windows longer than the raw rows' retention still answer (from rollups).
    ``filters`` (column -> values) restrict the rows counted; they need the raw rows, so the whole window is then
    read through the time index."""
    if key not in KEY_KINDS:
        raise ValueError(f"top by {key!r}: one of {', '.join(KEYS)}")
    kind = KEY_KINDS[key]
    until = time.time() if until is None else until
    if since is None:
        first = conn.execute(f"SELECT min(hour) FROM {KEY_HOURS.name} WHERE kind = ?", (kind,)).fetchone()[0]
        since = float(first) if first is not None else until
    if filters:
        counts = raw_counts(conn, key, since, until, filters)
        best = heapq.nsmallest(n, counts.items(), key=lambda kv: (-kv[1], kv[0]))
    else:
        best = _top_ids(conn, key, kind, since, until, n)
    names = _resolve(conn, key, [k for k, _ in best])
    return [(names.get(k), c) for k, c in best]


def _top_ids(conn: sqlite3.Connection, key: str, kind: int, since: float, until: float, n: int
             ) -> List[Tuple[int, int]]:
    h0 = int(math.ceil(since / 3600.0)) * 3600  # first whole hour
    h1 = int(until // 3600) * 3600  # end of the last whole hour
    if h0 >= h1:  # no whole hour inside: raw rows only
        edges = raw_counts(conn, key, since, until)
        return heapq.nsmallest(n, edges.items(), key=lambda kv: (-kv[1], kv[0]))
    edges = raw_counts(conn, key, since, h0) if since < h0 else {}
    if until > h1:
        for k, c in raw_counts(conn, key, h1, until).items():
            edges[k] = edges.get(k, 0) + c

    def hour_list(hour: int) -> Iterator[Tuple[int, int]]:
        cur = conn.execute(f"SELECT key, n FROM {KEY_HOURS.name} INDEXED BY key_hours_top WHERE kind = ? AND "
                           "hour = ? ORDER BY n DESC", (kind, hour))
        while True:
            chunk = cur.fetchmany(_FETCH)
            if not chunk:
                return
            yield from chunk

    r0, r1 = raw_hours(conn, h0, h1)
    if r0 < r1:
        for k, c in raw_counts(conn, key, r0, r1).items():
            edges[k] = edges.get(k, 0) + c
    lists: List[Iterator[Tuple[int, int]]] = [hour_list(h) for h in range(h0, h1, 3600) if not r0 <= h < r1]
    if edges:
        lists.append(iter(sorted(edges.items(), key=lambda kv: -kv[1])))
    exact_sql = (f"SELECT coalesce(sum(n), 0) FROM {KEY_HOURS.name} WHERE kind = ? AND key = ? AND hour >= ? "
                 f"AND hour < ? AND NOT (hour >= {r0} AND hour < {r1})")
    totals: Dict[int, int] = {}
    bounds = [0] * len(lists)
    live = list(range(len(lists)))
    while live:
        still = []
        for i in live:
            entry = next(lists[i], None)
            if entry is None:
                bounds[i] = 0
                continue
            still.append(i)
            k, c = entry
            bounds[i] = c
            if k not in totals:
                totals[k] = conn.execute(exact_sql, (kind, k, h0, h1)).fetchone()[0] + edges.get(k, 0)
        live = still
        if len(totals) >= n:
            best = heapq.nlargest(n, totals.values())
            if best[-1] >= sum(bounds):
                break
    return heapq.nsmallest(n, totals.items(), key=lambda kv: (-kv[1], kv[0]))
