"""Decode DNS messages: dnslib first, then a bounded raw-wire reader for what dnslib refuses.

dnslib rejects labels that are not UTF-8, truncated records and other damage; tunnelling tools send
binary labels on purpose. The raw reader still recovers the header and the questions wherever the
wire format allows (the message is then flagged ``decoder='raw'`` with the reason), and reports
messages that cannot be read at all as :class:`Malformed`.

Names are rendered in presentation form the way tshark and dig show them: printable ASCII as is,
``.`` and ``\\`` inside a label escaped with a backslash, every other byte as ``\\DDD``. So escape
codes and newlines in a name can never reach a terminal or a log raw.
"""
from __future__ import annotations

import ipaddress
import json
import struct
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from dnslib import CLASS, OPCODE, QTYPE, RCODE, DNSRecord

MAX_POINTER_JUMPS = 64  # more than any legitimate name needs; stops compression loops
MAX_NAME_LENGTH = 255
CACHE_SIZE = 65536  # messages
CACHE_BYTES = 16 << 20  # bytes held: each key, its decoded answers and CACHE_ENTRY_OVERHEAD
CACHE_ENTRY_OVERHEAD = 448  # the Message tuple, its question and qname, the dict slot (measured, tracemalloc)
CACHE_MAX_KEY = 512  # larger messages are decoded every time: they rarely repeat, and would crowd out the rest

OPT = 41
EDNS_OPTION_ECS = 8
_NAME_TYPES = frozenset(("CNAME", "NS", "PTR", "DNAME"))
_FLAG_BITS = (("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100), ("ra", 0x0080), ("ad", 0x0020), ("cd", 0x0010))


def _escape_table() -> List[str]:
    table = []
    for b in range(256):
        if b in (0x2E, 0x5C):  # '.' and '\'
            table.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            table.append(chr(b))
        else:
            table.append("\\%03d" % b)
    return table


_ESCAPE = _escape_table()
_PLAIN = frozenset(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))


def label_text(label: bytes) -> str:
    if _PLAIN.issuperset(label):
        return label.decode("ascii")
    return "".join([_ESCAPE[b] for b in label])


def name_text(labels) -> str:
    """Presentation form of a name given as its labels (bytes); the root is ``.``; no trailing dot."""
    if not labels:
        return "."
    return ".".join([label_text(bytes(x)) for x in labels])


def qtype_text(n: int) -> str:
    t = QTYPE.forward.get(n)
    return t if t is not None else f"TYPE{n}"


def qclass_text(n: int) -> str:
    c = CLASS.forward.get(n)
    return c if c is not None else f"CLASS{n}"


def rcode_text(n: int) -> str:
    r = RCODE.forward.get(n)
    if r is not None:
        return r
    return {16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
            22: "BADTRUNC", 23: "BADCOOKIE"}.get(n, f"RCODE{n}")


def opcode_text(n: int) -> str:
    o = OPCODE.forward.get(n)
    return o if o is not None else f"OPCODE{n}"


class Question(NamedTuple):
    qname: str
    qtype: int
    qclass: int


class Message(NamedTuple):
    """What dnswatch keeps of one DNS message. ``dns_id`` is not here: decoded messages are cached by
    their bytes after the ID, and the ID is read per packet."""

    qr: bool
    opcode: int
    flags: str  # "aa rd ra" ...
    rcode: int  # including the EDNS extended bits
    qdcount: int
    ancount: int
    questions: Tuple[Question, ...]
    answers: Optional[str]  # JSON list of {"name", "type", "ttl", "data"}; None for queries
    edns_udp_size: Optional[int]
    edns_do: Optional[int]
    ecs: Optional[str]
    decoder: str  # "dnslib" | "raw"
    note: Optional[str]  # why dnslib refused it, or a header/body mismatch


class Malformed(NamedTuple):
    reason: str


_cache: Dict[bytes, Union[Message, Malformed]] = {}
_cache_bytes = 0  # cost of what _cache holds (see CACHE_BYTES)
cache_stats: Dict[str, int] = {"clears": 0, "uncached_large": 0}


def parse_message(payload: bytes) -> Union[Message, Malformed]:
    """Decode one DNS message (cached on the bytes after the ID, which repeat on a busy node).

    The cache is bounded in entries (CACHE_SIZE) and in bytes (CACHE_BYTES, and no message larger than
    CACHE_MAX_KEY is kept): when full it starts over, counted in ``cache_stats``."""
    global _cache_bytes
    size = len(payload)
    if size < 12:  # not even a header: its length is the whole story, and short keys would collide
        return _decode(payload)
    key = payload[2:]
    hit = _cache.get(key)
    if hit is not None:
        return hit
    result = _decode(payload)
    if size > CACHE_MAX_KEY:
        cache_stats["uncached_large"] += 1
        return result
    cost = size + CACHE_ENTRY_OVERHEAD + len(getattr(result, "answers", None) or "")
    if len(_cache) >= CACHE_SIZE or _cache_bytes + cost > CACHE_BYTES:
        _cache.clear()
        _cache_bytes = 0
        cache_stats["clears"] += 1
    _cache[key] = result
    _cache_bytes += cost
    return result


def dns_id(payload: bytes) -> int:
    return (payload[0] << 8) | payload[1]


def _flags(bitmap: int) -> str:
    return " ".join(name for name, bit in _FLAG_BITS if bitmap & bit)


def _decode(payload: bytes) -> Union[Message, Malformed]:
    if len(payload) < 12:
        return Malformed("empty payload" if not payload else f"truncated header ({len(payload)} bytes)")
    try:
        record = DNSRecord.parse(payload)
    except Exception as exc:  # dnslib raises DNSError, but also ValueError/RecursionError on hostile input
        return _decode_raw(payload, f"dnslib: {_short(exc)}")
    try:
        return _from_dnslib(record, payload)
    except Exception as exc:  # rdata that dnslib parsed but cannot render
        return _decode_raw(payload, f"dnslib: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return (type(exc).__name__ + ": " + text)[:200]


def _from_dnslib(record: DNSRecord, payload: bytes) -> Message:
    h = record.header
    bitmap = (payload[2] << 8) | payload[3]
    questions = tuple(Question(name_text(q.qname.label), q.qtype, q.qclass) for q in record.questions)
    udp_size = do = ecs = None
    ext_rcode = 0
    for rr in record.ar:
        if rr.rtype == OPT:
            udp_size = rr.rclass
            ext_rcode = (rr.ttl >> 24) & 0xFF
            do = 1 if rr.ttl & 0x8000 else 0
            for opt in rr.rdata or ():
                if opt.code == EDNS_OPTION_ECS:
                    ecs = _ecs_text(bytes(opt.data))
    qr = bool(bitmap & 0x8000)
    answers = None
    if qr:
        answers = json.dumps(
            [{"name": name_text(rr.rname.label), "type": qtype_text(rr.rtype), "ttl": rr.ttl, "data": _rdata_text(rr)}
             for rr in record.rr],
            ensure_ascii=True,
        )
    note = None
    if h.q != len(questions):
        note = f"qdcount {h.q} but {len(questions)} questions"
    return Message(qr, (bitmap >> 11) & 0xF, _flags(bitmap), (ext_rcode << 4) | (bitmap & 0xF), h.q, h.a,
                   questions, answers, udp_size, do, ecs, "dnslib", note)


def _rdata_text(rr) -> str:
    t = qtype_text(rr.rtype)
    if t in _NAME_TYPES:
        return name_text(rr.rdata.label)
    return str(rr.rdata)


def _ecs_text(data: bytes) -> Optional[str]:
    if len(data) < 4:
        return None
    family, source_len = struct.unpack("!HB", data[:3])
    addr = data[4:]
    try:
        if family == 1:
            return "%s/%d" % (ipaddress.IPv4Address(addr.ljust(4, b"\0")[:4]), source_len)
        if family == 2:
            return "%s/%d" % (ipaddress.IPv6Address(addr.ljust(16, b"\0")[:16]), source_len)
    except ValueError:
        return None
    return None


# -- raw wire reader -----------------------------------------------------------------------------

class _WireError(Exception):
    pass


def read_name(data: bytes, pos: int) -> Tuple[List[bytes], int]:
    """Labels of the name at ``pos`` and the offset after it. Bounded: pointer loops, pointers out of
    range and over-long names raise ``_WireError``."""
    labels: List[bytes] = []
    end_pos = -1
    jumps = 0
    length = 0
    while True:
        if pos >= len(data):
            raise _WireError("name runs past the end of the message")
        n = data[pos]
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise _WireError("truncated compression pointer")
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if end_pos < 0:
                end_pos = pos + 2
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                raise _WireError("compression pointer loop")
            if target >= len(data):
                raise _WireError(f"compression pointer out of range ({target} >= {len(data)})")
            pos = target
            continue
        if kind:
            raise _WireError(f"unsupported label type {kind:#x}")
        if n == 0:
            return labels, (end_pos if end_pos >= 0 else pos + 1)
        if pos + 1 + n > len(data):
            raise _WireError("label runs past the end of the message")
        labels.append(data[pos + 1:pos + 1 + n])
        length += n + 1
        if length > MAX_NAME_LENGTH:
            raise _WireError("name longer than 255 bytes")
        pos += 1 + n


def _decode_raw(payload: bytes, why: str) -> Union[Message, Malformed]:
    _id, bitmap, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", payload, 0)
    questions: List[Question] = []
    pos = 12
    problem = None
    for _ in range(qd):
        try:
            labels, pos = read_name(payload, pos)
        except _WireError as exc:
            problem = str(exc)
            break
        if pos + 4 > len(payload):
            problem = "question runs past the end of the message"
            break
        qtype, qclass = struct.unpack_from("!HH", payload, pos)
        pos += 4
        questions.append(Question(name_text(labels), qtype, qclass))
    qr = bool(bitmap & 0x8000)
    if not questions and (qd or not qr):
        # nothing to record as a question: a query without one, or questions that cannot be read
        return Malformed(problem or ("query without a question" if qd == 0 else why))
    note = why
    if problem:
        note += f"; {problem}"
    if qd != len(questions):
        note += f"; qdcount {qd} but {len(questions)} questions readable"
    answers = None
    if qr:
        answers = json.dumps(_raw_answers(payload, pos, an), ensure_ascii=True)
    return Message(qr, (bitmap >> 11) & 0xF, _flags(bitmap), bitmap & 0xF, qd, an, tuple(questions), answers,
                   None, None, None, "raw", note[:300])


def _raw_answers(payload: bytes, pos: int, count: int) -> List[dict]:
    out: List[dict] = []
    for _ in range(min(count, 256)):
        try:
            labels, pos = read_name(payload, pos)
        except _WireError:
            break
        if pos + 10 > len(payload):
            break
        rtype, _rclass, ttl, rdlen = struct.unpack_from("!HHIH", payload, pos)
        pos += 10
        rdata = payload[pos:pos + rdlen]
        if len(rdata) < rdlen:
            break
        data: str
        if rtype == 1 and rdlen == 4:
            data = str(ipaddress.IPv4Address(rdata))
        elif rtype == 28 and rdlen == 16:
            data = str(ipaddress.IPv6Address(rdata))
        elif rtype in (2, 5, 12, 39):
            try:
                data = name_text(read_name(payload, pos)[0])
            except _WireError:
                data = "\\# %d %s" % (rdlen, rdata.hex())
        else:
            data = "\\# %d %s" % (rdlen, rdata.hex())  # RFC 3597 generic form
        out.append({"name": name_text(labels), "type": qtype_text(rtype), "ttl": ttl, "data": data})
        pos += rdlen
    return out
