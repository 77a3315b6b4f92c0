"""Common questions without SQL: ``dnswatch search`` filters turned into one parameterised query."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import List, Optional, Sequence, Tuple

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*(?:ago)?\s*$", re.I)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class SearchError(ValueError):
    """A search option the user can correct."""


def parse_time(text: str, now: Optional[float] = None) -> float:
    """``10m``/``2h``/``1d`` ago, Unix seconds, or an ISO date/time (UTC unless it has an offset)."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SearchError(
            f"cannot read time {text!r}: use a relative time like 30s, 10m, 2h, 1d, an ISO date like "
            "2026-11-01 or 2026-11-01T14:30:00 (UTC unless an offset is given), or Unix seconds"
        )
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class SearchFilters:
    name: Optional[str] = None
    types: Sequence[str] = ()
    rcodes: Sequence[str] = ()
    src: Optional[str] = None
    pids: Sequence[int] = ()
    comms: Sequence[str] = ()
    pods: Sequence[str] = ()
    pod_namespaces: Sequence[str] = ()
    containers: Sequence[str] = ()
    answer: Optional[str] = None
    status: Optional[str] = None
    since: Optional[str] = None
    until: Optional[str] = None
    limit: int = 100
    columns: List[str] = field(default_factory=list)


DEFAULT_COLUMNS = ["ts_utc", "src", "sport", "dst", "proto", "dns_id", "qname", "qtype", "status", "rcode", "latency_ms",
                   "answers", "pid", "comm", "pod_namespace", "pod", "container"]


def _name_condition(name: str) -> Tuple[str, List[object]]:
    """A glob (``*.example.com``) matches as a glob; plain text matches the name, its subdomains, or as a
    substring. Case-insensitive either way."""
    if any(ch in name for ch in "*?["):
        return "lower(qname) GLOB ?", [name.lower()]
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "qname LIKE ? ESCAPE '\\'", [f"%{escaped}%"]


def _in(column: str, values: Sequence[object], upper: bool = False) -> Tuple[str, List[object]]:
    vals = [str(v).upper() if upper else v for v in values]
    return f"{column} IN ({', '.join('?' for _ in vals)})", list(vals)


def build_search(f: SearchFilters, now: Optional[float] = None) -> Tuple[str, List[object]]:
    where: List[str] = []
    params: List[object] = []

    def add(cond: Tuple[str, List[object]]) -> None:
        where.append(cond[0])
        params.extend(cond[1])

    if f.name:
        add(_name_condition(f.name))
    if f.types:
        add(_in("qtype", f.types, upper=True))
    if f.rcodes:
        add(_in("rcode", f.rcodes, upper=True))
    if f.src:
        add(("src = ?", [f.src]))
    if f.pids:
        add(_in("pid", f.pids))
    if f.comms:
        add(_in("comm", f.comms))
    if f.pods:
        if len(f.pods) == 1 and any(ch in f.pods[0] for ch in "*?["):
            add(("pod GLOB ?", [f.pods[0]]))
        else:
            add(_in("pod", f.pods))
    if f.pod_namespaces:
        add(_in("pod_namespace", f.pod_namespaces))
    if f.containers:
        add(("(" + " OR ".join("container = ? OR container_id LIKE ?" for _ in f.containers) + ")",
             [v for c in f.containers for v in (c, c + "%")]))
    if f.answer:
        add(("EXISTS (SELECT 1 FROM json_each(queries.answers) WHERE json_extract(json_each.value, '$.data') = ?)",
             [f.answer]))
    if f.status:
        add(("status = ?", [f.status]))
    if f.since:
        add(("ts >= ?", [parse_time(f.since, now)]))
    if f.until:
        add(("ts <= ?", [parse_time(f.until, now)]))
    if f.limit < 0:
        raise SearchError("--limit must be 0 (no limit) or more")
    columns = f.columns or DEFAULT_COLUMNS
    select = ", ".join(
        "strftime('%Y-%m-%dT%H:%M:%fZ', ts, 'unixepoch') AS ts_utc" if c == "ts_utc" else f"[{c}]" for c in columns
    )
    sql = f"SELECT {select} FROM queries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts DESC, id DESC"
    if f.limit:
        sql += f" LIMIT {int(f.limit)}"
    return sql, params
