"""Read frames from pcap and pcapng files (optionally gzip-compressed, or ``-`` for stdin).

Damage never loses what came before it: a truncated last record, a broken pcapng block or damaged
gzip data ends the file with a warning (``PcapReader.warnings``, ``PcapReader.damaged``), and every frame
read so far has already been yielded. gzip is decompressed incrementally (:class:`_GzipStream`), so
damage in the middle of a ``.gz`` keeps every complete frame before the damaged byte. Zero-filled stretches
(16 zero bytes: an empty record) are skipped and counted as empty records, never as frames.

Everything kept per file is bounded: interface tables (entries and name bytes), warnings, decompressed
output per read; what a bound gives up is counted in ``PcapReader.stats`` and ``PcapReader.dropped``.
"""
from __future__ import annotations

import io
import os
import re
import select
import struct
import sys
import zlib
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

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
# Compressed bytes fed to zlib at a time. A damaged chunk is replayed byte by byte without an output bound,
# so this also bounds that output: 16 KiB inflates to at most ~16.5 MiB (deflate's ratio is 1032:1).
GZIP_CHUNK = 1 << 14
MAX_INTERFACES = 4096  # interfaces per pcapng section (dumpcap writes a handful); more are ignored, counted
MAX_IFNAME = 128  # bytes of an if_name option kept
MAX_WARNINGS = 20  # warnings kept per file; the rest are counted in one last line
UNKNOWN_LINKTYPE = 0xFFFF  # an interface block too short to say its link type
# A record header of 16 zero bytes is an empty record (no time, no bytes): zeroed or preallocated file space,
# not a frame. The reader skips each run of them itself (one regex search a run), so a file of zeros is read at
# the speed of its bytes, and counts them as empty records, not as frames that failed to decode.
_EMPTY_HEADER = bytes(16)
_NONZERO = re.compile(b"[^\0]")

# Frame(...) goes through NamedTuple's Python-level __new__; tuple.__new__ with all five fields is ~3x cheaper.
_new_frame = tuple.__new__


class CaptureFormatError(Exception):
    """The input is not a pcap or pcapng capture (or is unreadable from its first bytes)."""


class _StdinUntilStop(io.RawIOBase):
    """Standard input that reads as its end once ``stopped()`` says so, even while the writer of a pipe is silent:
    a blocked read() would otherwise act on Ctrl-C or SIGTERM only when data or EOF came (the stop handlers set a
    flag and never raise). Closing it leaves fd 0 open."""

    WAIT = 0.2  # seconds between looks at the flag while nothing arrives

    def __init__(self, stopped: Callable[[], bool]):
        super().__init__()
        self._fd = sys.stdin.fileno()
        self._stopped = stopped

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        while not self._stopped():
            if select.select([self._fd], [], [], self.WAIT)[0]:
                data = os.read(self._fd, len(buf))
                buf[:len(data)] = data
                return len(data)
        return 0


def open_capture(path: str, stopped: Optional[Callable[[], bool]] = None) -> Tuple[BinaryIO, BinaryIO]:
    """Open ``path`` (or stdin for ``-``), transparently un-gzipping it: (stream to read, raw file).
    ``stopped``: for stdin, a flag that ends the input early (see :class:`_StdinUntilStop`)."""
    if path == "-":
        raw: BinaryIO = sys.stdin.buffer if stopped is None else _StdinUntilStop(stopped)  # type: ignore[assignment]
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
        return _GzipStream(buffered), buffered  # type: ignore[return-value]
    return buffered, buffered  # type: ignore[return-value]


class _GzipStream:
    """Incremental gzip reader (concatenated members too) that delivers every byte before damage.

    ``gzip.GzipFile`` loses the output of the read that meets damage (up to a MiB of frames) and lets
    ``zlib.error`` escape. Here the decompressor's state is saved before each input chunk; when the chunk
    fails, it is replayed from the saved state one byte at a time, so the output stops at the damaged
    byte. The error (``_StreamError``, with the compressed offset) is raised only once that output has
    been read. Output per call is bounded (``max_length``): a decompression bomb costs time, not memory.
    """

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self._d = zlib.decompressobj(31)
        self._member_bytes = 0  # chunks fed to the current member (0: it has not started)
        self._in = 0  # compressed bytes read from ``raw``
        self._pending = b""  # compressed bytes after the end of a member, not yet fed
        self._out = bytearray()
        self._error: Optional[str] = None
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        out = self._out
        while len(out) < n and not self._eof and self._error is None:
            self._fill(n - len(out))
        if not out and self._error is not None:
            error, self._error = self._error, None
            self._eof = True
            raise _StreamError(error)
        data = bytes(out[:n])
        del out[:n]
        return data

    def _fill(self, want: int) -> None:
        d = self._d
        if d.eof:  # a member ended: what follows is the next member (or padding)
            self._pending = d.unused_data + self._pending
            d = self._d = zlib.decompressobj(31)
            self._member_bytes = 0
        # every outstanding input is a suffix of what was read, so it starts at self._in - len(data)
        data = d.unconsumed_tail
        if not data:
            data, self._pending = self._pending, b""
        if not data:
            data = self.raw.read(GZIP_CHUNK)
            if not data:
                try:
                    self._out += d.flush()  # output zlib still holds (a max_length stop)
                except zlib.error:
                    pass
                if self._member_bytes and not d.eof:
                    self._error = f"compressed data ends early at byte {self._in} (truncated .gz)"
                self._eof = True
                return
            self._in += len(data)
        if not self._member_bytes and not data.strip(b"\0"):
            return  # zero padding after the last member (tape blocks): not damage
        self._member_bytes += 1
        saved = d.copy()
        try:
            self._out += d.decompress(data, max(want, GZIP_CHUNK))
        except zlib.error:
            self._d = saved
            self._bytewise(saved, data)

    def _bytewise(self, d, data: bytes) -> None:
        """``data`` holds damage: take its output one input byte at a time, up to the damaged byte."""
        start = self._in - len(data)
        out = self._out
        for i in range(len(data)):
            try:
                out += d.decompress(data[i:i + 1])
            except zlib.error as exc:
                self._error = f"damaged gzip data at compressed byte {start + i} ({exc})"
                return
            if d.eof:  # the member ended before the damage: the next member starts after it
                self._pending = data[i + 1:]
                return

    def close(self) -> None:
        self._out = bytearray()


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
                # what there is (read1): a slow pipe is decoded as it comes
                more = getattr(self.stream, "read1", self.stream.read)(max(CHUNK, n))
            except _StreamError:  # damaged gzip data
                self.eof = True
                raise
            except (EOFError, OSError) as exc:  # I/O error
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


class _Window:
    """The part of a _Buffer's data that the reader gives its consumer: ``data[pos:]`` (see PcapReader.windows)."""

    __slots__ = ("data", "pos")

    def __init__(self):
        self.data = b""
        self.pos = 0


class _StreamError(Exception):
    pass


class PcapReader:
    """Iterate over the frames of one capture file.

    ``warnings`` says what was damaged or skipped (at most MAX_WARNINGS lines, then a count), ``damaged``
    whether the file ended early at damage, ``stats`` counts what was skipped by reason and ``dropped``
    the frames given up at a memory bound (packets of interfaces beyond MAX_INTERFACES)."""

    def __init__(self, path: str, stopped: Optional[Callable[[], bool]] = None):
        self.path = path
        self.warnings: List[str] = []
        self.format = "unknown"
        self.bytes_read = 0
        self.frames_read = 0  # kept current at window edges and at damage, for warnings
        self.damaged = False
        self.dropped = 0
        self.stats: Dict[str, int] = {}
        self._more_warnings = 0
        self.layout: Optional[Tuple] = None  # classic pcap, once its header is read: see windows()
        self._stream, self._raw = open_capture(path, stopped)
        try:
            self._check_head()
        except CaptureFormatError:
            self.close()  # not a capture: do not leave the file open
            raise

    def _check_head(self) -> None:
        path = self.path
        try:
            head = self._stream.read(4)
        except (OSError, EOFError, _StreamError) as exc:
            raise CaptureFormatError(f"{path}: cannot read: {exc}; is it a complete capture file?")
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
        if self._raw is not sys.stdin.buffer:  # (a _StdinUntilStop closes without closing fd 0)
            self._stream.close()
            self._raw.close()

    def __enter__(self) -> "PcapReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self) -> Iterator[Frame]:
        yield from self._read(self._pcap if self.format == "pcap" else self._pcapng)

    def windows(self) -> Iterator[_Buffer]:
        """Classic pcap only, for a consumer that reads the records itself (replay's fast path, which decodes
        frames straight from the file's bytes). Each window is a buffer whose ``data[pos:]`` starts at a record;
        the consumer reads whole records from ``pos`` (``layout`` says how: the record header's unpack, the
        timestamp divisor, the link type, MAX_RECORD: a longer record is damage, left to the reader; whether the
        file is little-endian), moves ``pos`` past them and adds them to ``frames_read``, then asks
        for the next window. What it leaves, the reader handles: a record across the window's edge (more input
        is read), a record over MAX_RECORD (damage), the end of the file."""
        if self.format != "pcap":
            raise ValueError(f"{self.path}: windows() reads classic pcap, not {self.format}")
        yield from self._read(self._pcap_windows)

    def _read(self, records) -> Iterator:
        buf = _Buffer(self._stream, self._head)
        try:
            yield from records(buf)
        except _StreamError as exc:
            self._damage(f"{self.path}: read error at byte {buf.offset} after frame {self.frames_read}: {exc}; "
                         f"kept the {self.frames_read:,} frames before it")
        finally:
            self.bytes_read = buf.offset
            if self._more_warnings:
                self.warnings.append(f"{self.path}: {self._more_warnings:,} more warnings like these")
                self._more_warnings = 0
            for reason, n in self.stats.items():
                if reason == "interfaces_beyond_limit":
                    self.warnings.append(
                        f"{self.path}: {n:,} interface blocks beyond {MAX_INTERFACES:,} in one section were ignored "
                        f"and their {self.dropped:,} packets counted as dropped")

    def _warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self._more_warnings += 1

    def _damage(self, text: str) -> None:
        """The file ends here: damage, not a bound (captures.status becomes 'damaged')."""
        self.damaged = True
        self._warn(text)

    def _skip(self, text: str) -> None:
        """A damaged block is skipped, reading goes on (the file still counts as damaged)."""
        self.damaged = True
        self._count("blocks_skipped")
        self._warn(text + "; skipped")

    def _count(self, reason: str) -> None:
        self.stats[reason] = self.stats.get(reason, 0) + 1

    # -- classic pcap ---------------------------------------------------------------------------
    def _pcap(self, buf: _Buffer) -> Iterator[Frame]:
        for buf in self._pcap_windows(buf):
            # Records wholly inside the window: no method call per record.
            unpack, divisor, linktype, _max, _little = self.layout
            data, pos, size = buf.data, buf.pos, len(buf.data)
            n = 0
            while pos + 16 <= size:
                sec, frac, incl, _orig = unpack(data, pos)
                end = pos + 16 + incl
                if end > size or incl > MAX_RECORD:
                    break
                n += 1
                yield _new_frame(Frame, (sec + frac / divisor, linktype, data[pos + 16:end], None, None))
                pos = end
            buf.pos = pos
            self.frames_read += n

    def _pcap_windows(self, buf: _Buffer) -> Iterator[_Buffer]:
        if not buf.ensure(24):
            self.damaged = True
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
        unpack = struct.Struct(endian + "IIII").unpack_from  # seconds, fraction, captured and original length
        self.layout = (unpack, divisor, linktype, MAX_RECORD, endian == "<")  # (and whether it is little-endian)
        window = _Window()
        while True:
            data, pos = buf.data, buf.pos
            if data.startswith(_EMPTY_HEADER, pos):
                self._skip_empty(buf)
                continue
            # The consumer reads the records wholly inside the window, which ends before the next empty header
            # (looked for after the record at pos, whose bytes may be zeros).
            after = pos + 16 + unpack(data, pos)[2] if len(data) - pos >= 16 else len(data)
            empty = data.find(_EMPTY_HEADER, after) if after < len(data) else -1
            if empty < 0:
                yield buf
            else:
                window.data, window.pos = data[pos:empty], 0  # (copies only bytes the consumer reads next)
                try:
                    yield window
                finally:
                    buf.pos = pos + window.pos
            # The window's edge (or damage): make the next record whole in the window, reading more input.
            if not buf.ensure(16):
                if len(buf.data) > buf.pos:
                    self._damage(
                        f"{self.path}: truncated record header at byte {buf.offset}; kept the frames before it"
                    )
                return
            incl = unpack(buf.data, buf.pos)[2]
            if incl > MAX_RECORD:
                self._damage(
                    f"{self.path}: damaged record at byte {buf.offset} (length {incl}); kept the frames before it"
                )
                return
            if not buf.ensure(16 + incl):
                self._damage(
                    f"{self.path}: truncated last record at byte {buf.offset} "
                    f"({len(buf.data) - buf.pos - 16} of {incl} bytes); kept the frames before it"
                )
                return

    def _skip_empty(self, buf: _Buffer) -> None:
        """At an empty record header: skip the run of them, counted in ``stats['empty_records']`` and one warning.
        Zeros are not a capture tool's records, so the file counts as damaged; reading goes on after them (as
        tshark does), holding one window at a time."""
        start, n = buf.offset, 0
        while True:
            data, pos = buf.data, buf.pos
            nonzero = _NONZERO.search(data, pos)
            run = ((len(data) if nonzero is None else nonzero.start()) - pos) >> 4
            n += run
            buf.pos = pos + (run << 4)
            if nonzero is not None or not buf.ensure(16) or not buf.data.startswith(_EMPTY_HEADER, buf.pos):
                break
        self.damaged = True
        self.stats["empty_records"] = self.stats.get("empty_records", 0) + n
        self._warn(f"{self.path}: {n:,} empty records (16 zero bytes each: zero-filled data, not frames) at bytes "
                   f"{start:,} to {buf.offset:,}; skipped")

    # -- pcapng ---------------------------------------------------------------------------------
    def _pcapng(self, buf: _Buffer) -> Iterator[Frame]:
        endian = "<"
        # per section: list of (linktype, ts_scale, ts_offset, ifname)
        interfaces: List[Tuple[int, float, int, Optional[str]]] = []
        interfaces_seen = 0  # interface blocks in this section, including those beyond MAX_INTERFACES
        head = struct.Struct("<II")
        while True:
            if not buf.ensure(12):
                if len(buf.data) > buf.pos:
                    self._damage(f"{self.path}: truncated block at byte {buf.offset}; kept the frames before it")
                return
            block_type = struct.unpack_from("<I", buf.data, buf.pos)[0]
            if block_type == PCAPNG_SHB:
                bom = buf.data[buf.pos + 8:buf.pos + 12]
                if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                    endian = "<"
                elif struct.unpack(">I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                    endian = ">"
                else:
                    self._damage(f"{self.path}: bad section header at byte {buf.offset}; kept the frames before it")
                    return
                head = struct.Struct(endian + "II")
                interfaces = []
                interfaces_seen = 0
            block_type, length = head.unpack_from(buf.data, buf.pos)
            if length < 12 or length % 4 or length > MAX_RECORD:
                self._damage(
                    f"{self.path}: damaged block at byte {buf.offset} (type {block_type:#x}, length {length}); "
                    "kept the frames before it"
                )
                return
            if not buf.ensure(length):
                self._damage(
                    f"{self.path}: truncated last block at byte {buf.offset} ({len(buf.data) - buf.pos} of {length} bytes); "
                    "kept the frames before it"
                )
                return
            start = buf.pos
            data = buf.data
            trailer = struct.unpack_from(endian + "I", data, start + length - 4)[0]
            if trailer != length:
                self._damage(
                    f"{self.path}: damaged block at byte {buf.offset} (lengths {length} and {trailer} differ); "
                    "kept the frames before it"
                )
                return
            buf.pos = start + length
            body = start + 8
            if block_type == BT_EPB:
                if length < 32:
                    self._skip(f"{self.path}: packet block at byte {start + buf.consumed} is too short ({length} bytes)")
                    continue
                if_id, ts_hi, ts_lo, incl, _orig = struct.unpack_from(endian + "IIIII", data, body)
                if if_id >= len(interfaces) or 28 + incl > length:
                    if len(interfaces) <= if_id < interfaces_seen:
                        self.dropped += 1  # its interface is beyond MAX_INTERFACES
                    else:
                        self._skip(f"{self.path}: packet block at byte {start + buf.consumed} names no interface "
                                   "or overruns")
                    continue
                linktype, scale, offset, ifname = interfaces[if_id]
                self.frames_read += 1
                opts = body + 20 + ((incl + 3) & ~3)
                meta = _epb_meta(data, opts, start + length - 4, endian, ifname) if opts + 4 <= start + length - 4 \
                    else None
                yield _new_frame(Frame, (((ts_hi << 32) | ts_lo) * scale + offset, linktype,
                                         data[body + 20:body + 20 + incl], ifname, meta))
            elif block_type == BT_SPB:
                if not interfaces or length < 16:
                    self._skip(f"{self.path}: simple packet block at byte {start + buf.consumed} without an interface "
                               "or too short")
                    continue
                orig = struct.unpack_from(endian + "I", data, body)[0]
                incl = min(orig, length - 16)
                linktype, _scale, _offset, ifname = interfaces[0]
                self.frames_read += 1
                yield Frame(0.0, linktype, data[body + 4:body + 4 + incl], ifname)  # SPBs carry no timestamp
            elif block_type == BT_IDB:
                interfaces_seen += 1
                if len(interfaces) >= MAX_INTERFACES:
                    self._count("interfaces_beyond_limit")
                elif length < 20:  # kept as a placeholder, so the interfaces after it keep their numbers
                    self._skip(f"{self.path}: interface block at byte {start + buf.consumed} is too short; "
                               "its packets are skipped too")
                    interfaces.append((UNKNOWN_LINKTYPE, 1e-6, 0, None))
                else:
                    interfaces.append(self._idb(data, body, start + length - 4, endian))
            elif block_type == BT_PACKET:
                if length < 32:  # obsolete Packet Block: 20 bytes of fields before the packet
                    self._skip(f"{self.path}: packet block at byte {start + buf.consumed} is too short ({length} bytes)")
                    continue
                if_id, _drops, ts_hi, ts_lo, incl, _orig = struct.unpack_from(endian + "HHIIII", data, body)
                if if_id < len(interfaces) and 28 + incl <= length:
                    linktype, scale, offset, ifname = interfaces[if_id]
                    self.frames_read += 1
                    yield Frame(((ts_hi << 32) | ts_lo) * scale + offset, linktype, data[body + 20:body + 20 + incl],
                                ifname)
                elif len(interfaces) <= if_id < interfaces_seen:
                    self.dropped += 1
                else:
                    self._skip(f"{self.path}: packet block at byte {start + buf.consumed} names no interface or overruns")
            # other blocks (name resolution, statistics, custom, DSB...) carry no frames

    def _idb(self, data: bytes, body: int, end: int, endian: str) -> Tuple[int, float, int, Optional[str]]:
        linktype = struct.unpack_from(endian + "H", data, body)[0]
        scale, offset, name = 1e-6, 0, None
        pos = body + 8
        while pos + 4 <= end:
            code, olen = struct.unpack_from(endian + "HH", data, pos)
            value = data[pos + 4:min(pos + 4 + olen, end)]
            if code == OPT_END:
                break
            if code == IF_TSRESOL and value:
                r = value[0]
                scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
            elif code == IF_TSOFFSET and len(value) == 8:
                offset = struct.unpack(endian + "q", value)[0]
            elif code == IF_NAME:
                name = value[:MAX_IFNAME].split(b"\0", 1)[0].decode("utf-8", "replace") or None
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
