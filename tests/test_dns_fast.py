"""The fast reader (dns._decode_fast) against the dnslib path (dns._decode_dnslib): on every message it either
declines (None) or returns exactly the Message dnslib's reading gives (answers JSON byte for byte)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnswatch import dns
from dnswatch.frames import FrameDecoder
from dnswatch.sources.pcap import PcapReader

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = sorted(p for d in (ROOT / "pcaps", ROOT / "tests") for p in d.rglob("*")
                  if p.is_file() and p.suffix in (".pcap", ".pcapng", ".gz"))


def check(payload: bytes) -> bool:
    """Asserts the two readings agree; True when the fast reader took the message."""
    fast = dns._decode_fast(payload)
    if fast is None:
        return False
    slow = dns._decode_dnslib(payload)
    assert fast == slow, payload.hex()
    assert fast.answers == slow.answers
    return True


def _payloads(path: Path):
    dec = FrameDecoder()
    try:
        with PcapReader(str(path)) as reader:
            for frame in reader.frames():
                yield from (seg.payload for seg in dec.decode(frame))
    except Exception:  # damaged captures: what was read so far
        pass
    yield from (seg.payload for seg in dec.finish())


def test_every_captured_message():
    taken = seen = 0
    for path in CAPTURES:
        for payload in _payloads(path):
            if len(payload) >= 12:
                seen += 1
                taken += check(payload)
    assert seen > 1000 and taken > seen // 2  # most real messages are plain


# -- generated messages ---------------------------------------------------------------------------

_ASCII = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_ODD = st.text("ab-_.\\ \"é\x7f\x00\n", min_size=1, max_size=20)  # escapes and UTF-8
_tame = st.one_of(_ASCII, _ASCII, _ASCII, _ODD).map(lambda s: s.encode()[:63])
_wild = st.one_of(_tame, st.binary(min_size=1, max_size=63))  # any bytes: non-UTF-8 ones are declined
_COMMON = [1, 28, 2, 5, 12, 15, 16, 6, 33]
_RARE = _COMMON + [39, 99, 64, 257]  # types the fast reader leaves to dnslib


class Writer:
    """A message built with name compression: each name either written out or ending in a pointer to a
    name (or a suffix of one) written earlier."""

    def __init__(self, labels):
        self.labels = st.lists(labels, max_size=5)
        self.out = bytearray()
        self.suffixes = {}  # labels tuple -> offset

    def name(self, labels, compress: bool):
        labels = tuple(labels)
        for i in range(len(labels) + 1):
            rest = labels[i:]
            if compress and rest in self.suffixes and rest:
                for lab in labels[:i]:
                    self._label(labels, lab)
                self.out += struct.pack("!H", 0xC000 | self.suffixes[rest])
                return
        for i, lab in enumerate(labels):
            if len(self.out) < 0x3FFF:
                self.suffixes.setdefault(labels[i:], len(self.out))
            self.out += bytes([len(lab)]) + lab
        self.out += b"\0"

    def _label(self, labels, lab):
        self.out += bytes([len(lab)]) + lab


def _rdata(w: Writer, rtype: int, draw) -> None:
    """Appends rdlength and rdata of ``rtype`` (names possibly compressed)."""
    at = len(w.out)
    w.out += b"\0\0"
    comp = draw(st.booleans())
    if rtype == 1:
        w.out += draw(st.binary(min_size=4, max_size=4))
    elif rtype == 28:
        w.out += draw(st.sampled_from([bytes(16), bytes(15) + b"\1", b"\x20\x01\x0d\xb8" + bytes(12),
                                       bytes(10) + b"\xff\xff\xc6\x12\0\1", b"\0\1" * 8,
                                       b"\1\0\0\0\0\0\0\1\0\0\0\0\0\0\0\1"]) | st.binary(min_size=16, max_size=16))
    elif rtype in (2, 5, 12):
        w.name(draw(w.labels), comp)
    elif rtype == 15:
        w.out += struct.pack("!H", draw(st.integers(0, 65535)))
        w.name(draw(w.labels), comp)
    elif rtype == 33:
        w.out += struct.pack("!HHH", *draw(st.tuples(*[st.integers(0, 65535)] * 3)))
        w.name(draw(w.labels), comp)
    elif rtype == 6:
        w.name(draw(w.labels), comp)
        w.name(draw(w.labels), draw(st.booleans()))
        w.out += struct.pack("!IIIII", *draw(st.tuples(*[st.integers(0, 2**32 - 1)] * 5)))
    elif rtype == 16:
        for s in draw(st.lists(st.binary(max_size=40), min_size=1, max_size=4)):
            w.out += bytes([len(s)]) + s
    else:  # any other type: raw bytes
        w.out += draw(st.binary(max_size=12))
    struct.pack_into("!H", w.out, at, len(w.out) - at - 2)


def _opt(w: Writer, draw) -> None:
    w.out += b"\0" + struct.pack("!HHI", 41, draw(st.integers(0, 65535)), draw(st.integers(0, 2**32 - 1)))
    options = b""
    for code in draw(st.lists(st.sampled_from([8, 10, 12, 3]), max_size=3)):
        if code == 8:
            family = draw(st.sampled_from([1, 2, 3]))
            data = struct.pack("!HBB", family, draw(st.integers(0, 128)), 0) + draw(st.binary(max_size=16))
        else:
            data = draw(st.binary(max_size=8))
        options += struct.pack("!HH", code, len(data)) + data
    options += draw(st.sampled_from([b"", b"", b"\0", b"\0\x08\0", b"\0\x08\0\0"]))  # short tails dnslib skips
    w.out += struct.pack("!H", len(options)) + options


@st.composite
def messages(draw):
    w = Writer(_wild if draw(st.integers(0, 4)) == 0 else _tame)
    qd = draw(st.integers(1, 2))
    types = st.sampled_from(_RARE if draw(st.integers(0, 4)) == 0 else _COMMON)
    sections = [draw(st.lists(types, max_size=3))
                for _ in range(3)]
    with_opt = draw(st.booleans())
    flags = draw(st.integers(0, 65535))
    w.out += struct.pack("!HHHHHH", draw(st.integers(0, 65535)), flags, qd, len(sections[0]), len(sections[1]),
                         len(sections[2]) + with_opt)
    qnames = []
    for _ in range(qd):
        labels = draw(w.labels)
        qnames.append(labels)
        w.name(labels, draw(st.booleans()))
        w.out += struct.pack("!HH", draw(st.sampled_from([1, 28, 5, 15, 16, 65, 255, 3000])), draw(st.sampled_from([1, 3, 255, 4096])))
    for types in sections:
        for rtype in types:
            owner = draw(st.sampled_from(qnames)) if draw(st.booleans()) else draw(w.labels)
            w.name(owner, draw(st.booleans()))
            w.out += struct.pack("!HHI", rtype, draw(st.sampled_from([1, 3, 254])), draw(st.integers(0, 2**32 - 1)))
            _rdata(w, rtype, draw)
    if with_opt:
        _opt(w, draw)
    return bytes(w.out)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages(payload):
    check(payload)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
       st.integers(-3, 3))
def test_mutated_messages(payload, flips, cut):
    """Bytes changed (counts, lengths, pointers, labels) and messages cut short or with trailing bytes."""
    data = bytearray(payload)
    for where, value in flips:
        data[where % len(data)] = value
    if cut < 0:
        data = data[:cut]
    else:
        data += bytes(cut)
    if len(data) >= 12:
        check(bytes(data))


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=12, max_size=200))
def test_random_bytes(payload):
    check(payload)


def test_plain_response_is_taken():
    q = b"\3www\7example\3com\0" + struct.pack("!HH", 1, 1)
    payload = (struct.pack("!HHHHHH", 7, 0x8180, 1, 2, 0, 1) + q
               + b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, 6) + b"\3web\xc0\x10"
               + b"\xc0\x2d" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([198, 18, 0, 1])
               + b"\0" + struct.pack("!HHIH", 41, 1232, 0x8000, 11) + struct.pack("!HHHBB", 8, 7, 1, 24, 0) + b"\xc6\x12\x05")
    assert check(payload)
    msg = dns.parse_message(payload)
    assert msg.answers == ('[{"name": "www.example.com", "type": "CNAME", "ttl": 300, "data": "web.example.com"}, '
                           '{"name": "web.example.com", "type": "A", "ttl": 60, "data": "198.18.0.1"}]')
    assert (msg.edns_udp_size, msg.edns_do, msg.ecs, msg.decoder) == (1232, 1, "198.18.5.0/24", "dnslib")


@pytest.mark.parametrize("payload", [
    bytes.fromhex("0001 0100 0001 0000 0000 0000") + b"\1\xff\0" + b"\0\1\0\1",  # non-UTF-8 label: raw reader
    bytes.fromhex("0001 0100 0001 0000 0000 0000") + b"\1a\0\0\1\0\1" + b"\0",  # trailing byte
    bytes.fromhex("0001 0100 0002 0000 0000 0000") + b"\1a\0\0\1\0\1",  # qdcount says 2
])
def test_declined(payload):
    assert dns._decode_fast(payload) is None
