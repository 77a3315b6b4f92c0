"""Reading the filter's ring buffers (sources/ring.py) without the kernel: a memfd laid out as a BPF ring buffer
(consumer page, producer page, data), records written as the kernel writes them. Runs compiled and as pure Python
(test_compiled's CORE_TESTS)."""
from __future__ import annotations

import mmap
import os
import struct

import pytest

from dnswatch.model import LINKTYPE_ETHERNET, LINKTYPE_RAW, Frame, PacketMeta
from dnswatch.sources import ring
from dnswatch.sources.bpf_testrun import TASK_ALL, TASK_PID

PSZ = mmap.PAGESIZE
SIZE = 4 * PSZ


class Ring:
    """The kernel's side of one ring: write records, commit them (or leave one busy), move the producer position."""

    def __init__(self):
        self.fd = os.memfd_create("test-ring")
        os.ftruncate(self.fd, 2 * PSZ + 2 * SIZE)
        self.map = mmap.mmap(self.fd, 2 * PSZ + 2 * SIZE)
        self.pos = 0

    def write(self, fields: tuple, data: bytes, busy: bool = False, discard: bool = False) -> None:
        meta = ring.EVENT_META.pack(*fields[:6], len(data), len(data), *fields[6:], 0, 0, 0, 0, 0, 0)
        length = len(meta) + len(data) | (1 << 31 if busy else 0) | (1 << 30 if discard else 0)
        rec = struct.pack("<II", length, 0) + meta + data
        rec += bytes(-len(rec) % 8)
        at = 2 * PSZ + (self.pos & (SIZE - 1))
        self.map[at:at + len(rec)] = rec  # past the end: the second mapping of the data pages, as the kernel's
        self.pos += len(rec)
        struct.pack_into("<Q", self.map, PSZ, self.pos)

    def consumer(self) -> int:
        return struct.unpack_from("<Q", self.map, 0)[0]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@pytest.fixture
def kernel():
    k = Ring()
    r = ring.EventRing(k.fd, SIZE)
    yield k, r
    r.close()
    k.close()


def fields(kt: int, pid: int = 0, flags: int = 0, comm: bytes = b"", tag: int = 7, ifindex: int = 2) -> tuple:
    """event_meta's fields in EVENT_META order, less orig_len and cap_len (the write fills them in)."""
    return (kt, pid << 32 | (pid + 1 if pid else 0), 1000 << 32 | 1000, 42, ifindex, 4 if flags else 0, tag, flags,
            comm)


def test_records_up_to_the_first_busy_one_and_not_the_discarded(kernel):
    k, r = kernel
    k.write(fields(10), b"a" * 60)
    k.write(fields(11), b"b" * 61, discard=True)
    k.write(fields(12), b"c" * 62)
    busy_at = k.pos
    k.write(fields(13), b"d" * 63, busy=True)
    out = []
    r.read(out)
    assert [(f[0], f[7], data) for f, data in out] == [(10, 60, b"a" * 60), (12, 62, b"c" * 62)]
    assert k.consumer() == busy_at  # the busy record's space stays the kernel's
    assert r.pending()
    out = []
    r.read(out)
    assert out == []


def test_a_record_wrapping_around_the_end_reads_as_one_piece(kernel):
    k, r = kernel
    data = bytes(range(256)) * 3
    while k.pos + 8 + ring.META_SIZE + len(data) <= SIZE - 100:
        k.write(fields(k.pos), data)
    out = []
    r.read(out)
    k.write(fields(1 << 40), data)  # starts before the end of the data pages, ends after it
    out = []
    r.read(out)
    assert [(f[0], d) for f, d in out] == [(1 << 40, data)] and k.consumer() == k.pos > SIZE


def framing(task_meta: int = TASK_ALL):
    where = {}

    def lookup_where(tag, ifindex):
        where[tag, ifindex] = where.get((tag, ifindex), 0) + 1
        return (1000 + tag, "eth%d" % ifindex, LINKTYPE_ETHERNET if ifindex == 2 else LINKTYPE_RAW)

    f = ring.Framing(lookup_where, lambda raw: raw.rstrip(b"\0").decode())
    f.ts_offset, f.task_meta = 1e9, task_meta
    return f, where


def test_frames_carry_what_the_kernel_knew(kernel):
    k, r = kernel
    k.write(fields(2_000_000_000, pid=300, flags=ring.META_TASK_VALID, comm=b"dig".ljust(16, b"\0")), b"q" * 50)
    k.write(fields(2_000_000_500, ifindex=3), b"r" * 50)
    f, where = framing()
    told = []
    f.start(0, told.append, lambda pid: told.append(-pid))
    out = []
    r.read(out, f)
    assert out == [
        Frame(1e9 + 2.0, LINKTYPE_ETHERNET, b"q" * 50, "eth2",
              PacketMeta(2_000_000_000, 2, 4, 1007, "eth2", 300, 301, "dig", 1000, 42, None)),
        Frame(1e9 + 2.0000005, LINKTYPE_RAW, b"r" * 50, "eth3",
              PacketMeta(2_000_000_500, 3, 0, 1007, "eth3", None, None, None, None, None, None)),
    ]
    assert type(out[0]) is Frame and type(out[0].meta) is PacketMeta
    assert told == [300, -300]  # a thread's sender: its process's name, and the sender, once
    assert f.ordered and f.last_kt == 2_000_000_500
    assert where == {(7, 2): 1, (7, 3): 1}  # (the caller caches what it found in f.where)


def test_frames_without_task_helpers_and_out_of_order(kernel):
    k, r = kernel
    k.write(fields(50, pid=300, flags=ring.META_TASK_VALID, comm=b"dig"), b"x" * 40)
    k.write(fields(40), b"y" * 40)
    f, _ = framing(TASK_PID)
    f.start(45, None, None)
    out = []
    r.read(out, f)
    assert [fr.meta[5:10] for fr in out] == [(300, 301, None, None, None), (None,) * 5]
    assert not f.ordered


def test_capture_points_come_from_where_until_it_forgets_them(kernel):
    k, r = kernel
    tag = 4026531840  # a namespace inode (past 2**31)
    f, looked = framing()
    f.where[tag << 32 | 2] = (tag, "known", LINKTYPE_ETHERNET)
    k.write(fields(1, tag=tag), b"a" * 40)
    k.write(fields(2, tag=tag), b"b" * 40)
    k.write(fields(3, tag=tag, ifindex=3), b"c" * 40)
    f.start(0, None, None)
    out = []
    r.read(out, f)
    assert [(fr.ifname, fr.meta.netns) for fr in out] == [("known", tag), ("known", tag), ("eth3", 1000 + tag)]
    assert looked == {(tag, 3): 1}
    f.where.clear()  # (LiveCapture.remove_netns: a namespace went away)
    k.write(fields(4, tag=tag), b"d" * 40)
    f.start(3, None, None)
    out = []
    r.read(out, f)
    assert [fr.ifname for fr in out] == ["eth2"] and looked == {(tag, 3): 1, (tag, 2): 1}
