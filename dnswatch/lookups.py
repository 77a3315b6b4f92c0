"""Lookups: the queries one resolver call made, grouped after correlation (schema.LOOKUPS documents the rule).

    correlate.Correlator --rows--> LookupStage --rows with lookup_id--> store / sinks
                                              \\--lookups rows (when a lookup ends)--> store.add_lookup

The stage holds each row for HOLD seconds (capture time in replay, wall clock live) so that the copy of a query
seen after DNAT (a service VIP rewritten to a server pod) can be merged into the client's row before either is
stored. Then the row joins a lookup of its client, or opens one, and goes on. A lookup's summary row is written
once it can gain no more queries. Memory is bounded: MAX_OPEN lookups, MAX_QUERIES rows each, MAX_HOLD rows held,
MAX_QUESTIONS recent questions remembered for hops.
"""
from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from dnswatch.correlate import (DEFAULT_TIMEOUT, I_ANCOUNT, I_ATTEMPTS, I_COMM, I_CONTAINER, I_ID,
                                I_DST, I_LATENCY, I_NETNS, I_PID, I_POD, I_POD_NS, I_PROTO, I_QNAME, I_QTYPE,
                                I_QTYPE_NUM, I_RCODE, I_RFLAGS, I_RTS, I_SPORT, I_SRC, I_STATUS, I_TS, Row)
from dnswatch.schema import Q

I_LOOKUP = Q["lookup_id"]
I_NAT_DST = Q["nat_dst"]
I_EXE = Q["exe"]
I_SERVER_POD = Q["server_pod"]
I_SERVER_POD_NS = Q["server_pod_namespace"]
# the response's columns, taken from the server-side copy when the client side saw no response
_RESPONSE_COLUMNS = [Q[c] for c in ("status", "rcode", "rcode_num", "answers", "ancount", "latency_ms", "response_ts",
                                    "first_attempt_latency_ms", "response_flags", "response_size")]

GAP = 1.0  # seconds: the next candidate or query of a lookup is sent within this of the last response
NAT_WINDOW = 0.05  # seconds between a query and its DNATed copy (microseconds in practice; as correlate's copies)
HOLD = 0.1  # seconds a row waits for its NAT copy before it goes on
MAX_OPEN = 50_000
MAX_PER_CLIENT = 4  # a client's most recent lookups that may still gain a query (older ones only wait to end)
MAX_QUERIES = 64  # rows of one lookup; the next one opens a new lookup
MAX_HOLD = 100_000
MAX_QUESTIONS = 100_000
ID_BASE = 10 ** 12  # lookup_id = capture_id * ID_BASE + n: unique in the log without asking it
_EMPTY_RCODES = ("NXDOMAIN", "NOERROR")
_RETRY_RCODES = (None, "SERVFAIL", "REFUSED")


class _Lookup:
    __slots__ = ("id", "client", "first", "ts", "activity", "last_response", "names", "order", "qtypes", "rows",
                 "prefix", "upstream", "nat_dst", "server_pod", "answered", "forwarded_for")

    def __init__(self, lookup_id: int, client: tuple, row: Row):
        self.id = lookup_id
        self.client = client
        self.first = row  # the client's columns come from its first row
        self.ts = row[I_TS]
        self.activity = row[I_TS]
        self.last_response: Optional[float] = None
        self.names: Dict[str, Dict[int, list]] = {}  # candidate (lower case) -> qtype -> its rows' states
        self.order: List[Tuple[float, str]] = []  # (first sent, candidate as sent)
        self.qtypes: List[str] = []
        self.rows: List[tuple] = []  # (ts, name lower, rcode, ancount, attempts, response_ts, tc)
        self.prefix: Optional[List[str]] = None  # the leading labels every candidate shares
        self.upstream: Optional[tuple] = None  # (lookup id, server, latency)
        self.nat_dst: Optional[str] = None
        self.server_pod: Optional[Tuple[Optional[str], Optional[str]]] = None
        self.answered = False  # a candidate came back NOERROR with records
        self.forwarded_for: Optional[int] = None  # a server's lookup: the client lookup it forwarded


def _labels(name: str) -> List[str]:
    return name.lower().split(".")


def _common(a: List[str], b: List[str]) -> List[str]:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


class LookupStage:
    def __init__(self, emit: Callable[[Row], None], capture_id: Optional[int] = None,
                 add_lookup: Optional[Callable[[list], None]] = None, timeout: float = DEFAULT_TIMEOUT,
                 live: bool = False):
        self.emit = emit
        self.capture_id = capture_id or 0
        self.add_lookup = add_lookup
        self.timeout = timeout
        self.live = live
        self.clock = float("-inf")
        self._n = 0
        self._held: Deque[list] = deque()  # [release time, row or None once merged into its client's copy]
        self._nat: Dict[tuple, list] = {}  # NAT key -> its held entry
        self._open: "OrderedDict[int, _Lookup]" = OrderedDict()  # oldest activity first
        self._by_client: Dict[tuple, List[_Lookup]] = {}
        self._questions: "OrderedDict[tuple, List[tuple]]" = OrderedDict()  # (name, qtype) -> recent rows, for hops
        self.lookups = 0
        self.nat_copies = 0
        self.hops = 0
        # live: (pod, namespace) holding an address, for the server side of a NAT copy seen on the node side only
        self.server_pod_of: Optional[Callable[[str], Tuple[Optional[str], Optional[str]]]] = None
        # addresses clients asked (learnt as rows arrive, before they are released): only a query from one of
        # them can be a server's upstream hop; a client asking a local server (loopback) makes any query one
        self._servers: Dict[str, bool] = {}
        self._local_server = False

    # -- rows in ---------------------------------------------------------------------------------
    def __call__(self, row: Row) -> None:
        t = row[I_RTS] or row[I_TS]
        if t is not None and t > self.clock:
            self.clock = t
        lower = (row[I_QNAME] or "").lower()
        dst = row[I_DST]
        if dst not in self._servers:
            if len(self._servers) >= MAX_QUESTIONS:
                self._servers.clear()
            self._servers[dst] = True
            if dst.startswith("127.") or dst == "::1":
                self._local_server = True
        key = (row[I_SRC], row[I_SPORT], row[I_PROTO], row[I_ID], lower, row[I_QTYPE_NUM])
        entry = self._nat.get(key)
        if entry is not None and entry[1] is not None:
            other = entry[1]
            if _nat_copies(other, row):
                self.nat_copies += 1
                client, server = (row, other) if _is_client_side(row, other) else (other, row)
                _merge_nat(client, server)
                if self.server_pod_of is not None:  # live: the pod holding the address (the copy may be the node's)
                    client[I_SERVER_POD], client[I_SERVER_POD_NS] = self.server_pod_of(client[I_NAT_DST])
                entry[1] = client
                return
        entry = [self.clock + HOLD, row, key, lower]
        self._nat[key] = entry
        held = self._held
        held.append(entry)
        if len(held) > MAX_HOLD:
            self._release_one()
        now = self.clock
        while held[0][0] <= now:
            self._release_one()
            if not held:
                break

    def advance(self, now: float) -> None:
        """Time passes (capture time in replay, wall clock live): release held rows, end quiet lookups."""
        if now > self.clock:
            self.clock = now
        self._release(self.clock)
        self._close(self.clock)

    def flush(self) -> None:
        """End of the capture: every row goes on, every lookup ends."""
        while self._held:
            self._release_one()
        while self._open:
            self._end(next(iter(self._open)))
        self._questions.clear()

    # -- holding -----------------------------------------------------------------------------------
    def _release(self, now: float) -> None:
        held = self._held
        while held and held[0][0] <= now:
            self._release_one()

    def _release_one(self) -> None:
        entry = self._held.popleft()
        row = entry[1]
        if row is None:
            return
        key = entry[2]
        if self._nat.get(key) is entry:
            del self._nat[key]
        self._group(row, entry[3])
        self.emit(row)

    # -- grouping ----------------------------------------------------------------------------------
    def _group(self, row: Row, lower: str) -> None:
        client = (row[I_NETNS], row[I_PID]) if row[I_PID] is not None else (row[I_NETNS], row[I_SRC])
        name = row[I_QNAME] or ""
        ts = row[I_TS]
        lookups = self._by_client.get(client)
        lookup = None
        if lookups:
            for candidate in reversed(lookups):
                if candidate.answered and lower not in candidate.names:
                    continue  # the usual case, decided without a call: an answered lookup takes no new name
                if self._accepts(candidate, row, lower, ts):
                    lookup = candidate
                    break
        if lookup is None:
            self._n += 1
            self.lookups += 1
            lookup = _Lookup(self.capture_id * ID_BASE + self._n, client, row)
            self._open[lookup.id] = lookup
            recent = self._by_client.setdefault(client, [])
            recent.append(lookup)
            if len(recent) > MAX_PER_CLIENT:
                del recent[0]
            if len(self._open) > MAX_OPEN:
                self._end(next(iter(self._open)))
        self._add(lookup, row, name, lower)
        row[I_LOOKUP] = lookup.id
        self._hop(row, lower, lookup)

    def _accepts(self, lookup: _Lookup, row: Row, lower: str, ts: float) -> bool:
        if len(lookup.rows) >= MAX_QUERIES or ts > lookup.activity + GAP or ts < lookup.ts - NAT_WINDOW:
            return False
        tried = lookup.names.get(lower)
        if tried is None and lookup.answered:
            return False  # answered: a lookup takes no further candidate
        if tried is not None:  # (a) the same candidate: another type, TCP after tc, or a retry after no answer
            states = tried.get(row[I_QTYPE_NUM])
            if states is None:
                # the other type of a pair: without a process (replay) only from the same socket, as glibc and
                # musl send it (dnsperf-like senders on one address ask A and AAAA of a name as separate lookups)
                return row[I_PID] is not None or row[I_SPORT] in tried[-1]
            last = states[-1]  # (rcode, tc, proto)
            if last[1] and row[I_PROTO] == "tcp" and last[2] != "tcp":
                return True
            return last[0] in _RETRY_RCODES and row[I_STATUS] != "query_only"
        # (b) the next search-path candidate: every earlier one came back empty, this one sent after that
        for r in lookup.rows:
            if r[2] is None and r[5] is None and row[I_STATUS] != "query_only":
                return False  # still waiting for an earlier candidate: not a sequential search
            if r[2] not in _EMPTY_RCODES and r[2] is not None:
                return False
            if r[2] == "NOERROR" and r[3]:
                return False  # answered: the lookup is done
        if lookup.last_response is not None and ts < lookup.last_response - 0.001:
            return False
        prefix = _common(lookup.prefix or _labels(lookup.order[0][1]), _labels(lower))
        if not prefix or prefix == [""]:
            return False
        return True

    def _add(self, lookup: _Lookup, row: Row, name: str, lower: str) -> None:
        ts, rts, rcode = row[I_TS], row[I_RTS], row[I_RCODE]
        tc = "tc" in (row[I_RFLAGS] or "").split()
        per_type = lookup.names.get(lower)
        if per_type is None:
            per_type = lookup.names[lower] = {-1: set()}  # -1 (no qtype): the client ports that asked this name
            lookup.order.append((ts, name))
            if lookup.order[1:]:  # a second candidate: the labels they share (one candidate needs none)
                lookup.prefix = _common(lookup.prefix or _labels(lookup.order[0][1]), _labels(lower))
        per_type.setdefault(row[I_QTYPE_NUM], []).append((rcode, tc, row[I_PROTO]))
        per_type[-1].add(row[I_SPORT])
        if row[I_QTYPE] not in lookup.qtypes:
            lookup.qtypes.append(row[I_QTYPE])
        lookup.rows.append((ts, lower, rcode, row[I_ANCOUNT], row[I_ATTEMPTS] or 0, rts, tc))
        if rcode == "NOERROR" and row[I_ANCOUNT]:
            lookup.answered = True
        if ts < lookup.ts:
            lookup.ts = ts
        activity = rts if rts is not None else ts + (self.timeout if row[I_STATUS] == "unanswered" else 0.0)
        if rts is not None and (lookup.last_response is None or rts > lookup.last_response):
            lookup.last_response = rts
        if activity > lookup.activity:
            lookup.activity = activity
        if row[I_NAT_DST] is not None and lookup.nat_dst is None:
            lookup.nat_dst = row[I_NAT_DST]
            lookup.server_pod = (row[I_SERVER_POD], row[I_SERVER_POD_NS])
        self._open.move_to_end(lookup.id)

    # -- hops --------------------------------------------------------------------------------------
    def _hop(self, row: Row, lower: str, lookup: _Lookup) -> None:
        """Link a client's query and the server's query for the same question sent while the client waited.

        Recent queries are indexed by (question, address): as a possible upstream query by their source, as a
        client's by the server they asked (dst, nat_dst, or "lo" for a local server), so only queries that could
        be each other's hop are compared."""
        qtype = row[I_QTYPE_NUM]
        src, dst, nat, rts = row[I_SRC], row[I_DST], row[I_NAT_DST], row[I_RTS]
        mine = (row[I_TS], rts, src, dst, nat, row[I_LATENCY], lookup)
        questions = self._questions
        get = questions.get
        served = (dst,) if nat is None else (dst, nat)
        if dst.startswith("127.") or dst == "::1":
            served += ("lo",)
        upstream = self._local_server or src in self._servers or (nat is not None and nat in self._servers)
        keys = [(lower, qtype, "up", src)] if upstream else []
        if rts is not None:  # as a client (only an answered query can have had a hop while it waited)
            for address in served:
                key = (lower, qtype, "client", address)
                keys.append(key)
                for other in get((lower, qtype, "up", address), ()):
                    if _is_upstream(other, mine):
                        self._link(lookup, other)
        # as an upstream query: the clients that asked this one's source (or a local server)
        if upstream:
            for address in (src, "lo"):
                for other in get((lower, qtype, "client", address), ()):
                    if _is_upstream(mine, other):
                        self._link(other[6], mine)
        for key in keys:
            seen = get(key)
            if seen is None:
                questions[key] = [mine]
            else:
                questions.move_to_end(key)
                seen.append(mine)
                if len(seen) > 4:
                    del seen[0]
        if len(questions) > MAX_QUESTIONS:
            while len(questions) > MAX_QUESTIONS:
                questions.popitem(last=False)

    def _link(self, client: _Lookup, upstream: tuple) -> None:
        if client is upstream[6] or client.id not in self._open:
            return
        if client.upstream is None:
            self.hops += 1
        client.upstream = (upstream[6].id, upstream[3], upstream[5])
        upstream[6].forwarded_for = client.id

    # -- ending ------------------------------------------------------------------------------------
    def _close(self, now: float) -> None:
        limit = now - self.timeout - GAP
        while self._open:
            lookup = next(iter(self._open.values()))
            if lookup.activity > limit:
                break
            self._end(lookup.id)
        cutoff = now - self.timeout - GAP
        questions = self._questions
        while questions:
            key, rows = next(iter(questions.items()))
            if rows[-1][0] > cutoff:
                break
            del questions[key]

    def _end(self, lookup_id: int) -> None:
        lookup = self._open.pop(lookup_id)
        same = self._by_client.get(lookup.client)
        if same is not None and lookup in same:
            same.remove(lookup)
            if not same:
                del self._by_client[lookup.client]
        if self.add_lookup is not None:
            self.add_lookup(lookup_row(lookup, self.capture_id))


def lookup_row(lookup: _Lookup, capture_id: Optional[int]) -> list:
    """The lookups row (schema.LOOKUP_COLUMNS order) of a lookup that ended."""
    first = lookup.first
    upstream = lookup.upstream or (None, None, None)
    server_pod = lookup.server_pod or (None, None)
    if len(lookup.rows) == 1:  # most lookups: one query (a name asked in full, one type)
        ts, lower, rcode, ancount, attempts, rts, tc = lookup.rows[0]
        name = lookup.order[0][1]
        wasted = 0
        return [
            lookup.id, capture_id, ts, rts if rts is not None else ts, first[I_SRC], first[I_DST], lookup.nat_dst,
            first[I_PID], first[I_COMM], first[I_EXE], first[I_NETNS], first[I_POD], first[I_POD_NS],
            first[I_CONTAINER], server_pod[0], server_pod[1], name, _json_name(name), _json_types(lookup.qtypes),
            name if rcode == "NOERROR" and ancount else None, rcode, attempts, wasted, int(tc),
            round((rts - ts) * 1000.0, 3) if rts is not None else None, upstream[0], upstream[1], upstream[2],
            lookup.forwarded_for,
        ]
    order = sorted(lookup.order)
    candidates = [name for _ts, name in order]
    rows = sorted(lookup.rows)
    answered = None
    for ts, lower, rcode, ancount, _attempts, rts, tc in rows:
        if rcode == "NOERROR" and ancount:
            answered = lower
            break
    final = answered if answered is not None else (order[-1][1].lower() if order else None)
    rcode = None
    for ts, lower, rc, ancount, _attempts, rts, tc in rows:
        if lower == final and rc is not None and not tc:
            if answered is None or (rc == "NOERROR" and ancount) or rcode is None:
                rcode = rc
                if answered is not None and rc == "NOERROR" and ancount:
                    break
    if rcode is None:  # only a truncated answer came back
        rcode = next((rc for _t, lower, rc, *_rest in rows if lower == final and rc is not None), None)
    queries = sum(r[4] for r in rows)
    wasted = sum(r[4] for r in rows if r[1] != final and (r[2] == "NXDOMAIN" or (r[2] == "NOERROR" and not r[3])))
    responses = [r[5] for r in rows if r[5] is not None]
    end = max(responses) if responses else max(r[0] for r in rows)
    total = round((end - lookup.ts) * 1000.0, 3) if responses else None
    if len(candidates) > 1 and lookup.prefix:
        n = len(lookup.prefix)
        asked = ".".join(candidates[0].split(".")[:n])
        shortest = min(candidates, key=len)
        if shortest.lower() == asked.lower():
            asked = shortest
    else:
        asked = candidates[0] if candidates else None
    answered_name = next((name for name in candidates if name.lower() == answered), None)
    return [
        lookup.id, capture_id, lookup.ts, end, first[I_SRC], first[I_DST], lookup.nat_dst, first[I_PID],
        first[I_COMM], first[I_EXE], first[I_NETNS], first[I_POD], first[I_POD_NS], first[I_CONTAINER],
        server_pod[0], server_pod[1], asked, json.dumps(candidates), _json_types(lookup.qtypes), answered_name, rcode,
        queries, wasted, int(any(r[6] for r in rows)), total, upstream[0], upstream[1], upstream[2],
        lookup.forwarded_for,
    ]


def _nat_copies(a: Row, b: Row) -> bool:
    """Are ``a`` and ``b`` (same client address and port, id and question) one query seen before and after DNAT?
    Both are queries (a response from another address is a spoof or a stray, not a copy), to other addresses,
    within NAT_WINDOW; live, seen in two network namespaces (one process sending to two servers at once, as
    dnsmasq --all-servers does, sends from one)."""
    if a[I_DST] == b[I_DST] or not a[I_ATTEMPTS] or not b[I_ATTEMPTS] or abs(a[I_TS] - b[I_TS]) > NAT_WINDOW:
        return False
    return a[I_NETNS] is None or b[I_NETNS] is None or a[I_NETNS] != b[I_NETNS]


_TYPES_JSON: Dict[tuple, str] = {}


def _json_types(qtypes: List[str]) -> str:
    key = tuple(qtypes)
    text = _TYPES_JSON.get(key)
    if text is None:
        text = json.dumps(qtypes)
        if len(_TYPES_JSON) < 1024:
            _TYPES_JSON[key] = text
    return text


def _json_name(name: str) -> str:
    """json.dumps([name]) for a qname (presentation form: printable ASCII), without the encoder's cost."""
    if '"' in name or "\\" in name or not name.isascii() or not name.isprintable():
        return json.dumps([name])
    return '["' + name + '"]'


def _is_client_side(a: Row, b: Row) -> bool:
    """Of two NAT copies, is ``a`` the client's (the one sent by a known process, else the one seen first)?"""
    if (a[I_PID] is None) != (b[I_PID] is None):
        return a[I_PID] is not None
    return a[I_TS] <= b[I_TS]


def _merge_nat(client: Row, server: Row) -> None:
    client[I_NAT_DST] = server[I_DST]
    client[I_SERVER_POD] = server[I_POD]
    client[I_SERVER_POD_NS] = server[I_POD_NS]
    if client[I_STATUS] != "answered" and server[I_STATUS] == "answered":
        for i in _RESPONSE_COLUMNS:
            client[i] = server[i]


def _is_upstream(up: tuple, client: tuple) -> bool:
    """Is the query ``up`` (ts, response_ts, src, dst, nat_dst, latency, lookup) a hop of ``client``'s: sent while
    the client waited, from the address the client asked (or reached through NAT), or by a local server?"""
    ts, _rts, src, dst, _nat, _lat, _lookup = up
    cts, crts, csrc, cdst, cnat, _clat, _clookup = client
    if crts is None or not (cts <= ts <= crts) or src == csrc or dst == cdst:
        return False
    return src == cdst or src == cnat or _loopback(cdst)


def _loopback(address: Optional[str]) -> bool:
    return bool(address) and (address.startswith("127.") or address == "::1")


def top_lookups(db, by: str = "pod", limit: int = 10, since: Optional[float] = None) -> List[dict]:
    """Clients ranked by the queries their search paths wasted (``top --by lookup``; README's query)."""
    group = {"pod": "coalesce(pod_namespace || '/' || pod, comm, src)", "client": "coalesce(comm, src)",
             "name": "asked_name"}[by]
    where = "WHERE forwarded_for IS NULL" + (" AND ts >= ?" if since is not None else "")
    sql = (f"SELECT {group} AS client, count(*) AS lookups, sum(queries) AS queries, sum(wasted) AS wasted, "
           "round(100.0 * sum(wasted) / max(sum(queries), 1), 1) AS wasted_pct, "
           "round(avg(total_ms), 3) AS avg_total_ms, max(total_ms) AS max_total_ms, "
           f"sum(answered_name IS NULL) AS unresolved FROM lookups {where} GROUP BY 1 "
           "ORDER BY wasted DESC, queries DESC LIMIT ?")
    params = ([since] if since is not None else []) + [limit]
    cursor = db.execute(sql, params)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, r)) for r in cursor]


LOOKUP_SEARCH_COLUMNS = ["ts_utc", "lookup_id", "src", "pid", "comm", "pod_namespace", "pod", "asked_name",
                         "candidates", "answered_name", "rcode", "queries", "wasted", "total_ms", "nat_dst",
                         "server_pod", "upstream_server", "upstream_latency_ms"]


def build_lookup_search(f, min_wasted: Optional[int] = None, now: Optional[float] = None) -> Tuple[str, List[object]]:
    """``search --lookups``: the filters of a search.SearchFilters that apply to lookups, newest first. A lookup a
    server made to forward a client's question (a hop) is left out: it shows as its client's upstream_*."""
    from dnswatch.search import SearchError, parse_time

    where = ["forwarded_for IS NULL"]
    params: List[object] = []
    if f.name:
        if any(ch in f.name for ch in "*?["):
            where.append("(lower(asked_name) GLOB ? OR lower(answered_name) GLOB ?)")
            params += [f.name.lower()] * 2
        else:
            escaped = f.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("candidates LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
    for column, values, upper in (("rcode", f.rcodes, True), ("pid", f.pids, False), ("comm", f.comms, False),
                                  ("pod", f.pods, False), ("pod_namespace", f.pod_namespaces, False),
                                  ("container", f.containers, False)):
        if values:
            vals = [str(v).upper() if upper else v for v in values]
            where.append(f"{column} IN ({', '.join('?' for _ in vals)})")
            params += vals
    if f.src:
        where.append("src = ?")
        params.append(f.src)
    if f.since:
        where.append("ts >= ?")
        params.append(parse_time(f.since, now))
    if f.until:
        where.append("ts <= ?")
        params.append(parse_time(f.until, now))
    if min_wasted is not None:
        where.append("wasted >= ?")
        params.append(min_wasted)
    if f.limit < 0:
        raise SearchError("--limit must be 0 (no limit) or more")
    select = ", ".join("strftime('%Y-%m-%dT%H:%M:%fZ', ts, 'unixepoch') AS ts_utc" if c == "ts_utc" else f"[{c}]"
                       for c in (f.columns or LOOKUP_SEARCH_COLUMNS))
    sql = f"SELECT {select} FROM lookups WHERE " + " AND ".join(where) + " ORDER BY ts DESC, lookup_id DESC"
    if f.limit:
        sql += f" LIMIT {int(f.limit)}"
    return sql, params
