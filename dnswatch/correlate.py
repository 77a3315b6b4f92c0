"""Match responses to their queries and build the rows of the ``queries`` table.

A query waits (bounded in number and time) for its response: same client and server address and port,
same transport, same DNS id and the same question. Then its row is completed and emitted. A query that
times out is emitted as 'unanswered'; a response with no waiting query becomes a 'response_only' row.

Three kinds of "the same message again" (the rule is documented for users in schema.QUERIES):
- a copy: the same bytes seen again within COPY_WINDOW at another capture point (pod and node side of a
  veth, a packet routed through the host, loopback out and in). Stored once, counted in ``duplicates``.
  Live, the capture point is (netns, ifindex, direction): one point never sees a copy of its own packet,
  so dnsperf reusing an id and name a millisecond later is a new query there. Files do not record it
  (plain pcap), so there time alone decides.
- a retry: the same question under the same addresses, ports and id while the first still waits, not a
  copy: one more attempt of the same row (``attempts``), timed like tshark's dns.time (the response from
  the latest attempt before it; the first attempt's wait is kept in first_attempt_latency_ms).
- a repeated response: a response to a question already answered (the server answered a retry too),
  same bytes, within REPEAT_WINDOW: counted in ``repeated_responses``, not a row.
Once a question is answered, a query with the same id and question is a new query.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

from dnswatch.dns import CACHE_MAX_KEY, Message, Question, cache_stats, opcode_text, qclass_text, qtype_text, rcode_text
from dnswatch.model import Segment
from dnswatch.schema import Q, QUERY_COLUMNS

Row = List[object]
Key = Tuple[str, int, str, int, str, int]

DEFAULT_TIMEOUT = 5.0
MAX_PENDING = 200_000
COPY_WINDOW = 0.05  # seconds: copies of one packet at several capture points arrive microseconds apart;
# client retries come after a timeout (dig, glibc: 1 s and more; unbound: 50 ms at the least)
FINGERPRINT_BYTES = 256  # messages larger than this are remembered by length and hash (see _fingerprint)
REPEAT_WINDOW = 2.0  # seconds after an answer during which the same response again is a repeat, not an orphan
MAX_TEMPLATES = 65536  # query messages whose row templates are kept (as many as dns.parse_message caches)

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
    ):
        self.emit = emit
        self.capture_id = capture_id
        self.timeout = timeout
        self.max_pending = max_pending
        self.on_query = on_query
        self.on_response = on_response
        self.enrich = enrich
        self.expect_responses = expect_responses  # False: live capture of queries only, nothing to wait for
        # key -> [rows, time of the latest attempt, its bytes, metas of the capture points that saw it].
        # Oldest last attempt first, and an OrderedDict: a dict finds its first entry by skipping the ones popped
        # before it, which made evicting and expiring the oldest queries quadratic (35 s for 300k unanswered).
        self.pending: "OrderedDict[Key, list]" = OrderedDict()
        # key -> [time, bytes, metas] of the last answer (queries only: of the last query), to recognise its copies
        # and repeats; oldest first, bounded like pending
        self.recent: "OrderedDict[Key, list]" = OrderedDict()
        # id(message) -> (message, its query row templates): parse_message hands back the same Message object for
        # the same bytes, so the columns that depend on the message alone are filled once, not once per packet
        self._templates: Dict[int, Tuple[Message, List[Row]]] = {}
        self._cache_clears = cache_stats["clears"]
        self.queries = 0
        self.responses = 0
        self.duplicates = 0
        self.retries = 0  # attempts after the first (each also counted in queries)
        self.repeated_responses = 0
        self.unanswered = 0
        self.response_only = 0

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
            recent = self.recent
            seen = recent.get(key)
            if seen is not None:
                if _is_copy(seen, seg):
                    self.duplicates += 1
                    seen[2].append(meta)
                    return
                del recent[key]
            recent[key] = [ts, _fingerprint(payload), [meta]]
            if len(recent) > self.max_pending:
                recent.popitem(last=False)
        pending = self.pending
        waiting = pending.get(key)
        if waiting is not None:
            rows = waiting[0]
            if _same_questions(rows, msg):
                if _is_copy(waiting[1:], seg):
                    self.duplicates += 1
                    waiting[3].append(meta)
                    if meta is not None and meta.pid is not None and rows[0][I_PID] is None:
                        for row in rows:  # the copy that knows its sender wins
                            _fill_meta(row, seg)
                            if self.enrich is not None:
                                self.enrich(row, seg)
                    return
                # a retry: one more attempt of the same question, and the wait starts again from it
                self.queries += 1
                self.retries += 1
                waiting[1], waiting[2], waiting[3] = ts, _fingerprint(payload), [meta]
                for row in rows:
                    row[I_ATTEMPTS] += 1
                pending.move_to_end(key)
                return
            self._emit_unanswered(key)  # same id and ports, other question: a new query
        self.queries += 1
        hit = self._templates.get(id(msg))
        templates = hit[1] if hit is not None and hit[0] is msg else self._query_templates(msg, len(payload))
        rows = []
        for template in templates:
            row = template.copy()
            row[I_TS] = ts
            row[I_CAP] = self.capture_id
            row[I_SRC] = src
            row[I_SPORT] = sport
            row[I_DST] = dst
            row[I_DPORT] = dport
            row[I_PROTO] = proto
            row[I_ID] = dns_id
            row[I_QSIZE] = len(payload)
            row[I_IFNAME] = ifname
            if meta is not None:
                _fill_meta(row, seg)
            if self.enrich is not None:
                self.enrich(row, seg)
            rows.append(row)
            if self.on_query is not None:
                self.on_query(row)
        if not self.expect_responses:
            for row in rows:
                row[I_STATUS] = "query_only"
                self.emit(row)
            return
        pending[key] = [rows, ts, _fingerprint(payload), [meta]]
        if len(pending) > self.max_pending:
            self._emit_unanswered(next(iter(pending)))

    def _query_templates(self, msg: Message, size: int = 0) -> List[Row]:
        """Rows of a query message (one per question) with the columns that depend on the message alone."""
        templates = []
        for q in msg.questions:
            row = _message_row(q, msg)
            row[I_QFLAGS] = msg.flags
            row[I_EDNS_SIZE] = msg.edns_udp_size
            row[I_EDNS_DO] = msg.edns_do
            row[I_ECS] = msg.ecs
            row[I_ATTEMPTS] = 1
            templates.append(row)
        if size > CACHE_MAX_KEY:
            return templates  # the decode cache does not keep this message: its template would never be hit
        # When the decode cache starts over, its messages are decoded anew (new objects): templates of the old
        # ones can never be hit again, so they go too.
        if len(self._templates) >= MAX_TEMPLATES or self._cache_clears != cache_stats["clears"]:
            self._templates.clear()
            self._cache_clears = cache_stats["clears"]
        self._templates[id(msg)] = (msg, templates)  # holding msg keeps its id from being reused
        return templates

    def response(self, seg: Segment, msg: Message, dns_id: int) -> None:
        self.responses += 1
        ts, src, sport, dst, dport, proto, payload, _ifname, meta = seg
        key = (dst, dport, src, sport, proto, dns_id)
        pending = self.pending
        waiting = pending.get(key)
        if waiting is not None and msg.questions and not _same_questions(waiting[0], msg):
            waiting = None  # same id and ports, another question: not its answer
        recent = self.recent
        if waiting is None:
            seen = recent.get(key)
            if seen is not None:
                if _is_copy(seen, seg):
                    self.duplicates += 1
                    self.responses -= 1
                    seen[2].append(meta)
                    return
                if _fingerprint(payload) == seen[1] and ts - seen[0] <= REPEAT_WINDOW:
                    self.repeated_responses += 1
                    return
            self._response_only(seg, msg, dns_id)
            return
        del pending[key]
        rows, last_attempt = waiting[0], waiting[1]
        recent.pop(key, None)  # an earlier answer under this key: this one replaces it, at the end
        recent[key] = [ts, _fingerprint(payload), [meta]]
        if len(recent) > self.max_pending:
            recent.popitem(last=False)
        rcode_num, answers, ancount, flags = msg.rcode, msg.answers, msg.ancount, msg.flags
        rcode = rcode_text(rcode_num)
        size = len(payload)
        latency = round((ts - last_attempt) * 1000.0, 3)
        for row in rows:
            row[I_STATUS] = "answered"
            row[I_RCODE] = rcode
            row[I_RCODE_NUM] = rcode_num
            row[I_ANSWERS] = answers
            row[I_ANCOUNT] = ancount
            row[I_LATENCY] = latency
            row[I_FIRST_LATENCY] = round((ts - row[I_TS]) * 1000.0, 3)
            row[I_RTS] = ts
            row[I_RFLAGS] = flags
            row[I_RSIZE] = size
            if msg.decoder == "raw" and row[I_DECODER] != "raw":
                row[I_DECODER] = "raw"
                row[I_NOTE] = "response: " + (msg.note or "")
            if self.on_response is not None:
                self.on_response(row)
            self.emit(row)

    def _response_only(self, seg: Segment, msg: Message, dns_id: int) -> None:
        self.response_only += 1
        for q in msg.questions or (None,):
            row = _message_row(q, msg)
            row[I_TS] = seg.ts
            row[I_CAP] = self.capture_id
            row[I_SRC] = seg.dst  # the client, as in query rows
            row[I_SPORT] = seg.dport
            row[I_DST] = seg.src
            row[I_DPORT] = seg.sport
            row[I_PROTO] = seg.proto
            row[I_ID] = dns_id
            row[I_STATUS] = "response_only"
            row[I_ATTEMPTS] = 0
            row[I_RCODE] = rcode_text(msg.rcode)
            row[I_RCODE_NUM] = msg.rcode
            row[I_ANSWERS] = msg.answers
            row[I_ANCOUNT] = msg.ancount
            row[I_RTS] = seg.ts
            row[I_RFLAGS] = msg.flags
            row[I_RSIZE] = len(seg.payload)
            row[I_IFNAME] = seg.ifname
            if seg.meta is not None:
                row[I_NETNS] = seg.meta.netns
                row[I_IFNAME] = seg.meta.ifname or seg.ifname
            if self.on_response is not None:
                self.on_response(row)
            self.emit(row)

    # -- time ----------------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Emit queries whose latest attempt is older than the timeout as unanswered (``now`` is capture time or
        wall clock), and forget answers too old to have copies or repeats."""
        pending = self.pending
        limit = now - self.timeout
        while pending:
            key = next(iter(pending))
            if pending[key][1] > limit:
                break
            self._emit_unanswered(key)
        recent = self.recent
        old = now - (COPY_WINDOW if not self.expect_responses else REPEAT_WINDOW)
        while recent:
            key = next(iter(recent))
            if recent[key][0] >= old:
                break
            del recent[key]

    def flush(self) -> None:
        """End of the capture: every query still waiting is unanswered."""
        while self.pending:
            self._emit_unanswered(next(iter(self.pending)))
        self.recent.clear()

    def _emit_unanswered(self, key: Key) -> None:
        rows = self.pending.pop(key)[0]
        self.unanswered += 1
        for row in rows:
            row[I_STATUS] = "unanswered"
            self.emit(row)


def _fingerprint(payload: bytes):
    """What the copy and repeat checks keep of a message: its bytes when small, else its length and hash, so
    the pending and recent tables never hold 64 KiB messages (a hostile sender's 60 KB queries took ~2 GB).
    Python's bytes hash is keyed per process (SipHash), so a sender cannot make two messages collide."""
    return payload if len(payload) <= FINGERPRINT_BYTES else (len(payload), hash(payload))


def _is_copy(seen: list, seg: Segment) -> bool:
    """Is ``seg`` a copy of the sighting ``seen`` ([time, bytes, metas of the capture points that saw it])?
    The same bytes within COPY_WINDOW, at a capture point that has not seen them yet. Without live metadata
    (files) the point is unknown and time decides."""
    if abs(seg[0] - seen[0]) > COPY_WINDOW or _fingerprint(seg[6]) != seen[1]:
        return False
    meta = seg[8]
    if meta is None:
        return True
    point = (meta.netns, meta.ifindex, meta.pkt_type)
    for m in seen[2]:
        if m is None:
            return True
        if (m.netns, m.ifindex, m.pkt_type) == point:
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


def _same_questions(rows: List[Row], msg: Message) -> bool:
    questions = msg.questions
    if len(rows) != len(questions):
        return False
    for row, (qname, qtype, _qclass) in zip(rows, questions):
        name = row[I_QNAME]
        # names are compared case-insensitively; an exact match (the usual echo) skips lower()
        if row[I_QTYPE_NUM] != qtype or (name != qname and name.lower() != qname.lower()):
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
