"""From link-layer frames to DNS message bytes: L2, IPv4/IPv6 (with reassembly), UDP, TCP streams.

``FrameDecoder.decode(frame)`` returns the DNS messages a frame completes, as ``Segment`` records.
After each call, ``FrameDecoder.keep`` is the keep/drop verdict of docs/keep-contract.md for that
frame, the same rule ``bpf/dns_filter.c`` applies in the kernel (a test compares the two).

Everything here is bounded: half-finished fragments and TCP streams are capped in number, size and
age, and what is given up is counted in ``FrameDecoder.stats``.
"""
from __future__ import annotations

import socket
import struct
from collections import OrderedDict, defaultdict
from typing import Dict, Iterable, List, Optional, Tuple

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
MAX_OUT_OF_ORDER = 64
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
_ntoa = socket.inet_ntoa
_ntop = socket.inet_ntop
_AF_INET6 = socket.AF_INET6

TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04


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
    __slots__ = ("next_seq", "buf", "buf_ts", "buf_meta", "ooo", "last_ts", "ifname")

    def __init__(self, next_seq: int, ts: float):
        self.next_seq = next_seq
        self.buf = bytearray()
        self.buf_ts = ts
        self.buf_meta = None
        self.ooo: Dict[int, bytes] = {}
        self.last_ts = ts
        self.ifname: Optional[str] = None


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
                    if len(self._addr_pairs) > 65536:
                        self._addr_pairs.clear()
                    pair = self._addr_pairs[addrs] = (self._addr4(addrs[:4]), self._addr4(addrs[4:]))
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
            self.keep = end - pos > doff and (self.responses or dport in ports)

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
    def _tcp_segment(self, frame, src, sport, dst, dport, seq, flags, payload) -> List[Segment]:
        key = (src, sport, dst, dport)
        streams = self._streams
        st = streams.get(key)
        if flags & TCP_SYN:
            if st is None or st.buf or st.next_seq != (seq + 1) & 0xFFFFFFFF:
                st = self._new_stream(key, (seq + 1) & 0xFFFFFFFF, frame.ts)
            seq = (seq + 1) & 0xFFFFFFFF  # data in a SYN (TCP Fast Open) follows the SYN's sequence number
        elif st is None:
            if not payload:
                return []
            st = self._new_stream(key, seq, frame.ts)  # SYN not captured: assume a message starts here
        st.last_ts = frame.ts
        out: List[Segment] = []
        if payload:
            self._tcp_data(st, seq, payload, frame)
            self._tcp_messages(st, key, frame, out)
        if flags & (TCP_FIN | TCP_RST):
            if st.buf or st.ooo:
                self.stats["tcp_incomplete_messages"] += 1
            streams.pop(key, None)
        return out

    def _new_stream(self, key, next_seq: int, ts: float) -> _Stream:
        streams = self._streams
        streams.pop(key, None)
        if len(streams) >= MAX_STREAMS:
            streams.pop(next(iter(streams)))
            self.stats["tcp_streams_evicted"] += 1
        st = streams[key] = _Stream(next_seq, ts)
        return st

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
            if len(st.ooo) >= MAX_OUT_OF_ORDER:
                self.stats["tcp_gaps_given_up"] += 1
                st.ooo.clear()
                st.buf.clear()
                st.next_seq = seq  # resynchronise at the newest data
            else:
                st.ooo.setdefault(seq, payload)
                return
        self._append(st, payload, frame)
        while st.ooo:  # drain out-of-order segments that now fit
            progressed = False
            for oseq in list(st.ooo):
                delta = (st.next_seq - oseq) & 0xFFFFFFFF
                if delta < 0x80000000:  # oseq <= next_seq
                    chunk = st.ooo.pop(oseq)
                    if delta < len(chunk):
                        self._append(st, chunk[delta:], frame)
                    progressed = True
            if not progressed:
                break

    def _append(self, st: _Stream, payload: bytes, frame: Frame) -> None:
        if not st.buf:
            st.buf_ts = frame.ts
            st.buf_meta = frame.meta
            st.ifname = frame.ifname
        st.buf += payload
        st.next_seq = (st.next_seq + len(payload)) & 0xFFFFFFFF
        if len(st.buf) > MAX_STREAM_BUFFER:
            self.stats["tcp_buffer_overflows"] += 1
            st.buf.clear()

    def _tcp_messages(self, st: _Stream, key, frame: Frame, out: List[Segment]) -> None:
        buf = st.buf
        src, sport, dst, dport = key
        while len(buf) >= 2:
            mlen = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + mlen:
                break
            out.append(Segment(st.buf_ts, src, sport, dst, dport, "tcp", bytes(buf[2:2 + mlen]), st.ifname, st.buf_meta))
            del buf[:2 + mlen]
            # the next message (if any) started in the segment at hand
            st.buf_ts = frame.ts
            st.buf_meta = frame.meta
            st.ifname = frame.ifname

    # -- housekeeping --------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        for key in [k for k, fs in self._frags.items() if now - fs.first_ts > FRAGMENT_TIMEOUT]:
            self._drop_fragments(key, "fragment_sets_expired")
        for key in [k for k, st in self._streams.items() if now - st.last_ts > STREAM_IDLE_TIMEOUT]:
            if self._streams[key].buf:
                self.stats["tcp_incomplete_messages"] += 1
            del self._streams[key]

    def finish(self) -> None:
        """End of input: what is still half-finished is counted, then forgotten."""
        if self._frags:
            self.stats["fragment_sets_incomplete"] += len(self._frags)
        self.stats["tcp_incomplete_messages"] += sum(1 for st in self._streams.values() if st.buf)
        self._frags.clear()
        self._frag_pieces = self._frag_bytes = 0
        self._streams.clear()

    def dropped(self) -> int:
        """Data given up because a bound was hit (not damage in the input)."""
        s = self.stats
        return (s.get("fragment_sets_evicted", 0) + s.get("fragment_sets_oversized", 0) + s.get("tcp_streams_evicted", 0)
                + s.get("fragment_sets_too_many_pieces", 0) + s.get("fragment_sets_evicted_memory", 0)
                + s.get("tcp_gaps_given_up", 0) + s.get("tcp_buffer_overflows", 0))
