#!/usr/bin/env python3
"""Crafted edge-case captures for dnswatch tests.

Deterministic: fixed timestamps, DNS ids, IP ids, TCP sequence numbers, MAC addresses and a fixed
random seed, so every run writes byte-identical files.  Run from anywhere:

    .venv/bin/python pcaps/craft.py            # writes into the directory of this script
    .venv/bin/python pcaps/craft.py OUTDIR

Packets are built with scapy (link, IP, UDP, TCP layers); DNS messages are encoded by the small
encoder below so that malformed ones can be expressed byte by byte.  The pcap / pcapng containers
are written by hand (also below), because several files are deliberately unusual containers.

Addresses: client 198.18.0.2 / fd00:18::2 (MAC 02:00:5e:12:00:02), server 198.18.0.1 / fd00:18::1
(MAC 02:00:5e:12:00:01); names are under .test and example.com.  See README.md for what each file holds.
"""
from __future__ import annotations

import gzip
import io
import os
import random
import socket
import struct
import sys

from scapy.all import (  # noqa: E402  (scapy is noisy on import otherwise)
    IP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Ether,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
    conf,
    fragment,
    fragment6,
)

conf.verb = 0

# ------------------------------------------------------------------------------------------------
# addresses and time
# ------------------------------------------------------------------------------------------------
C_MAC, S_MAC = "02:00:5e:12:00:02", "02:00:5e:12:00:01"
C4, S4 = "198.18.0.2", "198.18.0.1"
C6, S6 = "fd00:18::2", "fd00:18::1"
T0 = 1735689600 * 10**9  # 2025-01-01T00:00:00Z, in nanoseconds


class Clock:
    """Monotonic fake time in integer nanoseconds; every file starts at its own fixed instant."""

    def __init__(self, minute: int):
        self.t = T0 + minute * 60 * 10**9

    def tick(self, us: int = 1000) -> int:
        self.t += us * 1000
        return self.t


# ------------------------------------------------------------------------------------------------
# DNS encoder (no validation on purpose)
# ------------------------------------------------------------------------------------------------
A, NS, CNAME, SOA, NULL, MX, TXT, AAAA, OPT, ANY = 1, 2, 5, 6, 10, 15, 16, 28, 41, 255
IN, CH = 1, 3


def labels(name) -> bytes:
    """Encode a name: a str ("www.example.test") or a list of raw label bytes; no terminating zero."""
    if isinstance(name, str):
        parts = [p.encode("ascii") for p in name.rstrip(".").split(".") if p]
    else:
        parts = list(name)
    return b"".join(bytes([len(p)]) + p for p in parts)


def dname(name) -> bytes:
    return labels(name) + b"\x00"


def header(qid, *, qr=0, opcode=0, aa=0, tc=0, rd=1, ra=0, ad=0, cd=0, rcode=0, qd=1, an=0, ns=0, ar=0):
    flags = (qr << 15) | (opcode << 11) | (aa << 10) | (tc << 9) | (rd << 8) | (ra << 7) | (ad << 5) | (cd << 4) | rcode
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def question(name, qtype=A, qclass=IN) -> bytes:
    nb = name if isinstance(name, bytes) else dname(name)
    return nb + struct.pack("!HH", qtype, qclass)


def rr(name_bytes: bytes, rtype, rdata: bytes, *, rclass=IN, ttl=300, rdlen=None) -> bytes:
    return name_bytes + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata) if rdlen is None else rdlen) + rdata


def opt_rr(udp=1232, do=0, options=b"") -> bytes:
    return b"\x00" + struct.pack("!HHIH", OPT, udp, (do << 15), len(options)) + options


def a(ip):
    return socket.inet_pton(socket.AF_INET, ip)


def aaaa(ip):
    return socket.inet_pton(socket.AF_INET6, ip)


def txt(*strings):
    out = b""
    for s in strings:
        s = s if isinstance(s, bytes) else s.encode()
        out += bytes([len(s)]) + s
    return out


PTR_Q = b"\xc0\x0c"  # compression pointer to the question name at offset 12
SOA_TEST = dname("ns.test") + dname("hostmaster.test") + struct.pack("!IIIII", 2024010101, 3600, 600, 86400, 300)


def query(qid, name, qtype=A, qclass=IN, *, rd=1, edns=None, **hdr):
    """A normal query. edns: None or a udp size (adds an OPT RR)."""
    body = question(name, qtype, qclass)
    ar = b"" if edns is None else opt_rr(edns)
    return header(qid, rd=rd, ar=1 if ar else 0, **hdr) + body + ar


def response(qid, name, qtype=A, answers=(), *, qclass=IN, rcode=0, authority=(), edns=None, aa=1, **hdr):
    """answers/authority: lists of (rtype, rdata) owned by the question name (compressed to it),
    or (owner_bytes, rtype, rdata)."""

    def enc(items):
        out = b""
        for it in items:
            if len(it) == 2:
                out += rr(PTR_Q, it[0], it[1], rclass=qclass)
            else:
                out += rr(it[0], it[1], it[2], rclass=qclass)
        return out

    ar = b"" if edns is None else opt_rr(edns)
    return (
        header(qid, qr=1, aa=aa, ra=1, rcode=rcode, an=len(answers), ns=len(authority), ar=1 if ar else 0, **hdr)
        + question(name, qtype, qclass)
        + enc(answers)
        + enc(authority)
        + ar
    )


def nxdomain(qid, name, qtype=A, **kw):
    return response(qid, name, qtype, rcode=3, authority=[(dname("test"), SOA, SOA_TEST)], **kw)


# ------------------------------------------------------------------------------------------------
# packet builders (scapy)
# ------------------------------------------------------------------------------------------------
def ip4_udp(src, dst, sport, dport, payload, **ipkw):
    return IP(src=src, dst=dst, id=ipkw.pop("id", 1), **ipkw) / UDP(sport=sport, dport=dport) / payload


def ip6_udp(src, dst, sport, dport, payload, ext=None):
    pkt = IPv6(src=src, dst=dst, hlim=64)
    if ext is not None:
        pkt = pkt / ext
    return pkt / UDP(sport=sport, dport=dport) / payload


def eth(l3, src=C_MAC, dst=S_MAC):
    return Ether(src=src, dst=dst) / l3


def swap_eth(l3, to_server: bool):
    return eth(l3, C_MAC, S_MAC) if to_server else eth(l3, S_MAC, C_MAC)


def udp_pair(qid_payload, resp_payload, *, v6=False, sport=40000, dport=53, ipid=1):
    """(query L3 packet, response L3 packet) between client and server over UDP."""
    if v6:
        return (ip6_udp(C6, S6, sport, dport, qid_payload), ip6_udp(S6, C6, dport, sport, resp_payload))
    return (ip4_udp(C4, S4, sport, dport, qid_payload, id=ipid), ip4_udp(S4, C4, dport, sport, resp_payload, id=ipid + 1))


def eth_pair(q, r):
    return [eth(q, C_MAC, S_MAC), eth(r, S_MAC, C_MAC)]


def std_pair(qid, name="www.example.test", qtype=A, *, v6=False, sport=40000):
    """A normal query/response pair (L3 packets)."""
    ans = {A: [(A, a("198.18.0.80"))], AAAA: [(AAAA, aaaa("fd00:18::80"))]}.get(qtype, [])
    return udp_pair(query(qid, name, qtype), response(qid, name, qtype, ans), v6=v6, sport=sport)


# ------------------------------------------------------------------------------------------------
# pcap / pcapng writers
# ------------------------------------------------------------------------------------------------
def pcap_bytes(linktype, records, *, endian="<", nano=False, snaplen=262144):
    """records: iterable of (ts_ns, data) or (ts_ns, data, origlen)."""
    out = io.BytesIO()
    out.write(struct.pack(endian + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
    for rec in records:
        ts, data = rec[0], bytes(rec[1])
        orig = rec[2] if len(rec) > 2 else len(data)
        sec, ns = divmod(ts, 10**9)
        out.write(struct.pack(endian + "IIII", sec, ns if nano else ns // 1000, len(data), orig))
        out.write(data)
    return out.getvalue()


def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def ng_opts(e, opts):
    """opts: list of (code, value bytes); adds opt_endofopt."""
    if not opts:
        return b""
    out = b"".join(struct.pack(e + "HH", c, len(v)) + _pad4(v) for c, v in opts)
    return out + struct.pack(e + "HH", 0, 0)


def ng_block(e, btype, body):
    body = _pad4(body)
    total = len(body) + 12
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def ng_shb(e, app="dnswatch pcaps/craft.py"):
    body = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + ng_opts(e, [(4, app.encode())])
    return ng_block(e, 0x0A0D0D0A, body)


def ng_idb(e, linktype, *, name=None, tsresol=None, snaplen=262144):
    opts = []
    if name:
        opts.append((2, name.encode()))
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    return ng_block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + ng_opts(e, opts))


def ng_epb(e, ifid, ts_ns, data, *, units_per_sec=10**6, comment=None):
    data = bytes(data)
    ts = ts_ns * units_per_sec // 10**9
    body = struct.pack(e + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + _pad4(data)
    body += ng_opts(e, [(1, comment.encode())] if comment else [])
    return ng_block(e, 6, body)


# ------------------------------------------------------------------------------------------------
# link-layer encapsulations
# ------------------------------------------------------------------------------------------------
def sll1(l3, pkttype, *, arphrd=1, mac=C_MAC):
    addr = bytes.fromhex(mac.replace(":", "")) if arphrd == 1 else b"\x00" * 6
    proto = 0x86DD if l3.version == 6 else 0x0800
    return struct.pack("!HHH", pkttype, arphrd, len(addr)) + addr.ljust(8, b"\x00") + struct.pack("!H", proto) + bytes(l3)


def sll2(l3, pkttype, ifindex, *, arphrd=1, mac=C_MAC):
    addr = bytes.fromhex(mac.replace(":", "")) if arphrd == 1 else b"\x00" * 6
    proto = 0x86DD if l3.version == 6 else 0x0800
    return struct.pack("!HHIHBB", proto, 0, ifindex, arphrd, pkttype, len(addr)) + addr.ljust(8, b"\x00") + bytes(l3)


# ------------------------------------------------------------------------------------------------
# TCP conversation helper
# ------------------------------------------------------------------------------------------------
class TcpFlow:
    def __init__(self, clock, *, v6=False, sport=45000, dport=53, isn_c=1000, isn_s=5000):
        self.clock, self.v6, self.sport, self.dport = clock, v6, sport, dport
        self.cseq, self.sseq = isn_c, isn_s
        self.ipid = 100
        self.frames = []  # (ts, bytes)

    def _pkt(self, to_server, flags, seq, ack, data=b""):
        self.ipid += 1
        if self.v6:
            l3 = IPv6(src=C6, dst=S6) if to_server else IPv6(src=S6, dst=C6)
        else:
            l3 = IP(src=C4, dst=S4, id=self.ipid) if to_server else IP(src=S4, dst=C4, id=self.ipid)
        ports = dict(sport=self.sport, dport=self.dport) if to_server else dict(sport=self.dport, dport=self.sport)
        seg = TCP(flags=flags, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF if "A" in flags else 0, window=64240, **ports)
        return swap_eth(l3 / seg / data if data else l3 / seg, to_server)

    def emit(self, to_server, flags, data=b"", *, seq=None, advance=True, us=200):
        """Send a segment. seq=None means the next in-order sequence number."""
        if to_server:
            s = self.cseq if seq is None else seq
            p = self._pkt(True, flags, s, self.sseq, data)
            if advance:
                self.cseq = max(self.cseq, s + len(data) + (1 if ("S" in flags or "F" in flags) else 0))
        else:
            s = self.sseq if seq is None else seq
            p = self._pkt(False, flags, s, self.cseq, data)
            if advance:
                self.sseq = max(self.sseq, s + len(data) + (1 if ("S" in flags or "F" in flags) else 0))
        self.frames.append((self.clock.tick(us), p))
        return s

    def handshake(self):
        self.emit(True, "S")
        self.emit(False, "SA")
        self.emit(True, "A")

    def close(self):
        self.emit(True, "FA")
        self.emit(False, "FA")
        self.emit(True, "A")


def framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


# ------------------------------------------------------------------------------------------------
# the files
# ------------------------------------------------------------------------------------------------
FILES: dict[str, bytes] = {}


def put(name, data):
    FILES[name] = data


def records_from(clock, packets, us=300):
    return [(clock.tick(us), bytes(p)) for p in packets]


# ---- link types --------------------------------------------------------------------------------
def build_link_types():
    # 802.1Q, one tag
    c = Clock(1)
    pk = []
    q, r = std_pair(0x9001)
    pk += [Ether(src=C_MAC, dst=S_MAC) / Dot1Q(vlan=100) / q, Ether(src=S_MAC, dst=C_MAC) / Dot1Q(vlan=100) / r]
    q, r = std_pair(0x9002, qtype=AAAA, v6=True)
    pk += [Ether(src=C_MAC, dst=S_MAC) / Dot1Q(vlan=100) / q, Ether(src=S_MAC, dst=C_MAC) / Dot1Q(vlan=100) / r]
    q, r = std_pair(0x9003, sport=40003)  # priority-tagged: VID 0, PCP 5
    pk += [Ether(src=C_MAC, dst=S_MAC) / Dot1Q(vlan=0, prio=5) / q, Ether(src=S_MAC, dst=C_MAC) / Dot1Q(vlan=0, prio=5) / r]
    put("link_vlan.pcap", pcap_bytes(1, records_from(c, pk)))

    # stacked tags
    c = Clock(2)
    pk = []
    q, r = std_pair(0x9101)  # 802.1ad S-tag 200 + 802.1Q C-tag 100
    pk += [Ether(src=C_MAC, dst=S_MAC, type=0x88A8) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / q,
           Ether(src=S_MAC, dst=C_MAC, type=0x88A8) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / r]
    q, r = std_pair(0x9102, qtype=AAAA, v6=True)  # legacy QinQ 0x9100 outer + 0x8100 inner
    pk += [Ether(src=C_MAC, dst=S_MAC, type=0x9100) / Dot1Q(vlan=300) / Dot1Q(vlan=100) / q,
           Ether(src=S_MAC, dst=C_MAC, type=0x9100) / Dot1Q(vlan=300) / Dot1Q(vlan=100) / r]
    q, r = std_pair(0x9103, sport=40003)  # two plain 802.1Q tags (0x8100, 0x8100)
    pk += [Ether(src=C_MAC, dst=S_MAC) / Dot1Q(vlan=400) / Dot1Q(vlan=100) / q,
           Ether(src=S_MAC, dst=C_MAC) / Dot1Q(vlan=400) / Dot1Q(vlan=100) / r]
    q, _ = std_pair(0x9104, sport=40004)  # three tags 0x88a8/0x8100/0x8100: one more than two
    pk += [Ether(src=C_MAC, dst=S_MAC, type=0x88A8) / Dot1AD(vlan=200) / Dot1Q(vlan=400) / Dot1Q(vlan=100) / q]
    put("link_qinq.pcap", pcap_bytes(1, records_from(c, pk)))

    # Linux cooked v1 (113)
    c = Clock(3)
    recs = []
    q, r = std_pair(0x9201)
    recs += [(c.tick(), sll1(q, 4, mac=C_MAC)), (c.tick(), sll1(r, 0, mac=S_MAC))]
    q, r = std_pair(0x9202, qtype=AAAA, v6=True)
    recs += [(c.tick(), sll1(q, 4, mac=C_MAC)), (c.tick(), sll1(r, 0, mac=S_MAC))]
    # loopback as the kernel hands it to a packet socket: every packet twice, outgoing (4) then host (0)
    lq = ip4_udp("127.0.0.1", "127.0.0.1", 40010, 53, query(0x9203, "lo.example.test"))
    lr = ip4_udp("127.0.0.1", "127.0.0.1", 53, 40010, response(0x9203, "lo.example.test", A, [(A, a("198.18.0.53"))]))
    for p in (lq, lr):
        recs += [(c.tick(50), sll1(p, 4, arphrd=772)), (c.tick(50), sll1(p, 0, arphrd=772))]
    put("link_sll.pcap", pcap_bytes(113, recs))

    # Linux cooked v2 (276): loopback twice (outgoing + host) on ifindex 1, a veth pair on ifindex 2
    c = Clock(4)
    recs = []
    lq = ip6_udp("::1", "::1", 40020, 53, query(0x9301, "lo.example.test", AAAA))
    lr = ip6_udp("::1", "::1", 53, 40020, response(0x9301, "lo.example.test", AAAA, [(AAAA, aaaa("fd00:18::53"))]))
    for p in (lq, lr):
        recs += [(c.tick(50), sll2(p, 4, 1, arphrd=772)), (c.tick(50), sll2(p, 0, 1, arphrd=772))]
    q, r = std_pair(0x9302)
    recs += [(c.tick(), sll2(q, 0, 2, mac=C_MAC)), (c.tick(), sll2(r, 4, 2, mac=S_MAC))]
    put("link_sll2.pcap", pcap_bytes(276, recs))

    # raw IP (101) and the other raw-IP link types
    for fname, lt, minute, base in (("link_raw.pcap", 101, 5, 0x9401), ("link_raw_dlt12.pcap", 12, 6, 0x9411),
                                    ("link_raw_dlt14.pcap", 14, 7, 0x9421)):
        c = Clock(minute)
        q4, r4 = std_pair(base)
        q6, r6 = std_pair(base + 1, qtype=AAAA, v6=True)
        put(fname, pcap_bytes(lt, records_from(c, [q4, r4, q6, r6])))
    c = Clock(8)
    put("link_ipv4.pcap", pcap_bytes(228, records_from(c, std_pair(0x9431))))
    c = Clock(9)
    put("link_ipv6.pcap", pcap_bytes(229, records_from(c, std_pair(0x9441, qtype=AAAA, v6=True))))

    # BSD loopback NULL (0): AF in host byte order, written by a little-endian host
    c = Clock(10)
    recs = []
    q, r = std_pair(0x9501)
    recs += [(c.tick(), struct.pack("<I", 2) + bytes(q)), (c.tick(), struct.pack("<I", 2) + bytes(r))]
    for i, af in enumerate((24, 28, 30)):  # AF_INET6 on NetBSD/OpenBSD, FreeBSD, macOS
        q, r = std_pair(0x9502 + i, qtype=AAAA, v6=True, sport=40002 + i)
        recs += [(c.tick(), struct.pack("<I", af) + bytes(q)), (c.tick(), struct.pack("<I", af) + bytes(r))]
    put("link_null.pcap", pcap_bytes(0, recs))
    # ... and written by a big-endian host: big-endian file header and AF in big-endian
    c = Clock(11)
    recs = []
    q, r = std_pair(0x9511)
    recs += [(c.tick(), struct.pack(">I", 2) + bytes(q)), (c.tick(), struct.pack(">I", 2) + bytes(r))]
    q, r = std_pair(0x9512, qtype=AAAA, v6=True, sport=40002)
    recs += [(c.tick(), struct.pack(">I", 30) + bytes(q)), (c.tick(), struct.pack(">I", 30) + bytes(r))]
    put("link_null_bigendian.pcap", pcap_bytes(0, recs, endian=">"))

    # OpenBSD LOOP (108): AF in network byte order
    c = Clock(12)
    recs = []
    q, r = std_pair(0x9601)
    recs += [(c.tick(), struct.pack(">I", 2) + bytes(q)), (c.tick(), struct.pack(">I", 2) + bytes(r))]
    q, r = std_pair(0x9602, qtype=AAAA, v6=True, sport=40002)
    recs += [(c.tick(), struct.pack(">I", 24) + bytes(q)), (c.tick(), struct.pack(">I", 24) + bytes(r))]
    put("link_loop.pcap", pcap_bytes(108, recs))


# ---- container variants ------------------------------------------------------------------------
def four_frames(base_id):
    q4, r4 = std_pair(base_id)
    q6, r6 = std_pair(base_id + 1, qtype=AAAA, v6=True, sport=40001)
    return eth_pair(q4, r4) + eth_pair(q6, r6)


def build_formats():
    c = Clock(20)
    put("fmt_bigendian.pcap", pcap_bytes(1, records_from(c, four_frames(0x8001)), endian=">"))

    c = Clock(21)
    recs = [(c.tick(1) + 789 + i * 1111, bytes(p)) for i, p in enumerate(four_frames(0x8101))]  # sub-us digits
    put("fmt_nanosecond.pcap", pcap_bytes(1, recs, nano=True))

    c = Clock(22)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(pcap_bytes(1, records_from(c, four_frames(0x8201))))
    put("fmt_gzip.pcap.gz", buf.getvalue())

    # last record truncated: its header says 90 bytes, only 20 follow (file ends mid-record)
    c = Clock(23)
    full = pcap_bytes(1, records_from(c, four_frames(0x8301) + [eth(std_pair(0x8303, sport=40003)[0])]))
    last_len = len(bytes(eth(std_pair(0x8303, sport=40003)[0])))
    put("fmt_truncated_last.pcap", full[: len(full) - last_len + 20])

    # snaplen 64: every record is cut (caplen 64 < origlen)
    c = Clock(24)
    recs = [(c.tick(), bytes(p)[:64], len(bytes(p))) for p in four_frames(0x8401)]
    put("fmt_snaplen64.pcap", pcap_bytes(1, recs, snaplen=64))

    # pcapng: 4 good EPBs, then an EPB (query 0x8503) whose leading block total length was overwritten
    # with 30 (not a multiple of 4, smaller than an EPB header, disagrees with the trailing copy),
    # then one more good EPB (query 0x8504) that a reader cannot reach without resynchronising
    e = "<"
    c = Clock(25)
    out = ng_shb(e) + ng_idb(e, 1, name="crafted0")
    for p in four_frames(0x8501):
        out += ng_epb(e, 0, c.tick(), p)
    bad = bytearray(ng_epb(e, 0, c.tick(), eth(std_pair(0x8503, sport=40003)[0])))
    bad[4:8] = struct.pack(e + "I", 30)
    out += bytes(bad)
    out += ng_epb(e, 0, c.tick(), eth(std_pair(0x8504, sport=40004)[0]))
    put("fmt_pcapng_damaged.pcapng", out)

    # pcapng: interface 0 Ethernet (default microseconds), interface 1 raw IP with if_tsresol=9 (ns)
    c = Clock(26)
    out = ng_shb(e) + ng_idb(e, 1, name="eth-crafted") + ng_idb(e, 101, name="tun-crafted", tsresol=9)
    q, r = std_pair(0x8601)
    out += ng_epb(e, 0, c.tick(), eth(q, C_MAC, S_MAC), comment="Ethernet, us timestamps")
    out += ng_epb(e, 0, c.tick(), eth(r, S_MAC, C_MAC))
    q, r = std_pair(0x8602, qtype=AAAA, v6=True)
    out += ng_epb(e, 1, c.tick() + 123, q, units_per_sec=10**9, comment="raw IP, ns timestamps")
    out += ng_epb(e, 1, c.tick() + 456, r, units_per_sec=10**9)
    q, r = std_pair(0x8603, sport=40003)
    out += ng_epb(e, 1, c.tick() + 789, q, units_per_sec=10**9)
    out += ng_epb(e, 0, c.tick(), eth(r, S_MAC, C_MAC))
    put("fmt_pcapng_two_linktypes.pcapng", out)

    # pcapng written big-endian
    e = ">"
    c = Clock(27)
    out = ng_shb(e) + ng_idb(e, 1, name="crafted-be")
    for p in four_frames(0x8701):
        out += ng_epb(e, 0, c.tick(), p)
    put("fmt_pcapng_bigendian.pcapng", out)

    # pcapng with two sections (as `cat a.pcapng b.pcapng` makes): LE Ethernet, then BE raw IP;
    # interface ids restart at 0 in the second section
    c = Clock(28)
    out = ng_shb("<") + ng_idb("<", 1, name="sect0-eth")
    for p in eth_pair(*std_pair(0x8801)):
        out += ng_epb("<", 0, c.tick(), p)
    out += ng_shb(">") + ng_idb(">", 101, name="sect1-raw", tsresol=9)
    for p in std_pair(0x8802, qtype=AAAA, v6=True):
        out += ng_epb(">", 0, c.tick(), p, units_per_sec=10**9)
    put("fmt_pcapng_two_sections.pcapng", out)


# ---- IP layer ----------------------------------------------------------------------------------
def big_response(qid, name, n=30):
    recs = [(TXT, txt("dnswatch-fragment-record-%02d-" % i + "x" * 60)) for i in range(n)]
    return response(qid, name, TXT, recs, edns=4096)


def build_ip():
    # IPv4 options
    c = Clock(30)
    pk = []
    pk.append(eth(IP(src=C4, dst=S4, id=1, options=[IPOption_Router_Alert()]) / UDP(sport=40001, dport=53)
                  / query(0x4001, "www.example.test")))  # IHL 6
    pk.append(eth(IP(src=S4, dst=C4, id=2) / UDP(sport=53, dport=40001)
                  / response(0x4001, "www.example.test", A, [(A, a("198.18.0.80"))]), S_MAC, C_MAC))
    pk.append(eth(IP(src=C4, dst=S4, id=3, options=[IPOption_NOP()] * 3 + [IPOption_Router_Alert()])
                  / UDP(sport=40002, dport=53) / query(0x4002, "www.example.test", AAAA)))  # IHL 7 (NOPs)
    pk.append(eth(IP(src=S4, dst=C4, id=4, options=[IPOption_NOP()] * 4) / UDP(sport=53, dport=40002)
                  / response(0x4002, "www.example.test", AAAA, [(AAAA, aaaa("fd00:18::80"))]), S_MAC, C_MAC))
    pk.append(eth(IP(src=C4, dst=S4, id=5, options=[IPOption_NOP()] * 40) / UDP(sport=40003, dport=53)
                  / query(0x4003, "mail.example.test")))  # IHL 15, the maximum
    pk.append(eth(IP(src=S4, dst=C4, id=6, options=[IPOption_NOP()] * 40) / UDP(sport=53, dport=40003)
                  / response(0x4003, "mail.example.test", A, [(A, a("198.18.0.25"))]), S_MAC, C_MAC))
    put("ipv4_options.pcap", pcap_bytes(1, records_from(c, pk)))

    # IPv4 fragments: set 1 in order (IP id 0x1234), set 2 out of order 3,1,2 (IP id 0x1235)
    c = Clock(31)
    pk = []
    for qid, ipid, sport, order in ((0x4101, 0x1234, 40101, (0, 1, 2)), (0x4102, 0x1235, 40102, (2, 0, 1))):
        name = "frag%d.example.test" % (qid & 0xF)
        pk.append(eth(ip4_udp(C4, S4, sport, 53, query(qid, name, TXT, edns=4096), id=ipid - 0x100)))
        full = IP(src=S4, dst=C4, id=ipid) / UDP(sport=53, dport=sport) / big_response(qid, name)
        frags = fragment(full, fragsize=1480)
        assert len(frags) == 3, len(frags)
        pk += [eth(frags[i], S_MAC, C_MAC) for i in order]
    put("ipv4_fragments.pcap", pcap_bytes(1, records_from(c, pk, us=100)))

    # IPv6 extension headers
    c = Clock(32)
    pk = []
    hbh = lambda: IPv6ExtHdrHopByHop(options=[RouterAlert(value=0), PadN(optdata=b"")])  # noqa: E731
    dst = lambda: IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")])  # noqa: E731
    pairs = [
        (0x6001, hbh() / dst()),  # hop-by-hop + destination options
        (0x6002, hbh() / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[]) / dst()),  # + routing header
        (0x6003, _chain([hbh()] + [dst() for _ in range(7)])),  # 8 extension headers
        (0x6004, _chain([hbh()] + [dst() for _ in range(8)])),  # 9 extension headers
        (0x6005, IPv6ExtHdrFragment(id=0x6005, offset=0, m=0)),  # atomic fragment (offset 0, M=0)
    ]
    for i, (qid, ext) in enumerate(pairs):
        sport = 40201 + i
        pk.append(eth(ip6_udp(C6, S6, sport, 53, query(qid, "www.example.test", AAAA), ext=ext)))
        ext_r = ext.copy()
        pk.append(eth(ip6_udp(S6, C6, 53, sport, response(qid, "www.example.test", AAAA, [(AAAA, aaaa("fd00:18::80"))]),
                              ext=ext_r), S_MAC, C_MAC))
    put("ipv6_exthdr.pcap", pcap_bytes(1, records_from(c, pk)))

    # IPv6 fragments: one response in 3 fragments (in order), one in 3 fragments out of order 3,1,2
    c = Clock(33)
    pk = []
    for qid, fid, sport, order in ((0x6101, 0xC0FFEE01, 40301, (0, 1, 2)), (0x6102, 0xC0FFEE02, 40302, (2, 0, 1))):
        name = "frag%d.example.test" % (qid & 0xF)
        pk.append(eth(ip6_udp(C6, S6, sport, 53, query(qid, name, TXT, edns=4096))))
        full = IPv6(src=S6, dst=C6) / IPv6ExtHdrFragment(id=fid) / UDP(sport=53, dport=sport) / big_response(qid, name)
        frags = fragment6(full, 1280)
        assert len(frags) == 3, len(frags)
        pk += [eth(frags[i], S_MAC, C_MAC) for i in order]
    put("ipv6_fragments.pcap", pcap_bytes(1, records_from(c, pk, us=100)))


def _chain(layers):
    out = layers[0]
    for layer in layers[1:]:
        out = out / layer
    return out


# ---- TCP ---------------------------------------------------------------------------------------
def build_tcp():
    # DNS length prefix split: query 1 byte + rest; response 2 bytes + rest; a query split inside the header
    c = Clock(40)
    f = TcpFlow(c, sport=45001)
    f.handshake()
    m = framed(query(0x7001, "www.example.test"))
    f.emit(True, "PA", m[:1])
    f.emit(True, "PA", m[1:])
    m = framed(response(0x7001, "www.example.test", A, [(A, a("198.18.0.80"))]))
    f.emit(False, "PA", m[:2])
    f.emit(False, "PA", m[2:])
    m = framed(query(0x7002, "mail.example.test"))
    f.emit(True, "PA", m[:3])  # length + first byte of the id
    f.emit(True, "PA", m[3:])
    f.emit(False, "PA", framed(response(0x7002, "mail.example.test", A, [(A, a("198.18.0.25"))])))
    f.close()
    put("tcp_split_length.pcap", pcap_bytes(1, f.frames))

    # two DNS messages in one segment, and a message straddling two segments (IPv6)
    c = Clock(41)
    f = TcpFlow(c, v6=True, sport=45002)
    f.handshake()
    f.emit(True, "PA", framed(query(0x7101, "www.example.test")) + framed(query(0x7102, "www.example.test", AAAA)))
    f.emit(False, "PA", framed(response(0x7101, "www.example.test", A, [(A, a("198.18.0.80"))]))
           + framed(response(0x7102, "www.example.test", AAAA, [(AAAA, aaaa("fd00:18::80"))])))
    f.emit(True, "PA", framed(query(0x7103, "c.example.test")) + framed(query(0x7104, "c.example.test", AAAA)))
    r1 = framed(response(0x7103, "c.example.test", A, [(A, a("198.18.0.10"))]))
    r2 = framed(response(0x7104, "c.example.test", AAAA, [(AAAA, aaaa("fd00:18::10"))]))
    f.emit(False, "PA", r1 + r2[:20])  # one whole message + the start of the next
    f.emit(False, "PA", r2[20:])
    f.close()
    put("tcp_two_msgs.pcap", pcap_bytes(1, f.frames))

    # retransmissions: exact duplicates, and an overlapping retransmission
    c = Clock(42)
    f = TcpFlow(c, sport=45003)
    f.handshake()
    m = framed(query(0x7201, "www.example.test"))
    s = f.emit(True, "PA", m)
    f.emit(True, "PA", m, seq=s, us=200000)  # same seq, same bytes, 200 ms later
    m = framed(response(0x7201, "www.example.test", A, [(A, a("198.18.0.80"))]))
    s = f.emit(False, "PA", m)
    f.emit(False, "PA", m, seq=s, us=200000)
    m = framed(query(0x7202, "txt.example.test", TXT))
    s = f.emit(True, "PA", m[:12])  # first 12 bytes
    f.emit(True, "PA", m, seq=s, us=200000)  # retransmission covering those 12 bytes and the rest
    f.emit(False, "PA", framed(response(0x7202, "txt.example.test", TXT, [(TXT, txt("hello from dnswatch"))])))
    f.close()
    put("tcp_retransmit.pcap", pcap_bytes(1, f.frames))

    # streams without their SYN: flow 1 starts on a message boundary, flow 2 starts mid-message
    c = Clock(43)
    f = TcpFlow(c, sport=45004, isn_c=0x10000000, isn_s=0x20000000)
    f.emit(True, "PA", framed(query(0x7301, "www.example.test")))
    f.emit(False, "PA", framed(response(0x7301, "www.example.test", A, [(A, a("198.18.0.80"))])))
    f.close()
    g = TcpFlow(c, sport=45005, isn_c=0x30000000, isn_s=0x40000000)
    earlier = framed(response(0x7300, "mail.example.test", A, [(A, a("198.18.0.25"))]))
    g.emit(False, "PA", earlier[-30:])  # tail of a response whose start was before the capture
    g.emit(True, "PA", framed(query(0x7302, "c.example.test")))
    g.emit(False, "PA", framed(response(0x7302, "c.example.test", A, [(A, a("198.18.0.10"))])))
    g.close()
    put("tcp_no_syn.pcap", pcap_bytes(1, f.frames + g.frames))

    # out-of-order segments: query in 2 segments sent 2,1; a 3-segment response sent 1,3,2
    c = Clock(44)
    f = TcpFlow(c, sport=45006)
    f.handshake()
    m = framed(query(0x7401, "big.example.test", TXT, edns=4096))
    s = f.cseq
    f.emit(True, "PA", m[10:], seq=s + 10)
    f.emit(True, "PA", m[:10], seq=s)
    big = framed(big_response(0x7401, "big.example.test", n=36))
    s = f.sseq
    chunks = [(s, big[:1448]), (s + 1448, big[1448:2896]), (s + 2896, big[2896:])]
    assert len(chunks[2][1]) > 0
    for i in (0, 2, 1):
        f.emit(False, "A" if i < 2 else "PA", chunks[i][1], seq=chunks[i][0])
    f.close()
    put("tcp_out_of_order.pcap", pcap_bytes(1, f.frames))


# ---- hostile DNS payloads ----------------------------------------------------------------------
def build_hostile():
    rnd = random.Random(53)
    c = Clock(50)
    pk = []
    port = [40500]

    def pair(qpayload, rpayload=None, *, src=C4, dst=S4, dport=53):
        port[0] += 1
        sp = port[0]
        pk.append(eth(ip4_udp(src, dst, sp, dport, qpayload, id=sp)))
        if rpayload is not None:
            pk.append(eth(ip4_udp(dst, src, dport, sp, rpayload, id=sp + 1000), S_MAC, C_MAC))

    def formerr(qid, opcode=0):
        return header(qid, qr=1, opcode=opcode, rcode=1, qd=0, ra=1)

    # 1 (0xbad1) query whose qname is a compression pointer to itself (offset 12 -> 12)
    pair(header(0xBAD1) + b"\xc0\x0c" + struct.pack("!HH", A, IN), formerr(0xBAD1))
    # 2 (0xbad2) response with a pointer loop A -> B -> A: answer owner "a" -> ptr B, CNAME rdata "b" -> ptr A
    qn = "loop.example.test"
    qpart = header(0xBAD2, qr=1, aa=1, ra=1, an=1) + question(qn)
    off_a = len(qpart)  # owner name starts here: \x01a + pointer to off_b
    owner_len = 2 + 2
    off_b = off_a + owner_len + 10  # rdata starts after the fixed RR fields
    owner = b"\x01a" + struct.pack("!H", 0xC000 | off_b)
    rdata = b"\x01b" + struct.pack("!H", 0xC000 | off_a)
    pair(query(0xBAD2, qn), qpart + rr(owner, CNAME, rdata))
    # 3 (0xbad3) response with pointers out of range: answer owner -> 0x3fff, CNAME target -> just past the end
    qn = "range.example.test"
    qpart = header(0xBAD3, qr=1, aa=1, ra=1, an=2) + question(qn)
    rr1 = rr(b"\xff\xff", A, a("198.18.0.1"))
    msg_len = len(qpart) + len(rr1) + 2 + 10 + 2
    rr2 = rr(PTR_Q, CNAME, struct.pack("!H", 0xC000 | msg_len))
    pair(query(0xBAD3, qn), qpart + rr1 + rr2)
    # 4 (0xbad4) truncated header: 7 bytes, then 11 bytes (one short of a header), then exactly 12 (empty query)
    pair(header(0xBAD4)[:7])
    pair(header(0xBAD5, qd=1)[:11])
    pair(header(0xBAD6, qd=0), formerr(0xBAD6))
    # 5 empty UDP payload
    pair(b"")
    # 6 (0xbad7) escape codes and a newline inside a label
    qn = [b"\x1b[31mred\n", b"example", b"test"]
    pair(query(0xBAD7, dname(qn)), nxdomain(0xBAD7, dname(qn)))
    # 7 (0xbad8) non-UTF-8 label bytes, DNS-tunnel style (binary label, NULL query type)
    blob = b"\xff\xfe" + bytes(rnd.randrange(256) for _ in range(30))
    qn = [blob, b"t", b"example", b"test"]
    pair(query(0xBAD8, dname(qn), NULL), response(0xBAD8, dname(qn), NULL, [(NULL, b"\x00\xff\xfe" + bytes(range(200, 230)))]))
    # 8 (0xbad9) label with a literal dot and a backslash inside it: 'a.b\c' . example . test
    qn = [b"a.b\\c", b"example", b"test"]
    pair(query(0xBAD9, dname(qn)), response(0xBAD9, dname(qn), A, [(A, a("198.18.0.99"))]))
    # 9 (0xbada) label containing a NUL byte
    qn = [b"nul\x00byte", b"example", b"test"]
    pair(query(0xBADA, dname(qn)), nxdomain(0xBADA, dname(qn)))
    # 10 (0xbadb) qdcount=2 but one question; (0xbadc) qdcount=0 with a question present
    pair(header(0xBADB, qd=2) + question("www.example.test"), formerr(0xBADB))
    pair(header(0xBADC, qd=0) + question("www.example.test"), formerr(0xBADC))
    # 11 random non-DNS bytes to port 53 (seeded), and random bytes from port 53
    pair(bytes(rnd.randrange(256) for _ in range(64)))
    port[0] += 1
    pk.append(eth(ip4_udp(S4, C4, 53, port[0], bytes(rnd.randrange(256) for _ in range(48)), id=9999), S_MAC, C_MAC))
    # 12 (0xbadd) unknown qtype 65535
    pair(query(0xBADD, "www.example.test", 65535),
         response(0xBADD, "www.example.test", 65535, [], authority=[(dname("test"), SOA, SOA_TEST)]))
    # 13 (0xbade) CHAOS class: version.bind CH TXT
    pair(query(0xBADE, "version.bind", TXT, CH, rd=0),
         response(0xBADE, "version.bind", TXT, [(TXT, txt("dnswatch-test-server"))], qclass=CH, rd=0))
    # 14 (0xbadf) NOTIFY (opcode 4) from a primary, and its answer
    pair(header(0xBADF, opcode=4, aa=1, rd=0) + question("example.test", SOA),
         header(0xBADF, qr=1, opcode=4, aa=1, rd=0) + question("example.test", SOA), src="198.18.0.3")
    # 15 (0xbae0) UPDATE (opcode 5): zone example.test SOA, add new.example.test A; answered REFUSED
    upd = (header(0xBAE0, opcode=5, rd=0, qd=1, an=0, ns=1) + question("example.test", SOA)
           + rr(dname("new.example.test"), A, a("198.18.0.77")))
    pair(upd, header(0xBAE0, qr=1, opcode=5, rd=0, rcode=5, qd=1) + question("example.test", SOA))
    # 16 (0xbae1) name longer than 255 octets (5 x 63-byte labels + example.test)
    qn = [bytes([0x61 + i]) * 63 for i in range(5)] + [b"example", b"test"]
    pair(query(0xBAE1, dname(qn)), formerr(0xBAE1))
    # 17 (0xbae2) label type 0x40 (obsolete extended label) and (0xbae3) 0x80 (reserved)
    pair(header(0xBAE2) + b"\x41\x05extra" + dname("example.test") + struct.pack("!HH", A, IN), formerr(0xBAE2))
    pair(header(0xBAE3) + b"\x80\x01" + dname("example.test") + struct.pack("!HH", A, IN), formerr(0xBAE3))
    # 18 (0xbae4) 16 questions (qdcount=16) and (0xbae5) 17 questions (qdcount=17)
    for qid, n in ((0xBAE4, 16), (0xBAE5, 17)):
        qs = b"".join(question("q%02d.example.test" % i) for i in range(n))
        pair(header(qid, qd=n) + qs, formerr(qid))
    # 19 (0xbae6) answer whose rdlength runs past the end of the message
    qn = "rdlen.example.test"
    pair(query(0xBAE6, qn), header(0xBAE6, qr=1, aa=1, ra=1, an=1) + question(qn) + rr(PTR_Q, A, a("198.18.0.1"), rdlen=1024))
    # 20 (0xbae7) counts that lie: ancount=65535 with no answers present
    qn = "count.example.test"
    pair(query(0xBAE7, qn), header(0xBAE7, qr=1, aa=1, ra=1, an=65535) + question(qn))
    # 21 (0xbae8) EDNS OPT with a malformed option (option length past the end of the OPT rdata)
    pair(header(0xBAE8, ar=1) + question("www.example.test") + b"\x00" + struct.pack("!HHIH", OPT, 1232, 0, 6)
         + struct.pack("!HH", 8, 200) + b"\x00\x01")
    put("dns_hostile.pcap", pcap_bytes(1, records_from(c, pk, us=500)))


# ---- correlation edge cases --------------------------------------------------------------------
def build_orphans():
    c = Clock(60)
    pk = []

    def q_(qid, name, sport, src=C4, dst=S4, qtype=A):
        return eth(ip4_udp(src, dst, sport, 53, query(qid, name, qtype), id=sport))

    def r_(qid, name, sport, src=S4, dst=C4, ip="198.18.0.80", qtype=A):
        return eth(ip4_udp(src, dst, 53, sport, response(qid, name, qtype, [(A, a(ip))]), id=sport + 1000), S_MAC, C_MAC)

    pk += [q_(0x0101, "www.example.test", 40601), r_(0x0101, "www.example.test", 40601)]          # normal pair
    pk += [r_(0x0202, "orphan.example.test", 40602, ip="198.18.0.22")]                            # response, no query
    pk += [q_(0x0303, "lost.example.test", 40603)]                                                # query, no response
    pk += [q_(0x0404, "retry.example.test", 40604), q_(0x0404, "retry.example.test", 40604),      # retransmitted query
           r_(0x0404, "retry.example.test", 40604, ip="198.18.0.44")]
    pk += [q_(0x0505, "dup.example.test", 40605), r_(0x0505, "dup.example.test", 40605, ip="198.18.0.55"),
           r_(0x0505, "dup.example.test", 40605, ip="198.18.0.55")]                               # duplicate response
    pk += [q_(0x0606, "spoof.example.test", 40606),
           r_(0x0606, "spoof.example.test", 40606, src="198.18.0.9", ip="198.18.0.66")]          # answer from elsewhere
    pk += [q_(0x0707, "same-id.example.test", 40607), q_(0x0707, "same-id.example.test", 40607, src="198.18.0.3"),
           r_(0x0707, "same-id.example.test", 40607, dst="198.18.0.3", ip="198.18.0.73"),
           r_(0x0707, "same-id.example.test", 40607, ip="198.18.0.72")]                          # same id+port, 2 clients
    pk += [q_(0x0808, "asked.example.test", 40608),
           r_(0x0808, "other.example.test", 40608, ip="198.18.0.88")]                            # answer to another name
    # gaps: 2 s of silence after the unanswered query (frame 4), the retry (frame 6) 1 s after frame 5
    gaps_us = {4: 2000000, 5: 1000000}
    recs = [(c.tick(gaps_us.get(i, 300)), bytes(p)) for i, p in enumerate(pk)]
    put("dns_orphans.pcap", pcap_bytes(1, recs))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    build_link_types()
    build_formats()
    build_ip()
    build_tcp()
    build_hostile()
    build_orphans()
    for name, data in sorted(FILES.items()):
        with open(os.path.join(out_dir, name), "wb") as fh:
            fh.write(data)
        print("%-34s %7d bytes" % (name, len(data)))


if __name__ == "__main__":
    main()
