"""The kernel side: bpf/dns_filter.c run by the kernel (BPF_PROG_TEST_RUN) and live on loopback / veth.

Privileged: needs root, bcc, kernel headers, iproute2 and scapy. Skipped without them, except
under CI=true where a missing requirement is a failure.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from dnswatch.model import LINKTYPE_ETHERNET, LINKTYPE_RAW, PACKET_HOST, PACKET_OUTGOING

pytestmark = pytest.mark.privileged


def _missing_requirement():
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    try:
        import scapy.all  # noqa: F401
    except Exception as e:  # pragma: no cover
        return f"needs scapy ({e})"
    from dnswatch.sources.live import LiveCaptureError, import_bcc

    try:
        import_bcc()
    except LiveCaptureError as e:
        return str(e)
    return None


@pytest.fixture(scope="module", autouse=True)
def _privileged():
    problem = _missing_requirement()
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"privileged test requirement missing under CI: {problem}", pytrace=False)
        pytest.skip(problem)


# scapy is imported lazily so that collection works without it
def S():
    import scapy.all as sc

    return sc


# ---------------------------------------------------------------- frame builders

QNAME = "www.example.com"


def dns_query(**kw):
    sc = S()
    return sc.DNS(id=0x1234, rd=1, qd=sc.DNSQR(qname=QNAME), **kw)


def dns_response(**kw):
    sc = S()
    return sc.DNS(id=0x1234, qr=1, rd=1, ra=1, qd=sc.DNSQR(qname=QNAME),
                  an=sc.DNSRR(rrname=QNAME, rdata="198.18.0.53"), **kw)


def eth(l3, ethertype=None):
    sc = S()
    e = sc.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if ethertype is not None:
        e.type = ethertype
    return e / l3


def ip4(**kw):
    kw.setdefault("src", "198.18.0.1")
    kw.setdefault("dst", "198.18.0.2")
    return S().IP(**kw)


def ip6(**kw):
    kw.setdefault("src", "fd00::1")
    kw.setdefault("dst", "fd00::2")
    return S().IPv6(**kw)


def udp(sport=40000, dport=53):
    return S().UDP(sport=sport, dport=dport)


def b(pkt) -> bytes:
    return bytes(pkt)


def q4(sport=40000, dport=53, **ipkw):
    return b(eth(ip4(**ipkw) / udp(sport, dport) / dns_query()))


def r4(sport=53, dport=40000):
    return b(eth(ip4(src="198.18.0.2", dst="198.18.0.1") / udp(sport, dport) / dns_response()))


def q6(sport=40000, dport=53):
    return b(eth(ip6() / udp(sport, dport) / dns_query()))


def r6():
    return b(eth(ip6(src="fd00::2", dst="fd00::1") / udp(53, 40000) / dns_response()))


def tcp4(sport=40000, dport=53, payload=None, flags="PA", **tcpkw):
    sc = S()
    body = bytes(dns_query())
    payload = struct.pack("!H", len(body)) + body if payload is None else payload
    return b(eth(ip4() / sc.TCP(sport=sport, dport=dport, flags=flags, **tcpkw) / sc.Raw(payload)))


def _many_questions(n, qr=False):
    """A TCP-framed query (or response) of n questions, each after the first a pointer to the first."""
    body = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01" * (n - 1)
    msg = struct.pack("!HHHHHH", 0x1234, 0x8180 if qr else 0x0100, n, 0, 0, 0) + body
    return struct.pack("!H", len(msg)) + msg


def tcp6(sport=40000, dport=53):
    sc = S()
    body = bytes(dns_query())
    return b(eth(ip6() / sc.TCP(sport=sport, dport=dport, flags="PA") / sc.Raw(struct.pack("!H", len(body)) + body)))


def ext6(chain, last_nh=17, l4=None):
    """IPv6 with a hand-built extension header chain [(type, length_field)], then UDP/DNS query."""
    l4 = bytes(udp() / dns_query()) if l4 is None else l4
    out = b""
    types_ = [t for t, _ in chain]
    for i, (t, ln) in enumerate(chain):
        nxt = types_[i + 1] if i + 1 < len(chain) else last_nh
        size = (ln + 2) * 4 if t == 51 else (ln + 1) * 8
        if t == 44:
            size = 8
        out += bytes([nxt, ln]) + b"\0" * (size - 2)
    sc = S()
    return b(eth(ip6(nh=types_[0] if chain else last_nh) / sc.Raw(out + l4)))


def vlan(l3, tags):
    """Ethernet with inline tags: tags = [(tpid, vid), ...] outermost first."""
    sc = S()
    tpids = [t for t, _ in tags]
    inner = 0x0800 if l3.name == "IP" else 0x86DD
    hdr = b""
    for i, (_tpid, vid) in enumerate(tags):
        nxt = tpids[i + 1] if i + 1 < len(tags) else inner
        hdr += struct.pack("!HH", vid, nxt)
    e = sc.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=tpids[0])
    return bytes(e) + hdr + bytes(l3)


def patch(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


# ---------------------------------------------------------------- BPF_PROG_TEST_RUN fixtures


@pytest.fixture(scope="module")
def kf():
    from dnswatch.sources.bpf_testrun import FilterRunner

    with FilterRunner(ports=(53, 5353), responses=False) as r:
        yield r


@pytest.fixture(scope="module")
def kf_resp():
    from dnswatch.sources.bpf_testrun import FilterRunner

    with FilterRunner(ports=(53, 5353), responses=True) as r:
        yield r


def keep(kf, frame) -> bool:
    return kf.run([frame])[0]


def test_filter_compiles_and_loads():
    from dnswatch.sources.live import load_filter

    f = load_filter((53,), False)
    try:
        assert f.prog_fd > 0
        assert f.task_meta == 15 or f.fallback
        assert f.counters() == {"kernel_seen": 0, "kernel_kept": 0, "emit_failures": 0, "kernel_slow_loads": 0,
                                "kernel_skip_short": 0, "kernel_skip_qdcount": 0, "emit_failures_responses": 0,
                                "kernel_copies": 0, "emit_refused": 0}
    finally:
        f.close()


# Each row: (name, frame builder, kept without RESPONSES, kept with RESPONSES). PORTS = 53, 5353.
def _cases():
    sc = S()
    dq = bytes(dns_query())
    return [
        # rule 3: ports and QR
        ("udp4 query to 53", lambda: q4(), True, True),
        ("udp4 query to 5353", lambda: q4(dport=5353), True, True),
        ("udp4 query to 54", lambda: q4(dport=54), False, False),
        ("udp4 query from port 53 (source port counts)", lambda: q4(sport=53, dport=40000), True, True),
        ("udp4 query from 5353 to 5353", lambda: q4(sport=5353, dport=5353), True, True),
        ("udp4 response from 53", lambda: r4(), False, True),
        ("udp4 response from 5353", lambda: r4(sport=5353), False, True),
        ("udp4 response from 80", lambda: r4(sport=80), False, False),
        ("udp6 query", lambda: q6(), True, True),
        ("udp6 query to 5353", lambda: q6(dport=5353), True, True),
        ("udp6 query to 54", lambda: q6(dport=54), False, False),
        ("udp6 response", lambda: r6(), False, True),
        ("qdcount 16", lambda: b(eth(ip4() / udp() / dns_query(qdcount=16))), True, True),
        ("qdcount 17", lambda: b(eth(ip4() / udp() / dns_query(qdcount=17))), False, False),
        ("qdcount 0 (e.g. a NOTIFY-less update)", lambda: b(eth(ip4() / udp() / sc.Raw(dq[:4] + b"\0\0" + dq[6:12]))),
         True, True),
        ("udp payload exactly 12 bytes", lambda: b(eth(ip4() / udp() / sc.Raw(dq[:12]))), True, True),
        ("udp payload 11 bytes", lambda: b(eth(ip4() / udp() / sc.Raw(dq[:11]))), False, False),
        ("udp payload 4 bytes + Ethernet padding", lambda: b(eth(ip4() / udp() / sc.Raw(dq[:4]))).ljust(60, b"\0"),
         False, False),
        # the UDP length field is not consulted (user space does not either): IP lengths decide
        ("udp length field says 8+11", lambda: b(eth(ip4() / sc.UDP(sport=40000, dport=53, len=19) / dns_query())),
         True, True),
        ("udp length field larger than packet (DNS header present)",
         lambda: b(eth(ip4() / sc.UDP(sport=40000, dport=53, len=1000) / dns_query())), True, True),
        ("udp length field 0", lambda: b(eth(ip4() / sc.UDP(sport=40000, dport=53, len=0) / dns_query())),
         True, True),
        # rule 1: IPv4 header variants
        ("ipv4 options (IHL 6)", lambda: q4(options=[sc.IPOption_Router_Alert()]), True, True),
        ("ipv4 options (IHL 15)", lambda: b(eth(ip4(options=[sc.IPOption(b"\x01" * 40)]) / udp() / dns_query())),
         True, True),
        ("ipv4 IHL 4", lambda: patch(q4(), 14, b"\x44"), False, False),
        ("ipv4 version 6 under EtherType 0x0800", lambda: patch(q4(), 14, b"\x65"), False, False),
        ("ipv4 total length shorter than headers", lambda: patch(q4(), 16, b"\x00\x1b"), False, False),
        ("ipv4 total length cuts the DNS header", lambda: patch(q4(), 16, struct.pack("!H", 20 + 8 + 11)),
         False, False),
        ("ipv4 protocol ICMP", lambda: b(eth(ip4() / sc.ICMP() / sc.Raw(b"x" * 40))), False, False),
        ("ipv4 protocol SCTP", lambda: b(eth(ip4(proto=132) / sc.Raw(bytes(udp() / dns_query())))), False, False),
        # link layer: VLAN tags (inline), QinQ, three tags
        ("802.1Q", lambda: vlan(ip4() / udp() / dns_query(), [(0x8100, 100)]), True, True),
        ("802.1Q ipv6", lambda: vlan(ip6() / udp() / dns_query(), [(0x8100, 100)]), True, True),
        ("802.1ad + 802.1Q (QinQ)", lambda: vlan(ip4() / udp() / dns_query(), [(0x88A8, 100), (0x8100, 200)]),
         True, True),
        ("0x9100 + 802.1Q", lambda: vlan(ip4() / udp() / dns_query(), [(0x9100, 100), (0x8100, 200)]), True, True),
        ("802.1Q response", lambda: vlan(ip4() / udp(53, 40000) / dns_response(), [(0x8100, 100)]), False, True),
        ("802.1Q to port 54", lambda: vlan(ip4() / udp(40000, 54) / dns_query(), [(0x8100, 100)]), False, False),
        ("three tags", lambda: vlan(ip4() / udp() / dns_query(), [(0x88A8, 1), (0x8100, 2), (0x8100, 3)]),
         False, False),
        ("802.1Q then ARP", lambda: b(sc.Ether(type=0x8100) / sc.Dot1Q(vlan=5) / sc.ARP()), False, False),
        # IPv6 extension headers
        ("ipv6 hop-by-hop", lambda: ext6([(0, 0)]), True, True),
        ("ipv6 hbh + dstopts + routing", lambda: ext6([(0, 0), (60, 1), (43, 2)]), True, True),
        ("ipv6 AH", lambda: ext6([(51, 4)]), True, True),
        ("ipv6 mobility header type 135", lambda: ext6([(135, 0)]), True, True),
        ("ipv6 atomic fragment (offset 0, M 0)", lambda: ext6([(44, 0)]), True, True),
        ("ipv6 8 extension headers", lambda: ext6([(60, 0)] * 8), True, True),
        ("ipv6 9 extension headers", lambda: ext6([(60, 0)] * 9), False, False),
        ("ipv6 ESP (not walked)", lambda: ext6([], last_nh=50, l4=bytes(udp() / dns_query())), False, False),
        ("ipv6 ext chain to port 54", lambda: ext6([(0, 0), (60, 0)], l4=bytes(udp(40000, 54) / dns_query())),
         False, False),
        ("ipv6 ext chain then response", lambda: ext6([(0, 0)], l4=bytes(udp(53, 40000) / dns_response())),
         False, True),
        ("ipv6 ext header past the end", lambda: ext6([(60, 0)])[: 14 + 40 + 4], False, False),
        ("ipv6 payload length too short", lambda: patch(q6(), 14 + 4, b"\x00\x0a"), False, False),
        # rule 4: TCP
        ("tcp4 to 53 with payload", lambda: tcp4(), True, True),
        ("tcp4 to 5353 with payload", lambda: tcp4(dport=5353), True, True),
        ("tcp4 from 53 with payload", lambda: tcp4(sport=53, dport=40000), False, True),
        ("tcp4 to 54", lambda: tcp4(dport=54), False, False),
        ("tcp4 to 53, 1-byte payload (a message may start mid-segment)", lambda: tcp4(payload=b"\x00"), True, True),
        ("tcp4 SYN to 53, no payload", lambda: tcp4(payload=b"", flags="S"), False, False),
        ("tcp4 ACK to 53, no payload, Ethernet padding", lambda: tcp4(payload=b"", flags="A").ljust(60, b"\0"),
         False, False),
        ("tcp4 with options (data offset 8)",
         lambda: tcp4(options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b"")]), True, True),
        ("tcp4 options only, no payload", lambda: tcp4(payload=b"", flags="A", options=[("MSS", 1460)]),
         False, False),
        # the contract asks only for bytes after the data offset, whatever it says
        ("tcp4 data offset 4 (invalid), payload after it", lambda: patch(tcp4(), 14 + 20 + 12, b"\x40"), True, True),
        ("tcp4 data offset 15, nothing after it", lambda: patch(tcp4(payload=b"\0" * 40), 14 + 20 + 12, b"\xf0"),
         False, False),
        ("tcp4 only 12 bytes of TCP header", lambda: patch(tcp4(payload=b""), 16, struct.pack("!H", 20 + 12)),
         False, False),
        # rule 4's question bound: a segment starting like a query that claims more than 16 questions
        ("tcp4 query with 16 questions", lambda: tcp4(payload=_many_questions(16)), True, True),
        ("tcp4 query with 17 questions", lambda: tcp4(payload=_many_questions(17)), False, False),
        ("tcp4 first segment of a 10,800-question query", lambda: tcp4(payload=_many_questions(10800)[:1400]),
         False, False),
        ("tcp4 from 53, response claiming 17 questions", lambda: tcp4(sport=53, dport=40000,
                                                                       payload=_many_questions(17, qr=True)), False, True),
        ("tcp4 continuation segment of those questions", lambda: tcp4(payload=_many_questions(10800)[1400:2800]),
         True, True),
        ("tcp6 to 53", lambda: tcp6(), True, True),
        ("tcp6 from 53", lambda: tcp6(sport=53, dport=40000), False, True),
        # garbage and truncation
        ("ARP", lambda: b(sc.Ether() / sc.ARP()), False, False),
        ("802.3 length field", lambda: b(sc.Ether(type=100) / sc.Raw(b"\0" * 100)), False, False),
        ("zero-filled IPv4 EtherType", lambda: b(eth(sc.Raw(b"\0" * 60), 0x0800)), False, False),
        ("random bytes under IPv4", lambda: b(eth(sc.Raw(random.Random(1).randbytes(80)), 0x0800)), False, False),
        ("random bytes under IPv6", lambda: b(eth(sc.Raw(random.Random(2).randbytes(80)), 0x86DD)), False, False),
        ("just an Ethernet header", lambda: b(eth(sc.Raw(b""), 0x0800)), False, False),
        ("truncated in the IPv4 header", lambda: q4()[:14 + 12], False, False),
        ("truncated after the UDP header", lambda: q4()[:14 + 20 + 8], False, False),
        ("truncated inside the DNS header", lambda: q4()[:14 + 20 + 8 + 11], False, False),
        ("truncated after the DNS header (question cut)", lambda: q4()[:14 + 20 + 8 + 12], True, True),
        ("truncated ipv6", lambda: q6()[:14 + 30], False, False),
    ]


def _case_ids():
    return [c[0] for c in _cases()]


@pytest.mark.parametrize("idx", range(len(_case_ids())), ids=_case_ids())
def test_verdict(kf, kf_resp, idx):
    name, build, want, want_resp = _cases()[idx]
    frame = build()
    assert keep(kf, frame) is want, f"{name} without RESPONSES"
    assert keep(kf_resp, frame) is want_resp, f"{name} with RESPONSES"


def test_single_port_setting():
    from dnswatch.sources.bpf_testrun import verdicts

    assert verdicts([q4(), q4(dport=5353), q4(dport=853)], ports=(853,)) == [False, False, True]


# rule 2: fragments

_frag_ids = itertools.count(1000)


def _frags4(l4pkt, size=64, **ipkw):
    sc = S()
    pkt = ip4(id=next(_frag_ids), **ipkw) / l4pkt
    return [b(eth(f)) for f in sc.fragment(pkt, fragsize=size)]


def _frags6(l4pkt, size=150):
    sc = S()
    pkt = ip6() / sc.IPv6ExtHdrFragment(id=next(_frag_ids)) / l4pkt
    return [b(eth(f)) for f in sc.fragment6(pkt, size)]


LONG_NAME = ".".join(["a" * 60] * 4) + ".example.com"


def _big_query():
    """A 284-byte query: 5 IPv4 fragments of 64 bytes, 3 IPv6 fragments of 150."""
    sc = S()
    return sc.DNS(id=7, rd=1, qd=sc.DNSQR(qname=LONG_NAME), ar=sc.DNSRROPT(rclass=4096))


def test_ipv4_fragments_follow_first(kf):
    fr = _frags4(udp() / _big_query())
    assert len(fr) >= 3
    assert kf.run(fr) == [True] * len(fr)


def test_ipv4_later_fragments_before_first_are_dropped(kf):
    fr = _frags4(udp() / _big_query())
    assert kf.run(fr[1:] + fr[:1]) == [False] * (len(fr) - 1) + [True]


def test_ipv4_fragments_of_non_dns_are_dropped(kf):
    fr = _frags4(udp(40000, 80) / _big_query())
    assert kf.run(fr) == [False] * len(fr)


def test_ipv4_fragment_key_is_src_dst_id(kf):
    fr = _frags4(udp() / _big_query())
    same_id = int.from_bytes(fr[1][18:20], "big")
    other_src = patch(fr[1], 14 + 12, socket.inet_aton("198.18.0.99"))
    other_id = patch(fr[1], 14 + 4, struct.pack("!H", same_id ^ 0x5555))
    assert kf.run([fr[0], other_src, other_id, fr[1]]) == [True, False, False, True]


def test_ipv4_first_fragment_judged_on_its_transport_header(kf, kf_resp):
    sc = S()
    big_response = sc.DNS(id=7, qr=1, qd=sc.DNSQR(qname=LONG_NAME), ar=sc.DNSRROPT(rclass=4096))
    fr = _frags4(udp(53, 40000) / big_response)
    assert kf.run(fr) == [False] * len(fr)
    fr = _frags4(udp(53, 40000) / big_response)
    assert kf_resp.run(fr) == [True] * len(fr)


def test_ipv4_first_fragment_too_short_for_dns_header(kf):
    sc = S()
    # first fragment carries only the UDP header (8 bytes): the DNS header is not in it
    pkt = ip4(id=next(_frag_ids), flags="MF") / udp() / sc.Raw(b"")
    first = bytearray(b(eth(pkt)))
    struct.pack_into("!H", first, 14 + 20 + 4, 8 + 40)  # UDP length: whole datagram
    assert keep(kf, bytes(first)) is False


def test_ipv6_fragments_follow_first(kf):
    fr = _frags6(udp() / _big_query())
    assert len(fr) >= 2
    assert kf.run(fr) == [True] * len(fr)
    fr = _frags6(udp(40000, 80) / _big_query())
    assert kf.run(fr) == [False] * len(fr)


def test_ipv6_fragment_behind_other_ext_headers(kf):
    sc = S()
    pkt = ip6() / sc.IPv6ExtHdrHopByHop() / sc.IPv6ExtHdrFragment(id=next(_frag_ids)) / udp() / _big_query()
    fr = [b(eth(f)) for f in sc.fragment6(pkt, 150)]
    assert len(fr) >= 2
    assert kf.run(fr) == [True] * len(fr)


def test_tcp_first_fragment(kf):
    sc = S()
    body = bytes(_big_query())
    fr = _frags4(sc.TCP(sport=40000, dport=53, flags="PA") / sc.Raw(struct.pack("!H", len(body)) + body))
    assert kf.run(fr) == [True] * len(fr)


def test_fragment_state_is_an_lru_of_4096(kf):
    first = _frags4(udp() / _big_query())
    assert kf.run(first[:1]) == [True]
    # 3 x 4096 other kept first fragments push the entry out (the kernel's LRU is approximate)
    template = bytearray(_frags4(udp() / _big_query())[0])
    others = []
    for i in range(3 * 4096):
        struct.pack_into("!H", template, 14 + 12 + 2, i)  # source 198.18.x.y
        others.append(bytes(template))
    assert all(kf.run(others))
    assert kf.run(first[1:2]) == [False]


# the same rule in user space (dnswatch.frames.FrameDecoder) gives the same verdicts


def _user_verdicts(frames, ports=(53, 5353), responses=False):
    from dnswatch.frames import FrameDecoder
    from dnswatch.model import Frame

    d = FrameDecoder(ports, responses=responses, track_verdict=True)
    out = []
    for f in frames:
        d.decode(Frame(0.0, LINKTYPE_ETHERNET, f))
        out.append(d.keep)
    return out


def test_user_space_agrees_on_every_case(kf, kf_resp):
    for name, build, _want, _want_resp in _cases():
        frame = build()
        assert _user_verdicts([frame]) == kf.run([frame]), name
        assert _user_verdicts([frame], responses=True) == kf_resp.run([frame]), name


def test_user_space_agrees_on_fragment_sequences(kf):
    sc = S()
    body = bytes(_big_query())
    seqs = {
        "ipv4": _frags4(udp() / _big_query()),
        "ipv4 reversed": _frags4(udp() / _big_query())[::-1],
        "ipv4 non-dns": _frags4(udp(40000, 80) / _big_query()),
        "ipv4 tcp": _frags4(sc.TCP(sport=40000, dport=53, flags="PA") / sc.Raw(struct.pack("!H", len(body)) + body)),
        "ipv6": _frags6(udp() / _big_query()),
        "ipv6 hop-by-hop first": [b(eth(f)) for f in sc.fragment6(
            ip6() / sc.IPv6ExtHdrHopByHop() / sc.IPv6ExtHdrFragment(id=next(_frag_ids)) / udp() / _big_query(), 150)],
    }
    for name, frames in seqs.items():
        assert _user_verdicts(frames) == kf.run(frames), name


def test_user_space_agrees_on_ext_headers_after_the_fragment_header(kf):
    sc = S()
    frames = [b(eth(f)) for f in sc.fragment6(
        ip6() / sc.IPv6ExtHdrFragment(id=next(_frag_ids)) / sc.IPv6ExtHdrDestOpt() / udp() / _big_query(), 150)]
    assert kf.run(frames) == [True] * len(frames)  # the kernel walks to the UDP header
    assert _user_verdicts(frames) == [True] * len(frames)


# perf event contents


def test_event_carries_meta_and_packet_bytes(kf):
    frame = q4()
    kf.take_events()
    assert kf.run([frame]) == [True]
    [(meta, payload)] = kf.take_events()
    (ktime, pid_tgid, uid_gid, cgroup_id, ifindex, pkt_type, orig_len, cap_len, netns, flags, comm,
     l4_off, dns_off, dns_id, dns_flags, l4_proto, kind) = meta
    assert abs(ktime - time.monotonic_ns()) < 5e9
    assert ifindex == 1  # test runs happen on loopback
    assert pkt_type != PACKET_OUTGOING and flags == 0  # task fields only for locally sent packets
    assert (pid_tgid, uid_gid, cgroup_id, comm) == (0, 0, 0, b"\0" * 16)
    assert orig_len == cap_len == len(frame) - 14  # test runs start the data at the network header
    assert payload == frame[14:]
    assert netns == kf._seq  # the frame tag passed in skb->cb[0]
    # what the filter parsed: offsets from the network header here (test runs start the data there)
    assert (l4_proto, l4_off, dns_off, kind) == (17, 20, 28, 1)
    assert (dns_id, dns_flags) == struct.unpack_from("!HH", payload, 28)


def test_event_meta_of_responses_tcp_and_fragments():
    from dnswatch.sources.bpf_testrun import FilterRunner

    frames = [r4(), tcp6(), b(eth(ip4(flags="MF", id=next(_frag_ids)) / udp() / _big_query()))]
    with FilterRunner(ports=(53,), responses=True) as r:
        assert r.run(frames) == [True] * 3
        metas = [m for m, _ in r.take_events()]
    # (l4_off, dns_off, dns_id, dns_flags, l4_proto, kind)
    assert metas[0][11:] == (20, 28, *struct.unpack_from("!HH", r4(), 42), 17, 2)
    assert metas[1][11:] == (40, 0, 0, 0, 6, 1)  # TCP: only where the segment starts
    assert metas[2][11:] == (0, 0, 0, 0, 0, 1)  # a first fragment: decoded in user space


def test_max_capture_truncates_event():
    from dnswatch.sources.bpf_testrun import FilterRunner

    frame = b(eth(ip4() / udp() / _big_query()))
    with FilterRunner(ports=(53,), max_capture=64) as r:
        assert r.run([frame]) == [True]
        [(meta, payload)] = r.take_events()
    assert meta[6] == len(frame) - 14 and meta[7] == 64
    assert payload == frame[14:14 + 64]


def test_counters(kf):
    before = kf.filter.counters()
    kf.run([q4(), q4(dport=80), r4()])
    after = kf.filter.counters()
    assert after["kernel_seen"] - before["kernel_seen"] == 3
    assert after["kernel_kept"] - before["kernel_kept"] == 1
    assert after["emit_failures"] == before["emit_failures"]


def test_non_ethernet_linktypes():
    from dnswatch.sources.bpf_testrun import verdicts

    raw4 = b(ip4() / udp() / dns_query())
    raw6 = b(ip6() / udp() / dns_query())
    assert verdicts([raw4, raw6, b(ip4() / udp(40000, 80) / dns_query()), b"\x45"], linktype=LINKTYPE_RAW) == [
        True, True, False, False]
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800) + raw4
    assert verdicts([sll], linktype=113) == [True]
    null = struct.pack("<I", 2) + raw4
    assert verdicts([null], linktype=0) == [True]


def test_per_packet_cost(kf, record_property):
    """ns per packet by BPF_PROG_TEST_RUN's repeat (kept: includes the perf event, no wakeup)."""
    from dnswatch.sources.bpf_testrun import prog_test_run

    fd = kf.filter.prog_fd
    cost = {}
    for name, frame in (("non-dns udp", q4(dport=80)),
                        ("dns response, dropped after full parse", r4()),
                        ("ipv6 + 3 ext headers, dropped", ext6([(0, 0), (60, 0), (43, 0)],
                                                               l4=bytes(udp(53, 1) / dns_response()))),
                        ("dns query, kept", q4())):
        _, ns = prog_test_run(fd, frame, repeat=1000)
        kf.filter.read()
        kf.take_events()
        cost[name] = ns
        record_property(f"ns_{name}", ns)
    assert all(ns < 5000 for ns in cost.values()), cost


# ---------------------------------------------------------------- dispatcher (issue 4)


def test_dispatcher_tags_netns_and_tail_calls():
    from dnswatch.sources.bpf_testrun import load_dispatcher, prog_test_run
    from dnswatch.sources.live import load_filter

    f = load_filter((53,), False, loopback_dedup=False, page_cnt=16)
    f.open_events()
    fd = load_dispatcher(f.prog_array_fd, 0xF0001234)
    try:
        for frame in (q4(), q4(dport=80)):
            assert prog_test_run(fd, frame)[0] == 0
        got = f.read()
        assert len(got) == 1
        assert got[0][0][8] == 0xF0001234
        assert got[0][1] == q4()[14:]
    finally:
        os.close(fd)
        f.close()


# ---------------------------------------------------------------- live


_libc = ctypes.CDLL(None, use_errno=True)
_ns_counter = itertools.count()


@pytest.fixture
def netns():
    """A fresh network namespace with lo up; yields its /var/run/netns path."""
    name = f"dnswatch-t{os.getpid()}-{next(_ns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def inside(path):
    """Move the calling thread into a network namespace for the block."""
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        assert _libc.setns(target, 0x40000000) == 0, os.strerror(ctypes.get_errno())
        try:
            yield
        finally:
            assert _libc.setns(orig, 0x40000000) == 0
    finally:
        os.close(orig)
        os.close(target)


def collect(cap, want=None, seconds=2.0, settle=0.3):
    """Poll until `want` frames arrived (then `settle` more seconds), or `seconds` passed."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out += cap.poll(50)
        if want is not None and len(out) >= want:
            deadline = min(deadline, time.monotonic() + settle)
    return out


def my_comm(tid):
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_live_loopback_query_once_with_sender(netns):
    from dnswatch.sources.live import LiveCapture, netns_inode

    query = bytes(dns_query())
    with inside(netns):
        cap = LiveCapture(ports=(53,))
        cap.open()
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(query, ("127.0.0.1", 53))
            s.close()
        except BaseException:
            cap.close()
            raise
    with cap:
        frames = collect(cap, want=1)
        stats = cap.stats()
        assert "all interfaces, ports 53, queries only" in cap.describe()
    assert len(frames) == 1, frames  # the loopback copy on the way in is not kept
    f = frames[0]
    tid = threading.get_native_id()
    assert f.linktype == LINKTYPE_ETHERNET and f.ifname == "lo"
    assert abs(f.ts - time.time()) < 5
    m = f.meta
    assert (m.pid, m.tid, m.comm, m.uid) == (os.getpid(), tid, my_comm(tid), os.getuid())
    assert m.pkt_type == PACKET_OUTGOING and m.ifindex == 1 and m.ifname == "lo"
    assert m.netns == netns_inode(netns)
    assert m.cgroup_id and m.cgroup_id > 0
    assert f.data[12:14] == b"\x08\x00" and f.data[14 + 20 + 8:] == query
    assert stats["kernel_kept"] == 1 and stats["emit_failures"] == 0
    assert stats["kernel_seen"] >= 2


def test_live_one_interface_and_batched_wakeups(netns):
    """Bound to lo only, waking user space every 64 events: a lone query still arrives by poll()'s timeout."""
    from dnswatch.sources.live import LiveCapture

    with inside(netns):
        cap = LiveCapture(interfaces=["lo"], ports=(53,), wakeup_events=64)
        cap.open()
    with cap:
        assert cap.describe().startswith("lo, ports 53")
        with inside(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(bytes(dns_query()), ("127.0.0.1", 53))
            s.close()
        t0 = time.monotonic()
        frames = cap.poll(300)
        assert time.monotonic() - t0 < 1.0
    assert len(frames) == 1 and frames[0].ifname == "lo" and frames[0].meta.pid == os.getpid()


def test_live_responses_from_a_responder(netns):
    from dnswatch.sources.live import LiveCapture

    responder = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::1', 53)); s.settimeout(5)\n"
        "print('ready', flush=True)\n"
        "d, a = s.recvfrom(4096); r = bytearray(d); r[2] |= 0x80; s.sendto(bytes(r), a)\n"
    )
    with LiveCapture(ports=(53,), responses=True, netns=[netns]) as cap:
        p = subprocess.Popen(["ip", "netns", "exec", os.path.basename(netns), sys.executable, "-c", responder],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            with inside(netns):
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.sendto(bytes(dns_query()), ("::1", 53))
                s.settimeout(5)
                s.recvfrom(4096)
                s.close()
            frames = collect(cap, want=2)
        finally:
            p.kill()
            p.wait()
    assert len(frames) == 2
    q, r = frames  # poll() orders a batch by kernel time (perf buffers are per CPU)
    assert q.meta.ktime_ns < r.meta.ktime_ns
    assert not q.data[14 + 40 + 8 + 2] & 0x80 and r.data[14 + 40 + 8 + 2] & 0x80
    assert q.meta.pid == os.getpid() and r.meta.pid == p.pid
    assert "queries and responses" in cap.describe()


def test_live_non_dns_burst_yields_nothing(netns):
    from dnswatch.sources.live import LiveCapture

    with LiveCapture(ports=(53,), netns=[netns]) as cap:
        with inside(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            payload = bytes(dns_query())  # DNS-looking, but to another port
            for i in range(10000):
                s.sendto(payload, ("127.0.0.1", 5300 + i % 50))
            s.close()
        frames = collect(cap, seconds=1.0)
        stats = cap.stats()
    assert frames == []
    assert stats["kernel_seen"] >= 10000 and stats["kernel_kept"] == 0


def test_live_nonlinear_packet(netns):
    """A datagram built with MSG_MORE keeps its payload in page fragments: ld()'s fallback reads it."""
    from dnswatch.sources.live import LiveCapture

    query = bytes(dns_query())
    with LiveCapture(ports=(53,), netns=[netns]) as cap:
        with inside(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(query[:2], socket.MSG_MORE, ("127.0.0.1", 53))
            s.sendto(query[2:], 0, ("127.0.0.1", 53))
            s.close()
        frames = collect(cap, want=1)
        stats = cap.stats()
    assert len(frames) == 1 and frames[0].data[14 + 28:] == query
    assert stats["kernel_slow_loads"] >= 1


def test_live_netns_dispatcher_and_received_packets(netns):
    """Two namespaces joined by a veth; one capture covers both through per-netns dispatchers.
    Received packets carry no task fields; sent ones do. Inline VLAN tags are parsed live."""
    from dnswatch.sources.live import LiveCapture, netns_inode

    other = netns + "-peer"
    subprocess.run(["ip", "netns", "add", os.path.basename(other)], check=True)
    inode_a, inode_b = netns_inode(netns), netns_inode(other)
    try:
        a, b_ = os.path.basename(netns), os.path.basename(other)
        subprocess.run(["ip", "-n", a, "link", "add", "dwa", "type", "veth", "peer", "name", "dwb", "netns", b_],
                       check=True)
        for ns, dev, addr in ((a, "dwa", "198.18.7.1/24"), (b_, "dwb", "198.18.7.2/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        # copy_window_ns=0: both sightings of each packet come up (tests/test_copies.py: the kernel drops the second)
        with LiveCapture(ports=(53,), netns=[netns, other], copy_window_ns=0) as cap:
            with inside(netns):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                deadline = time.monotonic() + 3
                frames = []
                while time.monotonic() < deadline and len(frames) < 2:  # first send may wait for ARP
                    s.sendto(bytes(dns_query()), ("198.18.7.2", 53))
                    frames = collect(cap, want=2, seconds=0.5, settle=0.2)
                # an inline-tagged frame sent through AF_PACKET: seen tagged on dwa, untagged on dwb
                tagged = vlan(ip4(src="198.18.7.1", dst="198.18.7.2") / udp() / dns_query(),
                              [(0x88A8, 100), (0x8100, 200)])
                raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                raw.bind(("dwa", 0))
                raw.send(tagged)
                raw.close()
                s.close()
            frames = frames[:2] + collect(cap, want=2)
    finally:
        subprocess.run(["ip", "netns", "del", os.path.basename(other)], check=False)
    sent = [f for f in frames[:2] if f.meta.pkt_type == PACKET_OUTGOING]
    recv = [f for f in frames[:2] if f.meta.pkt_type == PACKET_HOST]
    assert len(sent) == 1 and len(recv) == 1, frames
    assert sent[0].ifname == "dwa" and sent[0].meta.netns == inode_a
    assert sent[0].meta.pid == os.getpid() and sent[0].meta.comm
    assert recv[0].ifname == "dwb" and recv[0].meta.netns == inode_b
    assert (recv[0].meta.pid, recv[0].meta.tid, recv[0].meta.comm, recv[0].meta.uid, recv[0].meta.cgroup_id) == (
        None, None, None, None, None)
    tagged_frames = frames[2:]
    assert {f.ifname for f in tagged_frames} == {"dwa", "dwb"}
    on_a = next(f for f in tagged_frames if f.ifname == "dwa")
    assert on_a.data[12:14] == b"\x88\xa8"  # tx copy: both tags inline
    on_b = next(f for f in tagged_frames if f.ifname == "dwb")
    assert on_b.data[12:14] == b"\x81\x00"  # rx copy: the stack took the outer tag


def test_live_tun_device_without_link_header(netns):
    """tun (ARPHRD_NONE): frames start at the IP header (LINKTYPE_RAW), sent and received."""
    import fcntl

    from dnswatch.sources.live import LiveCapture

    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    ns = os.path.basename(netns)
    fd = None
    try:
        with inside(netns):
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH14x", b"dwtun0", 0x0001 | 0x1000))  # TUNSETIFF, TUN|NO_PI
            subprocess.run(["ip", "-n", ns, "addr", "add", "198.18.9.1/24", "dev", "dwtun0"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "dwtun0", "up"], check=True)
            cap = LiveCapture(ports=(53,))
            cap.open()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(bytes(dns_query()), ("198.18.9.2", 53))  # out through the tun device
            s.close()
            os.write(fd, bytes(ip4(src="198.18.9.2", dst="198.18.9.1") / udp() / dns_query()))  # in from it
        with cap:
            frames = collect(cap, want=2)
    finally:
        if fd is not None:
            os.close(fd)
    assert len(frames) == 2
    out, inn = frames
    assert {f.linktype for f in frames} == {LINKTYPE_RAW} and {f.ifname for f in frames} == {"dwtun0"}
    assert out.meta.pkt_type == PACKET_OUTGOING and out.meta.pid == os.getpid() and out.data[0] >> 4 == 4
    assert inn.meta.pkt_type == PACKET_HOST and inn.meta.pid is None and inn.data[16:20] == socket.inet_aton("198.18.9.1")


def test_live_fallback_without_task_helpers(netns, monkeypatch):
    """Older kernels: helpers refused -> compiled out; the filter failing with them -> retried without."""
    from dnswatch.sources import bpf_testrun, live

    monkeypatch.setattr(bpf_testrun, "probe_task_helpers",
                        lambda: (0, {name: "Invalid argument" for name, _ in bpf_testrun.TASK_HELPERS.values()}))
    with live.LiveCapture(ports=(53,), netns=[netns]) as cap:
        assert not cap.task_metadata and "kernel refuses" in cap.fallback
        assert "no process info" in cap.describe()
        with inside(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(bytes(dns_query()), ("127.0.0.1", 53))
            s.close()
        frames = collect(cap, want=1)
    assert len(frames) == 1 and frames[0].meta.pid is None and frames[0].meta.comm is None
    monkeypatch.undo()

    real = live.import_bcc()

    class FlakyBPF(real.BPF):
        """Refuses to load unless task metadata is compiled out, like a kernel without the helpers."""

        def __init__(self, *a, cflags=(), **kw):
            self._task = [c for c in cflags if c.startswith("-DTASK_META=")]
            super().__init__(*a, cflags=cflags, **kw)

        def load_func(self, *a, **kw):
            if self._task != ["-DTASK_META=0"]:
                raise Exception("Failed to load BPF program b'dns_filter': Invalid argument")
            return super().load_func(*a, **kw)

    monkeypatch.setattr(live, "import_bcc", lambda: types.SimpleNamespace(BPF=FlakyBPF))
    f = live.load_filter((53,), False)
    try:
        assert f.task_meta == 0 and "compiled out" in f.fallback
    finally:
        f.close()


def test_live_errors_are_one_line(monkeypatch):
    from dnswatch.sources import live

    with pytest.raises(live.LiveCaptureError) as e:
        live.LiveCapture(interfaces=["no-such-if0"]).open()
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)

    class Broken:
        class BPF:
            SOCKET_FILTER = 1

            def __init__(self, *a, **kw):
                os.write(2, b"clang: error: lots of compiler output\n")
                raise Exception("Failed to compile BPF module <text>")

    monkeypatch.setattr(live, "import_bcc", lambda: Broken)
    with pytest.raises(live.LiveCaptureError) as e:
        live.load_filter((53,), False)
    assert "\n" not in str(e.value) and "lots of compiler output" in e.value.log


def test_doctor():
    from dnswatch.doctor import Check, ready, run_checks
    from dnswatch.sources import live

    checks = run_checks()
    assert all(isinstance(c, Check) for c in checks)
    by = {c.name: c for c in checks}
    assert {"privileges", "bcc", "kernel headers", "BTF", "eBPF filter", "tracefs", "cgroup v2"} <= set(by)
    assert "perf_event_paranoid" not in by  # the events come through a BPF ring buffer, no perf event
    assert by["privileges"].ok and by["bcc"].ok and by["eBPF filter"].ok
    assert ready(checks)
    # the rings watch reads, as the loader makes them (per-CPU, 8 MiB each on a small host)
    f = live.load_filter((53,), False)
    try:
        rings, mib = len(f.ring_fds), f.ring_pages * 4096 / (1 << 20)
    finally:
        f.close()
    assert by["ring buffers"].ok
    assert by["ring buffers"].detail.startswith(f"{rings} per-CPU ring{'s' if rings > 1 else ''} of "
                                                f"{f.ring_pages:,} pages ({mib:g} MiB each, {rings * mib:g} MiB in all)")


def test_tcp_question_bound_is_counted(kf):
    before = kf.filter.counters()
    kf.run([tcp4(payload=_many_questions(17)), tcp4(payload=_many_questions(16))])
    after = kf.filter.counters()
    assert after["kernel_kept"] - before["kernel_kept"] == 1
    assert after["kernel_skip_qdcount"] - before["kernel_skip_qdcount"] == 1
