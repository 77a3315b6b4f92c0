"""``watch -w FILE.pcapng``: the kept packets, each with its sender as a packet comment.

The comment is ``dnswatch {json}`` (Wireshark shows it under "Packet comments"): pid, tid, thread, comm, uid,
cgroup_id, netns and, when known, container_id, container, pod, pod_namespace, pod_uid, pod_via. ``sources/pcap.py``
reads it back into ``PacketMeta`` (``attribution``), and ``restore_attribution`` puts it in replayed rows.
"""
from __future__ import annotations

import json
import struct
from typing import IO, Any, Dict, List, Optional, Tuple

from dnswatch import __version__
from dnswatch.correlate import (I_CGROUP, I_COMM, I_CONTAINER, I_CONTAINER_ID, I_NETNS, I_PID, I_POD, I_POD_NS,
                                I_POD_UID, I_TID, I_UID, Row)
from dnswatch.model import Frame, Segment
from dnswatch.schema import Q, QUERY_COLUMNS

COMMENT_PREFIX = "dnswatch "
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
# What a comment restores (besides the PacketMeta fields): filled by the enricher at capture time.
ATTRIBUTION = (("comm", I_COMM), ("container_id", I_CONTAINER_ID), ("container", I_CONTAINER), ("pod", I_POD),
               ("pod_namespace", I_POD_NS), ("pod_uid", I_POD_UID), ("pod_via", Q["pod_via"]))


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


class PcapngWriter:
    """Writes frames (with ``PacketMeta``) to a pcapng file; ``enrich`` (an ``enrich.Enricher``) names the
    container and pod of each sender, as the stored rows get them.

    Live, ``enrich_row`` is the pipeline's enrich step: a query's comment is then what its row got, not a second
    lookup that may find less (a pod namespace learnt between two lookups reached the row and not the comment).
    Frames no row was enriched from (responses, copies) are looked up when written."""

    def __init__(self, path: str, enrich=None):
        self.path = path
        self.enrich = enrich
        self.file: IO[bytes] = open(path, "wb")
        self.interfaces: Dict[Tuple[int, Optional[str], Optional[int]], int] = {}
        self.packets = 0
        # id(meta) -> (meta, attribution values): what the rows of a frame got, until the frame is written (the
        # meta is held, so its id is not reused meanwhile)
        self._rows: Dict[int, Tuple[Any, tuple]] = {}
        opts = _option(SHB_USERAPPL, f"dnswatch {__version__}".encode()) + _option(0, b"")
        self.file.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts))

    def _interface(self, frame: Frame) -> int:
        netns = frame.meta.netns if frame.meta is not None else None
        key = (frame.linktype, frame.ifname, netns)
        if_id = self.interfaces.get(key)
        if if_id is None:
            if_id = self.interfaces[key] = len(self.interfaces)
            opts = b""
            if frame.ifname:
                opts += _option(IF_NAME, frame.ifname.encode())
            if netns:
                opts += _option(IF_DESCRIPTION, f"network namespace {netns}".encode())
            opts += _option(IF_TSRESOL, b"\x09") + _option(0, b"")
            self.file.write(_block(1, struct.pack("<HHI", frame.linktype, 0, 0) + opts))
        return if_id

    def enrich_row(self, row: Row, seg: Segment) -> None:
        """Enrich ``row`` (the pipeline's step) and remember what it got for the comment of its frame."""
        self.enrich(row, seg)
        meta = seg.meta
        if meta is not None:
            self._rows[id(meta)] = (meta, tuple(row[i] for _name, i in ATTRIBUTION))

    def comment(self, frame: Frame) -> Optional[str]:
        meta = frame.meta
        if meta is None or meta.pid is None and meta.netns is None:
            return None
        d: Dict[str, Any] = {"pid": meta.pid, "tid": meta.tid, "thread": meta.comm, "uid": meta.uid,
                             "cgroup_id": meta.cgroup_id, "netns": meta.netns, "pkt_type": meta.pkt_type}
        got = self._rows.pop(id(meta), None)
        if got is not None and got[0] is meta:
            for (name, _i), value in zip(ATTRIBUTION, got[1]):
                d[name] = value
        elif self.enrich is not None:
            row: Row = [None] * len(QUERY_COLUMNS)
            row[I_PID], row[I_TID], row[I_COMM], row[I_UID] = meta.pid, meta.tid, meta.comm, meta.uid
            row[I_CGROUP], row[I_NETNS] = meta.cgroup_id, meta.netns
            self.enrich(row, Segment(frame.ts, "", 0, "", 0, "", b"", frame.ifname, meta))  # its meta: the veth's pod
            for name, i in ATTRIBUTION:
                d[name] = row[i]
        else:
            d["comm"] = meta.comm
        return COMMENT_PREFIX + json.dumps({k: v for k, v in d.items() if v is not None}, ensure_ascii=False,
                                           separators=(",", ":"))

    def write(self, frame: Frame) -> None:
        if_id = self._interface(frame)
        ns = int(round(frame.ts * 1e9))
        data = frame.data
        opts = b""
        text = self.comment(frame)
        if text:
            opts = _option(OPT_COMMENT, text.encode("utf-8")) + _option(0, b"")
        body = struct.pack("<IIIII", if_id, ns >> 32, ns & 0xFFFFFFFF, len(data), len(data)) + data
        body += b"\0" * (-len(data) % 4) + opts
        self.file.write(_block(6, body))
        self.packets += 1

    def write_all(self, frames: List[Frame]) -> None:
        for frame in frames:
            self.write(frame)
        self._rows.clear()  # of frames written earlier (a TCP message ends in a later frame): their comment is out
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def parse_comment(text: bytes) -> Optional[Dict[str, Any]]:
    """The attribution in one packet comment, or None for other comments."""
    if not text.startswith(COMMENT_PREFIX.encode()):
        return None
    try:
        d = json.loads(text[len(COMMENT_PREFIX):].decode("utf-8"))
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def restore_attribution(row: Row, seg: Optional[Segment]) -> None:
    """Replay's enrich step: the sender's names from the packet comment (``PacketMeta.attribution``)."""
    meta = seg.meta if seg is not None else None
    extra = getattr(meta, "attribution", None)
    if not extra:
        return
    for name, i in ATTRIBUTION:
        value = extra.get(name)
        if value is not None:
            row[i] = value


class TeeCapture:
    """A live capture whose frames are also written to a ``PcapngWriter`` (everything else passes through).

    A poll's frames are written at the next poll (or at stop/close), once the pipeline has built their rows:
    their comments come from those rows (``PcapngWriter.enrich_row``)."""

    def __init__(self, capture, writer: PcapngWriter):
        self._capture = capture
        self.writer = writer
        self._unwritten: List[Frame] = []

    def _write(self, frames: List[Frame]) -> None:
        if self._unwritten:
            self.writer.write_all(self._unwritten)
        self._unwritten = frames

    def poll(self, timeout_ms: int) -> List[Frame]:
        frames = self._capture.poll(timeout_ms)
        self._write(frames)
        return frames

    def stop(self) -> List[Frame]:
        """The capture's last frames (``LiveCapture.stop``): written too, with the rest at close."""
        frames = self._capture.stop()
        self._write(frames)
        return frames

    def close(self) -> None:
        try:
            self._capture.close()
        finally:
            if not self.writer.file.closed:
                self._write([])
                self.writer.close()

    def __getattr__(self, name: str):
        return getattr(self._capture, name)
