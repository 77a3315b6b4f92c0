"""From link-layer frames to DNS message bytes: L2, IPv4/IPv6 (with reassembly), UDP, TCP streams.

``FrameDecoder.decode(frame)`` returns the DNS messages a frame completes, as ``Segment`` records.
After each call, ``FrameDecoder.keep`` is the keep/drop verdict of docs/keep-contract.md for that
frame, the same rule ``bpf/dns_filter.c`` applies in the kernel (a test compares the two).

Everything here is bounded: half-finished fragments and TCP streams are capped in number, size and
age, and what is given up is counted in ``FrameDecoder.stats``.
"""
from __future__ import annotations

import functools
import socket
import struct
from collections import OrderedDict, defaultdict
from typing import Dict, Iterable, List, Optional, Tuple

import dnswatch.model as model
from dnswatch.model import (
    LINKTYPE_DLT_RAW1,
    LINKTYPE_DLT_RAW2,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PACKET_OUTGOING,
    Frame,
    Segment,
)

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 2  # the keep contract's limits (what the kernel walks)
MAX_IPV6_EXT_HEADERS = 8
DECODE_MAX_VLAN_TAGS = 8  # replay decodes deeper stacks too (as tshark does), still bounded
DECODE_MAX_IPV6_EXT_HEADERS = 16
MAX_QDCOUNT = 16
LOOPBACK_IFINDEX = 1

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV6_EXT_GENERIC = (0, 43, 60, 135)  # hop-by-hop, routing, destination options, mobility: (len+1)*8
IPV6_EXT_AH = 51  # (len+2)*4
IPV6_EXT_FRAGMENT = 44

AF_INET6_VALUES = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, macOS

# Bounds for state kept between frames
MAX_FRAGMENT_SETS = 2048
FRAGMENT_TIMEOUT = 30.0
MAX_DATAGRAM = 65535 + 40
# Fragments held are bounded per datagram and in total, in pieces and in bytes (a piece costs its bytes plus
# ~100 bytes of Python objects, counted as FRAGMENT_OVERHEAD). Real fragmentation of a 64 KiB datagram at a
# 1280-byte MTU is ~52 pieces; 1-byte pieces at 8,192 distinct offsets are an attack, not traffic.
MAX_FRAGMENTS_PER_DATAGRAM = 128
MAX_FRAGMENT_PIECES = 65536
MAX_FRAGMENT_BYTES = 32 << 20
FRAGMENT_OVERHEAD = 128
MAX_STREAMS = 8192
STREAM_IDLE_TIMEOUT = 120.0
MAX_STREAM_BUFFER = 65535 + 2
MAX_OUT_OF_ORDER = 64  # segments waiting behind a hole, per stream
MAX_OUT_OF_ORDER_BYTES = 2 * MAX_STREAM_BUFFER  # their bytes, per stream
MAX_OUT_OF_ORDER_TOTAL = 32 << 20  # their bytes, all streams together
GAP_TIMEOUT = 1.0  # seconds a hole may stay open before it is a gap (reordering takes far less)
EXPIRE_EVERY = 4096  # frames between sweeps of old fragments and idle streams
VERDICT_FRAGMENTS = 4096  # the kernel's LRU of kept first fragments

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_ports = struct.Struct("!HH").unpack_from
_udp = struct.Struct("!HHH").unpack_from
_tcp = struct.Struct("!HHIIBB").unpack_from  # sport dport seq ack data-offset flags
_ipv4 = struct.Struct("!BBHHHBB").unpack_from  # ver/ihl tos total id frag ttl proto
# The fast path's one look at an Ethernet/IPv4/UDP frame: ethertype, ver/ihl, total length, fragment
# field, protocol, both addresses, UDP ports and length.
_eth_ipv4_udp = struct.Struct("!12xHBxH2xHxB2x8sHHH").unpack_from
_new_segment = tuple.__new__  # Segment(...) goes through a Python-level __new__; this is ~3x cheaper
try:  # compiled (scripts/build-speedups), decode_records reads the bytes with C pointers instead of unpacks
    import cython
    COMPILED = cython.compiled
except ImportError:  # no Cython: pure Python
    COMPILED = False
_new_frame = tuple.__new__
# decode_records' look at a frame, per link type: where its ethertype and its IP header are
_L2_OFFSETS = {LINKTYPE_ETHERNET: (12, 14), LINKTYPE_LINUX_SLL: (14, 16), LINKTYPE_LINUX_SLL2: (0, 20)}
_ntoa = socket.inet_ntoa
_ntop = socket.inet_ntop
_AF_INET6 = socket.AF_INET6

TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04


@functools.lru_cache(maxsize=None)
def _l2_unpacks(linktype: int):
    """decode_records' unpacks for a link type: ethertype, IPv4 (ver/ihl, total length, fragment field, protocol,
    both addresses) and UDP (ports, length); IPv6 (version byte, payload length, next header, both addresses) and
    UDP."""
    at, ip = _L2_OFFSETS[linktype]
    ipv4 = struct.Struct("!%dxH%dxBxH2xHxB2x8sHHH" % (at, ip - at - 2))
    return ipv4.unpack_from, struct.Struct("!%dxB3xHBx32sHHH" % ip).unpack_from


def _be16(p: bytes, i: int) -> int:
    """The big-endian 16 bits at ``p[i]`` (compiled: ``p`` is a C pointer to the bytes; decode_records only)."""
    return (p[i] << 8) | p[i + 1]


def _int32(p: bytes, i: int, little: bool) -> int:
    """The 32 bits at ``p[i]``, little- or big-endian (as _be16)."""
    b0, b1, b2, b3 = p[i], p[i + 1], p[i + 2], p[i + 3]  # (compiled: 64-bit, so that no shift overflows)
    if little:
        return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3


def _walk_ipv6_ext(nh: int, data: bytes, pos: int, limit: int) -> Tuple[int, int]:
    """Skip up to ``limit`` IPv6 extension headers from ``pos``: (next header, its offset)."""
    for _ in range(limit):
        if nh in IPV6_EXT_GENERIC and pos + 2 <= len(data):
            nh, pos = data[pos], pos + (data[pos + 1] + 1) * 8
        elif nh == IPV6_EXT_AH and pos + 2 <= len(data):
            nh, pos = data[pos], pos + (data[pos + 1] + 2) * 4
        else:
            break
    return nh, pos


class _Fragments:
    __slots__ = ("first_ts", "parts", "total", "size", "header", "cost")

    def __init__(self, ts: float):
        self.first_ts = ts
        self.parts: Dict[int, bytes] = {}
        self.total: Optional[int] = None
        self.size = 0
        self.header: Optional[Tuple] = None
        self.cost = 0  # bytes held, with FRAGMENT_OVERHEAD per piece


class _Stream:
    __slots__ = ("next_seq", "buf", "buf_ts", "buf_meta", "ooo", "ooo_bytes", "ooo_since", "last_ts", "ifname", "resync",
                 "marks")

    def __init__(self, next_seq: int, ts: float):
        self.next_seq = next_seq
        self.buf = bytearray()
        self.buf_ts = ts
        self.buf_meta = None
        self.ooo: Dict[int, tuple] = {}  # seq -> (payload, ts, meta, ifname) of segments ahead of next_seq
        self.ooo_bytes = 0
        self.ooo_since = ts  # when the oldest of them arrived
        self.last_ts = ts
        self.ifname: Optional[str] = None
        self.resync = False  # looking for the next plausible message (after a gap, or no SYN seen)
        self.marks: List[tuple] = []  # (offset in buf, ts, meta, ifname) of each chunk: a message's time is its first byte's


class FrameDecoder:
    """Turns frames into DNS message segments. One instance per capture (it holds reassembly state)."""

    def __init__(self, ports: Iterable[int] = (53,), responses: bool = True, track_verdict: bool = False):
        self.ports = frozenset(ports)
        self.responses = responses  # only affects ``keep`` (replay decodes queries and responses alike)
        self.track_verdict = track_verdict  # fragment memory for ``keep``, as the kernel's LRU
        self.keep = False
        self.stats: Dict[str, int] = defaultdict(int)
        self._frags: Dict[tuple, _Fragments] = {}
        self._frag_pieces = 0  # pieces held in every set of _frags
        self._frag_bytes = 0  # their cost in bytes (see FRAGMENT_OVERHEAD)
        self._kept_frags: "OrderedDict[tuple, bool]" = OrderedDict()
        self._streams: Dict[tuple, _Stream] = {}
        self._ooo_total = 0  # out-of-order bytes held by all streams
        self._extra: List[Segment] = []  # messages of another stream than the frame's (a bound resolved its gap)
        self._addr_cache: Dict[bytes, str] = {}
        self._addr_pairs: Dict[bytes, Tuple[str, str]] = {}  # 8 bytes of IPv4 source+destination
        self._since_sweep = 0

    # -- entry point ---------------------------------------------------------------------------
    def decode(self, frame: Frame) -> List[Segment]:
        self.keep = False
        self._beyond_contract = False  # deeper than the kernel walks: decoded, but never "kept"
        ts, lt, data, ifname, meta = frame
        self._since_sweep += 1
        if self._since_sweep >= EXPIRE_EVERY:
            self._sweep(ts)
            if self._extra:  # messages that the sweep completed (streams gone quiet after a gap)
                extra, self._extra = self._extra, []
                return extra + self.decode(frame)
        size = len(data)
        if lt == LINKTYPE_ETHERNET and size >= 42:
            # Fast path for most of any capture: Ethernet, IPv4 without options, an unfragmented UDP datagram.
            # Same result as _ipv4() + _transport() below, in one struct unpack and no further calls.
            etype, vihl, total, frag, proto, addrs, sport, dport, ulen = _eth_ipv4_udp(data, 0)
            if etype == ETH_P_IP and vihl == 0x45 and proto == IPPROTO_UDP and not frag & 0x3FFF:
                end = 14 + total if total >= 20 else size  # trims Ethernet padding
                if end > size:
                    end = size
                if end - 34 < 8:
                    return []
                if self.track_verdict:
                    self._verdict(IPPROTO_UDP, data, 34, end, frame)
                ports = self.ports
                if sport not in ports and dport not in ports:
                    return []
                pair = self._addr_pairs.get(addrs)
                if pair is None:
                    pair = self._addr_pair(addrs)
                stop = 34 + ulen if 8 <= ulen <= end - 34 else end
                return [_new_segment(Segment, (ts, pair[0], sport, pair[1], dport, "udp", data[42:stop], ifname, meta))]
        try:
            if lt == LINKTYPE_ETHERNET:
                if len(data) < 14:
                    self.stats["truncated_l2"] += 1
                    return []
                etype = (data[12] << 8) | data[13]
                off = 14
                tags = 0
                while etype in VLAN_TPIDS:
                    if tags == DECODE_MAX_VLAN_TAGS or len(data) < off + 4:
                        self.stats["vlan_too_deep"] += 1
                        return []
                    etype = (data[off + 2] << 8) | data[off + 3]
                    off += 4
                    tags += 1
                self._beyond_contract = tags > MAX_VLAN_TAGS
            elif lt == LINKTYPE_LINUX_SLL2:
                if len(data) < 20:
                    self.stats["truncated_l2"] += 1
                    return []
                etype, off = (data[0] << 8) | data[1], 20
            elif lt == LINKTYPE_LINUX_SLL:
                if len(data) < 16:
                    self.stats["truncated_l2"] += 1
                    return []
                etype, off = (data[14] << 8) | data[15], 16
            elif lt in (LINKTYPE_RAW, LINKTYPE_DLT_RAW1, LINKTYPE_DLT_RAW2, LINKTYPE_IPV4, LINKTYPE_IPV6):
                if not data:
                    return []
                version = data[0] >> 4
                etype, off = (ETH_P_IP if version == 4 else ETH_P_IPV6 if version == 6 else 0), 0
            elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
                if len(data) < 4:
                    self.stats["truncated_l2"] += 1
                    return []
                if lt == LINKTYPE_LOOP or data[0] == 0:
                    af = _u32(data, 0)[0]
                else:
                    af = struct.unpack_from("<I", data, 0)[0]
                etype = ETH_P_IP if af == 2 else ETH_P_IPV6 if af in AF_INET6_VALUES else 0
                off = 4
            else:
                self.stats[f"unknown_linktype_{lt}"] += 1
                return []

            if etype == ETH_P_IP:
                return self._ipv4(frame, data, off)
            if etype == ETH_P_IPV6:
                return self._ipv6(frame, data, off)
            return []
        except (struct.error, IndexError, ValueError, OSError):
            self.stats["truncated_l3_l4"] += 1
            return []

    def decode_records(self, data: bytes, pos: int, limit: int, layout: tuple) -> Tuple[List[Segment], int, int, float, float]:
        """Replay's fast path: decode up to ``limit`` classic-pcap records from ``data[pos:]``, each a header
        (``layout``: its unpack giving seconds, fraction, captured and original length; the fraction's divisor;
        the link type; the largest record that is not damage; whether it is little-endian) and the frame. The
        result is what ``decode`` gives for each record as a Frame, but an Ethernet or Linux cooked frame holding
        an unfragmented UDP datagram in IPv4 without options or IPv6 without extension headers is read where it
        lies in ``data``: two struct unpacks (compiled: C reads of the bytes) and one slice (the DNS payload), its
        segment a plain tuple in Segment's order (no NamedTuple construction: consumers index it). Other frames
        are built and go through ``decode``. Stops before
        a record that is not wholly in ``data``. Returns (segments, position after the records read, records
        read, the first one's time, the highest time); no records: (.., 0, None, None)."""
        unpack_record, divisor, linktype, max_record, little = layout
        at = _L2_OFFSETS.get(linktype) if not self.track_verdict else None  # verdicts: decode() for each frame
        if at is None:
            et, ip, need4, need6 = 0, 0, 1 << 62, 1 << 62  # no frame takes the fast path
            unpack4 = unpack6 = None
        else:
            et, ip = at
            need4, need6 = ip + 28, ip + 48
            unpack4, unpack6 = _l2_unpacks(linktype)
        p = data  # compiled: the bytes themselves, read where they lie (see _be16); else the unpacks read them
        ports = self.ports
        pairs = self._addr_pairs
        decode = self.decode
        out: List[Segment] = []
        append = out.append
        size = len(data)
        sweep = self._since_sweep
        ip4, ip6, udp, expire_every = ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, EXPIRE_EVERY  # (C ints when compiled)
        n = 0
        first = last = 0.0  # (None when no record is read)
        while n < limit and pos + 16 <= size:
            if COMPILED:
                sec, frac, incl = _int32(p, pos, little), _int32(p, pos + 4, little), _int32(p, pos + 8, little)
            else:
                sec, frac, incl, _orig = unpack_record(data, pos)
            f = pos + 16  # the frame
            fend = f + incl
            if fend > size or incl > max_record:
                break
            n += 1
            pos = fend
            ts = sec + frac / divisor
            if n == 1:
                first = last = ts
            elif ts > last:
                last = ts
            sweep += 1
            if incl >= need4 and sweep < expire_every:  # (the sweep runs in decode())
                if COMPILED:  # the fields as unpack4 gives them; both addresses as one integer
                    g = f + ip
                    etype, vihl, total, frag, proto = _be16(p, f + et), p[g], _be16(p, g + 2), _be16(p, g + 6), p[g + 9]
                    sport, dport, ulen = _be16(p, g + 20), _be16(p, g + 22), _be16(p, g + 24)
                    addrs = (_int32(p, g + 12, False) << 32) | _int32(p, g + 16, False)
                else:
                    etype, vihl, total, frag, proto, addrs, sport, dport, ulen = unpack4(data, f)
                if etype == ip4 and vihl == 0x45 and proto == udp and not frag & 0x3FFF:
                    u = f + ip + 20  # the UDP header
                    end = u - 20 + total if total >= 20 else fend  # trims Ethernet padding
                elif etype == ip6 and incl >= need6:
                    if COMPILED:
                        g = f + ip
                        vihl, plen, proto, addrs = p[g], _be16(p, g + 4), p[g + 6], data[g + 8:g + 40]
                        sport, dport, ulen = _be16(p, g + 40), _be16(p, g + 42), _be16(p, g + 44)
                    else:
                        vihl, plen, proto, addrs, sport, dport, ulen = unpack6(data, f)
                    if vihl >> 4 != 6 or proto != udp:
                        end = -1
                    else:
                        u = f + ip + 40
                        end = u + plen if plen else fend  # plen 0: jumbogram
                else:
                    end = -1
                if end >= 0:
                    if end > fend:
                        end = fend  # snaplen cut; use what is there
                    if end - u < 8 or (sport not in ports and dport not in ports):
                        continue
                    pair = pairs.get(addrs)
                    if pair is None:
                        pair = pairs[addrs] = self._addr_pair(data[u - 8:u] if u - f - ip == 20 else addrs)
                    stop = u + ulen if 8 <= ulen <= end - u else end
                    append((ts, pair[0], sport, pair[1], dport, "udp", data[u + 8:stop], None, None))
                    continue
            self._since_sweep = sweep - 1  # decode() counts this frame
            segs = decode(_new_frame(Frame, (ts, linktype, data[f:fend], None, None)))
            sweep = self._since_sweep
            if segs:
                out += segs
        self._since_sweep = sweep
        return out, pos, n, first if n else None, last if n else None

    def decode_frames(self, frames: List[Frame]) -> List[Segment]:
        """decode() of each of ``frames``, their segments in order: live capture's batches (one per ring read). An
        Ethernet frame holding an unfragmented UDP datagram in IPv4 without options (nearly every live frame) is
        read here, as decode's fast path reads it, without a call per frame; the others go through decode()."""
        decode = self.decode
        out: List[Segment] = []
        if self.track_verdict:  # verdicts: decode() for each frame
            for frame in frames:
                out += decode(frame)
            return out
        append = out.append
        ports = self.ports
        pairs = self._addr_pairs
        sweep = self._since_sweep
        eth, ip4, udp, expire_every = LINKTYPE_ETHERNET, ETH_P_IP, IPPROTO_UDP, EXPIRE_EVERY  # (C ints when compiled)
        for frame in frames:
            ts, lt, data, ifname, meta = frame
            sweep += 1
            size = len(data)
            if lt == eth and size >= 42 and sweep < expire_every:  # (the sweep runs in decode())
                p = data  # (compiled: the bytes' own buffer, each field read without a struct call or an int object)
                # IPv4 (ethertype, version/IHL 5) without options, UDP, not a fragment (flags MF and offset 0)
                if (p[12] << 8 | p[13]) == ip4 and p[14] == 0x45 and p[23] == udp and not (p[20] & 0x3F or p[21]):
                    total = p[16] << 8 | p[17]
                    sport, dport, ulen = p[34] << 8 | p[35], p[36] << 8 | p[37], p[38] << 8 | p[39]
                    end = 14 + total if 20 <= total <= size - 14 else size  # trims Ethernet padding
                    if end - 34 < 8 or (sport not in ports and dport not in ports):
                        continue
                    addrs = data[26:34]
                    pair = pairs.get(addrs) or self._addr_pair(addrs)
                    append(model.new_record(Segment, (ts, pair[0], sport, pair[1], dport, "udp",
                                                      data[42:34 + ulen if 8 <= ulen <= end - 34 else end], ifname,
                                                      meta)))
                    continue
            self._since_sweep = sweep - 1  # decode() counts this frame
            segs = decode(frame)
            sweep = self._since_sweep
            if segs:
                out += segs
        self._since_sweep = sweep
        return out

    def _addr_pair(self, addrs: bytes) -> Tuple[str, str]:
        """Both addresses of an IPv4 (8 bytes) or IPv6 (32 bytes) source+destination, as text (cached)."""
        if len(self._addr_pairs) > 65536:
            self._addr_pairs.clear()
        half = len(addrs) // 2
        if half == 4:
            pair = (self._addr4(addrs[:4]), self._addr4(addrs[4:]))
        else:
            pair = (self._addr6(addrs[:16]), self._addr6(addrs[16:]))
        self._addr_pairs[addrs] = pair
        return pair

    def unknown_linktypes(self) -> Dict[int, int]:
        """Link types this decoder could not read: {link type: frames skipped}."""
        return {int(k.rsplit("_", 1)[1]): n for k, n in self.stats.items() if k.startswith("unknown_linktype_")}

    # -- IP ------------------------------------------------------------------------------------
    def _addr4(self, raw: bytes) -> str:
        s = self._addr_cache.get(raw)
        if s is None:
            if len(self._addr_cache) > 65536:
                self._addr_cache.clear()
            s = self._addr_cache[raw] = _ntoa(raw)
        return s

    def _addr6(self, raw: bytes) -> str:
        s = self._addr_cache.get(raw)
        if s is None:
            if len(self._addr_cache) > 65536:
                self._addr_cache.clear()
            s = self._addr_cache[raw] = _ntop(_AF_INET6, raw)
        return s

    def _ipv4(self, frame: Frame, data: bytes, off: int) -> List[Segment]:
        vihl, _tos, total, ident, frag, _ttl, proto = _ipv4(data, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or len(data) < off + ihl:
            self.stats["bad_ipv4_header"] += 1
            return []
        if proto != IPPROTO_UDP and proto != IPPROTO_TCP:
            return []
        end = off + total if total >= ihl else len(data)  # trims Ethernet padding
        if end > len(data):
            end = len(data)  # snaplen cut; use what is there
        src = self._addr4(data[off + 12:off + 16])
        dst = self._addr4(data[off + 16:off + 20])
        payload_off = off + ihl
        frag_off = frag & 0x1FFF
        more = frag & 0x2000
        if frag_off or more:
            key = (4, src, dst, ident, proto)
            return self._fragment(frame, key, src, dst, proto, frag_off * 8, bool(more), data[payload_off:end])
        return self._transport(frame, src, dst, proto, data, payload_off, end)

    def _ipv6(self, frame: Frame, data: bytes, off: int) -> List[Segment]:
        if len(data) < off + 40 or data[off] >> 4 != 6:
            self.stats["bad_ipv6_header"] += 1
            return []
        plen = _u16(data, off + 4)[0]
        nh = data[off + 6]
        src = self._addr6(data[off + 8:off + 24])
        dst = self._addr6(data[off + 24:off + 40])
        end = min(off + 40 + plen, len(data)) if plen else len(data)  # plen 0: jumbogram
        pos = off + 40
        for walked in range(DECODE_MAX_IPV6_EXT_HEADERS + 1):
            if nh == IPPROTO_UDP or nh == IPPROTO_TCP:
                if walked > MAX_IPV6_EXT_HEADERS:
                    self._beyond_contract = True
                return self._transport(frame, src, dst, nh, data, pos, end)
            if nh in IPV6_EXT_GENERIC:
                nh, pos = data[pos], pos + (data[pos + 1] + 1) * 8
            elif nh == IPV6_EXT_AH:
                nh, pos = data[pos], pos + (data[pos + 1] + 2) * 4
            elif nh == IPV6_EXT_FRAGMENT:
                fnh = data[pos]
                fo = _u16(data, pos + 2)[0]
                ident = _u32(data, pos + 4)[0]
                key = (6, src, dst, ident)
                frag_offset, more = fo & 0xFFF8, bool(fo & 1)
                if frag_offset == 0 and not more:  # atomic fragment
                    nh, pos = fnh, pos + 8
                    continue
                return self._fragment(frame, key, src, dst, fnh, frag_offset, more, data[pos + 8:end])
            else:
                return []
            if pos > end:
                self.stats["bad_ipv6_header"] += 1
                return []
        self.stats["ipv6_ext_too_deep"] += 1
        return []

    def _fragment(self, frame, key, src, dst, proto, offset, more, chunk) -> List[Segment]:
        if self.track_verdict:
            self._fragment_verdict(frame, key, src, dst, proto, offset, chunk)
        self.stats["fragments"] += 1
        fs = self._frags.get(key)
        if fs is None:
            if len(self._frags) >= MAX_FRAGMENT_SETS:
                self._drop_fragments(next(iter(self._frags)), "fragment_sets_evicted")
            fs = self._frags[key] = _Fragments(frame.ts)
        if offset not in fs.parts:  # first copy wins on overlap or duplicate
            if len(fs.parts) >= MAX_FRAGMENTS_PER_DATAGRAM:
                self._drop_fragments(key, "fragment_sets_too_many_pieces")
                return []
            cost = len(chunk) + FRAGMENT_OVERHEAD
            # the oldest sets give way to new pieces when the total bound is reached
            while self._frags and (self._frag_pieces >= MAX_FRAGMENT_PIECES
                                   or self._frag_bytes + cost > MAX_FRAGMENT_BYTES):
                oldest = next(iter(self._frags))
                self._drop_fragments(oldest, "fragment_sets_evicted_memory")
                if oldest == key:
                    return []
            fs.parts[offset] = chunk
            fs.size += len(chunk)
            fs.cost += cost
            self._frag_pieces += 1
            self._frag_bytes += cost
        if not more:
            fs.total = offset + len(chunk)
        if fs.total is None or fs.size < fs.total or fs.size > MAX_DATAGRAM:
            if fs.size > MAX_DATAGRAM:
                self._drop_fragments(key, "fragment_sets_oversized")
            return []
        whole = bytearray()
        for part_off in sorted(fs.parts):
            part = fs.parts[part_off]
            if part_off > len(whole):  # a hole: overlapping parts made the size add up
                return []
            whole[part_off:part_off + len(part)] = part
        if len(whole) < fs.total:
            return []
        self._drop_fragments(key, None)
        self.stats["datagrams_reassembled"] += 1
        payload = bytes(whole[:fs.total])
        keep = self.keep
        if key[0] == 6:  # more extension headers may follow the fragment header
            segs = self._ipv6_after_fragment(frame, src, dst, proto, payload)
        else:
            segs = self._transport(frame, src, dst, proto, payload, 0, len(payload), reassembled=True)
        self.keep = keep  # the verdict is about this frame, not the datagram it completed
        return segs

    def _drop_fragments(self, key, reason: Optional[str]) -> None:
        """Forget one fragment set (``reason``: the stat counting why, None when it was reassembled)."""
        fs = self._frags.pop(key)
        self._frag_pieces -= len(fs.parts)
        self._frag_bytes -= fs.cost
        if reason is not None:
            self.stats[reason] += 1

    def _ipv6_after_fragment(self, frame, src, dst, nh, payload) -> List[Segment]:
        nh, pos = _walk_ipv6_ext(nh, payload, 0, DECODE_MAX_IPV6_EXT_HEADERS)
        if nh == IPPROTO_UDP or nh == IPPROTO_TCP:
            return self._transport(frame, src, dst, nh, payload, pos, len(payload), reassembled=True)
        return []

    def _fragment_verdict(self, frame, key, src, dst, proto, offset, chunk) -> None:
        """Mirror of the kernel: judge a first fragment by its transport header, remember it if kept."""
        vkey = key[:4]
        if offset == 0:
            pos = 0
            if key[0] == 6:  # extension headers may follow the fragment header: walk to the transport
                proto, pos = _walk_ipv6_ext(proto, chunk, 0, MAX_IPV6_EXT_HEADERS)
            if proto in (IPPROTO_UDP, IPPROTO_TCP) and len(chunk) >= pos + 4:
                self._verdict(proto, chunk, pos, len(chunk), frame)
            if self.keep:
                self._kept_frags[vkey] = True
                self._kept_frags.move_to_end(vkey)
                if len(self._kept_frags) > VERDICT_FRAGMENTS:
                    self._kept_frags.popitem(last=False)
        else:
            self.keep = vkey in self._kept_frags

    # -- transport -----------------------------------------------------------------------------
    def _verdict(self, proto: int, data: bytes, pos: int, end: int, frame: Frame) -> None:
        meta = frame.meta
        if self._beyond_contract or (
                meta is not None and meta.ifindex == LOOPBACK_IFINDEX and meta.pkt_type != PACKET_OUTGOING):
            self.keep = False
            return
        sport, dport = _ports(data, pos)
        ports = self.ports
        if sport not in ports and dport not in ports:
            self.keep = False
            return
        if proto == IPPROTO_UDP:
            p = pos + 8
            if end - p < 12:
                self.keep = False
                return
            qr = data[p + 2] & 0x80
            qdcount = (data[p + 4] << 8) | data[p + 5]
            self.keep = qdcount <= MAX_QDCOUNT and (not qr or self.responses)
        else:
            if end - pos < 13:
                self.keep = False
                return
            doff = (data[pos + 12] >> 4) * 4
            if end - pos <= doff:
                self.keep = False
            elif dport in ports:
                self.keep = not _tcp_too_many_questions(data, pos + doff, end)
            else:
                self.keep = self.responses

    def _transport(self, frame, src, dst, proto, data, pos, end, reassembled=False) -> List[Segment]:
        if end - pos < 8:
            return []
        if self.track_verdict and not reassembled:
            self._verdict(proto, data, pos, end, frame)
        if proto == IPPROTO_UDP:
            sport, dport, ulen = _udp(data, pos)
            ports = self.ports
            if sport not in ports and dport not in ports:
                return []
            stop = pos + ulen if 8 <= ulen <= end - pos else end
            return [Segment(frame.ts, src, sport, dst, dport, "udp", data[pos + 8:stop], frame.ifname, frame.meta)]
        if end - pos < 20:
            return []
        sport, dport, seq, _ack, doff, flags = _tcp(data, pos)
        ports = self.ports
        if sport not in ports and dport not in ports:
            return []
        return self._tcp_segment(frame, src, sport, dst, dport, seq, flags, data[pos + (doff >> 4) * 4:end])

    # -- TCP reassembly --------------------------------------------------------------------------
    # A stream is read message by message (2-byte length prefix, RFC 1035 4.2.2). A segment ahead of the
    # next expected byte waits in a bounded out-of-order buffer. A hole that FIN/RST, the end of the input,
    # an idle stream or an out-of-order bound shows to be a loss is a gap: the partial message before it
    # and the missing bytes are counted (tcp_gaps, tcp_gap_bytes), and reading resumes at the next
    # plausible message, a length prefix followed by a sane DNS header and question (tcp_resync_skipped_bytes
    # counts what was passed over). A stream whose SYN was not captured starts the same way.
    def _tcp_segment(self, frame, src, sport, dst, dport, seq, flags, payload) -> List[Segment]:
        key = (src, sport, dst, dport)
        streams = self._streams
        st = streams.get(key)
        out: List[Segment] = []
        if flags & TCP_SYN:
            if st is None or st.buf or st.next_seq != (seq + 1) & 0xFFFFFFFF:
                if st is not None:
                    self._close_stream(key, st, out)
                st = self._new_stream(key, (seq + 1) & 0xFFFFFFFF, frame.ts)
            seq = (seq + 1) & 0xFFFFFFFF  # data in a SYN (TCP Fast Open) follows the SYN's sequence number
        elif st is None:
            if not payload:
                return []
            st = self._new_stream(key, seq, frame.ts)
            st.resync = True  # SYN not captured: where the next message starts is not known
        st.last_ts = frame.ts
        if payload:
            self._tcp_data(st, seq, payload, frame)
            self._tcp_messages(st, key, out)
        if flags & (TCP_FIN | TCP_RST):
            self._close_stream(key, st, out, (seq + len(payload)) & 0xFFFFFFFF if flags & TCP_FIN else None)
        if self._extra:  # messages of other streams whose gap a bound resolved meanwhile
            out.extend(self._extra)
            self._extra.clear()
        return out

    def _new_stream(self, key, next_seq: int, ts: float) -> _Stream:
        streams = self._streams
        old = streams.pop(key, None)
        if old is not None:
            self._forget_ooo(old)
        if len(streams) >= MAX_STREAMS:
            evicted = streams.pop(next(iter(streams)))
            self._forget_ooo(evicted)
            self.stats["tcp_streams_evicted"] += 1
        st = streams[key] = _Stream(next_seq, ts)
        return st

    def _close_stream(self, key, st: _Stream, out: List[Segment], fin_seq: Optional[int] = None) -> None:
        """FIN, RST, a new SYN, idle or end of input: what is still out of order lies behind a gap; read
        it, then forget the stream. A FIN beyond the data seen shows a gap at the end."""
        while True:
            self._tcp_messages(st, key, out, final=not st.ooo)
            if not st.ooo:
                break
            self._skip_gap(st)
        missing = (fin_seq - st.next_seq) & 0xFFFFFFFF if fin_seq is not None else 0
        if 0 < missing < 0x80000000:
            self.stats["tcp_gaps"] += 1
            self.stats["tcp_gap_bytes"] += missing
            self.stats["tcp_resync_skipped_bytes"] += len(st.buf)
        elif st.buf:
            self.stats["tcp_incomplete_messages"] += 1
        self._forget_ooo(st)
        if self._streams.get(key) is st:
            del self._streams[key]

    def _forget_ooo(self, st: _Stream) -> None:
        self._ooo_total -= st.ooo_bytes
        st.ooo.clear()
        st.ooo_bytes = 0

    def _tcp_data(self, st: _Stream, seq: int, payload: bytes, frame: Frame) -> None:
        ahead = (seq - st.next_seq) & 0xFFFFFFFF
        if ahead >= 0x80000000:  # starts before next_seq: retransmission or overlap
            behind = 0x100000000 - ahead
            if behind >= len(payload):
                self.stats["tcp_retransmissions"] += 1
                return
            payload = payload[behind:]
            ahead = 0
        if ahead:
            if seq in st.ooo:  # a retransmission of a segment already waiting
                self.stats["tcp_retransmissions"] += 1
                return
            if st.ooo and frame.ts - st.ooo_since > GAP_TIMEOUT:
                # the hole has been open longer than any reordering takes: what filled it was not captured
                self._skip_gap(st)
                self._tcp_data(st, seq, payload, frame)
                return
            if len(st.ooo) >= MAX_OUT_OF_ORDER or st.ooo_bytes + len(payload) > MAX_OUT_OF_ORDER_BYTES:
                # waited long enough for the hole to be filled: it is a gap (the bound is what decided)
                self.stats["tcp_out_of_order_bound"] += 1
                self._skip_gap(st)
                self._tcp_data(st, seq, payload, frame)
                return
            if not st.ooo:
                st.ooo_since = frame.ts
            st.ooo[seq] = (payload, frame.ts, frame.meta, frame.ifname)
            st.ooo_bytes += len(payload)
            self._ooo_total += len(payload)
            if self._ooo_total > MAX_OUT_OF_ORDER_TOTAL:
                self._shed_ooo(st)
            return
        self._append(st, payload, frame.ts, frame.meta, frame.ifname)
        self._drain(st)

    def _drain(self, st: _Stream) -> None:
        """Append the out-of-order segments that now fit."""
        while st.ooo:
            progressed = False
            for oseq in list(st.ooo):
                delta = (st.next_seq - oseq) & 0xFFFFFFFF
                if delta < 0x80000000:  # oseq <= next_seq
                    chunk, ts, meta, ifname = st.ooo.pop(oseq)
                    st.ooo_bytes -= len(chunk)
                    self._ooo_total -= len(chunk)
                    if delta < len(chunk):
                        self._append(st, chunk[delta:], ts, meta, ifname)
                    progressed = True
            if not progressed:
                break

    def _skip_gap(self, st: _Stream) -> None:
        """The bytes up to the first out-of-order segment are lost: count them, resume behind them."""
        if not st.ooo:
            return
        first = min(st.ooo, key=lambda s: (s - st.next_seq) & 0xFFFFFFFF)
        self.stats["tcp_gaps"] += 1
        self.stats["tcp_gap_bytes"] += (first - st.next_seq) & 0xFFFFFFFF
        if st.buf:  # the message the gap cut: its start is here, its rest is lost
            self.stats["tcp_resync_skipped_bytes"] += len(st.buf)
            st.buf.clear()
        st.marks.clear()
        st.next_seq = first
        st.resync = True
        self._drain(st)
        if st.ooo:  # another hole further on: its clock starts with the oldest segment behind it
            st.ooo_since = min(v[1] for v in st.ooo.values())

    def _shed_ooo(self, keep: _Stream) -> None:
        """Out-of-order data of all streams together is over its bound: the stream holding the most resolves
        its gap now (its buffered data is read; what a late retransmission could have filled is not)."""
        while self._ooo_total > MAX_OUT_OF_ORDER_TOTAL:
            key, st = max(self._streams.items(), key=lambda kv: kv[1].ooo_bytes)
            if not st.ooo_bytes:
                break
            self.stats["tcp_out_of_order_bound"] += 1
            self._skip_gap(st)
            if st is not keep:  # (keep's messages are read by the caller)
                self._tcp_messages(st, key, self._extra)

    def _append(self, st: _Stream, payload: bytes, ts: float, meta, ifname) -> None:
        if not st.buf:
            st.buf_ts = ts
            st.buf_meta = meta
            st.ifname = ifname
        st.marks.append((len(st.buf), ts, meta, ifname))
        st.buf += payload
        st.next_seq = (st.next_seq + len(payload)) & 0xFFFFFFFF
        if len(st.buf) > (2 * MAX_STREAM_BUFFER if st.resync else MAX_STREAM_BUFFER):
            self.stats["tcp_buffer_overflows"] += 1
            st.buf.clear()
            st.marks.clear()

    def _consume(self, st: _Stream, n: int) -> None:
        """Drop the first ``n`` bytes of the buffer; what follows takes the time of the chunk it begins in."""
        del st.buf[:n]
        marks = st.marks
        j = 0
        while j + 1 < len(marks) and marks[j + 1][0] <= n:
            j += 1
        if marks and marks[j][0] <= n:
            _off, st.buf_ts, st.buf_meta, st.ifname = marks[j]
        st.marks = [(max(0, off - n), ts, meta, ifname) for off, ts, meta, ifname in marks[j:]] if st.buf else []

    def _tcp_messages(self, st: _Stream, key, out: List[Segment], final: bool = False) -> None:
        buf = st.buf
        src, sport, dst, dport = key
        while True:
            if st.resync and not self._resync(st, sport, dport, final):
                return
            if len(buf) < 2:
                return
            mlen = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + mlen:
                return
            out.append(Segment(st.buf_ts, src, sport, dst, dport, "tcp", bytes(buf[2:2 + mlen]), st.ifname, st.buf_meta))
            self._consume(st, 2 + mlen)

    def _resync(self, st: _Stream, sport: int, dport: int, final: bool) -> bool:
        """Skip to the first plausible message in the buffer; True once found (reading goes on from it).
        A candidate not yet complete is waited for, unless ``final``."""
        buf = st.buf
        n = len(buf)
        qr = 1 if sport in self.ports else 0 if dport in self.ports else -1
        i = 0
        found = False
        while i + 14 <= n:
            if _plausible_header(buf, i, qr):
                mlen = (buf[i] << 8) | buf[i + 1]
                if i + 2 + mlen <= n:
                    if _plausible_question(buf, i + 2, mlen):
                        found = True
                        break
                elif not final and mlen <= MAX_STREAM_BUFFER:
                    break  # wait for the rest of this candidate
            i += 1
        if not found and not (i + 14 <= n):
            i = n if final else max(0, n - 13)  # a message may still begin in the last 13 bytes
        if i:
            self.stats["tcp_resync_skipped_bytes"] += i
            self._consume(st, i)
        if found:
            st.resync = False
        return found

    # -- housekeeping --------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        for key in [k for k, fs in self._frags.items() if now - fs.first_ts > FRAGMENT_TIMEOUT]:
            self._drop_fragments(key, "fragment_sets_expired")
        for key in [k for k, st in self._streams.items() if now - st.last_ts > STREAM_IDLE_TIMEOUT]:
            self._close_stream(key, self._streams[key], self._extra)
        for key, st in self._streams.items():  # a hole open too long in a stream gone quiet
            if st.ooo and now - st.ooo_since > GAP_TIMEOUT:
                self._skip_gap(st)
                self._tcp_messages(st, key, self._extra)

    def finish(self) -> List[Segment]:
        """End of input: streams are read up to their end (across gaps); what is still half-finished is
        counted, then forgotten. Returns the messages that only the end completed."""
        if self._frags:
            self.stats["fragment_sets_incomplete"] += len(self._frags)
        out, self._extra = self._extra, []
        self.stats["tcp_incomplete_messages"] += 0  # always present in the notes
        for key, st in list(self._streams.items()):
            self._close_stream(key, st, out)
        self._frags.clear()
        self._frag_pieces = self._frag_bytes = 0
        self._streams.clear()
        return out

    def dropped(self) -> int:
        """Data given up because a bound was hit (not damage in the input, not a gap in a TCP stream)."""
        s = self.stats
        return (s.get("fragment_sets_evicted", 0) + s.get("fragment_sets_oversized", 0) + s.get("tcp_streams_evicted", 0)
                + s.get("fragment_sets_too_many_pieces", 0) + s.get("fragment_sets_evicted_memory", 0)
                + s.get("tcp_out_of_order_bound", 0) + s.get("tcp_buffer_overflows", 0))


def _tcp_too_many_questions(data: bytes, p: int, end: int) -> bool:
    """The keep contract's question bound for TCP (bpf/dns_filter.c tcp_too_many_questions): a segment to
    a DNS port starting like a query that claims more than MAX_QDCOUNT questions."""
    if end - p < 14:
        return False
    qd = (data[p + 6] << 8) | data[p + 7]
    return (not data[p + 4] & 0x80 and qd > MAX_QDCOUNT and not (data[p + 8] | data[p + 9] | data[p + 10] | data[p + 11])
            and ((data[p] << 8) | data[p + 1]) >= 12 + 5 * qd)


def _plausible_header(buf, i: int, qr: int) -> bool:
    """Could a DNS message over TCP start at ``buf[i]``? Its length prefix and header say so: length >= 12,
    QR as the direction says (-1: either), a known opcode, Z clear, 1-16 questions, records that fit."""
    mlen = (buf[i] << 8) | buf[i + 1]
    if mlen < 12:
        return False
    b2, b3 = buf[i + 4], buf[i + 5]
    if (qr >= 0 and (b2 >> 7) != qr) or ((b2 >> 3) & 0xF) not in (0, 1, 2, 4, 5, 6) or b3 & 0x40:
        return False
    qd = (buf[i + 6] << 8) | buf[i + 7]
    if not 1 <= qd <= MAX_QDCOUNT:
        return False
    records = ((buf[i + 8] << 8) | buf[i + 9]) + ((buf[i + 10] << 8) | buf[i + 11]) + ((buf[i + 12] << 8) | buf[i + 13])
    return 12 + 5 * qd + 11 * records <= mlen


def _plausible_question(buf, start: int, mlen: int) -> bool:
    """The first question of the message at ``buf[start:start+mlen]`` is well formed (labels of at most 63
    bytes ending inside the message, or a pointer back into it)."""
    pos, end = start + 12, start + mlen
    while pos < end:
        n = buf[pos]
        if n & 0xC0 == 0xC0:
            return pos + 6 <= end and (((n & 0x3F) << 8) | buf[pos + 1]) < pos - start
        if n & 0xC0:
            return False
        if n == 0:
            return pos + 5 <= end
        pos += 1 + n
    return False
