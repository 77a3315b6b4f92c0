"""Match responses to their queries and build the rows of the ``queries`` table.

A query waits (bounded in number and time) for its response: same client and server address and port,
same transport, same DNS id and the same question. Then its row is completed and emitted. A query that
times out is emitted as 'unanswered'; a response with no waiting query becomes a 'response_only' row.
A copy of a message seen again on another interface (loopback in and out, a packet routed through the
host) is stored once and counted in ``duplicates``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from dnswatch.dns import Message, opcode_text, qclass_text, qtype_text, rcode_text
from dnswatch.model import Segment
from dnswatch.schema import Q, QUERY_COLUMNS

Row = List[object]
Key = Tuple[str, int, str, int, str, int]

DEFAULT_TIMEOUT = 5.0
MAX_PENDING = 200_000
DUPLICATE_WINDOW = 2.0  # seconds during which a second copy of an answered response is a duplicate

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
        self.pending: Dict[Key, List[Row]] = {}
        self.recent: Dict[Key, float] = {}  # answered keys, to recognise a second copy of the response
        self.queries = 0
        self.responses = 0
        self.duplicates = 0
        self.unanswered = 0
        self.response_only = 0

    # -- messages ------------------------------------------------------------------------------
    def message(self, seg: Segment, msg: Message, dns_id: int) -> None:
        if msg.qr:
            self._response(seg, msg, dns_id)
        else:
            self._query(seg, msg, dns_id)

    def _query(self, seg: Segment, msg: Message, dns_id: int) -> None:
        key = (seg.src, seg.sport, seg.dst, seg.dport, seg.proto, dns_id)
        if not self.expect_responses:
            seen = self.recent.get(key)
            if seen is not None and seg.ts - seen <= DUPLICATE_WINDOW:
                self.duplicates += 1
                return
            self.recent[key] = seg.ts
        waiting = self.pending.get(key)
        if waiting is not None:
            if _same_questions(waiting, msg):
                self.duplicates += 1
                meta = seg.meta
                if meta is not None and meta.pid is not None and waiting[0][I_PID] is None:
                    for row in waiting:  # the copy that knows its sender wins
                        _fill_meta(row, seg)
                        if self.enrich is not None:
                            self.enrich(row, seg)
                return
            self._emit_unanswered(key)  # same id and ports, other question: a new query
        self.queries += 1
        rows = []
        for q in msg.questions:
            row = [None] * _N
            row[I_TS] = seg.ts
            row[I_CAP] = self.capture_id
            row[I_SRC] = seg.src
            row[I_SPORT] = seg.sport
            row[I_DST] = seg.dst
            row[I_DPORT] = seg.dport
            row[I_PROTO] = seg.proto
            row[I_ID] = dns_id
            row[I_QNAME] = q.qname
            row[I_QTYPE] = qtype_text(q.qtype)
            row[I_QTYPE_NUM] = q.qtype
            row[I_QCLASS] = qclass_text(q.qclass)
            row[I_OPCODE] = opcode_text(msg.opcode)
            row[I_QFLAGS] = msg.flags
            row[I_EDNS_SIZE] = msg.edns_udp_size
            row[I_EDNS_DO] = msg.edns_do
            row[I_ECS] = msg.ecs
            row[I_QSIZE] = len(seg.payload)
            row[I_DECODER] = msg.decoder
            row[I_NOTE] = msg.note
            row[I_IFNAME] = seg.ifname
            if seg.meta is not None:
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
        self.pending[key] = rows
        if len(self.pending) > self.max_pending:
            self._emit_unanswered(next(iter(self.pending)))

    def _response(self, seg: Segment, msg: Message, dns_id: int) -> None:
        self.responses += 1
        key = (seg.dst, seg.dport, seg.src, seg.sport, seg.proto, dns_id)
        rows = self.pending.pop(key, None)
        if rows is not None and msg.questions and not _same_questions(rows, msg):
            self.pending[key] = rows  # same id and ports, another question: not its answer
            rows = None
        if rows is None:
            seen = self.recent.get(key)
            if seen is not None and seg.ts - seen <= DUPLICATE_WINDOW:
                self.duplicates += 1
                self.responses -= 1
                return
            self._response_only(seg, msg, dns_id)
            return
        self.recent[key] = seg.ts
        rcode, rcode_num = rcode_text(msg.rcode), msg.rcode
        size = len(seg.payload)
        for row in rows:
            row[I_STATUS] = "answered"
            row[I_RCODE] = rcode
            row[I_RCODE_NUM] = rcode_num
            row[I_ANSWERS] = msg.answers
            row[I_ANCOUNT] = msg.ancount
            row[I_LATENCY] = round((seg.ts - row[I_TS]) * 1000.0, 3)
            row[I_RTS] = seg.ts
            row[I_RFLAGS] = msg.flags
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
            row = [None] * _N
            row[I_TS] = seg.ts
            row[I_CAP] = self.capture_id
            row[I_SRC] = seg.dst  # the client, as in query rows
            row[I_SPORT] = seg.dport
            row[I_DST] = seg.src
            row[I_DPORT] = seg.sport
            row[I_PROTO] = seg.proto
            row[I_ID] = dns_id
            if q is not None:
                row[I_QNAME] = q.qname
                row[I_QTYPE] = qtype_text(q.qtype)
                row[I_QTYPE_NUM] = q.qtype
                row[I_QCLASS] = qclass_text(q.qclass)
            row[I_OPCODE] = opcode_text(msg.opcode)
            row[I_STATUS] = "response_only"
            row[I_RCODE] = rcode_text(msg.rcode)
            row[I_RCODE_NUM] = msg.rcode
            row[I_ANSWERS] = msg.answers
            row[I_ANCOUNT] = msg.ancount
            row[I_RTS] = seg.ts
            row[I_RFLAGS] = msg.flags
            row[I_RSIZE] = len(seg.payload)
            row[I_DECODER] = msg.decoder
            row[I_NOTE] = msg.note
            row[I_IFNAME] = seg.ifname
            if seg.meta is not None:
                row[I_NETNS] = seg.meta.netns
                row[I_IFNAME] = seg.meta.ifname or seg.ifname
            if self.on_response is not None:
                self.on_response(row)
            self.emit(row)

    # -- time ----------------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Emit queries older than the timeout as unanswered (``now`` is capture time or wall clock)."""
        pending = self.pending
        limit = now - self.timeout
        while pending:
            key = next(iter(pending))
            if pending[key][0][I_TS] > limit:
                break
            self._emit_unanswered(key)
        if self.recent:
            old = now - DUPLICATE_WINDOW
            for key in [k for k, t in self.recent.items() if t < old]:
                del self.recent[key]

    def flush(self) -> None:
        """End of the capture: every query still waiting is unanswered."""
        while self.pending:
            self._emit_unanswered(next(iter(self.pending)))
        self.recent.clear()

    def _emit_unanswered(self, key: Key) -> None:
        rows = self.pending.pop(key)
        self.unanswered += 1
        for row in rows:
            row[I_STATUS] = "unanswered"
            self.emit(row)


def _same_questions(rows: List[Row], msg: Message) -> bool:
    if len(rows) != len(msg.questions):
        return False
    for row, q in zip(rows, msg.questions):
        if row[I_QTYPE_NUM] != q.qtype or row[I_QNAME].lower() != q.qname.lower():
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
