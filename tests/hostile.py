"""Builders for hostile capture files, shared by the tests (small) and bench/memory (large).

Each ``write_*`` function streams ``n`` cases of one attack class into a file, so a million cases never
sit in memory at once; the files compress well (the attacks are repetitive), as an attacker's would.
"""
from __future__ import annotations

import gzip
import struct
from typing import BinaryIO, Callable, Dict, Iterator

LINKTYPE_RAW = 101
CLIENT = bytes([198, 18, 0, 2])
SERVER = bytes([198, 18, 0, 1])


def pcap_header(linktype: int = LINKTYPE_RAW, snaplen: int = 0x00FFFFFF) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts: float, frame: bytes) -> bytes:
    sec = int(ts)
    return struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)) + frame


def ipv4(payload: bytes, proto: int = 17, ident: int = 1, frag: int = 0, src: bytes = CLIENT,
         dst: bytes = SERVER) -> bytes:
    total = 20 + len(payload)
    # total length 0 for datagrams above 64 KiB: the decoder then takes the frame's length (snaplen-style)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total if total <= 0xFFFF else 0, ident & 0xFFFF, frag, 64,
                       proto, 0, src, dst) + payload


def udp(payload: bytes, sport: int = 40000, dport: int = 53) -> bytes:
    length = 8 + len(payload)
    return struct.pack("!HHHH", sport, dport, length if length <= 0xFFFF else 0, 0) + payload


def dns_query(dns_id: int, name: bytes, padding: int = 0) -> bytes:
    """A well-formed query for ``name``; ``padding`` bytes of EDNS padding make it as large as wanted."""
    labels = b"".join(bytes([len(x)]) + x for x in name.split(b".")) + b"\0"
    if not padding:
        return struct.pack("!HHHHHH", dns_id & 0xFFFF, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x01\x00\x01"
    option = struct.pack("!HH", 12, padding) + b"\0" * padding  # EDNS option 12: padding (RFC 7830)
    opt = b"\0" + struct.pack("!HHIH", 41, 4096, 0, len(option)) + option
    return struct.pack("!HHHHHH", dns_id & 0xFFFF, 0x0100, 1, 0, 0, 1) + labels + b"\x00\x01\x00\x01" + opt


def malformed_payload(size: int) -> bytes:
    """A DNS message nobody can read: a header claiming one question, then a label type that does not exist."""
    return struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\xff" * (size - 12)


# -- attack classes: each yields n frames (raw IP) -------------------------------------------------------

def frames_queries(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield ipv4(udp(dns_query(i, b"q%d.example.test" % i), sport=1024 + i % 60000))


def frames_malformed_large(n: int, big: int = 128, big_size: int = 4 << 20, size: int = 1024) -> Iterator[bytes]:
    """The first ``big`` cases are 4 MiB malformed messages (as the issue's 529 KB .gz), the rest 1 KiB."""
    for i in range(n):
        yield ipv4(udp(malformed_payload(big_size if i < big else size), sport=1024 + i % 60000))


def frames_distinct_large_queries(n: int, big: int = 30000, big_size: int = 60000) -> Iterator[bytes]:
    """Distinct well-formed queries: the first ``big`` are 60 KB (EDNS padding), the rest small."""
    for i in range(n):
        yield ipv4(udp(dns_query(i, b"c%d.example.test" % i, padding=big_size if i < big else 0),
                       sport=1024 + i % 60000))


def frames_tiny_fragments(n: int, datagrams: int = 2000) -> Iterator[bytes]:
    """1-byte IPv4 fragments at distinct offsets, round robin over ``datagrams`` ids (each growing towards
    8,191 pieces), none ever completing."""
    for i in range(n):
        k, ident = divmod(i, datagrams)
        yield ipv4(b"\xaa", ident=ident, frag=0x2000 | (k % 8191 + 1))  # more fragments, offset (k+1)*8


def write_pcap(out: BinaryIO, frames: Iterator[bytes]) -> int:
    out.write(pcap_header())
    count = 0
    for count, frame in enumerate(frames, 1):
        out.write(pcap_record(1_700_000_000 + count * 1e-4, frame))
    return count


# -- pcapng ------------------------------------------------------------------------------------------

def _block(block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def pcapng_shb() -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def pcapng_idb(linktype: int = LINKTYPE_RAW, name: bytes = b"") -> bytes:
    opts = b""
    if name:
        opts = struct.pack("<HH", 2, len(name)) + name + b"\0" * (-len(name) % 4) + b"\0\0\0\0"
    return _block(1, struct.pack("<HHI", linktype, 0, 0) + opts)


def pcapng_epb(if_id: int, frame: bytes, ts_us: int = 1_700_000_000_000_000) -> bytes:
    return _block(6, struct.pack("<IIIII", if_id, ts_us >> 32, ts_us & 0xFFFFFFFF, len(frame), len(frame)) + frame)


def write_pcapng_interfaces(out: BinaryIO, n: int) -> int:
    """``n`` interface blocks (each with a name), then a packet on the first and on the last interface."""
    out.write(pcapng_shb())
    for i in range(n):
        out.write(pcapng_idb(name=b"if%d" % i))
    query = ipv4(udp(dns_query(1, b"after.interfaces.test")))
    out.write(pcapng_epb(0, query))
    out.write(pcapng_epb(n - 1, query))
    return n


def write_gzip_damaged(path: str, n: int) -> int:
    """``n`` queries in a .gz cut at 90% of its compressed length (as a copy that died midway)."""
    with gzip.open(path, "wb", compresslevel=6) as out:
        write_pcap(out, frames_queries(n))
    with open(path, "r+b") as f:
        size = f.seek(0, 2)
        f.truncate(int(size * 0.9))
    return n


CLASSES: Dict[str, Callable[[str, int], int]] = {
    "gzip_cut_90pct": write_gzip_damaged,
    "malformed_4MiB": lambda path, n: _gz(path, frames_malformed_large(n)),
    "distinct_60KB_queries": lambda path, n: _gz(path, frames_distinct_large_queries(n)),
    "tiny_ip_fragments": lambda path, n: _gz(path, frames_tiny_fragments(n)),
    "pcapng_interfaces": lambda path, n: _gz_with(path, lambda out: write_pcapng_interfaces(out, n)),
}


def _gz(path: str, frames: Iterator[bytes]) -> int:
    return _gz_with(path, lambda out: write_pcap(out, frames))


def _gz_with(path: str, write: Callable[[BinaryIO], int]) -> int:
    with gzip.open(path, "wb", compresslevel=1) as out:
        return write(out)
