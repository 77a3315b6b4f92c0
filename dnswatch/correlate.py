"""Match responses to their queries and build the rows of the ``queries`` table.

A query waits (bounded in number, bytes and time) for its response: same client and server address and
port, same transport, same DNS id and the same question. Then its row is built and emitted. A query that
times out is emitted as 'unanswered'; a response with no waiting query becomes a 'response_only' row.

Three kinds of "the same message again" (the rule is documented for users in schema.QUERIES):
- a copy: the same bytes seen again within COPY_WINDOW at another capture point (pod and node side of a
  veth, a packet routed through the host, loopback out and in). Stored once, counted in ``duplicates``.
  Live, the capture point is (netns, ifindex, direction): one point never sees a copy of its own packet,
  so dnsperf reusing an id and name a millisecond later is a new query there. Files do not record it
  (plain pcap), so there time alone decides.
- a retry: the same question under the same addresses, ports and id while the first still waits, not a
  copy: one more attempt of the same row (``attempts``); latency_ms is timed from the latest attempt before
  the response, first_attempt_latency_ms from the first (what tshark 4.0 calls dns.time: it links the
  response to the first request and flags later ones dns.retransmission). A retry from a new port (dig
  does that) is another transaction, for tshark too.
- a repeated response: a response to a question already answered (the server answered a retry too),
  same bytes, within REPEAT_WINDOW: counted in ``repeated_responses``, not a row.
Once a question is answered, a query with the same id and question is a new query.

A waiting query is not kept as a row: at 40k queries/s and a 5 s timeout 200,000 wait at once, and a row
(51 columns) with its bookkeeping took ~1.2 KB. Its entry keeps only what the row cannot get elsewhere: the
decoded message (shared with dns.parse_message's cache, rows of one message share one template), times,
size, attempts, and the live columns (process, container) when there are any. The row is built when the
query is answered or given up, which is also less work per query than filling a row twice.
"""
from __future__ import annotations

from itertools import islice
from typing import Callable, Dict, List, Optional, Tuple

from dnswatch.dns import CACHE_MAX_KEY, Message, Question, cache_stats, opcode_text, qclass_text, qtype_text, rcode_text
from dnswatch.model import Segment
from dnswatch.schema import Q, QUERY_COLUMNS

Row = List[object]
Key = Tuple[str, int, str, int, str, int]

DEFAULT_TIMEOUT = 5.0
MAX_PENDING = 200_000  # waiting queries, and in bytes:
PENDING_BYTES = 16 << 20  # what they hold, estimated per entry (the *_COST below, measured with tracemalloc)
ENTRY_COST = 370  # one waiting query: its key, entry, times, fingerprint, the table's slot
MESSAGE_COST = 360  # its Message, per question, while only the entry holds it: parse_message's cache holds (and
# counts) a small message until the cache starts over, then each entry holds its own
LIVE_COST = 420  # the live columns of its rows (process, container...) and its capture point
MAX_RECENT = 50_000  # remembered answers (~300 B each, ~400 live: the count bounds their bytes)
COPY_WINDOW = 0.05  # seconds: copies of one packet at several capture points arrive microseconds apart;
# client retries come after a timeout (dig, glibc: 1 s and more; unbound: 50 ms at the least)
REPEAT_WINDOW = 2.0  # seconds after an answer during which the same response again is a repeat, not an orphan
MAX_TEMPLATES = 65536  # query messages whose row templates are kept (as many as dns.parse_message caches),
TEMPLATE_BYTES = 8 << 20  # and in bytes
TEMPLATE_COST = 690  # per question: its row template, the cache's slot (measured)

_N = len(QUERY_COLUMNS)
# column positions, bound once by name: rows are plain lists in QUERY_COLUMNS order
I_TS = Q["ts"]
I_CAP = Q["capture_id"]
I_SRC = Q["src"]
I_SPORT = Q["sport"]
I_DST = Q["dst"]
I_DPORT = Q["dport"]
I_PROTO = Q["proto"]
I_ID = Q["dns_id"]
I_QNAME = Q["qname"]
I_QTYPE = Q["qtype"]
I_QTYPE_NUM = Q["qtype_num"]
I_QCLASS = Q["qclass"]
I_OPCODE = Q["opcode"]
I_STATUS = Q["status"]
I_RCODE = Q["rcode"]
I_RCODE_NUM = Q["rcode_num"]
I_ANSWERS = Q["answers"]
I_ANCOUNT = Q["ancount"]
I_LATENCY = Q["latency_ms"]
I_RTS = Q["response_ts"]
I_ATTEMPTS = Q["attempts"]
I_FIRST_LATENCY = Q["first_attempt_latency_ms"]
I_QFLAGS = Q["query_flags"]
I_RFLAGS = Q["response_flags"]
I_EDNS_SIZE = Q["edns_udp_size"]
I_EDNS_DO = Q["edns_do"]
I_ECS = Q["ecs"]
I_QSIZE = Q["query_size"]
I_RSIZE = Q["response_size"]
I_DECODER = Q["decoder"]
I_NOTE = Q["decode_note"]
I_IFNAME = Q["ifname"]
I_PID = Q["pid"]
I_TID = Q["tid"]
I_COMM = Q["comm"]
I_THREAD = Q["thread_name"]
I_UID = Q["uid"]
I_CGROUP = Q["cgroup_id"]
I_NETNS = Q["netns"]
I_CONTAINER_ID = Q["container_id"]
I_CONTAINER = Q["container"]
I_POD = Q["pod"]
I_POD_NS = Q["pod_namespace"]
I_POD_UID = Q["pod_uid"]

# Rows are filled by slices (one store for several columns): these runs of columns must stay together.
_KEY = slice(I_SRC, I_ID + 1)  # the key's order: (src, sport, dst, dport, proto, dns_id)
_RESPONSE = slice(I_STATUS, I_ANCOUNT + 1)  # what an answer's template holds; then its times and attempts
_SIZES = slice(I_QSIZE, I_RSIZE + 1)
_LIVE = slice(I_IFNAME + 1, _N)  # the columns only live capture or enrich fill (after ifname), kept as a tuple
assert QUERY_COLUMNS[_KEY] == ["src", "sport", "dst", "dport", "proto", "dns_id"]
assert QUERY_COLUMNS[_RESPONSE] == ["status", "rcode", "rcode_num", "answers", "ancount"]
assert QUERY_COLUMNS[_SIZES] == ["query_size", "response_size"]
_NO_LIVE = (None,) * (_N - I_IFNAME - 1)
# the columns every row built sets, again (compiled: C integers, see correlate.pxd; the I_* stay Python ints, for
# the modules that import them); the key's columns are _KEY_AT to _KEY_END
_TS, _LATENCY, _RTS, _ATTEMPTS, _FIRST_LATENCY, _QSIZE, _IFNAME = (I_TS, I_LATENCY, I_RTS, I_ATTEMPTS, I_FIRST_LATENCY,
                                                                   I_QSIZE, I_IFNAME)
_KEY_AT, _KEY_END = _KEY.start, _KEY.stop
_RCODES = {n: rcode_text(n) for n in range(24)}

# A waiting query's entry: (its Message, first attempt's time, latest attempt's time, its fingerprint, the
# capture points that saw it (None: unknown, files), query size, attempts, ifname, the live columns (None: none),
# its cost beyond ENTRY_COST but for its Message's, the decode cache's generation that holds its Message (-1: none))
E_MSG, E_FIRST, E_LAST, E_FP, E_POINTS, E_SIZE, E_ATTEMPTS, E_IFNAME, E_LIVE, E_EXTRA, E_GEN = range(11)


class Correlator:
    def __init__(
        self,
        emit: Callable[[Row], None],
        capture_id: Optional[int] = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = MAX_PENDING,
        on_query: Optional[Callable[[Row], None]] = None,
        on_response: Optional[Callable[[Row], None]] = None,
        enrich: Optional[Callable[[Row, Segment], None]] = None,
        expect_responses: bool = True,
        max_pending_bytes: int = PENDING_BYTES,
    ):
        self.emit = emit
        self.capture_id = capture_id
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_recent = min(max_pending, MAX_RECENT)
        self.on_query = on_query
        self.on_response = on_response
        self.enrich = enrich
        self.expect_responses = expect_responses  # False: live capture of queries only, nothing to wait for
        # rows are built at query time only when something looks at them then (else once answered or given up)
        self._rows_at_query = on_query is not None or enrich is not None
        # key -> entry (see E_*), oldest last attempt first (a retry moves its entry to the end). Plain dicts, read
        # from their oldest end in one pass per expire/evict: a dict finds its first entry by skipping the ones
        # deleted before it, so asking for it once per entry would be quadratic.
        self.pending: Dict[Key, tuple] = {}
        self.pending_bytes = 0
        # entries whose Message parse_message's cache holds, in its current generation (its count of clears):
        # they cost no MESSAGE_COST until the cache starts over, then all of them do
        self._gen = cache_stats["clears"]
        self._shared = 0
        # key -> (time, fingerprint, capture points) of the last answer (queries only: of the last query), to
        # recognise its copies and repeats; oldest first, bounded like pending
        self.recent: Dict[Key, tuple] = {}
        # id(message) -> (message, its row templates, None), and id(response) -> (response, its rows' templates,
        # the query it answered): parse_message hands back the same Message object for the same bytes, so the
        # columns that depend on the messages alone are filled once, not once per packet
        self._templates: Dict[int, Tuple[Message, List[Row], Optional[Message]]] = {}
        self._templates_bytes = 0
        self._cache_clears = cache_stats["clears"]
        self.queries = 0
        self.responses = 0
        self.duplicates = 0
        self.retries = 0  # attempts after the first (each also counted in queries)
        self.repeated_responses = 0
        self.unanswered = 0
        self.response_only = 0
        self.evicted = 0  # queries given up as unanswered before their timeout: the table was full (a memory bound)
        self.forgotten = 0  # answers forgotten before REPEAT_WINDOW: too many remembered

    # -- messages ------------------------------------------------------------------------------
    def message(self, seg: Segment, msg: Message, dns_id: int) -> None:
        if msg.qr:
            self.response(seg, msg, dns_id)
        else:
            self.query(seg, msg, dns_id)

    # message() for a caller that already looked at the QR bit (one call less per message in replay's loop)
    def query(self, seg: Segment, msg: Message, dns_id: int) -> None:
        ts, src, sport, dst, dport, proto, payload, ifname, meta = seg
        key = (src, sport, dst, dport, proto, dns_id)
        if not self.expect_responses:
            self._query_only(key, seg, msg)
            return
        if meta is not None or self._rows_at_query:
            self._query_live(key, seg, msg)
            return
        size = len(payload)
        gen = self._generation(size) if len(msg.questions) == 1 else -1
        entry = (msg, ts, ts, hash(payload), None, size, 1, ifname, None, 0, gen)
        pending = self.pending
        waiting = pending.setdefault(key, entry)  # one lookup for the usual case: nothing waits under this key
        if waiting is not entry:
            if self._again(key, waiting, seg, msg):
                return
            self._emit_unanswered(key)  # same id and ports, other question: a new query
            pending[key] = entry
        self.queries += 1
        self.pending_bytes += ENTRY_COST if gen >= 0 else ENTRY_COST + MESSAGE_COST * len(msg.questions)
        if self.pending_bytes > self.max_pending_bytes or len(pending) > self.max_pending:
            self._evict()

    def _generation(self, size: int) -> int:
        """The decode cache's generation that holds a message of ``size`` bytes just decoded (-1: it keeps none
        that large), counted in ``_shared``. A new generation makes the entries of the last one hold their own."""
        if size > CACHE_MAX_KEY:
            return -1
        gen = cache_stats["clears"]
        if gen != self._gen:
            self.pending_bytes += self._shared * MESSAGE_COST  # (they have one question each)
            self._gen, self._shared = gen, 0
        self._shared += 1
        return gen

    def _cost(self, entry: tuple) -> int:
        """What ``entry`` is counted for in pending_bytes now."""
        if entry[E_GEN] == self._gen:
            return ENTRY_COST + entry[E_EXTRA]
        return ENTRY_COST + entry[E_EXTRA] + MESSAGE_COST * len(entry[E_MSG].questions)

    def _query_live(self, key: Key, seg: Segment, msg: Message) -> None:
        """query() when the query's row is looked at now (terminal lines, enrich) or has a capture point."""
        ts, meta = seg[0], seg[8]
        pending = self.pending
        waiting = pending.get(key)
        if waiting is not None:
            if self._again(key, waiting, seg, msg):
                return
            self._emit_unanswered(key)
        self.queries += 1
        size = len(seg[6])
        rows = self._rows(key, msg, ts, size, 1, seg[7], None)
        ifname, live = self._fill_live(rows, seg)
        if self.on_query is not None:
            for row in rows:
                self.on_query(row)
        extra = LIVE_COST if live is not None or meta is not None else 0
        gen = self._generation(size) if len(msg.questions) == 1 else -1
        pending[key] = entry = (msg, ts, ts, hash(seg[6]), None if meta is None else [_point(meta)], size, 1, ifname,
                                live, extra, gen)
        self.pending_bytes += self._cost(entry)
        if self.pending_bytes > self.max_pending_bytes or len(pending) > self.max_pending:
            self._evict()

    def _again(self, key: Key, waiting: tuple, seg: Segment, msg: Message) -> bool:
        """A query under the key of the waiting query ``waiting``: its copy or its retry (True, counted), or
        another question (False)."""
        if not _same_questions(waiting[E_MSG], msg):
            return False
        ts, meta = seg[0], seg[8]
        points = waiting[E_POINTS]
        if _is_copy((waiting[E_LAST], waiting[E_FP], points), seg):
            self.duplicates += 1
            if points is not None:
                points.append(None if meta is None else _point(meta))  # the capture points: few per packet
            live = waiting[E_LIVE]
            if meta is not None and meta.pid is not None and (live is None or live[I_PID - _LIVE.start] is None):
                # the copy that knows its sender wins: its process columns, and what enrich finds from them
                rows = self._rows(key, waiting[E_MSG], waiting[E_FIRST], waiting[E_SIZE], waiting[E_ATTEMPTS],
                                  waiting[E_IFNAME], live)
                ifname, live = self._fill_live(rows, seg)
                extra = waiting[E_EXTRA] + (LIVE_COST if waiting[E_LIVE] is None and points is None else 0)
                self.pending_bytes += extra - waiting[E_EXTRA]
                self.pending[key] = waiting[:E_IFNAME] + (ifname, live, extra, waiting[E_GEN])
            return True
        # a retry: one more attempt of the same question, and the wait starts again from it (at the table's end)
        self.queries += 1
        self.retries += 1
        del self.pending[key]
        self.pending[key] = (waiting[E_MSG], waiting[E_FIRST], ts, hash(seg[6]),
                             None if meta is None else [_point(meta)], waiting[E_SIZE], waiting[E_ATTEMPTS] + 1,
                             waiting[E_IFNAME], waiting[E_LIVE], waiting[E_EXTRA], waiting[E_GEN])
        return True

    def _query_only(self, key: Key, seg: Segment, msg: Message) -> None:
        """Live capture of queries only: each query is a row at once, less its copies."""
        ts, meta = seg[0], seg[8]
        recent = self.recent
        seen = recent.get(key)
        if seen is not None:
            if _is_copy(seen, seg):
                self.duplicates += 1
                if seen[2] is not None:
                    seen[2].append(None if meta is None else _point(meta))
                return
            del recent[key]
        self._remember(key, ts, seg[6], meta)
        self.queries += 1
        rows = self._rows(key, msg, ts, len(seg[6]), 1, seg[7], None)
        self._fill_live(rows, seg)
        for row in rows:
            if self.on_query is not None:
                self.on_query(row)
            row[I_STATUS] = "query_only"
            self.emit(row)

    def _remember(self, key: Key, ts: float, payload: bytes, meta) -> None:
        """Remember the answer (queries only: the query) under ``key``, at the end of ``recent``."""
        recent = self.recent
        n = len(recent)
        recent[key] = seen = (ts, hash(payload), None if meta is None else [_point(meta)])
        if len(recent) == n:  # an earlier one under this key: this one replaces it, at the end
            del recent[key]
            recent[key] = seen
        elif n >= self.max_recent:
            # the oldest go, a sixteenth at once (see pending: one pass over the dict's oldest end)
            old = list(islice(recent, max(1, self.max_recent >> 4)))
            self.forgotten += len(old)
            for k in old:
                del recent[k]

    def _fill_live(self, rows: List[Row], seg: Segment) -> Tuple[Optional[str], Optional[tuple]]:
        """Fill the capture point's columns of ``rows`` and let enrich add to them: (ifname, the live columns
        as kept in an entry: None when there are none)."""
        if seg[8] is not None:
            for row in rows:
                _fill_meta(row, seg)
        if self.enrich is not None:
            for row in rows:
                self.enrich(row, seg)
        row = rows[0]
        live = tuple(row[_LIVE])
        return row[I_IFNAME], (None if live == _NO_LIVE else live)

    def _rows(self, key: Key, msg: Message, ts: float, size: int, attempts: int, ifname: Optional[str],
              live: Optional[tuple]) -> List[Row]:
        """The query's rows (one per question) without the response's columns."""
        rows = []
        for template in self._templates_of(msg, size):
            row = template.copy()
            row[_TS] = ts
            row[_KEY_AT:_KEY_END] = key
            row[_ATTEMPTS] = attempts
            row[_QSIZE] = size
            row[_IFNAME] = ifname
            if live is not None:
                row[_LIVE] = live
            rows.append(row)
        return rows

    def _templates_of(self, msg: Message, size: int) -> List[Row]:
        """Rows of a query message (one per question) with the columns that depend on the message alone."""
        hit = self._templates.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
        templates = []
        for q in msg.questions:
            row = _message_row(q, msg)
            row[I_CAP] = self.capture_id
            row[I_QFLAGS] = msg.flags
            row[I_EDNS_SIZE] = msg.edns_udp_size
            row[I_EDNS_DO] = msg.edns_do
            row[I_ECS] = msg.ecs
            templates.append(row)
        if size <= CACHE_MAX_KEY:  # (else the decode cache does not keep this message: never hit again)
            self._keep(msg, templates, None)
        return templates

    def _answered_of(self, qmsg: Message, qsize: int, msg: Message, rsize: int) -> List[Row]:
        """Rows of the query ``qmsg`` answered by ``msg`` (one per question) with every column but the times, the
        key and the attempts: kept while both messages are the decode cache's, as the query's templates are."""
        rcode = msg.rcode
        answer = ("answered", _RCODES.get(rcode) or rcode_text(rcode), rcode, msg.answers, msg.ancount)
        raw = msg.decoder == "raw"
        templates = []
        for template in self._templates_of(qmsg, qsize):
            row = template.copy()
            row[_RESPONSE] = answer
            row[I_RFLAGS] = msg.flags
            row[_SIZES] = (qsize, rsize)
            if raw and row[I_DECODER] != "raw":
                row[I_DECODER] = "raw"
                row[I_NOTE] = "response: " + (msg.note or "")
            templates.append(row)
        if qsize <= CACHE_MAX_KEY and rsize <= CACHE_MAX_KEY:
            self._keep(msg, templates, qmsg)
        return templates

    def _keep(self, msg: Message, templates: List[Row], qmsg: Optional[Message]) -> None:
        """Keep the templates of ``msg`` (answering ``qmsg``), within MAX_TEMPLATES and TEMPLATE_BYTES. When the
        decode cache starts over, its messages are decoded anew (new objects): templates of the old ones are hardly
        hit again, so they go too."""
        cost = TEMPLATE_COST * len(templates)
        if (len(self._templates) >= MAX_TEMPLATES or self._templates_bytes + cost > TEMPLATE_BYTES
                or self._cache_clears != cache_stats["clears"]):
            self._templates.clear()
            self._templates_bytes = 0
            self._cache_clears = cache_stats["clears"]
        self._templates[id(msg)] = (msg, templates, qmsg)  # holding msg keeps its id from being reused
        self._templates_bytes += cost

    def response(self, seg: Segment, msg: Message, dns_id: int) -> None:
        self.responses += 1
        ts, src, sport, dst, dport, proto, payload, _ifname, meta = seg
        key = (dst, dport, src, sport, proto, dns_id)
        pending = self.pending
        waiting = pending.get(key)
        hit = None
        if waiting is not None:
            qmsg = waiting[E_MSG]
            hit = self._templates.get(id(msg))  # this response to this query before: its rows' templates
            if hit is None or hit[0] is not msg or hit[2] is not qmsg:
                hit = None
                # the same question (the usual echo: equal tuples), else compared as _same_questions does
                if qmsg.questions != msg.questions and msg.questions and not _same_questions(qmsg, msg):
                    waiting = None  # same id and ports, another question: not its answer
        if waiting is None:
            seen = self.recent.get(key)
            if seen is not None:
                if _is_copy(seen, seg):
                    self.duplicates += 1
                    self.responses -= 1
                    if seen[2] is not None:
                        seen[2].append(None if meta is None else _point(meta))
                    return
                if hash(payload) == seen[1] and ts - seen[0] <= REPEAT_WINDOW:
                    self.repeated_responses += 1
                    return
            self._response_only(seg, msg, dns_id)
            return
        del pending[key]
        qmsg, first, last, _fp, _points, qsize, attempts, ifname, live, extra, gen = waiting
        if gen == self._gen:
            self._shared -= 1
            self.pending_bytes -= ENTRY_COST + extra
        else:
            self.pending_bytes -= self._cost(waiting)
        self._remember(key, ts, payload, meta)
        latency, first_latency = ms3(ts - last), ms3(ts - first)
        on_response, emit = self.on_response, self.emit
        for template in hit[1] if hit is not None else self._answered_of(qmsg, qsize, msg, len(payload)):
            row = template.copy()
            row[_TS] = first
            row[_KEY_AT:_KEY_END] = key
            row[_LATENCY] = latency
            row[_RTS] = ts
            row[_ATTEMPTS] = attempts
            row[_FIRST_LATENCY] = first_latency
            if ifname is not None:
                row[_IFNAME] = ifname
            if live is not None:
                row[_LIVE] = live
            if on_response is not None:
                on_response(row)
            emit(row)

    def _response_only(self, seg: Segment, msg: Message, dns_id: int) -> None:
        self.response_only += 1
        ts, src, sport, dst, dport, proto, payload, ifname, meta = seg  # (replay's are plain tuples)
        for q in msg.questions or (None,):
            row = _message_row(q, msg)
            row[I_TS] = ts
            row[I_CAP] = self.capture_id
            row[I_SRC] = dst  # the client, as in query rows
            row[I_SPORT] = dport
            row[I_DST] = src
            row[I_DPORT] = sport
            row[I_PROTO] = proto
            row[I_ID] = dns_id
            row[I_STATUS] = "response_only"
            row[I_ATTEMPTS] = 0
            row[I_RCODE] = rcode_text(msg.rcode)
            row[I_RCODE_NUM] = msg.rcode
            row[I_ANSWERS] = msg.answers
            row[I_ANCOUNT] = msg.ancount
            row[I_RTS] = ts
            row[I_RFLAGS] = msg.flags
            row[I_RSIZE] = len(payload)
            row[I_IFNAME] = ifname
            if meta is not None:
                row[I_NETNS] = meta.netns
                row[I_IFNAME] = meta.ifname or ifname
            if self.on_response is not None:
                self.on_response(row)
            self.emit(row)

    # -- time ----------------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Emit queries whose latest attempt is older than the timeout as unanswered (``now`` is capture time or
        wall clock), and forget answers too old to have copies or repeats."""
        limit = now - self.timeout
        old = []
        for key, entry in self.pending.items():
            if entry[E_LAST] > limit:
                break
            old.append(key)
        for key in old:
            self._emit_unanswered(key)
        limit = now - (COPY_WINDOW if not self.expect_responses else REPEAT_WINDOW)
        recent = self.recent
        old = []
        for key, seen in recent.items():
            if seen[0] >= limit:
                break
            old.append(key)
        for key in old:
            del recent[key]

    def flush(self) -> None:
        """End of the capture: every query still waiting is unanswered."""
        for key in list(self.pending):
            self._emit_unanswered(key)
        self.recent.clear()

    def _evict(self) -> None:
        """The table is full (entries or bytes): the oldest waiting queries are given up as unanswered, down to
        15/16 of the bounds (in one pass over the dict's oldest end, then room for a sixteenth)."""
        over_bytes = self.pending_bytes - (self.max_pending_bytes - (self.max_pending_bytes >> 4))
        over_count = len(self.pending) - (self.max_pending - (self.max_pending >> 4))
        old = []
        for key, entry in self.pending.items():
            if over_bytes <= 0 and over_count <= 0:
                break
            old.append(key)
            over_bytes -= self._cost(entry)
            over_count -= 1
        self.evicted += len(old)
        for key in old:
            self._emit_unanswered(key)

    def _emit_unanswered(self, key: Key) -> None:
        entry = self.pending.pop(key)
        msg, first, _last, _fp, _points, size, attempts, ifname, live, _extra, gen = entry
        if gen == self._gen:
            self._shared -= 1
        self.pending_bytes -= self._cost(entry)
        self.unanswered += 1
        for row in self._rows(key, msg, first, size, attempts, ifname, live):
            row[I_STATUS] = "unanswered"
            self.emit(row)


def _point(meta) -> tuple:
    """The capture point of a live packet: one never sees a copy of its own packet."""
    return meta.netns, meta.ifindex, meta.pkt_type


def _is_copy(seen: tuple, seg: Segment) -> bool:
    """Is ``seg`` a copy of the sighting ``seen`` ((time, fingerprint, capture points that saw it))? The same
    bytes within COPY_WINDOW, at a capture point that has not seen them yet. Without live metadata (files) the
    point is unknown (None) and time decides.

    The fingerprint is the bytes' hash: Python's bytes hash is keyed per process (SipHash), so a sender cannot
    make two messages collide, and the tables never hold the messages (a hostile sender's 60 KB queries)."""
    if abs(seg[0] - seen[0]) > COPY_WINDOW or hash(seg[6]) != seen[1]:
        return False
    meta = seg[8]
    if meta is None or seen[2] is None:
        return True
    point = _point(meta)
    for p in seen[2]:
        if p is None:
            return True
        if p == point:
            return False
    return True


def _message_row(q: Optional[Question], msg: Message) -> Row:
    """A new row holding what one question of ``msg`` says (no question: a response that had none)."""
    row: Row = [None] * _N
    if q is not None:
        row[I_QNAME] = q.qname
        row[I_QTYPE] = qtype_text(q.qtype)
        row[I_QTYPE_NUM] = q.qtype
        row[I_QCLASS] = qclass_text(q.qclass)
    row[I_OPCODE] = opcode_text(msg.opcode)
    row[I_DECODER] = msg.decoder
    row[I_NOTE] = msg.note
    return row


def _same_questions(waiting: Message, msg: Message) -> bool:
    """Does ``msg`` ask what the waiting query ``waiting`` asked (names compared case-insensitively)?"""
    mine, theirs = waiting.questions, msg.questions
    if waiting is msg or mine == theirs:
        return True
    if len(mine) != len(theirs):
        return False
    for (name, qtype, _qclass), (qname, qtype2, _qclass2) in zip(mine, theirs):
        # an exact match (the usual echo) skips lower()
        if qtype != qtype2 or (name != qname and name.lower() != qname.lower()):
            return False
    return True


def _fill_meta(row: Row, seg: Segment) -> None:
    meta = seg.meta
    row[I_PID] = meta.pid
    row[I_TID] = meta.tid
    row[I_COMM] = meta.comm  # the thread's name until enrich finds the process's
    row[I_THREAD] = meta.comm
    row[I_UID] = meta.uid
    row[I_CGROUP] = meta.cgroup_id
    row[I_NETNS] = meta.netns
    row[I_IFNAME] = meta.ifname or seg.ifname


def ms3(seconds: float) -> float:
    """``round(seconds * 1000.0, 3)`` (a latency in ms to the microsecond), the same double, bit for bit. round()
    goes through a decimal string, twice per response; this rounds the microseconds instead, and leaves to round()
    only what it could decide otherwise: values within 1e-6 of a tie, zero, negative, huge or not finite."""
    ms = seconds * 1000.0
    us = ms * 1000.0
    if 0.0 < us < 1e9:  # (its rounding error is below 1.2e-7 there; zero keeps its sign through round())
        whole = us // 1.0  # floor (compiled: C's, where math.floor would be a Python call)
        frac = us - whole
        if frac < 0.499999:
            return whole / 1000.0
        if frac > 0.500001:
            return (whole + 1) / 1000.0
    return round(ms, 3)
