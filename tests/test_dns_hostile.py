"""Hostile and damaged DNS input: never a crash, never a raw control byte, always a reason."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from dnswatch.dns import Malformed, Message, name_text, parse_message, read_name
from dnswatch.frames import FrameDecoder
from dnswatch.model import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW, Frame
from dnswatch.pipeline import Pipeline


def header(dns_id=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", dns_id, flags, qd, an, ns, ar)


def qname(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0"


def test_plain_query():
    msg = parse_message(header() + qname(b"www", b"Example", b"com") + struct.pack("!HH", 28, 1))
    assert isinstance(msg, Message)
    assert msg.questions[0].qname == "www.Example.com"  # case kept, no trailing dot
    assert msg.questions[0].qtype == 28
    assert msg.decoder == "dnslib"


def test_escape_codes_and_newlines_are_escaped():
    msg = parse_message(header(dns_id=1) + qname(b"\x1b[31mred\n", b"example") + b"\0\1\0\1")
    assert msg.questions[0].qname == "\\027[31mred\\010.example"
    assert all(0x20 <= ord(c) < 0x7F for c in msg.questions[0].qname)


def test_non_utf8_labels_fall_back_to_raw_reader():
    msg = parse_message(header(dns_id=2) + qname(b"\xff\xfe\x80", b"t", b"example") + b"\0\x0a\0\1")
    assert isinstance(msg, Message)
    assert msg.decoder == "raw" and "dnslib" in msg.note
    assert msg.questions[0].qname == "\\255\\254\\128.t.example"


def test_dot_and_backslash_inside_label():
    assert name_text([b"a.b\\c", b"com"]) == "a\\.b\\\\c.com"
    assert name_text([]) == "."


def test_compression_loop_is_malformed():
    # the question name is a pointer to itself
    msg = parse_message(header(dns_id=3) + b"\xc0\x0c" + b"\0\1\0\1")
    assert isinstance(msg, Malformed)
    assert "loop" in msg.reason or "pointer" in msg.reason


def test_two_pointer_loop_is_bounded():
    data = header(dns_id=4) + b"\xc0\x0e" + b"\xc0\x0c"  # 12 -> 14 -> 12 ...
    try:
        read_name(data, 12)
        raise AssertionError("loop not detected")
    except Exception as exc:  # noqa: BLE001
        assert "loop" in str(exc)


def test_pointer_out_of_range():
    msg = parse_message(header(dns_id=5) + b"\xc0\xff" + b"\0\1\0\1")
    assert isinstance(msg, Malformed) and "out of range" in msg.reason


def test_truncated_header_and_empty_payload():
    assert parse_message(b"").reason == "empty payload"
    assert "truncated header" in parse_message(b"\x12\x34\x01").reason


def test_qdcount_mismatch_is_noted():
    msg = parse_message(header(dns_id=6, qd=2) + qname(b"one", b"test") + b"\0\1\0\1")
    assert isinstance(msg, Message)
    assert msg.questions[0].qname == "one.test"
    assert "qdcount 2" in msg.note


def test_unknown_type_and_class_mnemonics():
    from dnswatch.dns import qclass_text, qtype_text, rcode_text

    assert qtype_text(65535) == "TYPE65535"
    assert qtype_text(28) == "AAAA"
    assert qclass_text(3) == "CH"
    assert qclass_text(999) == "CLASS999"
    assert rcode_text(3) == "NXDOMAIN"


def test_non_dns_bytes_on_port_53_do_not_crash():
    msg = parse_message(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(msg, (Malformed, Message))


def _eth_ipv4_udp(payload: bytes, sport=40000, dport=53) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([198, 18, 0, 2]),
                     bytes([198, 18, 0, 1]))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_dns_payloads_never_raise(payload):
    result = parse_message(payload)
    assert isinstance(result, (Malformed, Message))
    if isinstance(result, Message):
        for q in result.questions:
            assert q.qname.isascii() and q.qname.isprintable()


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, 999]),
       st.binary(max_size=200))
def test_random_frames_never_raise(linktype, data):
    pipeline = Pipeline(None, "pcap", "fuzz")
    pipeline.feed(Frame(1.0, linktype, data))
    pipeline.feed(Frame(1.0, LINKTYPE_ETHERNET, _eth_ipv4_udp(data)))  # garbage as a DNS payload on port 53
    pipeline.finish()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=120), max_size=12), st.integers(0, 2**32 - 1))
def test_random_tcp_segments_never_raise(chunks, seq):
    dec = FrameDecoder()
    for chunk in chunks:
        tcp = struct.pack("!HHIIBBHHH", 40000, 53, seq, 0, 0x50, 0x18, 65535, 0, 0) + chunk
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, b"\xc6\x12\0\2", b"\xc6\x12\0\1")
        dec.decode(Frame(1.0, LINKTYPE_RAW, ip + tcp))
        seq = (seq + len(chunk)) & 0xFFFFFFFF
    dec.finish()


def test_short_payloads_are_judged_by_their_own_length():
    # the decode cache keys on the bytes after the ID: 0-, 1- and 2-byte payloads must not share an answer
    assert parse_message(b"").reason == "empty payload"
    assert parse_message(b"\x12\x34").reason == "truncated header (2 bytes)"
    assert parse_message(b"\x12").reason == "truncated header (1 bytes)"
