"""Common questions without SQL: ``dnswatch search`` filters turned into one parameterised query."""
from __future__ import annotations

import heapq
import ipaddress
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import List, Optional, Sequence, Tuple

from dnswatch.model import ipv6_text
from dnswatch.schema import COMBOS, LOG_TABLE, QUERIES, column_expr, reverse_name

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


MAX_SECONDS = 253402300799.0  # 9999-12-31T23:59:59Z, as far as an ISO date goes (and -MAX: before year 1)


def parse_time(text: str, now: Optional[float] = None) -> float:
    """``10m``/``2h``/``1d`` ago, Unix seconds, or an ISO date/time (UTC unless it has an offset)."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text)
    value: Optional[float] = None
    if m:
        value = now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        try:
            value = float(text)
        except ValueError:
            pass
    if value is not None:
        if not -MAX_SECONDS <= value <= MAX_SECONDS:  # nan and inf too: they would match nothing, or break top
            raise SearchError(f"time {text!r} is out of range: give one between the years 1 and 9999")
        return value
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
    contains: bool = False  # name is a substring (a scan of the distinct names), not a domain
    sort: str = "ts"
    reverse: bool = False


# over query_log l: latency and name through the view's column expressions (schema.column_expr)
SORTS = {"ts": "l.ts DESC, l.id DESC", "latency": "latency IS NULL, latency DESC, l.id DESC",
         "name": "name ASC, l.ts DESC, l.id DESC"}
SORT_HELP = "ts (newest first), latency (slowest first), name (A to Z)"


def known_qtypes() -> List[str]:
    from dnslib import QTYPE

    return sorted(set(QTYPE.forward.values()))


def known_rcodes() -> List[str]:
    from dnswatch.dns import rcode_text

    return [t for t in (rcode_text(n) for n in range(24)) if not t.startswith("RCODE")]


def check_mnemonics(option: str, values: Sequence[str], known: Sequence[str], numbered: str) -> List[str]:
    """Upper-cased ``values``; an unknown one is an error listing the valid ones. TYPE65535 style is valid too,
    and becomes the mnemonic rows store for a known number (TYPE1 is A)."""
    from dnswatch.dns import qtype_text, rcode_text

    out, known_set = [], set(known)
    text, highest = (qtype_text, 65535) if numbered == "TYPE" else (rcode_text, 4095)  # 16 bits; 12 with EDNS
    for v in values:
        u = v.strip().upper()
        number = re.fullmatch(numbered + r"(\d{1,5})", u)
        if u not in known_set and number is None:
            raise SearchError(f"{option} {v}: unknown; use one of {', '.join(known)} (or {numbered}<number>)")
        if number is not None:
            if int(number.group(1)) > highest:
                raise SearchError(f"{option} {v}: out of range; {numbered}0 to {numbered}{highest}")
            u = text(int(number.group(1)))
        out.append(u)
    return out


def address_condition(option: str, column: str, text: str) -> Tuple[str, List[object]]:
    """``--src``/``--dst``: one address in any spelling (IPv6 compressed or not), or a CIDR prefix.
    Stored addresses are in one form (model.ipv6_text's), so one address is an index-friendly equality."""
    try:
        if "/" in text:
            net = ipaddress.ip_network(text.strip(), strict=False)
        else:
            return _in(column, [address_text(text)])
    except ValueError:
        raise SearchError(f"{option} {text}: not an address or prefix (198.18.0.1, 2001:db8::1, 198.18.0.0/15, fd00::/8)")
    if net.prefixlen == net.max_prefixlen:
        return _in(column, [str(net.network_address)])
    return f"dnswatch_in_net({column_expr(_COLUMNS[column])}, ?)", [str(net)]


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
_COLUMNS = {c.name: c for c in QUERIES.columns}


def _strings_in(column: str, values: Sequence[object]) -> Tuple[str, List[object]]:
    """``column`` (a strings id in query_log) is one of ``values``: a lookup in strings, then the log's index."""
    marks = ", ".join("?" for _ in values)
    return f"l.{column} IN (SELECT id FROM strings WHERE s IN ({marks}))", [str(v) for v in values]


def _range(prefix: str) -> Tuple[str, str]:
    """Bounds of the index range of texts starting with ``prefix`` (which ends with '.'; '/' follows '.')."""
    return prefix, prefix[:-1] + "/"


def _utf8(text: str, option: str) -> bytes:
    """The bytes a user typed: the shell passes bytes that are not UTF-8 as lone surrogates (surrogateescape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise SearchError(f"{option} {text.encode('utf-8', 'backslashreplace').decode()}: not text")


def presentation(text: str, option: str = "NAME") -> str:
    """A name as typed in the form names are stored in (dns.label_text): bytes outside printable ASCII as \\DDD,
    so 'café' finds caf\\195\\169, 'a b' finds a\\032b and bytes that are not UTF-8 find theirs. Escapes already
    typed (\\DDD, \\., \\\\) stay as they are."""
    if all("!" <= ch <= "~" for ch in text):
        return text
    return "".join(chr(b) if 0x21 <= b <= 0x7E else "\\%03d" % b for b in _utf8(text, option))


def as_decoded(text: str, option: str) -> str:
    """A process, pod or container name as typed, as dnswatch decoded it (bytes that are not UTF-8 become U+FFFD)."""
    return _utf8(text, option).decode("utf-8", "replace")


def address_text(text: str) -> str:
    """An address in any spelling as the log stores it (IPv6 as model.ipv6_text writes it). Raises ValueError."""
    ip = ipaddress.ip_address(text.strip())
    return ipv6_text(ip.packed) if ip.version == 6 else str(ip)


def answer_value(text: str) -> str:
    """``--answer`` as answers are stored: an address in the stored form, whatever its spelling; a name in
    presentation form."""
    try:
        return address_text(text)
    except ValueError:
        return presentation(text, "--answer")


_GLOB_ESCAPES = {"*": "[*]", "?": "[?]", "[": "[[]", "]": "]"}


def _glob(pattern: str) -> Tuple[str, Optional[str]]:
    """(GLOB pattern, None) for a pattern with wildcards, or (_, the literal name) when it has none: '\\*', '\\?',
    '\\[' and '\\]' are those characters themselves (a stored name never escapes them, so they never clash)."""
    out, literal, wild, i = [], [], False, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in _GLOB_ESCAPES:
                out.append(_GLOB_ESCAPES[nxt])
                literal.append(nxt)
            else:
                out.append(ch + nxt)
                literal.append(ch + nxt)
            i += 2
            continue
        wild = wild or ch in "*?["
        out.append(ch)
        literal.append(ch)
        i += 1
    return "".join(out), None if wild else "".join(literal)


def name_condition(name: str, contains: bool = False) -> Tuple[str, List[object]]:
    """Names matching ``name``, as a condition on query_log ``l``; case-insensitive.

    Plain text: that domain and every name under it, one range of the names_rname index. A glob (* ? [) matches
    the whole name; the complete labels after its last wildcard bound an index range too ('*.example.com' reads
    only names under example.com). ``contains``: a substring anywhere, which reads every distinct name."""
    pattern = presentation(name).lower().rstrip(".") or "."
    if contains:
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "l.qname IN (SELECT id FROM names WHERE name LIKE ? ESCAPE '\\')", [f"%{escaped}%"]
    glob, literal = _glob(pattern)
    if literal is None:
        pattern = glob
        last = max(pattern.rfind(ch) for ch in "*?[]")
        suffix = pattern[last + 1:]
        dot = suffix.find(".")
        cond, params = "lower(name) GLOB ?", [pattern]
        if dot >= 0 and suffix[dot + 1:]:
            low, high = _range(reverse_name(suffix[dot + 1:]) + ".")
            cond, params = "rname >= ? AND rname < ? AND " + cond, [low, high, pattern]
        return f"l.qname IN (SELECT id FROM names WHERE {cond})", params
    pattern = literal
    if pattern == ".":
        return "l.qname IN (SELECT id FROM names WHERE rname = '')", []
    r = reverse_name(pattern)
    low, high = _range(r + ".")
    # rname splits at every '.', escaped ones too: 'a\\.b.example.test' (one label 'a.b') is in the range of
    # b.example.test. Such a name's text before '.b.example.test' ends in an odd run of backslashes: not under it.
    head = "substr(name, 1, length(name) - ?)"
    under = f"(length({head}) - length(rtrim({head}, '\\'))) % 2 = 0"
    cut = len(pattern) + 1
    return (f"l.qname IN (SELECT id FROM names WHERE rname = ? OR (rname >= ? AND rname < ? AND {under}))",
            [r, low, high, cut, cut])


def _in(column: str, values: Sequence[object], upper: bool = False) -> Tuple[str, List[object]]:
    vals = [str(v).upper() if upper else v for v in values]
    store = _COLUMNS[column].store
    if store == "str":
        return _strings_in(column, vals)
    if store in COMBOS:
        return (f"l.{store} IN (SELECT id FROM {COMBOS[store].name} WHERE [{column}] IN "
                f"({', '.join('?' for _ in vals)}))", vals)
    return f"l.{column} IN ({', '.join('?' for _ in vals)})", list(vals)


def _output(columns: Sequence[str]) -> str:
    return ", ".join(
        "strftime('%Y-%m-%dT%H:%M:%fZ', l.ts, 'unixepoch') AS ts_utc" if c == "ts_utc"
        else f"{column_expr(_COLUMNS[c])} AS [{c}]" for c in columns
    )


class Plan:
    """A search as SQL: ``where`` (conditions on query_log ``l``) with ``params``; ``driver``: the indexed column
    (qname or sender) whose allowed ids ``driver_sql`` lists, so each id can be read newest first from its index."""

    def __init__(self) -> None:
        self.where: List[str] = []
        self.params: List[object] = []
        self.driver: Optional[str] = None
        self.driver_sql = ""
        self.driver_params: List[object] = []
        self.sender: List[str] = []  # conditions on senders (pid, comm, pod...)
        self.sender_params: List[object] = []


def plan_search(f: SearchFilters, now: Optional[float] = None) -> Plan:
    p = Plan()

    def add(cond: Tuple[str, List[object]]) -> None:
        p.where.append(cond[0])
        p.params.extend(cond[1])

    def sender(column: str, values: Sequence[object], glob: bool = False) -> None:
        if glob:
            p.sender.append(f"[{column}] GLOB ?")
            p.sender_params.append(values[0])
        else:
            p.sender.append(f"[{column}] IN ({', '.join('?' for _ in values)})")
            p.sender_params.extend(values)

    if f.name:
        cond, params = name_condition(f.name, f.contains)
        p.driver, p.driver_sql, p.driver_params = "qname", cond[len("l.qname IN ("):-1], params
    if f.types:
        add(_in("qtype", check_mnemonics("--type", f.types, known_qtypes(), "TYPE")))
    if f.rcodes:
        add(_in("rcode", check_mnemonics("--rcode", f.rcodes, known_rcodes(), "RCODE")))
    if f.src:
        add(address_condition("--src", "src", f.src))
    if f.dst:
        add(address_condition("--dst", "dst", f.dst))
    if f.pids:
        sender("pid", list(f.pids))
    if f.comms:
        sender("comm", [as_decoded(v, "--comm") for v in f.comms])
    if f.pods:
        pods = [as_decoded(v, "--pod") for v in f.pods]
        sender("pod", pods, glob=len(pods) == 1 and any(ch in pods[0] for ch in "*?["))
    if f.pod_namespaces:
        sender("pod_namespace", [as_decoded(v, "--pod-namespace") for v in f.pod_namespaces])
    if f.containers:
        p.sender.append("(" + " OR ".join("container = ? OR container_id LIKE ?" for _ in f.containers) + ")")
        containers = [as_decoded(c, "--container") for c in f.containers]
        p.sender_params.extend(v for c in containers for v in (c, c + "%"))
    if p.sender:
        sql = f"SELECT id FROM senders WHERE {' AND '.join(p.sender)}"
        if p.driver is None:
            p.driver, p.driver_sql, p.driver_params = "sender", sql, list(p.sender_params)
        else:
            add((f"l.sender IN ({sql})", list(p.sender_params)))
    if f.answer:
        answer = answer_value(f.answer)
        add(("l.answers IN (SELECT set_id FROM answer_items WHERE data = ?)", [answer]))
        if p.driver is None:
            p.driver, p.driver_sql = "qname", "SELECT DISTINCT qname FROM answer_items WHERE data = ?"
            p.driver_params = [answer]
    if f.status:
        add(_in("status", [f.status]))
    since = parse_time(f.since, now) if f.since else None
    until = parse_time(f.until, now) if f.until else None
    check_window(since, until, f.since, f.until)
    if since is not None:
        add(("l.ts >= ?", [since]))
    if until is not None:
        add(("l.ts <= ?", [until]))
    if f.sort not in SORTS:
        raise SearchError(f"--sort {f.sort}: use {SORT_HELP}")
    if f.limit < 0:
        raise SearchError("--limit must be 0 (no limit) or more")
    return p


_INDEX = {"qname": "log_qname", "sender": "log_sender"}
MERGE_MAX = 512  # driver ids read one by one at most; more (a search for 'com') go through one query


def build_search(f: SearchFilters, now: Optional[float] = None) -> Tuple[str, List[object]]:
    """The search as one query over query_log (columns as the queries view shows them), newest first."""
    p = plan_search(f, now)
    where, params = list(p.where), list(p.params)
    if p.driver:
        where.insert(0, f"l.{p.driver} IN ({p.driver_sql})")
        params[:0] = p.driver_params
    sql = f"SELECT {_output(f.columns or DEFAULT_COLUMNS)} FROM {LOG_TABLE} l"
    if p.driver:
        sql += f" INDEXED BY {_INDEX[p.driver]}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = SORTS[f.sort]
    if f.reverse:
        order = ", ".join(_flip(term) for term in order.split(", "))
    sql += " ORDER BY " + order.replace("latency", f"({column_expr(_COLUMNS['latency_ms'])})", 2).replace(
        "name ASC", f"{column_expr(_COLUMNS['qname'])} ASC").replace("name DESC", f"{column_expr(_COLUMNS['qname'])} DESC")
    if f.limit:
        sql += f" LIMIT {int(f.limit)}"
    return sql, params


def run_search(conn, f: SearchFilters, now: Optional[float] = None) -> Tuple[List[str], List[tuple]]:
    """Run a search: (column names, rows), newest first.

    With a name or sender filter and a limit, each matching name or sender is read newest first from its index
    (a few rows each) and the lists merged, so a domain with hundreds of names under it, or a pod with many
    processes, costs a few index ranges rather than reading and sorting every matching row."""
    columns = list(f.columns or DEFAULT_COLUMNS)
    p = plan_search(f, now)
    ids = None
    if p.driver and f.limit and f.sort == "ts" and not f.reverse:  # the newest-first merge below
        ids = [r[0] for r in conn.execute(p.driver_sql + f" LIMIT {MERGE_MAX + 1}", p.driver_params)]
    if ids is None or len(ids) > MERGE_MAX:
        sql, params = build_search(f, now)
        return columns, conn.execute(sql, params).fetchall()
    rest = "".join(f" AND {w}" for w in p.where)
    probe = (f"SELECT l.ts, l.id FROM {LOG_TABLE} l INDEXED BY {_INDEX[p.driver]} WHERE l.{p.driver} = ?{rest} "
             f"ORDER BY l.ts DESC, l.id DESC LIMIT {int(f.limit)}")
    keys: List[Tuple[float, int]] = []
    for i in ids:
        keys.extend(conn.execute(probe, [i, *p.params]).fetchall())
    keys = heapq.nlargest(int(f.limit), keys)
    fetch = f"SELECT {_output(columns)} FROM {LOG_TABLE} l WHERE l.ts = ? AND l.id = ?"
    return columns, [conn.execute(fetch, k).fetchone() for k in keys]


def build_passive(f: SearchFilters, oldest_raw: Optional[float], now: Optional[float] = None
                  ) -> Optional[Tuple[str, List[object]]]:
    """``--answer`` for the time raw rows no longer cover (pruned): passive DNS entries first seen before the
    oldest raw row, as rows with status 'passive_dns' (ts = first seen; pid, comm, pod: who first resolved it)."""
    if not f.answer:
        return None
    since = parse_time(f.since, now) if f.since else None
    until = parse_time(f.until, now) if f.until else None
    cond = ["data = ?"]
    params: List[object] = [answer_value(f.answer)]
    if oldest_raw is not None:
        cond.append("first_seen < ?")
        params.append(oldest_raw)
    if since is not None:
        cond.append("last_seen >= ?")
        params.append(since)
    if until is not None:
        cond.append("first_seen <= ?")
        params.append(until)
    values = {
        "ts_utc": "strftime('%Y-%m-%dT%H:%M:%fZ', first_seen, 'unixepoch')", "ts": "first_seen",
        "qname": "first_qname", "qtype": "type", "status": "'passive_dns'", "src": "first_src",
        "answers": "json_array(json_object('name', name, 'type', type, 'data', data))",
        "pid": "first_pid", "comm": "first_comm", "pod_namespace": "first_pod_namespace", "pod": "first_pod",
    }
    select = ", ".join(f"{values.get(c, 'NULL')} AS [{c}]" for c in (f.columns or DEFAULT_COLUMNS))
    sql = f"SELECT {select} FROM passive_dns WHERE {' AND '.join(cond)} ORDER BY last_seen DESC"
    if f.limit:
        sql += f" LIMIT {int(f.limit)}"
    return sql, params
