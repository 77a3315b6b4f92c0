"""Decode DNS messages: dnslib first, then a bounded raw-wire reader for what dnslib refuses.

Plain messages (the common types, well-formed) are read by a fast reader instead, which gives exactly what
dnslib's reading gives and leaves every other message to it (``_decode_fast``, tests/test_dns_fast.py).

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
from json.encoder import encode_basestring_ascii as _json_str
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from dnslib import CLASS, OPCODE, QTYPE, RCODE, RD, RR, DNSError, DNSHeader, DNSLabel, DNSQuestion
from dnslib.buffer import BufferError as _DnslibBufferError
from dnslib.label import DNSBuffer

from dnswatch.model import ipv6_text

MAX_POINTER_JUMPS = 64  # more than any legitimate name needs; stops compression loops
MAX_NAME_LENGTH = 255
CACHE_SIZE = 65536  # messages
CACHE_BYTES = 8 << 20  # bytes held: each key, its decoded answers and CACHE_ENTRY_OVERHEAD
CACHE_ENTRY_OVERHEAD = 448  # the Message tuple, its question and qname, the dict slot (measured, tracemalloc)
CACHE_MAX_KEY = 512  # larger messages are decoded every time: they rarely repeat, and would crowd out the rest
# What one message may cost. Real messages ask one question (the kernel filter drops UDP queries with more
# than 16); the first MAX_QUESTIONS become rows and the rest are counted in the note. A 65 KB TCP message
# can hold 10,800 questions or 5,900 records, each name a pointer chain: records past MAX_RECORDS are not
# read, and names share one budget of label and pointer steps per message (names are cached by offset, so
# compression costs one step per pointer).
MAX_QUESTIONS = 16
MAX_RECORDS = 2048
NAME_STEPS = 32768

OPT = 41
EDNS_OPTION_ECS = 8
_NAME_TYPES = frozenset((2, 5, 12, 39))  # NS CNAME PTR DNAME: rdata is one domain name
TYPE_MX, TYPE_TXT, TYPE_SOA, TYPE_SRV, TYPE_SPF, TYPE_AAAA = 15, 16, 6, 33, 99, 28
_FLAG_BITS = (("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100), ("ra", 0x0080), ("ad", 0x0020), ("cd", 0x0010))


def _escape_table(escaped: Tuple[int, ...], lowest_plain: int) -> List[str]:
    """Presentation form of each byte: ``escaped`` bytes with a backslash, bytes from ``lowest_plain`` to '~' as
    they are, every other byte as decimal ``\\DDD`` (as dig writes them)."""
    table = []
    for b in range(256):
        if b in escaped:
            table.append("\\" + chr(b))
        elif lowest_plain <= b <= 0x7E:
            table.append(chr(b))
        else:
            table.append("\\%03d" % b)
    return table


_ESCAPE = _escape_table((0x2E, 0x5C), 0x21)  # labels: '.' and '\' escaped, no space
_PLAIN = frozenset(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))
# <character-string> (TXT, SPF): '"' and '\' escaped, printable ASCII with the space as is
_STRING_ESCAPE = _escape_table((0x22, 0x5C), 0x20)


def string_text(data: bytes) -> str:
    """One <character-string> (TXT, SPF, NAPTR, HINFO...) quoted, as dig shows it."""
    return '"' + "".join([_STRING_ESCAPE[b] for b in data]) + '"'


def strings_text(strings) -> str:
    """Several character-strings: each quoted, separated by one space (``"a" "b"``)."""
    return " ".join(string_text(bytes(x)) for x in strings)


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


# parse_message's cache: the bytes after the ID -> the decoded message. Callers on a hot path may look a message
# up here first (``DECODED.get(payload[2:])``), and call parse_message when it is not there.
DECODED: Dict[bytes, Union[Message, Malformed]] = {}
_cache = DECODED
_cache_bytes = 0  # cost of what DECODED holds (see CACHE_BYTES)
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
    fast = _decode_fast(payload)
    return fast if fast is not None else _decode_dnslib(payload)


def _decode_dnslib(payload: bytes) -> Union[Message, Malformed]:
    """dnslib's reading of a message (of 12 bytes or more), the raw reader where dnslib refuses it."""
    try:
        parsed = _parse_bounded(payload)
    except Exception as exc:  # dnslib raises DNSError, but also ValueError/RecursionError on hostile input
        return _decode_raw(payload, f"dnslib: {_short(exc)}")
    try:
        return _from_dnslib(parsed, payload)
    except Exception as exc:  # rdata that dnslib parsed but cannot render
        return _decode_raw(payload, f"dnslib: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return (type(exc).__name__ + ": " + text)[:200]


class _Buffer(DNSBuffer):
    """dnslib's buffer with a name reader that costs what the bytes are worth: iterative (dnslib recurses
    once per pointer, so a chain of pointers is quadratic and ends in RecursionError), names cached by
    offset, pointers strictly backwards, and one budget of steps for the whole message."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.names: Dict[int, Tuple[Tuple[bytes, ...], int]] = {}  # offset -> (labels, end or -1)
        self.steps = NAME_STEPS

    def decode_name(self, last=-1):
        data, names = self.data, self.names
        pos = self.offset
        labels: List[bytes] = []
        starts: List[Tuple[int, int]] = [(pos, 0)]  # name starts and pointer targets: cached at the end
        end = -1
        while True:
            hit = names.get(pos)
            if hit is not None:
                labels.extend(hit[0])
                if end < 0:
                    end = hit[1] if hit[1] >= 0 else pos + _name_span(data, pos)
                break
            self.steps -= 1
            if self.steps < 0:
                raise _DnslibBufferError("names cost more than %d steps" % NAME_STEPS)
            if pos >= len(data):
                raise _DnslibBufferError("Not enough bytes [offset=%d,remaining=0,requested=1]" % pos)
            n = data[pos]
            if n & 0xC0 == 0xC0:
                if pos + 1 >= len(data):
                    raise _DnslibBufferError("Not enough bytes [offset=%d]" % pos)
                target = ((n & 0x3F) << 8) | data[pos + 1]
                if target >= pos:  # a pointer must point to a prior occurrence: no loops possible
                    raise _DnslibBufferError("Invalid pointer in DNSLabel [offset=%d,pointer=%d,length=%d]"
                                             % (pos + 2, target, len(data)))
                if end < 0:
                    end = pos + 2
                pos = target
                starts.append((pos, len(labels)))
                continue
            if n & 0xC0:
                raise _DnslibBufferError("Invalid label type %#x [offset=%d]" % (n & 0xC0, pos))
            if n == 0:
                if end < 0:
                    end = pos + 1
                break
            label = data[pos + 1:pos + 1 + n]
            if len(label) < n:
                raise _DnslibBufferError("Not enough bytes [offset=%d,remaining=%d,requested=%d]"
                                         % (pos + 1, len(data) - pos - 1, n))
            try:
                label.decode()
            except UnicodeDecodeError:  # dnslib's rule: such a message goes to the raw reader
                raise _DnslibBufferError("Invalid label <%s>" % bytes(label)) from None
            labels.append(label)
            pos += 1 + n
        for start, i in starts:
            if start not in names:
                names[start] = (tuple(labels[i:]), end if i == 0 else -1)
        self.offset = end
        return DNSLabel(labels)


def _name_span(data: bytes, pos: int) -> int:
    """Bytes the name at ``pos`` occupies where it is written (up to its end or its first pointer)."""
    start = pos
    while True:
        n = data[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2 - start
        if n == 0:
            return pos + 1 - start
        pos += 1 + n


def _skip_name(data: bytes, pos: int) -> int:
    """Offset after the name at ``pos``, without following pointers (cheap: for questions not recorded)."""
    while True:
        if pos >= len(data):
            raise _WireError("name runs past the end of the message")
        n = data[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n & 0xC0:
            raise _WireError(f"unsupported label type {n & 0xC0:#x}")
        if n == 0:
            return pos + 1
        pos += 1 + n


class _Parsed(NamedTuple):
    header: object
    questions: list
    answers: list
    additional: list
    note: Optional[str]


def _parse_bounded(payload: bytes) -> _Parsed:
    """dnslib's DNSRecord.parse within the bounds above: the first MAX_QUESTIONS questions, the other
    questions skipped on the wire, at most MAX_RECORDS records, and names through ``_Buffer``."""
    buf = _Buffer(payload)
    header = DNSHeader.parse(buf)
    notes: List[str] = []
    questions = [DNSQuestion.parse(buf) for _ in range(min(header.q, MAX_QUESTIONS))]
    if header.q > MAX_QUESTIONS:
        notes.append(f"qdcount {header.q}: only the first {MAX_QUESTIONS} questions recorded, "
                     f"{header.q - MAX_QUESTIONS} not")
        pos = buf.offset
        try:
            for _ in range(header.q - MAX_QUESTIONS):
                pos = _skip_name(payload, pos) + 4
            if pos > len(payload):
                raise _WireError("question runs past the end of the message")
        except _WireError as exc:
            notes.append(f"records not read: {exc}")
            return _Parsed(header, questions, [], [], "; ".join(notes))
        buf.offset = pos
    budget = MAX_RECORDS
    sections: List[list] = []
    for count in (header.a, header.auth, header.ar):
        records = []
        for _ in range(min(count, budget)):
            start = buf.offset
            try:
                records.append(_parse_rr(buf))
            except _DnslibBufferError as exc:  # as dnslib's own RR.parse reports it
                raise DNSError("Error unpacking RR [offset=%d]: %s" % (start, exc)) from None
        budget -= len(records)
        sections.append(records)
    total = header.a + header.auth + header.ar
    if total > MAX_RECORDS:
        notes.append(f"{total} records: only the first {MAX_RECORDS} read")
    return _Parsed(header, questions, sections[0], sections[2], "; ".join(notes) or None)


def _parse_rr(buf: _Buffer):
    start = buf.offset
    rname = buf.decode_name()
    if buf.offset + 10 > len(buf.data):
        raise _DnslibBufferError("Not enough bytes [offset=%d]" % buf.offset)
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", buf.data, buf.offset)
    rdata_end = buf.offset + 10 + rdlen
    if rdata_end > len(buf.data):
        raise _DnslibBufferError("rdata runs past the end [offset=%d,rdlength=%d]" % (buf.offset + 10, rdlen))
    if rdlen == 0 and rtype != OPT:  # empty rdata (UPDATE deletions, empty NULL): dnslib refuses, dig prints \# 0
        rr = RR(rname, rtype, rclass, ttl, RD(b""))
    else:
        buf.offset = start  # the owner name is cached now
        rr = RR.parse(buf)
        if buf.offset > rdata_end:
            raise _DnslibBufferError("rdata longer than its rdlength [offset=%d]" % (rdata_end - rdlen))
    buf.offset = rdata_end
    rr.rdata_pos = rdata_end - rdlen
    return rr


def _from_dnslib(parsed: _Parsed, payload: bytes) -> Message:
    h = parsed.header
    bitmap = (payload[2] << 8) | payload[3]
    questions = tuple(Question(name_text(q.qname.label), q.qtype, q.qclass) for q in parsed.questions)
    udp_size = do = ecs = None
    ext_rcode = 0
    for rr in parsed.additional:
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
            [{"name": name_text(rr.rname.label), "type": qtype_text(rr.rtype), "ttl": rr.ttl, "data": _rdata_text(rr, payload)}
             for rr in parsed.answers],
            ensure_ascii=True,
        )
    return Message(qr, (bitmap >> 11) & 0xF, _flags(bitmap), (ext_rcode << 4) | (bitmap & 0xF), h.q, h.a,
                   questions, answers, udp_size, do, ecs, "dnslib", parsed.note)


def _name(label) -> str:
    return name_text(label.label)


def _rdata_text(rr, payload: bytes) -> str:
    """rdata in presentation form as dig prints it, names as ``name_text`` writes every name."""
    t, rd = rr.rtype, rr.rdata
    if type(rd) is RD:  # a type dnslib has no class for (DNAME, SPF...): read from the wire
        return wire_rdata_text(payload, rr.rdata_pos, len(rd.data), t)
    if t in _NAME_TYPES:
        return _name(rd.label)
    if t == TYPE_AAAA:  # (dnslib compresses the first run of zero groups, not the longest as dig does)
        return ipv6_text(bytes(rd.data))
    if t == TYPE_MX:
        return "%d %s" % (rd.preference, _name(rd.label))
    if t == TYPE_TXT:
        return strings_text(rd.data)
    if t == TYPE_SOA:
        return "%s %s %s" % (_name(rd.mname), _name(rd.rname), " ".join(str(x) for x in rd.times))
    if t == TYPE_SRV:
        return "%d %d %d %s" % (rd.priority, rd.weight, rd.port, _name(rd.target))
    cls = type(rd).__name__
    if cls == "NAPTR":
        return "%d %d %s %s %s %s" % (rd.order, rd.preference, string_text(rd.flags), string_text(rd.service),
                                      string_text(rd.regexp), _name(rd.replacement))
    if cls == "RP":
        return "%s %s" % (_name(rd.mbox), _name(rd.txt))
    if cls == "NSEC":
        return " ".join([_name(rd.label)] + [str(x) for x in rd.rrlist])
    if cls == "RRSIG":
        text = repr(rd).split(" ")
        text[7] = _name(rd.name)
        return " ".join(text)
    if cls == "HTTPS":  # SVCB form: priority, target, parameters as dnslib writes them
        text = repr(rd).split(" ")
        text[1] = name_text(rd.target)
        return " ".join(text)
    return repr(rd)  # A, DS, DNSKEY, CAA, SSHFP, TLSA, LOC: dnslib writes these as dig does


def generic_rdata(data: bytes) -> str:
    """RFC 3597 form for rdata of a type without a text form: ``\\# <length> <HEX>`` (dig's case)."""
    return "\\# %d %s" % (len(data), data.hex().upper()) if data else "\\# 0"


def _wire_strings(data: bytes, pos: int, end: int) -> str:
    """Character-strings from ``data[pos:end]`` (TXT, SPF); damaged ones fall back to the generic form."""
    strings = []
    start = pos
    while pos < end:
        n = data[pos]
        if pos + 1 + n > end:
            return generic_rdata(data[start:end])
        strings.append(data[pos + 1:pos + 1 + n])
        pos += 1 + n
    return strings_text(strings)


def _ecs_text(data: bytes) -> Optional[str]:
    if len(data) < 4:
        return None
    family, source_len = struct.unpack("!HB", data[:3])
    addr = data[4:]
    try:
        if family == 1:
            return "%s/%d" % (ipaddress.IPv4Address(addr.ljust(4, b"\0")[:4]), source_len)
        if family == 2:
            return "%s/%d" % (ipv6_text(addr.ljust(16, b"\0")[:16]), source_len)
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
    for _ in range(min(qd, MAX_QUESTIONS)):
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
    elif qd > MAX_QUESTIONS:
        note += f"; qdcount {qd}: only the first {MAX_QUESTIONS} questions recorded, {qd - MAX_QUESTIONS} not"
        try:
            for _ in range(qd - MAX_QUESTIONS):
                pos = _skip_name(payload, pos) + 4
        except _WireError:
            pos = len(payload)
    if qd != len(questions) and (problem or qd <= MAX_QUESTIONS):
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
        if pos + rdlen > len(payload):
            break
        out.append({"name": name_text(labels), "type": qtype_text(rtype), "ttl": ttl,
                    "data": wire_rdata_text(payload, pos, rdlen, rtype)})
        pos += rdlen
    return out


def wire_rdata_text(payload: bytes, pos: int, rdlen: int, rtype: int) -> str:
    """rdata read from the wire in the same presentation form as ``_rdata_text`` (for the types it knows;
    others, and rdata that does not add up, in the RFC 3597 generic form)."""
    end = pos + rdlen
    rdata = bytes(payload[pos:end])
    try:
        if rtype == 1 and rdlen == 4:
            return str(ipaddress.IPv4Address(rdata))
        if rtype == 28 and rdlen == 16:
            return ipv6_text(rdata)
        if rtype in _NAME_TYPES:
            labels, after = read_name(payload, pos)
            if after == end:
                return name_text(labels)
        elif rtype == TYPE_MX and rdlen >= 3:
            labels, after = read_name(payload, pos + 2)
            if after == end:
                return "%d %s" % (_u16(payload, pos)[0], name_text(labels))
        elif rtype == TYPE_SRV and rdlen >= 7:
            labels, after = read_name(payload, pos + 6)
            if after == end:
                return "%d %d %d %s" % (*struct.unpack_from("!HHH", payload, pos), name_text(labels))
        elif rtype == TYPE_SOA:
            mname, after = read_name(payload, pos)
            rname, after = read_name(payload, after)
            if after + 20 == end:
                return "%s %s %s" % (name_text(mname), name_text(rname),
                                     " ".join(str(x) for x in struct.unpack_from("!IIIII", payload, after)))
        elif rtype in (TYPE_TXT, TYPE_SPF) and rdlen:
            return _wire_strings(payload, pos, end)
    except _WireError:
        pass
    return generic_rdata(rdata)


_u16 = struct.Struct("!H").unpack_from


# -- fast reader ---------------------------------------------------------------------------------
# Most messages are plain: one question, records of a few common types, names compressed backwards. For those,
# ``_decode_fast`` reads the wire directly into the very Message the dnslib path builds (same texts, same
# checks: strictly backward pointers, UTF-8 labels, the same step budget); anything else it declines (None) and
# dnslib reads it. tests/test_dns_fast.py holds the two to the same output.

class _Decline(Exception):
    pass


_HHIH = struct.Struct("!HHIH").unpack_from
_HH = struct.Struct("!HH").unpack_from
_HHH = struct.Struct("!HHH").unpack_from
_HEADER = struct.Struct("!HHHHHH").unpack_from
_SOA_TIMES = struct.Struct("!IIIII").unpack_from
_NAME_RDATA = frozenset((2, 5, 12))  # NS CNAME PTR (not DNAME: dnslib has no class for it)
_FLAG_TEXT = {m: _flags(m) for m in range(0, 0x800, 0x10) if not m & ~0x07B0}  # every combination of _FLAG_BITS
# one answer as json.dumps writes {"name", "type", "ttl", "data"} (its separators, ensure_ascii's escapes)
_ANSWER_JSON = '{"name": %s, "type": %s, "ttl": %d, "data": %s}'


def _fast_name(data: bytes, pos: int, names: Dict[int, str], budget: List[int]) -> Tuple[str, int]:
    """Text of the name at ``pos`` (name_text's form) and the offset after it, as _Buffer.decode_name reads it;
    raises _Decline where that would raise. ``names``: offset -> text ("" for the root) of names read so far,
    at their starts and pointer targets (what _Buffer caches, so steps here are never fewer than there)."""
    parts: List[str] = []
    starts = [(pos, 0)]
    end = -1
    size = len(data)
    suffix = ""
    steps = 0
    while True:
        steps += 1
        if pos >= size:
            raise _Decline
        n = data[pos]
        if n >= 0xC0:
            if pos + 1 >= size:
                raise _Decline
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if target >= pos:
                raise _Decline
            if end < 0:
                end = pos + 2
            pos = target
            hit = names.get(pos)
            if hit is not None:
                suffix = hit
                break
            starts.append((pos, len(parts)))
            continue
        if n == 0:
            if end < 0:
                end = pos + 1
            break
        if n & 0xC0:
            raise _Decline
        pos += 1
        label = data[pos:pos + n]
        pos += n
        if pos > size:
            raise _Decline
        if _PLAIN.issuperset(label):
            parts.append(label.decode("ascii"))
        else:
            try:
                label.decode()
            except UnicodeDecodeError:
                raise _Decline from None
            parts.append("".join([_ESCAPE[b] for b in label]))
    budget[0] -= steps
    if budget[0] < 0:
        raise _Decline
    if suffix:
        parts.append(suffix)
    for start, i in starts:
        names[start] = ".".join(parts[i:])
    return (".".join(parts) if parts else "."), end


def _decode_fast(payload: bytes) -> Optional[Message]:
    """The Message the dnslib path makes of a plain message, or None (then that path decides)."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    try:
        return _read_fast(payload)
    except (_Decline, IndexError, struct.error):
        return None


def _read_fast(payload: bytes) -> Optional[Message]:
    size = len(payload)
    _id, bitmap, qd, an, ns, ar = _HEADER(payload, 0)
    if qd == 0 or qd > MAX_QUESTIONS or an + ns + ar > MAX_RECORDS:
        return None
    names: Dict[int, str] = {}
    budget = [NAME_STEPS]
    pos = 12
    questions = []
    for _ in range(qd):
        qname, pos = _fast_name(payload, pos, names, budget)
        if pos + 4 > size:
            return None
        qtype, qclass = _HH(payload, pos)
        pos += 4
        questions.append(Question(qname, qtype, qclass))
    qr = bool(bitmap & 0x8000)
    answers = [] if qr else None
    udp_size = do = ecs = None
    ext_rcode = 0
    section = 0
    for count in (an, ns, ar):
        section += 1
        for _ in range(count):
            owner, pos = _fast_name(payload, pos, names, budget)
            if pos + 10 > size:
                return None
            rtype, rclass, ttl, rdlen = _HHIH(payload, pos)
            pos += 10
            end = pos + rdlen
            if end > size:
                return None
            if rtype == OPT:
                if section != 3:
                    return None
                udp_size = rclass
                ext_rcode = ttl >> 24
                do = 1 if ttl & 0x8000 else 0
                while end - pos > 4:  # as dnslib: a last option of 4 bytes or fewer is not read
                    code, length = _HH(payload, pos)
                    pos += 4 + length
                    if pos > end:
                        return None
                    if code == EDNS_OPTION_ECS:
                        ecs = _ecs_text(payload[pos - length:pos])
                pos = end
                continue
            if rdlen == 0:
                return None
            if rtype == 1:
                if rdlen != 4:
                    return None
                text = "%d.%d.%d.%d" % (payload[pos], payload[pos + 1], payload[pos + 2], payload[pos + 3])
                pos = end
            elif rtype == 28:
                if rdlen != 16:
                    return None
                text = ipv6_text(payload[pos:end])
                pos = end
            elif rtype in _NAME_RDATA:
                text, pos = _fast_name(payload, pos, names, budget)
            elif rtype == TYPE_MX:
                text, pos = _fast_name(payload, pos + 2, names, budget)
                text = "%d %s" % ((payload[end - rdlen] << 8) | payload[end - rdlen + 1], text)
            elif rtype == TYPE_SRV:
                text, pos = _fast_name(payload, pos + 6, names, budget)
                text = "%d %d %d %s" % (*_HHH(payload, end - rdlen), text)
            elif rtype == TYPE_SOA:
                mname, pos = _fast_name(payload, pos, names, budget)
                rname, pos = _fast_name(payload, pos, names, budget)
                if pos + 20 != end:
                    return None
                text = "%s %s %d %d %d %d %d" % (mname, rname, *_SOA_TIMES(payload, pos))
                pos = end
            elif rtype == TYPE_TXT:
                strings = []
                while pos < end:
                    n = payload[pos]
                    pos += 1 + n
                    strings.append(payload[pos - n:pos])
                text = strings_text(strings)
            else:
                return None
            if pos != end:
                return None
            if section == 1 and qr:
                answers.append(_ANSWER_JSON % (_json_str(owner), _json_str(qtype_text(rtype)), ttl, _json_str(text)))
    if pos != size:  # trailing bytes: dnslib ignores them, but such a message is not plain
        return None
    if qr:
        answers = "[" + ", ".join(answers) + "]"
    return Message(qr, (bitmap >> 11) & 0xF, _FLAG_TEXT[bitmap & 0x07B0], (ext_rcode << 4) | (bitmap & 0xF), qd, an,
                   tuple(questions), answers, udp_size, do, ecs, "dnslib", None)
