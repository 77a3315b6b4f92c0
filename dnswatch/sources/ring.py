"""The filter's ring buffers (bpf/dns_filter.c's ``rings``, one per CPU), read from our own mmap of each: their records
as frames for live capture (:class:`Framing`), or as (event_meta fields, packet bytes) for the kernel's tests.

Compiled with ring.pxd when the build is current (scripts/build-speedups): a record becomes its Frame in one C loop
(one struct read of its header and event_meta, its fields as C integers, the Frame and PacketMeta made by
model.pxd's new_record). The same code runs as plain Python otherwise.
"""
from __future__ import annotations

import mmap
import select
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import dnswatch.model as model
from dnswatch.model import Frame, PacketMeta
from dnswatch.sources.bpf_testrun import TASK_ALL, TASK_CGROUP, TASK_COMM, TASK_PID, TASK_UID

# struct event_meta in dns_filter.c
EVENT_META = struct.Struct("<QQQQIIIIII16sHHHHBB6x")
META_TASK_VALID = 1
META_MAC_BASE = 2
META_SIZE = EVENT_META.size
# the fields live capture uses: ktime, pid_tgid, uid_gid, cgroup_id, ifindex, pkt_type, netns, flags, comm
LIVE_META = struct.Struct("<QQQQII8xII16s16x")
assert LIVE_META.size == META_SIZE

_U64 = struct.Struct("<Q")
_RB_BUSY = 1 << 31  # struct bpf_ringbuf_hdr.len: reserved, not committed yet
_RB_DISCARD = 1 << 30
_RB_HDR = 8
# A record as one read: struct bpf_ringbuf_hdr's len (its first field, so the first load; the others are looked at
# only once it says committed), then event_meta's fields (all of them, or live capture's)
RECORD = struct.Struct("<I4x" + EVENT_META.format[1:])
LIVE_RECORD = struct.Struct("<I4x" + LIVE_META.format[1:])


class Framing:
    """Turns live capture's ring records into Frames: what LiveCapture knows of namespaces, interfaces and task names
    (``where``, ``comms``; a miss asks ``lookup_where`` / ``comm``), its clock offset and task fields, and the senders
    ``on_task`` / ``on_process`` hear of. ``last_kt`` / ``ordered``: whether kernel times never went back."""

    def __init__(self, lookup_where: Callable[[int, int], Tuple[int, Optional[str], int]],
                 comm: Callable[[bytes], str]):
        self.where: Dict[int, Tuple[int, Optional[str], int]] = {}  # netns << 32 | ifindex -> (inode, name, linktype)
        self.comms: Dict[bytes, str] = {}
        self.lookup_where = lookup_where
        self.comm = comm
        self.ts_offset = 0.0
        self.task_meta = 0
        self.on_task: Optional[Callable[[int], object]] = None
        self.on_process: Optional[Callable[[int], object]] = None
        self.told: set = set()  # senders (pid << 32 | tid) heard of in this read: once is enough
        self.last_kt = 0
        self.ordered = True
        # the previous record's sender and capture point (most records repeat them): no lookup for those
        self._told_last = 0
        self._where_key = 0
        self._where_hit: Optional[Tuple[int, Optional[str], int]] = None

    def start(self, last_kt: int, on_task, on_process) -> None:
        """A new read, after frames up to kernel time ``last_kt`` (``where`` may have changed since the last)."""
        self.last_kt = last_kt
        self.ordered = True
        self.told = set()
        self._told_last = 0
        self._where_hit = None
        if not self.task_meta & TASK_PID:
            on_task = on_process = None
        self.on_task, self.on_process = on_task, on_process

    def frame(self, fields: tuple, data: bytes) -> Frame:
        """The Frame of one record (``fields``: LIVE_RECORD's)."""
        _len, kt, pid_tgid, uid_gid, cgroup_id, ifindex, pkt_type, tag, flags, comm = fields
        if kt < self.last_kt:
            self.ordered = False
        self.last_kt = kt
        key = tag << 32 | ifindex
        if key == self._where_key and self._where_hit is not None:
            ns, ifname, linktype = self._where_hit
        else:
            hit = self.where.get(key)
            if hit is not None:
                self._where_key, self._where_hit = key, hit
            else:
                hit = self.lookup_where(tag, ifindex)
            ns, ifname, linktype = hit
        if flags & META_TASK_VALID:
            pid = pid_tgid >> 32
            tm = self.task_meta
            if pid_tgid != self._told_last and pid_tgid not in self.told:
                self.told.add(pid_tgid)
                if self.on_task is not None and pid != pid_tgid & 0xFFFFFFFF:
                    self.on_task(pid)  # sent by a thread: the process's name is read from /proc, now
                if self.on_process is not None:
                    self.on_process(pid)
            self._told_last = pid_tgid
            if tm == TASK_ALL:  # (the usual case: every task field, without a test per field)
                meta = model.new_record(PacketMeta, (kt, ifindex, pkt_type, ns, ifname, pid, pid_tgid & 0xFFFFFFFF,
                                                  self.comms.get(comm) or self.comm(comm), uid_gid & 0xFFFFFFFF,
                                                  cgroup_id, None))
            else:
                meta = model.new_record(PacketMeta, (
                    kt, ifindex, pkt_type, ns, ifname,
                    pid if tm & TASK_PID else None,
                    pid_tgid & 0xFFFFFFFF if tm & TASK_PID else None,
                    (self.comms.get(comm) or self.comm(comm)) if tm & TASK_COMM else None,
                    uid_gid & 0xFFFFFFFF if tm & TASK_UID else None,
                    cgroup_id if tm & TASK_CGROUP else None,
                    None))
        else:
            meta = model.new_record(PacketMeta, (kt, ifindex, pkt_type, ns, ifname, None, None, None, None, None, None))
        return model.new_record(Frame, (kt * 1e-9 + self.ts_offset, linktype, data, ifname, meta))


class EventRing:
    """Our own mmap of a BPF ring buffer (what libbpf's ring_buffer does, without a C callback per record):
    the consumer page read-write, then the producer page and the data pages, mapped twice in a row so that a
    record wrapping around the end reads as one piece. Records are parsed with struct straight from the map.

    x86 orders loads with loads and stores with stores, which is the acquire/release pairing libbpf needs
    barriers for; the position and header reads here are single aligned loads, each record's header before
    its contents."""

    def __init__(self, map_fd: int, size: int):
        psz = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._base = psz
        self._cons = mmap.mmap(map_fd, psz, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data = mmap.mmap(map_fd, psz + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=psz)
        except BaseException:
            self._cons.close()
            raise

    def pending(self) -> bool:
        return _U64.unpack_from(self._data, 0)[0] != _U64.unpack_from(self._cons, 0)[0]

    def written(self) -> int:
        """Bytes the kernel has written to this ring so far, headers and padding included (its producer position)."""
        return _U64.unpack_from(self._data, 0)[0]

    def read(self, out: list, framing: Optional[Framing] = None) -> None:
        """Append each committed record, up to the first one still being written, to ``out``: its Frame
        (``framing``), or (event_meta's fields, packet bytes). Their space goes back to the kernel once they are
        copied. Bounded by the ring's size."""
        data = self._data
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(data, 0)[0]
        append = out.append
        unpack = RECORD.unpack_from if framing is None else LIVE_RECORD.unpack_from
        base, mask, meta_size = self._base, self._mask, META_SIZE
        pos = cons
        while pos < prod:
            off = base + (pos & mask)
            fields = unpack(data, off)
            length = fields[0]
            if length & _RB_BUSY:
                break
            if not length & _RB_DISCARD:  # (a sample is meta + cap_len bytes: its length says where they end)
                packet = data[off + _RB_HDR + meta_size:off + _RB_HDR + length]
                append((fields[1:], packet) if framing is None else framing.frame(fields, packet))
            pos += ((length & 0x3FFFFFFF) + _RB_HDR + 7) & ~7
        if pos != cons:
            _U64.pack_into(self._cons, 0, pos)

    def close(self) -> None:
        self._data.close()
        self._cons.close()


def _record_ktime(record: Tuple[tuple, bytes]) -> int:
    return record[0][0]


class EventRings:
    """The filter's rings (one per CPU, dns_filter.c's ``rings``) read as one: :meth:`wait` sleeps on all of them
    (one epoll), :meth:`read` takes what each holds and merges them by kernel time (each ring is in kernel time
    order, as one CPU writes it; nearly so after a full ring spilled into it, which LiveCapture's sort mends)."""

    def __init__(self, map_fds: Sequence[int], size: int):
        self.rings: List[EventRing] = []
        self._epoll = select.epoll()
        try:
            for fd in map_fds:
                self.rings.append(EventRing(fd, size))
                self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def pending(self) -> bool:
        return any(ring.pending() for ring in self.rings)

    def wait(self, timeout_ms: int) -> None:
        if timeout_ms > 0 and not self.pending():
            try:
                self._epoll.poll(timeout_ms / 1000)
            except InterruptedError:  # a signal: the caller looks at its flag
                pass

    def read(self) -> List[Tuple[tuple, bytes]]:
        """Every ring's records, (event_meta's fields, packet bytes), in kernel time order."""
        out: List[Tuple[tuple, bytes]] = []
        merge = False
        for ring in self.rings:
            start = len(out)
            ring.read(out)
            if 0 < start < len(out) and out[start][0][0] < out[start - 1][0][0]:
                merge = True  # interleaved with an earlier ring's records
        if merge:
            out.sort(key=_record_ktime)  # (a merge of sorted runs, which list.sort finds)
        return out

    def read_frames(self, framing: Framing, last_kt: int, on_task, on_process) -> List[Frame]:
        """Every ring's records as frames (:class:`Framing`), ring after ring: ``framing.ordered`` then says whether
        their kernel times never went back from ``last_kt`` on (the usual case with one busy ring)."""
        out: List[Frame] = []
        framing.start(last_kt, on_task, on_process)
        for ring in self.rings:
            ring.read(out, framing)
        return out

    def close(self) -> None:
        self._epoll.close()
        for ring in self.rings:
            ring.close()
        self.rings = []
