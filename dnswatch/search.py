"""Common questions without SQL: ``dnswatch search`` filters turned into one parameterised query."""
from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import List, Optional, Sequence, Tuple

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*(?:ago)?\s*$", re.I)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class SearchError(ValueError):
    """A search option the user can correct."""


def check_window(since: Optional[float], until: Optional[float], since_text=None, until_text=None) -> None:
    if since is not None and until is not None and since > until:
        raise SearchError(
            f"--since {since_text} is after --until {until_text}: nothing can match; relative times count back "
            "from now (--since 2h --until 1h is the hour before the last one)"
        )


def _flip(term: str) -> str:
    if term.endswith(" DESC"):
        return term[:-5] + " ASC"
    if term.endswith(" ASC"):
        return term[:-4] + " DESC"
    if term.endswith(" IS NULL"):
        return term  # rows without a latency stay last either way
    return term + " DESC"


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
    dst: Optional[str] = None
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
    sort: str = "ts"
    reverse: bool = False


SORTS = {"ts": "ts DESC, id DESC", "latency": "latency_ms IS NULL, latency_ms DESC, id DESC",
         "name": "qname COLLATE NOCASE ASC, ts DESC, id DESC"}
SORT_HELP = "ts (newest first), latency (slowest first), name (A to Z)"


def known_qtypes() -> List[str]:
    from dnslib import QTYPE

    return sorted(set(QTYPE.forward.values()))


def known_rcodes() -> List[str]:
    from dnswatch.dns import rcode_text

    return [t for t in (rcode_text(n) for n in range(24)) if not t.startswith("RCODE")]


def check_mnemonics(option: str, values: Sequence[str], known: Sequence[str], numbered: str) -> List[str]:
    """Upper-cased ``values``; an unknown one is an error listing the valid ones (TYPE65535 style is valid)."""
    out, known_set = [], set(known)
    for v in values:
        u = v.strip().upper()
        if u not in known_set and not re.fullmatch(numbered + r"\d{1,5}", u):
            raise SearchError(f"{option} {v}: unknown; use one of {', '.join(known)} (or {numbered}<number>)")
        out.append(u)
    return out


def address_condition(option: str, column: str, text: str) -> Tuple[str, List[object]]:
    """``--src``/``--dst``: one address in any spelling (IPv6 compressed or not), or a CIDR prefix.
    Stored addresses are in Python's (RFC 5952) form, so one address is an index-friendly equality."""
    try:
        if "/" in text:
            net = ipaddress.ip_network(text.strip(), strict=False)
        else:
            return f"{column} = ?", [str(ipaddress.ip_address(text.strip()))]
    except ValueError:
        raise SearchError(f"{option} {text}: not an address or prefix (198.18.0.1, 2001:db8::1, 198.18.0.0/15, fd00::/8)")
    if net.prefixlen == net.max_prefixlen:
        return f"{column} = ?", [str(net.network_address)]
    return f"dnswatch_in_net({column}, ?)", [str(net)]


def in_network(addr: Optional[str], net: str) -> int:
    """SQL function ``dnswatch_in_net(address, prefix)`` (registered by the search command)."""
    if addr is None:
        return 0
    try:
        return int(ipaddress.ip_address(addr) in _network(net))
    except ValueError:
        return 0


_networks: dict = {}


def _network(text: str):
    net = _networks.get(text)
    if net is None:
        net = _networks[text] = ipaddress.ip_network(text, strict=False)
    return net


def register_functions(conn) -> None:
    conn.create_function("dnswatch_in_net", 2, in_network, deterministic=True)


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
        add(_in("qtype", check_mnemonics("--type", f.types, known_qtypes(), "TYPE")))
    if f.rcodes:
        add(_in("rcode", check_mnemonics("--rcode", f.rcodes, known_rcodes(), "RCODE")))
    if f.src:
        add(address_condition("--src", "src", f.src))
    if f.dst:
        add(address_condition("--dst", "dst", f.dst))
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
    since = parse_time(f.since, now) if f.since else None
    until = parse_time(f.until, now) if f.until else None
    check_window(since, until, f.since, f.until)
    if since is not None:
        add(("ts >= ?", [since]))
    if until is not None:
        add(("ts <= ?", [until]))
    if f.sort not in SORTS:
        raise SearchError(f"--sort {f.sort}: use {SORT_HELP}")
    if f.limit < 0:
        raise SearchError("--limit must be 0 (no limit) or more")
    columns = f.columns or DEFAULT_COLUMNS
    select = ", ".join(
        "strftime('%Y-%m-%dT%H:%M:%fZ', ts, 'unixepoch') AS ts_utc" if c == "ts_utc" else f"[{c}]" for c in columns
    )
    sql = f"SELECT {select} FROM queries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = SORTS[f.sort]
    if f.reverse:
        order = ", ".join(_flip(term) for term in order.split(", "))
    sql += " ORDER BY " + order
    if f.limit:
        sql += f" LIMIT {int(f.limit)}"
    return sql, params
