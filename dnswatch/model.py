"""The records that flow through the pipeline.

source (pcap | live) --Frame--> frames.FrameDecoder --Segment--> dns.parse_message --> correlate --> enrich --> store / terminal
"""
from __future__ import annotations

import socket
from typing import NamedTuple, Optional

# Link-layer header types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0  # BSD loopback, 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6
LINKTYPE_DLT_RAW1 = 12  # DLT_RAW on most BSDs
LINKTYPE_DLT_RAW2 = 14  # DLT_RAW on OpenBSD
LINKTYPE_LOOP = 108  # OpenBSD loopback, address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES = frozenset((
    LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_DLT_RAW1, LINKTYPE_DLT_RAW2, LINKTYPE_LOOP,
    LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2,
))

# Linux packet types (sll_pkttype / skb->pkt_type)
PACKET_HOST = 0
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3
PACKET_OUTGOING = 4


# new_record(Frame, fields): a record (Frame, PacketMeta, Segment) from all its fields in order, without the
# NamedTuple's Python-level __new__ (~3x cheaper). Modules compiled with ``cimport dnswatch.model as model`` call
# model.pxd's C version instead.
new_record = tuple.__new__


def ipv6_text(packed: bytes) -> str:
    """An IPv6 address as every column stores it: inet_ntop's form (RFC 5952: the longest run of zero groups
    compressed, the first of equal runs; IPv4-mapped as ::ffff:198.18.0.1), as dig and tshark print it."""
    return socket.inet_ntop(socket.AF_INET6, packed)


class PacketMeta(NamedTuple):
    """What the kernel knew when the eBPF filter saw the packet (live capture only).

    ``pid``/``tid``/``comm``/``uid``/``cgroup_id`` are None unless the packet was sent by a
    local task (``pkt_type == PACKET_OUTGOING``): on receive the filter runs in softirq and
    the "current" task is whoever happened to be interrupted.
    """

    ktime_ns: int
    ifindex: int
    pkt_type: int
    netns: Optional[int] = None
    ifname: Optional[str] = None
    pid: Optional[int] = None
    tid: Optional[int] = None
    comm: Optional[str] = None
    uid: Optional[int] = None
    cgroup_id: Optional[int] = None
    attribution: Optional[dict] = None  # from a dnswatch pcapng packet comment: comm, container, pod...


class Frame(NamedTuple):
    """One captured link-layer frame, from a file or from the kernel."""

    ts: float  # Unix seconds
    linktype: int  # LINKTYPE_*
    data: bytes
    ifname: Optional[str] = None  # interface name when the source knows it
    meta: Optional[PacketMeta] = None  # live capture only


class Segment(NamedTuple):
    """A DNS message's bytes with its transport addressing (UDP payload or one TCP-framed message)."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    proto: str  # "udp" | "tcp"
    payload: bytes
    ifname: Optional[str] = None
    meta: Optional[PacketMeta] = None
