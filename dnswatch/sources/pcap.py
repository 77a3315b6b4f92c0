"""Read frames from pcap and pcapng files (optionally gzip-compressed, or ``-`` for stdin).

Damage never loses what came before it: a truncated last record or a broken pcapng block ends the
file with a warning (``PcapReader.warnings``), and every frame read so far has already been yielded.
"""
from __future__ import annotations

import gzip
import io
import os
import struct
import sys
from typing import BinaryIO, Iterator, List, Optional, Tuple

from dnswatch.model import PACKET_OUTGOING, SUPPORTED_LINKTYPES, Frame, PacketMeta

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
GZIP_MAGIC = b"\x1f\x8b"

# pcapng block types
BT_IDB = 0x00000001
BT_PACKET = 0x00000002  # obsolete Packet Block
BT_SPB = 0x00000003
BT_EPB = 0x00000006

# pcapng options
OPT_END = 0
IF_NAME = 2
IF_TSRESOL = 9
IF_TSOFFSET = 14
OPT_COMMENT = 1

CHUNK = 1 << 20
MAX_RECORD = 1 << 24  # a record larger than this is damage, not data

# Frame(...) goes through NamedTuple's Python-level __new__; tuple.__new__ with all five fields is ~3x cheaper.
_new_frame = tuple.__new__


class CaptureFormatError(Exception):
    """The input is not a pcap or pcapng capture (or is unreadable from its first bytes)."""


def open_capture(path: str) -> Tuple[BinaryIO, BinaryIO]:
    """Open ``path`` (or stdin for ``-``), transparently un-gzipping it: (stream to read, raw file)."""
    if path == "-":
        raw: BinaryIO = sys.stdin.buffer
    else:
        try:
            raw = open(path, "rb")
        except FileNotFoundError:
            raise CaptureFormatError(f"{path}: no such file")
        except IsADirectoryError:
            raise CaptureFormatError(f"{path}: is a directory, not a capture file")
        except PermissionError:
            raise CaptureFormatError(f"{path}: permission denied")
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered, mode="rb"), buffered  # type: ignore[return-value]
    return buffered, buffered  # type: ignore[return-value]


class _Buffer:
    """A sliding window over a stream, so records are sliced without a read() per record."""

    __slots__ = ("stream", "data", "pos", "eof", "consumed")

    def __init__(self, stream: BinaryIO, initial: bytes = b""):
        self.stream = stream
        self.data = initial
        self.pos = 0
        self.eof = False
        self.consumed = 0  # bytes discarded before data[0], for offsets in warnings

    def ensure(self, n: int) -> bool:
        """Make ``n`` bytes available at ``pos``; False at end of input."""
        while len(self.data) - self.pos < n:
            if self.eof:
                return False
            try:
                more = self.stream.read(max(CHUNK, n))
            except (EOFError, OSError, gzip.BadGzipFile) as exc:  # truncated gzip member, I/O error
                self.eof = True
                raise _StreamError(str(exc) or type(exc).__name__)
            if not more:
                self.eof = True
                return False
            self.consumed += self.pos
            self.data = self.data[self.pos:] + more
            self.pos = 0
        return True

    @property
    def offset(self) -> int:
        return self.consumed + self.pos


class _StreamError(Exception):
    pass


class PcapReader:
    """Iterate over the frames of one capture file. ``warnings`` collects what was damaged."""

    def __init__(self, path: str):
        self.path = path
        self.warnings: List[str] = []
        self.format = "unknown"
        self.bytes_read = 0
        self._stream, self._raw = open_capture(path)
        try:
            self._check_head()
        except CaptureFormatError:
            self.close()  # not a capture: do not leave the file open
            raise

    def _check_head(self) -> None:
        path = self.path
        try:
            head = self._stream.read(4)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise CaptureFormatError(f"{path}: cannot read: {exc}")
        if len(head) < 4:
            raise CaptureFormatError(f"{path}: empty or too short to be a capture file")
        self._head = head
        magic_le = struct.unpack("<I", head)[0]
        magic_be = struct.unpack(">I", head)[0]
        if magic_le == PCAPNG_SHB:
            self.format = "pcapng"
        elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
            self.format = "pcap"
        else:
            raise CaptureFormatError(
                f"{path}: not a pcap or pcapng capture (starts with {head.hex()}); "
                "write captures with tcpdump -w, dumpcap or tshark -w"
            )

    def position(self) -> int:
        """Bytes consumed of the file on disk (compressed bytes for .gz), for progress bars."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self._raw is not sys.stdin.buffer:
            self._stream.close()
            self._raw.close()

    def __enter__(self) -> "PcapReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self) -> Iterator[Frame]:
        buf = _Buffer(self._stream, self._head)
        try:
            if self.format == "pcap":
                yield from self._pcap(buf)
            else:
                yield from self._pcapng(buf)
        except _StreamError as exc:
            self.warnings.append(f"{self.path}: read error at byte {buf.offset}: {exc}; kept the frames before it")
        self.bytes_read = buf.offset

    # -- classic pcap ---------------------------------------------------------------------------
    def _pcap(self, buf: _Buffer) -> Iterator[Frame]:
        if not buf.ensure(24):
            raise CaptureFormatError(f"{self.path}: pcap file header is truncated")
        magic = struct.unpack_from("<I", buf.data, 0)[0]
        endian = "<" if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        magic = struct.unpack_from(endian + "I", buf.data, 0)[0]
        divisor = 1e9 if magic == PCAP_MAGIC_NS else 1e6
        linktype = struct.unpack_from(endian + "I", buf.data, 20)[0] & 0x0FFFFFFF  # upper bits: FCS info
        if linktype not in SUPPORTED_LINKTYPES:
            raise CaptureFormatError(
                f"{self.path}: unsupported link type {linktype}; dnswatch reads Ethernet, Linux cooked v1/v2, "
                "raw IP and BSD loopback captures"
            )
        buf.pos = 24
        rec = struct.Struct(endian + "IIII")
        unpack = rec.unpack_from
        while True:
            # Records wholly inside the window: no method call per record (the hot loop of replay).
            data, pos, size = buf.data, buf.pos, len(buf.data)
            while pos + 16 <= size:
                sec, frac, incl, _orig = unpack(data, pos)
                end = pos + 16 + incl
                if end > size or incl > MAX_RECORD:
                    break
                yield _new_frame(Frame, (sec + frac / divisor, linktype, data[pos + 16:end], None, None))
                pos = end
            buf.pos = pos
            # The window's edge (or damage): one record the careful way, reading more input.
            if not buf.ensure(16):
                if len(buf.data) > buf.pos:
                    self.warnings.append(
                        f"{self.path}: truncated record header at byte {buf.offset}; kept the frames before it"
                    )
                return
            sec, frac, incl, _orig = unpack(buf.data, buf.pos)
            if incl > MAX_RECORD:
                self.warnings.append(
                    f"{self.path}: damaged record at byte {buf.offset} (length {incl}); kept the frames before it"
                )
                return
            if not buf.ensure(16 + incl):
                self.warnings.append(
                    f"{self.path}: truncated last record at byte {buf.offset} "
                    f"({len(buf.data) - buf.pos - 16} of {incl} bytes); kept the frames before it"
                )
                return
            start = buf.pos + 16
            buf.pos = start + incl
            yield _new_frame(Frame, (sec + frac / divisor, linktype, buf.data[start:buf.pos], None, None))

    # -- pcapng ---------------------------------------------------------------------------------
    def _pcapng(self, buf: _Buffer) -> Iterator[Frame]:
        endian = "<"
        # per section: list of (linktype, ts_scale, ts_offset, ifname)
        interfaces: List[Tuple[int, float, int, Optional[str]]] = []
        head = struct.Struct("<II")
        while True:
            if not buf.ensure(12):
                if len(buf.data) > buf.pos:
                    self.warnings.append(f"{self.path}: truncated block at byte {buf.offset}; kept the frames before it")
                return
            block_type = struct.unpack_from("<I", buf.data, buf.pos)[0]
            if block_type == PCAPNG_SHB:
                bom = buf.data[buf.pos + 8:buf.pos + 12]
                if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                    endian = "<"
                elif struct.unpack(">I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                    endian = ">"
                else:
                    self.warnings.append(f"{self.path}: bad section header at byte {buf.offset}; kept the frames before it")
                    return
                head = struct.Struct(endian + "II")
                interfaces = []
            block_type, length = head.unpack_from(buf.data, buf.pos)
            if length < 12 or length % 4 or length > MAX_RECORD:
                self.warnings.append(
                    f"{self.path}: damaged block at byte {buf.offset} (type {block_type:#x}, length {length}); "
                    "kept the frames before it"
                )
                return
            if not buf.ensure(length):
                self.warnings.append(
                    f"{self.path}: truncated last block at byte {buf.offset} ({len(buf.data) - buf.pos} of {length} bytes); "
                    "kept the frames before it"
                )
                return
            start = buf.pos
            data = buf.data
            trailer = struct.unpack_from(endian + "I", data, start + length - 4)[0]
            if trailer != length:
                self.warnings.append(
                    f"{self.path}: damaged block at byte {buf.offset} (lengths {length} and {trailer} differ); "
                    "kept the frames before it"
                )
                return
            buf.pos = start + length
            body = start + 8
            if block_type == BT_EPB:
                if length < 32:
                    continue
                if_id, ts_hi, ts_lo, incl, _orig = struct.unpack_from(endian + "IIIII", data, body)
                if if_id >= len(interfaces) or 28 + incl > length:
                    self.warnings.append(f"{self.path}: packet block at byte {start + buf.consumed} names no interface or overruns; skipped")
                    continue
                linktype, scale, offset, ifname = interfaces[if_id]
                opts = body + 20 + ((incl + 3) & ~3)
                meta = _epb_meta(data, opts, start + length - 4, endian, ifname) if opts + 4 <= start + length - 4 \
                    else None
                yield _new_frame(Frame, (((ts_hi << 32) | ts_lo) * scale + offset, linktype,
                                         data[body + 20:body + 20 + incl], ifname, meta))
            elif block_type == BT_SPB:
                if not interfaces:
                    continue
                orig = struct.unpack_from(endian + "I", data, body)[0]
                incl = min(orig, length - 16)
                linktype, _scale, _offset, ifname = interfaces[0]
                yield Frame(0.0, linktype, data[body + 4:body + 4 + incl], ifname)  # SPBs carry no timestamp
            elif block_type == BT_IDB:
                interfaces.append(self._idb(data, body, start + length - 4, endian))
            elif block_type == BT_PACKET:
                if_id, _drops, ts_hi, ts_lo, incl, _orig = struct.unpack_from(endian + "HHIIII", data, body)
                if if_id < len(interfaces) and 28 + incl <= length:
                    linktype, scale, offset, ifname = interfaces[if_id]
                    yield Frame(((ts_hi << 32) | ts_lo) * scale + offset, linktype, data[body + 20:body + 20 + incl], ifname)
            # other blocks (name resolution, statistics, custom, DSB...) carry no frames

    def _idb(self, data: bytes, body: int, end: int, endian: str) -> Tuple[int, float, int, Optional[str]]:
        linktype = struct.unpack_from(endian + "H", data, body)[0]
        scale, offset, name = 1e-6, 0, None
        pos = body + 8
        while pos + 4 <= end:
            code, olen = struct.unpack_from(endian + "HH", data, pos)
            value = data[pos + 4:pos + 4 + olen]
            if code == OPT_END:
                break
            if code == IF_TSRESOL and olen >= 1:
                r = value[0]
                scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
            elif code == IF_TSOFFSET and olen == 8:
                offset = struct.unpack(endian + "q", value)[0]
            elif code == IF_NAME:
                name = value.split(b"\0", 1)[0].decode("utf-8", "replace") or None
            pos += 4 + ((olen + 3) & ~3)
        return linktype, scale, offset, name


def _epb_meta(data: bytes, pos: int, end: int, endian: str, ifname: Optional[str]) -> Optional[PacketMeta]:
    """The sender that ``watch -w`` wrote as a packet comment (``dnswatch {json}``); None for other files."""
    from dnswatch.pcapng import parse_comment

    while pos + 4 <= end:
        code, olen = struct.unpack_from(endian + "HH", data, pos)
        if code == OPT_END:
            break
        if code == OPT_COMMENT:
            d = parse_comment(data[pos + 4:pos + 4 + olen])
            if d is not None:
                ints = [d.get(k) if isinstance(d.get(k), int) else None
                        for k in ("pid", "tid", "uid", "cgroup_id", "netns", "pkt_type")]
                pid, tid, uid, cgroup_id, netns, pkt_type = ints
                thread = d.get("thread") if isinstance(d.get("thread"), str) else None
                return PacketMeta(0, 0, PACKET_OUTGOING if pkt_type is None else pkt_type, netns, ifname, pid, tid,
                                  thread, uid, cgroup_id, {k: v for k, v in d.items() if isinstance(v, str)})
        pos += 4 + ((olen + 3) & ~3)
    return None


def file_size(path: str) -> Optional[int]:
    """Size on disk for progress reporting (None for stdin)."""
    if path == "-":
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def read_frames(path: str, warnings: Optional[List[str]] = None) -> Iterator[Frame]:
    """Convenience: all frames of ``path``; damage notes are appended to ``warnings``."""
    reader = PcapReader(path)
    try:
        yield from reader.frames()
    finally:
        if warnings is not None:
            warnings.extend(reader.warnings)
        reader.close()


__all__ = ["CaptureFormatError", "PcapReader", "read_frames", "open_capture", "file_size"]
