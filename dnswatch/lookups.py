"""Lookups: the queries one resolver call made, grouped after correlation (schema.LOOKUPS documents the rule).

    correlate.Correlator --rows--> LookupStage --rows with lookup_id--> store / sinks
                                              \\--lookups rows (when a lookup ends)--> store.add_lookup, on_lookup

A lookup of one query with no hop (most of them) is not written: the log's lookups view reads it from its
queries row. ``on_lookup`` (live top) gets every lookup's row.

The correlator appends its rows to the stage (``take``: a list's append, no call of ours per row); the stage
looks at them in batches, when the pipeline advances its clock (every chunk of frames, every live poll and tick).
Each row waits HOLD seconds (capture time in replay, wall clock live) so that the copy of a query seen after DNAT
(a service VIP rewritten to a server pod) can be merged into the client's row before either is stored. Then the
row joins a lookup of its client, or opens one, and goes on. A lookup's summary row is written once it can gain
no more queries.

Memory is bounded in bytes (issue 8): held rows by MAX_HOLD_BYTES (what their answers take, plus ROW_BYTES each),
open lookups by MAX_OPEN_BYTES (LOOKUP_BYTES each plus their candidate names), the hop index by MAX_QUESTIONS
entries of at most QUESTION_BYTES. What a bound gives up is counted (``bounded``): rows let go before HOLD (a NAT
copy arriving after could not merge), lookups ended early (a later candidate opens a new lookup), questions
forgotten (a hop arriving after is not linked).
"""
from __future__ import annotations

import json
from collections import deque
from itertools import islice
from operator import itemgetter
from typing import Callable, Deque, Dict, List, Optional, Tuple

from dnswatch.correlate import (DEFAULT_TIMEOUT, I_ANCOUNT, I_ANSWERS, I_ATTEMPTS, I_COMM, I_CONTAINER, I_ID,
                                I_DST, I_LATENCY, I_NETNS, I_PID, I_POD, I_POD_NS, I_PROTO, I_QNAME, I_QTYPE,
                                I_QTYPE_NUM, I_RCODE, I_RFLAGS, I_RTS, I_SPORT, I_SRC, I_STATUS, I_TS, Row, ms3)
from dnswatch.schema import Q

I_LOOKUP = Q["lookup_id"]
I_NAT_DST = Q["nat_dst"]
I_EXE = Q["exe"]
I_SERVER_POD = Q["server_pod"]
I_SERVER_POD_NS = Q["server_pod_namespace"]
# what a lookups row takes from its first query: src dst pid comm exe netns pod pod_namespace container
_BY_TS = itemgetter(0)
# the response's columns, taken from the server-side copy when the client side saw no response
_RESPONSE_COLUMNS = [Q[c] for c in ("status", "rcode", "rcode_num", "answers", "ancount", "latency_ms", "response_ts",
                                    "first_attempt_latency_ms", "response_flags", "response_size")]

GAP = 1.0  # seconds: the next candidate or query of a lookup is sent within this of the last response
# live without responses (watch without --responses): the next candidate follows the unseen response, so within
# the server's latency of the last query; a shorter window keeps fewer lookups open at a high rate
QUERIES_ONLY_GAP = 0.25
NAT_WINDOW = 0.05  # seconds between a query and its DNATed copy (microseconds in practice; as correlate's copies)
HOLD = 0.1  # seconds a row waits for its NAT copy before it goes on (replay: capture time)
HOLD_LIVE = 0.05  # live: both copies' responses reach us within microseconds; what JSON/metrics lines wait
MAX_PER_CLIENT = 4  # a client's most recent lookups that may still gain a query (older ones only wait to end)
MAX_QUERIES = 64  # rows of one lookup; the next one opens a new lookup
# memory bounds, in bytes: a row held is its list (~45 slots) and strings, ~ROW_BYTES plus its answers; an open
# lookup is its object, dicts and lists, ~LOOKUP_BYTES, plus QUERY_BYTES and the name for each query it took
ROW_BYTES = 1_000
LOOKUP_BYTES = 700
QUERY_BYTES = 250  # plus twice its name (as sent, lower case)
MAX_HOLD_BYTES = 8 << 20
MAX_OPEN_BYTES = 16 << 20
MAX_LOWERS = 1_024  # names remembered in lower case (at most ~0.6 MB)
MAX_QUESTIONS = 4_000  # hop index keys, each at most QUESTION_BYTES: (name <= 255, type, role, address) and 4 entries
QUESTION_BYTES = 1_200
ID_BASE = 10 ** 12  # lookup_id = capture_id * ID_BASE + n: unique in the log without asking it
_EMPTY_RCODES = ("NXDOMAIN", "NOERROR")
_RETRY_RCODES = (None, "SERVFAIL", "REFUSED")


class _Lookup:
    """An open lookup. Kept small (an object, a list of its queries' states, a tuple of the client's columns): at
    40k queries a second a few seconds of them are open."""
    __slots__ = ("id", "client", "cols", "lower", "names", "ts", "born", "activity", "last_response", "rows",
                 "prefix", "upstream", "nat_dst", "server_pod", "answered", "forwarded_for", "open", "listed", "bytes")

    def __init__(self, lookup_id: int, client: object, row: Row, lower: str, timeout: float):
        """A lookup opened by ``row`` (LookupStage._add adds the next ones)."""
        _open_lookup(self, lookup_id, client, row, lower, timeout)


def _open_lookup(lookup: _Lookup, lookup_id: int, client: object, row: Row, lower: str, timeout: float,
                 last: Optional[tuple] = None) -> _Lookup:
    """_Lookup.__init__'s work, also called on a bare ``_Lookup.__new__(_Lookup)`` (compiled: no Python call).
    ``last``: the client's columns of the lookup opened before, shared when this one's are the same objects."""
    lookup.id = lookup_id
    lookup.client = client
    # the client's columns come from its first row (indexed: compiled, no call and no tuple of the getter's)
    if (last is not None and row[I_SRC] is last[0] and row[I_DST] is last[1] and row[I_PID] is last[2]
            and row[I_COMM] is last[3] and row[I_EXE] is last[4] and row[I_NETNS] is last[5]
            and row[I_POD] is last[6] and row[I_POD_NS] is last[7] and row[I_CONTAINER] is last[8]):
        lookup.cols = last
    else:
        lookup.cols = (row[I_SRC], row[I_DST], row[I_PID], row[I_COMM], row[I_EXE], row[I_NETNS], row[I_POD],
                       row[I_POD_NS], row[I_CONTAINER])
    lookup.lower = lower  # the first candidate, lower case (most lookups have one)
    # names: with a second candidate, every candidate, lower case; prefix: the leading labels every candidate
    # shares (once asked); upstream: (lookup id, server, latency); forwarded_for: a server's lookup: the
    # client lookup it forwarded
    lookup.names = lookup.prefix = lookup.upstream = lookup.forwarded_for = None
    # per query, in the order they came: (ts, name lower, rcode, ancount, attempts, response_ts, tc, qtype
    # number, proto, client port, name as sent, qtype)
    ts, rts, rcode, ancount = row[I_TS], row[I_RTS], row[I_RCODE], row[I_ANCOUNT]
    lookup.rows: List[tuple] = [_state(row, lower)]
    lookup.ts = lookup.born = ts
    lookup.last_response: Optional[float] = rts
    if rts is not None:
        lookup.activity = rts if rts > ts else ts
    else:
        lookup.activity = ts + (timeout if row[I_STATUS] == "unanswered" else 0.0)
    lookup.answered = bool(ancount) and rcode == "NOERROR"  # a candidate came back NOERROR with records
    nat = row[I_NAT_DST]
    lookup.nat_dst: Optional[str] = nat
    lookup.server_pod = None if nat is None else (row[I_SERVER_POD], row[I_SERVER_POD_NS])
    lookup.open = True
    lookup.listed = True  # among its client's most recent (LookupStage._by_client)
    lookup.bytes = LOOKUP_BYTES + QUERY_BYTES + 2 * len(lower)
    return lookup


def _state(row: Row, lower: str) -> tuple:
    """What a lookup keeps of one of its queries (see _Lookup.rows)."""
    flags = row[I_RFLAGS]
    tc = flags is not None and "tc" in flags and "tc" in flags.split()
    return (row[I_TS], lower, row[I_RCODE], row[I_ANCOUNT], row[I_ATTEMPTS] or 0, row[I_RTS], tc, row[I_QTYPE_NUM],
            row[I_PROTO], row[I_SPORT], row[I_QNAME] or "", row[I_QTYPE])


def _nat_key(row: Row, lower: str) -> tuple:
    """The key under which a held row waits for its NAT copy: the client's address and port, protocol, DNS id and
    question (the copy has them too; only the destination differs)."""
    return (row[I_SRC], row[I_SPORT], row[I_PROTO], row[I_ID], lower, row[I_QTYPE_NUM])


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
                 live: bool = False, expect_responses: bool = True):
        self.emit = emit
        self.capture_id = capture_id or 0
        self.add_lookup = add_lookup  # the lookups to store: those of two queries or more, or with a hop
        self.on_lookup: Optional[Callable[[list], None]] = None  # every lookup as it ends (live top)
        self.live = live
        self.hold = HOLD_LIVE if live else HOLD
        self.gap = GAP if expect_responses else QUERIES_ONLY_GAP
        # a lookup ends gap after its last activity, plus the timeout when its next query may still come as an
        # unanswered row that long after it was sent (without responses rows come as their query is seen)
        self.wait = self.gap + (timeout if expect_responses else 0.0)
        self.timeout = timeout
        self.clock = float("-inf")
        self._n = 0
        self._id_base = self.capture_id * ID_BASE
        # rows from the correlator not looked at yet: the pipeline looks at them at least every chunk of frames
        # (replay: 2048), every live poll and tick, so they are bounded by what the correlator emits meanwhile
        self._incoming: List[Row] = []
        self.take = self._incoming.append
        # (release time, row, key, lower, bytes): a tuple while unkeyed (key None), a list once keyed (its row becomes
        # its client's copy once merged)
        self._held: Deque = deque()
        self._held_bytes = 0
        self._nat: Dict[tuple, list] = {}  # NAT key -> its held entry
        self._cols: Optional[tuple] = None  # the client's columns of the last lookup opened (see _open_lookup)
        self._lowers: Dict[Optional[str], str] = {}  # qname -> lower case, the last MAX_LOWERS names asked
        self._only_dst: Optional[str] = ""  # the one address every held row went to (None: several, keyed)
        self._open: Deque[_Lookup] = deque()  # open lookups, oldest first (a lookup still active goes round again)
        self._open_bytes = 0
        self._by_client: Dict[object, List[_Lookup]] = {}
        self._questions: Dict[tuple, List[tuple]] = {}  # (name, qtype, role, address) -> recent rows, oldest first
        self.nat_copies = 0
        self.hops = 0
        self.bounded = {"rows_released_early": 0, "lookups_ended_early": 0, "questions_forgotten": 0}
        # live: (pod, namespace) holding an address, for the server side of a NAT copy seen on the node side only
        self.server_pod_of: Optional[Callable[[str], Tuple[Optional[str], Optional[str]]]] = None
        # addresses clients asked (learnt as rows arrive, before they are released): only a query from one of
        # them can be a server's upstream hop; a client asking a local server (loopback) makes any query one.
        # Addresses that sent queries: only a client's query to one of them (or to loopback) can have a hop.
        self._servers: Dict[str, bool] = {}
        self._senders: Dict[str, bool] = {}
        self._local_server = False
        # an address seen as both (or either table started over): until then no query is a hop's (see _group)
        self._crossed = False

    @property
    def lookups(self) -> int:
        """Lookups opened so far."""
        return self._n

    # -- rows in ---------------------------------------------------------------------------------
    def __call__(self, row: Row) -> None:
        self._incoming.append(row)

    @property
    def holding(self) -> bool:
        """Rows wait here (live: the loop polls sooner, so that they reach the sinks within HOLD_LIVE)."""
        return bool(self._held or self._incoming)

    def advance(self, now: float) -> None:
        """Time passes (capture time in replay, wall clock live): look at the rows that came, release the held
        rows whose time is up, end quiet lookups."""
        if self._incoming:
            self._arrive()
        if now > self.clock:
            self.clock = now
        self._release(self.clock)
        self._close(self.clock)

    def flush(self) -> None:
        """End of the capture: every row goes on, every lookup ends."""
        if self._incoming:
            self._arrive()
        self._release(float("inf"))
        ended = list(self._open)
        self._open.clear()
        self._end(ended)
        self._questions.clear()

    # -- holding -----------------------------------------------------------------------------------
    def _arrive(self) -> None:
        """The rows that came since the last look: learn their addresses, merge NAT copies, hold the rest.

        A NAT copy goes to another address than its client's row: while every held row went to one address
        (replay of a capture point before DNAT, or after it), the rows are held without their NAT keys, and
        the keys are made only once a row to another address comes (``_key_held``)."""
        batch = self._incoming[:]
        del self._incoming[:]
        clock, hold = self.clock, self.hold
        nat, held, servers, senders = self._nat, self._held, self._servers, self._senders
        nat_get, hold_row = nat.get, held.append
        only = self._only_dst  # None: the held rows are keyed (in ``nat``)
        lowers = self._lowers
        size = 0
        for row in batch:
            t = row[I_RTS] or row[I_TS]
            if t is not None and t > clock:
                clock = t
            qname = row[I_QNAME]
            lower = lowers.get(qname)
            if lower is None:
                lower = self._lower(qname)
            dst, src = row[I_DST], row[I_SRC]
            if dst not in servers:
                self._learn(servers, dst)
            if src not in senders:
                self._learn(senders, src)
            answers = row[I_ANSWERS]
            taken = ROW_BYTES if answers is None else ROW_BYTES + len(answers)
            if only is not None:
                if dst == only or not held:
                    only = dst
                    size += taken
                    hold_row((clock + hold, row, None, lower, taken))
                    continue
                only = None  # a second address: from now on the held rows are keyed
                self._key_held()
                held = self._held
                hold_row = held.append
            key = _nat_key(row, lower)
            entry = nat_get(key)
            if entry is not None and entry[1] is not None and _nat_copies(entry[1], row):
                self._merge(entry, row)
                continue
            entry = [clock + hold, row, key, lower, taken]
            size += taken
            nat[key] = entry
            hold_row(entry)
        self.clock = clock
        self._only_dst = only
        self._held_bytes += size
        if self._held_bytes > MAX_HOLD_BYTES:  # the oldest go on now
            self._release(float("-inf"), MAX_HOLD_BYTES)

    def _lower(self, qname: Optional[str]) -> str:
        """``qname`` in lower case (None: ""), remembered: the rows of one message share their qname's object."""
        lowers = self._lowers
        if len(lowers) >= MAX_LOWERS:
            lowers.clear()
        lowers[qname] = lower = (qname or "").lower()
        return lower

    def _key_held(self) -> None:
        """Index the held rows by NAT key (the latest row of each key, as if indexed as they came); their entries
        become lists (a merge changes its entry's row)."""
        nat = self._nat
        keyed = deque()
        for release, row, _key, lower, taken in self._held:
            entry = [release, row, _nat_key(row, lower), lower, taken]
            nat[entry[2]] = entry
            keyed.append(entry)
        self._held = keyed

    def _learn(self, seen: Dict[str, bool], address: str) -> None:
        if len(seen) >= MAX_QUESTIONS:
            seen.clear()
            self._crossed = True
        seen[address] = True
        if seen is self._servers:
            if address in self._senders:
                self._crossed = True
            if address.startswith("127.") or address == "::1":
                self._local_server = True
        elif address in self._servers:
            self._crossed = True

    def _merge(self, entry: list, row: Row) -> None:
        other = entry[1]
        self.nat_copies += 1
        client, server = (row, other) if _is_client_side(row, other) else (other, row)
        _merge_nat(client, server)
        if self.server_pod_of is not None:  # live: the pod holding the address (the copy may be the node's)
            client[I_SERVER_POD], client[I_SERVER_POD_NS] = self.server_pod_of(client[I_NAT_DST])
        entry[1] = client

    def _release(self, now: float, over: Optional[int] = None) -> None:
        """Held rows go on: those whose time is up at ``now``; with ``over``, the oldest until the held rows take
        at most ``over`` bytes (counted: they went on before their time)."""
        held = self._held
        if not held or (over is None and held[0][0] > now):
            return
        nat, emit, popleft = self._nat, self.emit, held.popleft
        size = self._held_bytes
        limit = float("inf") if over is None else over
        early = 0
        while held:
            release, row, key, lower, taken = held[0]
            if release > now and size <= limit:
                break
            entry = popleft()
            if release > now:
                early += 1
            size -= taken
            if key is not None and nat.get(key) is entry:
                del nat[key]
            self._group(row, lower)  # (a method call, not a local: compiled, a C call)
            emit(row)
        if early:
            self.bounded["rows_released_early"] += early
        self._held_bytes = size
        if not held:
            self._only_dst = ""  # none held: the next rows go unkeyed again

    # -- grouping ----------------------------------------------------------------------------------
    def _group(self, row: Row, lower: str) -> None:
        netns, pid = row[I_NETNS], row[I_PID]
        if netns is None and pid is None:
            client = row[I_SRC]  # replay: the address alone (a str never equals a live client's tuple)
        else:
            client = (netns, pid) if pid is not None else (netns, row[I_SRC])
        lookups = self._by_client.get(client)
        lookup = None
        if lookups:
            ts = row[I_TS]
            gap = self.gap
            query_only = row[I_STATUS] == "query_only"
            for candidate in reversed(lookups):
                # the usual cases are decided here without a call (each a test _accepts would fail on)
                if lower != candidate.lower:
                    names = candidate.names
                    if names is None or lower not in names:
                        if candidate.answered:
                            continue  # an answered lookup takes no new name
                        prefix = candidate.prefix
                        if prefix is None:
                            prefix = candidate.prefix = _labels(candidate.rows[0][10])
                        head = prefix[0]
                        n = len(head)
                        if not (n > 0 and lower.startswith(head) and (len(lower) == n or lower[n] == ".")):
                            continue  # not the next search-path candidate
                elif query_only and len(candidate.rows) == 1 and candidate.rows[0][7] == row[I_QTYPE_NUM]:
                    continue  # the same question again without responses (a flood): never a retry of it
                if ts > candidate.activity + gap:
                    continue  # quiet too long
                if self._accepts(candidate, row, lower, ts):
                    lookup = candidate
                    break
        if lookup is None:
            self._n = n = self._n + 1
            lookup = _open_lookup(_Lookup.__new__(_Lookup), self._id_base + n, client, row, lower, self.timeout,
                                  self._cols)
            self._cols = lookup.cols
            self._open.append(lookup)
            self._open_bytes += lookup.bytes
            if lookups is None:
                self._by_client[client] = [lookup]
            else:
                lookups.append(lookup)
                if len(lookups) > MAX_PER_CLIENT:
                    candidate = lookups[0]
                    candidate.listed = False
                    del lookups[0]
            if self._open_bytes > MAX_OPEN_BYTES:
                self._evict()
        else:
            self._add(lookup, row, lower)
        row[I_LOOKUP] = lookup.id
        # the hop index: only a query that could be a server's (from an address clients asked) or a client's
        # query to an address that sends queries itself (a forwarder) or to a local server
        if self._local_server:
            self._hop(row, lower, lookup)
        elif self._crossed or row[I_NAT_DST] is not None:  # else src is only a sender, dst only a server
            nat = row[I_NAT_DST]
            if row[I_SRC] in self._servers or row[I_DST] in self._senders or (
                    nat is not None and (nat in self._servers or nat in self._senders)):
                self._hop(row, lower, lookup)

    def _accepts(self, lookup: _Lookup, row: Row, lower: str, ts: float) -> bool:
        rows = lookup.rows
        if len(rows) >= MAX_QUERIES or ts > lookup.activity + self.gap or ts < lookup.ts - NAT_WINDOW:
            return False
        tried = lower == lookup.lower or (lookup.names is not None and lower in lookup.names)
        if not tried and lookup.answered:
            return False  # answered: a lookup takes no further candidate
        if tried:  # (a) the same candidate: another type, TCP after tc, or a retry after no answer
            qtype, sport = row[I_QTYPE_NUM], row[I_SPORT]
            last = None
            same_port = False
            for r in rows:
                if r[1] == lower:
                    if r[7] == qtype:
                        last = r
                    if r[9] == sport:
                        same_port = True
            if last is None:
                # the other type of a pair: without a process (replay) only from the same socket, as glibc and
                # musl send it (dnsperf-like senders on one address ask A and AAAA of a name as separate lookups)
                return row[I_PID] is not None or same_port
            if last[6] and row[I_PROTO] == "tcp" and last[8] != "tcp":
                return True
            return last[2] in _RETRY_RCODES and row[I_STATUS] != "query_only"
        # (b) the next search-path candidate: sharing the leading labels (a non-empty first one: _add works out
        # how many; the cheapest test, first), sent after every earlier one came back empty
        prefix = lookup.prefix
        if prefix is None:  # kept: the labels of its one candidate so far (those of every candidate after)
            prefix = lookup.prefix = _labels(rows[0][10])
        head = prefix[0]
        n = len(head)
        if not (n > 0 and lower.startswith(head) and (len(lower) == n or lower[n] == ".")):
            return False
        if lookup.last_response is not None and ts < lookup.last_response - 0.001:
            return False
        for r in rows:
            if r[2] is None and r[5] is None and row[I_STATUS] != "query_only":
                return False  # still waiting for an earlier candidate: not a sequential search
            if r[2] not in _EMPTY_RCODES and r[2] is not None:
                return False
            if r[2] == "NOERROR" and r[3]:
                return False  # answered: the lookup is done
        return True

    def _add(self, lookup: _Lookup, row: Row, lower: str) -> None:
        """``row`` joins ``lookup`` (its second query or later)."""
        state = _state(row, lower)
        ts, rcode, ancount, rts = state[0], state[2], state[3], state[5]
        rows = lookup.rows
        if lower != lookup.lower and (lookup.names is None or lower not in lookup.names):
            if lookup.names is None:  # a second candidate: the labels they share (one candidate needs none)
                lookup.names = {lookup.lower}
            lookup.names.add(lower)
            lookup.prefix = _common(lookup.prefix or _labels(rows[0][10]), _labels(lower))
        grown = QUERY_BYTES + 2 * len(lower)
        lookup.bytes += grown
        self._open_bytes += grown
        rows.append(state)
        if ancount and rcode == "NOERROR":
            lookup.answered = True
        if ts < lookup.ts:
            lookup.ts = ts
        if rts is not None:
            activity = rts
            if lookup.last_response is None or rts > lookup.last_response:
                lookup.last_response = rts
        else:
            activity = ts + (self.timeout if row[I_STATUS] == "unanswered" else 0.0)
        if activity > lookup.activity:
            lookup.activity = activity
        if lookup.nat_dst is None and row[I_NAT_DST] is not None:
            lookup.nat_dst = row[I_NAT_DST]
            lookup.server_pod = (row[I_SERVER_POD], row[I_SERVER_POD_NS])

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
            seen = questions.pop(key, None)  # re-inserted: the dict keeps the most recently seen last
            if seen is None:
                questions[key] = [mine]
            else:
                questions[key] = seen
                seen.append(mine)
                if len(seen) > 4:
                    del seen[0]
        if len(questions) > MAX_QUESTIONS:
            forgotten = len(questions) - MAX_QUESTIONS
            for key in list(islice(questions, forgotten)):  # the least recently seen
                del questions[key]
            self.bounded["questions_forgotten"] += forgotten

    def _link(self, client: _Lookup, upstream: tuple) -> None:
        if client is upstream[6] or not client.open:
            return
        if client.upstream is None:
            self.hops += 1
        client.upstream = (upstream[6].id, upstream[3], upstream[5])
        upstream[6].forwarded_for = client.id

    # -- ending ------------------------------------------------------------------------------------
    def _close(self, now: float) -> None:
        """End the lookups quiet for ``wait`` seconds. Oldest first; one still active goes round again, so the
        walk stops at the first lookup opened after the limit (all behind it were opened later)."""
        limit = now - self.wait
        opened = self._open
        turns = len(opened)
        ended = []
        popleft, again, end = opened.popleft, opened.append, ended.append
        while turns and opened[0].born <= limit:
            turns -= 1
            lookup = popleft()
            if lookup.activity <= limit:
                end(lookup)
            else:
                again(lookup)
        if ended:
            self._end(ended)
        questions = self._questions
        if questions:
            stale = []
            for key, rows in questions.items():
                if rows[-1][0] > limit:
                    break
                stale.append(key)
            for key in stale:
                del questions[key]

    def _evict(self) -> None:
        """Over MAX_OPEN_BYTES: the oldest lookups end now."""
        opened = self._open
        while opened and self._open_bytes > MAX_OPEN_BYTES:
            self.bounded["lookups_ended_early"] += 1
            self._end((opened.popleft(),))

    def _end(self, ended) -> None:
        """The lookups ``ended`` (in order) can gain no more queries: their rows go out."""
        by_client, on_lookup, add_lookup, capture_id = self._by_client, self.on_lookup, self.add_lookup, self.capture_id
        freed = 0
        for lookup in ended:
            lookup.open = False
            freed += lookup.bytes
            if lookup.listed:  # (most have left their client's list already: no search of it)
                lookup.listed = False
                same = by_client[lookup.client]
                same.remove(lookup)
                if not same:
                    del by_client[lookup.client]
            if len(lookup.rows) == 1 and lookup.upstream is None and lookup.forwarded_for is None:
                if on_lookup is not None:  # the log has it already: the view reads it from its queries row
                    on_lookup(lookup_row(lookup, capture_id))
                continue
            row = lookup_row(lookup, capture_id)
            if add_lookup is not None:
                add_lookup(row)
            if on_lookup is not None:
                on_lookup(row)
        self._open_bytes -= freed


def lookup_row(lookup: _Lookup, capture_id: Optional[int]) -> list:
    """The lookups row (schema.LOOKUP_COLUMNS order) of a lookup that ended."""
    src, dst, pid, comm, exe, netns, pod, pod_ns, container = lookup.cols
    upstream = lookup.upstream or (None, None, None)
    server_pod = lookup.server_pod or (None, None)
    rows = lookup.rows
    if len(rows) == 1:  # most lookups: one query (a name asked in full, one type)
        ts, lower, rcode, ancount, attempts, rts, tc, _qn, _proto, _port, name, qtype = rows[0]
        return [
            lookup.id, capture_id, ts, rts if rts is not None else ts, src, dst, lookup.nat_dst, pid, comm, exe,
            netns, pod, pod_ns, container, server_pod[0], server_pod[1], name, _json_name(name),
            _json_types((qtype,)), name if rcode == "NOERROR" and ancount else None, rcode, attempts, 0, int(tc),
            ms3(rts - ts) if rts is not None else None, upstream[0], upstream[1], upstream[2],
            lookup.forwarded_for,
        ]
    qtypes: List[str] = []
    for r in rows:
        if r[11] not in qtypes:
            qtypes.append(r[11])
    if lookup.names is None:  # one candidate (the A/AAAA pair, a retry, TCP after tc)
        candidates = [rows[0][10]]
    else:
        first: Dict[str, Tuple[float, str]] = {}  # candidate (lower) -> (first sent, as sent), as they came
        for r in rows:
            if r[1] not in first:
                first[r[1]] = (r[0], r[10])
        candidates = [name for _ts, name in sorted(first.values())]
    for n in range(1, len(rows)):  # (they usually came in time order: no sort then)
        if rows[n][0] < rows[n - 1][0]:
            rows = sorted(rows, key=_BY_TS)
            break
    answered = None
    for r in rows:
        if r[2] == "NOERROR" and r[3]:
            answered = r[1]
            break
    final = answered if answered is not None else candidates[-1].lower()
    rcode = None
    for r in rows:
        lower, rc, ancount, tc = r[1], r[2], r[3], r[6]
        if lower == final and rc is not None and not tc:
            if answered is None or (rc == "NOERROR" and ancount) or rcode is None:
                rcode = rc
                if answered is not None and rc == "NOERROR" and ancount:
                    break
    if rcode is None:  # only a truncated answer came back (a loop, not next(genexpr): compiled, no closure)
        for r in rows:
            if r[1] == final and r[2] is not None:
                rcode = r[2]
                break
    queries = wasted = tcp = 0
    end = None  # the last response
    for r in rows:
        attempts, rc, rts = r[4], r[2], r[5]
        queries += attempts
        if r[1] != final and (rc == "NXDOMAIN" or (rc == "NOERROR" and not r[3])):
            wasted += attempts
        if rts is not None and (end is None or rts > end):
            end = rts
        if r[6]:
            tcp = 1
    total = ms3(end - lookup.ts) if end is not None else None
    if end is None:
        end = rows[-1][0]  # no response: the last query (rows are in time order)
    if len(candidates) > 1 and lookup.prefix:
        n = len(lookup.prefix)
        asked = ".".join(candidates[0].split(".")[:n])
        shortest = min(candidates, key=len)
        if shortest.lower() == asked.lower():
            asked = shortest
    else:
        asked = candidates[0] if candidates else None
    answered_name = None
    if answered is not None:
        for name in candidates:
            if name.lower() == answered:
                answered_name = name
                break
    return [
        lookup.id, capture_id, lookup.ts, end, src, dst, lookup.nat_dst, pid, comm, exe, netns, pod, pod_ns,
        container, server_pod[0], server_pod[1], asked, _json_names(candidates), _json_types(qtypes), answered_name,
        rcode, queries, wasted, tcp, total, upstream[0], upstream[1], upstream[2],
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


def _json_types(qtypes) -> str:
    key = tuple(qtypes)
    text = _TYPES_JSON.get(key)
    if text is None:
        text = json.dumps(qtypes)
        if len(_TYPES_JSON) < 1024:
            _TYPES_JSON[key] = text
    return text


def _json_names(names: List[str]) -> str:
    """json.dumps(names) for qnames, without the encoder's cost when they need no escape."""
    if len(names) == 1:
        return _json_name(names[0])
    if all(name.isascii() and name.isprintable() and '"' not in name and "\\" not in name for name in names):
        return '["' + '", "'.join(names) + '"]'
    return json.dumps(names)


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
            # candidates is JSON text: the name (presentation form) as JSON spells it, \\ for a backslash and \" for a
            # quote (\u00XX for a control character, which presentation form never has), then escaped for LIKE
            as_json = json.dumps(f.name)[1:-1]
            escaped = as_json.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
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
