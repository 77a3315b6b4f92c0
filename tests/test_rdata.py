"""rdata in presentation form (as dig prints it), the same from dnslib and from the raw wire reader, and the
bounds on what one message may cost."""
from __future__ import annotations

import json
import struct
import time

import pytest
from dnslib import AAAA, CNAME, DNAME, MX, NS, PTR, QTYPE, RR, SOA, SRV, TXT, A, DNSRecord, RD

from dnswatch import dns


def _response(*records) -> bytes:
    rec = DNSRecord.question("q.example.test", "ANY")
    rec.header.qr = 1
    for rr in records:
        rec.add_answer(rr)
    return bytes(rec.pack())


def _answers(payload: bytes):
    msg = dns._decode(payload)
    assert isinstance(msg, dns.Message)
    return msg, [a["data"] for a in json.loads(msg.answers)]


CASES = [
    (RR("a.example.test", QTYPE.CNAME, rdata=CNAME("b.example.test")), "b.example.test"),
    (RR("80.0.18.198.in-addr.arpa", QTYPE.PTR, rdata=PTR("www.example.test.")), "www.example.test"),
    (RR("example.test", QTYPE.NS, rdata=NS("ns.test")), "ns.test"),
    (RR("x.example.test", QTYPE.DNAME, rdata=DNAME("y.example.test")), "y.example.test"),
    (RR("example.test", QTYPE.MX, rdata=MX("mail.example.test", 10)), "10 mail.example.test"),
    (RR("example.test", QTYPE.MX, rdata=MX(".", 0)), "0 ."),  # null MX: the root
    (RR("_s._udp.example.test", QTYPE.SRV, rdata=SRV(0, 5, 53, "ns.test")), "0 5 53 ns.test"),
    (RR("example.test", QTYPE.SOA, rdata=SOA("ns.test", "hostmaster.test", (1, 2, 3, 4, 5))),
     "ns.test hostmaster.test 1 2 3 4 5"),
    (RR("t.example.test", QTYPE.TXT, rdata=TXT([b'"hello', b'world"'])), '"\\"hello" "world\\""'),
    (RR("t.example.test", QTYPE.TXT, rdata=TXT([b"esc\x1b[31m\n", b"back\\slash", b""])),
     '"esc\\027[31m\\010" "back\\\\slash" ""'),
    (RR("t.example.test", QTYPE.TXT, rdata=TXT([bytes([0x7f, 0x80, 0xff, 0x20])])), '"\\127\\128\\255 "'),
    (RR("www.example.test", QTYPE.A, rdata=A("198.18.0.80")), "198.18.0.80"),
    (RR("www.example.test", QTYPE.AAAA, rdata=AAAA("fd00:18::80")), "fd00:18::80"),
    (RR("t.example.test", 99, rdata=RD(b"\x0bv=spf1 -all\x03a\"b")), '"v=spf1 -all" "a\\"b"'),  # SPF
    (RR("t.example.test", 65280, rdata=RD(b"\x01\xab")), "\\# 2 01AB"),  # unknown type: RFC 3597
]


@pytest.mark.parametrize("rr,text", CASES, ids=[c[1] for c in CASES])
def test_rdata_as_dig_prints_it(rr, text):
    payload = _response(rr)
    msg, data = _answers(payload)
    assert msg.decoder == "dnslib", msg.note
    assert data == [text]
    # the raw wire reader writes the same text
    _q, _qt, _qc = msg.questions[0]
    raw = dns._decode_raw(payload, "test")
    assert [a["data"] for a in json.loads(raw.answers)] == [text]


def test_names_in_rdata_escaped_as_qname():
    label = b"a.b\\c\x1b"
    rr = RR("x.example.test", QTYPE.CNAME, rdata=CNAME(dns.DNSLabel([label, b"example", b"test"])))
    msg, data = _answers(_response(rr))
    assert data == [dns.name_text([label, b"example", b"test"])] == ["a\\.b\\\\c\\027.example.test"]


def test_empty_rdata_is_not_refused():
    rec = DNSRecord.question("u.example.test")
    rec.header.qr = 1
    payload = bytearray(rec.pack())
    payload[7] = 1  # ancount 1: owner = pointer to the question, type NULL, rdlength 0
    payload += b"\xc0\x0c" + struct.pack("!HHIH", 10, 1, 60, 0)
    msg, data = _answers(bytes(payload))
    assert msg.decoder == "dnslib" and data == ["\\# 0"]


def _many_questions(n: int, chained: bool) -> bytes:
    body = bytearray(b"\x03www\x07example\x04test\x00\x00\x01\x00\x01")
    prev = 12
    for _ in range(n - 1):
        off = 12 + len(body)
        body += struct.pack("!H", 0xC000 | (prev if chained else 12)) + b"\x00\x01\x00\x01"
        prev = off
    return struct.pack("!HHHHHH", 1, 0x0100, n, 0, 0, 0) + bytes(body)


@pytest.mark.parametrize("chained", [False, True], ids=["flat", "chained"])
def test_question_bound_and_cost(chained):
    payload = _many_questions(10800, chained)
    assert len(payload) > 64000
    start = time.process_time()
    msg = dns._decode(payload)
    spent = time.process_time() - start
    assert msg.decoder == "dnslib"
    assert len(msg.questions) == dns.MAX_QUESTIONS
    assert {q.qname for q in msg.questions} == {"www.example.test"}
    assert "qdcount 10800: only the first 16 questions recorded, 10784 not" in msg.note
    assert spent < 0.1  # was over a second (dnslib recursing once per pointer)


def test_record_bound_and_pointer_chain_in_records():
    rec = DNSRecord.question("www.example.test")
    rec.header.qr = 1
    head = bytearray(rec.pack())
    n = 5000
    struct.pack_into("!H", head, 6, n)
    body = bytearray()
    prev = 12
    for _ in range(n):  # owner = pointer to the previous owner
        off = len(head) + len(body)
        body += struct.pack("!H", 0xC000 | prev) + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc6\x12\x00\x50"
        if off < 0x3FFF:  # pointers reach 16 KB: the chain is ~1000 deep, the rest point to its end
            prev = off
    start = time.process_time()
    msg = dns._decode(bytes(head + body))
    assert time.process_time() - start < 0.5
    assert msg.decoder == "dnslib"
    answers = json.loads(msg.answers)
    assert len(answers) == dns.MAX_RECORDS
    assert {a["name"] for a in answers} == {"www.example.test"}
    assert f"5000 records: only the first {dns.MAX_RECORDS} read" in msg.note


def test_raw_reader_bounds_questions_too():
    payload = bytearray(_many_questions(40, False))
    payload[13:13 + 3] = b"\xff\xfe\xfd"  # not UTF-8: dnslib refuses, the raw reader reads it
    msg = dns._decode(bytes(payload))
    assert msg.decoder == "raw"
    assert len(msg.questions) == dns.MAX_QUESTIONS
    assert "qdcount 40: only the first 16 questions recorded, 24 not" in msg.note


ZONE_LINES = {  # one record of every type dnslib has a class for (besides the ones above), as dig prints it
    "NAPTR": ('100 10 "u" "E2U+sip" "!^.*$!sip:a@b.test!" .', '100 10 "u" "E2U+sip" "!^.*$!sip:a@b.test!" .'),
    "DNSKEY": ("257 3 8 AwEAAag=", "257 3 8 AwEAAag="),
    "RRSIG": ("A 8 3 60 20250101000000 20240101000000 12345 example.test. AAAA",
              "A 8 3 60 20250101000000 20240101000000 12345 example.test AAAA"),
    "NSEC": ("next.example.test. A AAAA RRSIG NSEC", "next.example.test A AAAA RRSIG NSEC"),
    "CAA": ('0 issue "letsencrypt.org"', '0 issue "letsencrypt.org"'),
    "HTTPS": ("1 svc.example.test. alpn=h2", "1 svc.example.test alpn=h2"),
    "DS": ("12345 8 2 ABCDEF01", "12345 8 2 ABCDEF01"),
    "SSHFP": ("1 1 ABCDEF01", "1 1 ABCDEF01"),
    "TLSA": ("3 1 1 ABCDEF01", "3 1 1 ABCDEF01"),
    "RP": ("mbox.example.test. txt.example.test.", "mbox.example.test txt.example.test"),
}


@pytest.mark.parametrize("rtype", sorted(ZONE_LINES))
def test_every_dnslib_type_renders(rtype):
    zone, text = ZONE_LINES[rtype]
    rr = RR.fromZone(f"x.example.test. 60 IN {rtype} {zone}")[0]
    msg, data = _answers(_response(rr))
    assert msg.decoder == "dnslib", msg.note
    assert data == [text]


def test_every_dnslib_class_is_covered():
    from dnslib.dns import RDMAP
    # LOC as dnslib writes it (it leaves out size and precisions when they are the defaults; dig does not)
    covered = {QTYPE.get(rr.rtype) for rr, _ in CASES} | set(ZONE_LINES) | {"LOC"}
    assert set(RDMAP) <= covered
