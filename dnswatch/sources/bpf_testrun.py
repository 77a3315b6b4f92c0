"""Raw bpf(2) calls for the live source, and running the kernel filter over frames.

No bcc here: the syscall is made with ctypes. Three users:

* :func:`verdicts` runs the *production* filter (``bpf/dns_filter.c``, compiled by
  :mod:`dnswatch.sources.live`) with ``BPF_PROG_TEST_RUN`` over Ethernet frames and reports which
  ones it keeps, so the keep contract can be checked frame by frame against user space.
* :func:`probe_task_helpers` finds which task helpers a socket filter may call on this kernel.
* :func:`load_dispatcher` builds the per-network-namespace trampoline (issue 4).
* :func:`ringbuf_create` makes the ring buffers of the CPUs past the first (dns_filter.c's ``rings``).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Iterable, List, Optional, Sequence, Tuple

from dnswatch.model import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_DLT_RAW1,
    LINKTYPE_DLT_RAW2,
)

_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_MAP_TYPE_RINGBUF = 27

# struct __sk_buff (uapi/linux/bpf.h): size and the offset of cb[0]
SKB_CTX_SIZE = 192
SKB_CB0_OFFSET = 48

# BPF_PROG_TEST_RUN on an skb: the frame must hold an Ethernet header, a whole IPv4 (20) or
# IPv6 (40) header when the EtherType says so (shorter ones cannot be kept anyway: the filter
# needs those headers), and fit one page minus headroom and skb_shared_info: longer frames are
# cut (only headers decide; skb->len does not enter the verdict).
TEST_RUN_MIN = {0x0800: 14 + 20, 0x86DD: 14 + 40}
TEST_RUN_MAX = 3584

# Helper ids (uapi/linux/bpf.h enum bpf_func_id)
HELPER_KTIME_GET_NS = 5
HELPER_TAIL_CALL = 12
HELPER_PID_TGID = 14
HELPER_UID_GID = 15
HELPER_COMM = 16
HELPER_CGROUP_ID = 80

# TASK_META bits understood by dns_filter.c
TASK_PID, TASK_UID, TASK_COMM, TASK_CGROUP = 1, 2, 4, 8
TASK_ALL = 15
TASK_HELPERS = {
    TASK_PID: ("bpf_get_current_pid_tgid", HELPER_PID_TGID),
    TASK_UID: ("bpf_get_current_uid_gid", HELPER_UID_GID),
    TASK_COMM: ("bpf_get_current_comm", HELPER_COMM),
    TASK_CGROUP: ("bpf_get_current_cgroup_id", HELPER_CGROUP_ID),
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) call failed; ``log`` holds the verifier log when there is one."""

    def __init__(self, err: int, what: str, log: str = ""):
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.log = log


def bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _NR_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {os.uname().machine}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        return -ctypes.get_errno()
    return ret


# ---------------------------------------------------------------- instructions


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    if imm >= 1 << 31:
        imm -= 1 << 32  # a u32 immediate (e.g. a netns inode) keeps its bit pattern
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _mov64_imm(dst: int, imm: int) -> bytes:
    return _insn(0xB7, dst, imm=imm)


def _mov64_reg(dst: int, src: int) -> bytes:
    return _insn(0xBF, dst, src)


def _call(helper: int) -> bytes:
    return _insn(0x85, imm=helper)


_EXIT = _insn(0x95)


def prog_load(insns: bytes, prog_type: int = BPF_PROG_TYPE_SOCKET_FILTER, name: str = "", log: bool = False) -> int:
    """BPF_PROG_LOAD of raw instructions; returns the program fd. Raises :class:`BpfError`."""
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    log_buf = ctypes.create_string_buffer(65536) if log else None
    attr = ctypes.create_string_buffer(128)
    struct.pack_into(
        "<IIQQIIQII16s",
        attr,
        0,
        prog_type,
        len(insns) // 8,
        ctypes.addressof(insn_buf),
        ctypes.addressof(license),
        1 if log else 0,
        len(log_buf) if log_buf is not None else 0,
        ctypes.addressof(log_buf) if log_buf is not None else 0,
        0,
        0,
        name.encode()[:15],
    )
    fd = bpf(BPF_PROG_LOAD, attr)
    if fd < 0:
        text = log_buf.value.decode(errors="replace") if log_buf is not None else ""
        raise BpfError(-fd, "BPF_PROG_LOAD", text)
    return fd


def ringbuf_create(size: int, name: str = "dnswatch_ring") -> int:
    """BPF_MAP_CREATE of a ring buffer of ``size`` bytes (a power of two, whole pages); returns its fd.
    Raises :class:`BpfError`."""
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIIIIII16s", attr, 0, BPF_MAP_TYPE_RINGBUF, 0, 0, size, 0, 0, 0, name.encode()[:15])
    fd = bpf(BPF_MAP_CREATE, attr)
    if fd < 0:
        raise BpfError(-fd, "BPF_MAP_CREATE (ring buffer)")
    return fd


def probe_helper(helper: int) -> Tuple[bool, str]:
    """Can a socket filter call this helper here? (ok, error text)."""
    if helper == HELPER_COMM:  # bpf_get_current_comm(fp - 16, 16)
        body = _mov64_reg(1, 10) + _insn(0x07, 1, imm=-16) + _mov64_imm(2, 16) + _call(helper)
    else:
        body = _call(helper)
    try:
        fd = prog_load(body + _mov64_imm(0, 0) + _EXIT, name="dnswatch_probe")
    except BpfError as e:
        return False, e.strerror or str(e)
    os.close(fd)
    return True, ""


def probe_task_helpers() -> Tuple[int, dict]:
    """(TASK_META mask of helpers that load in a socket filter, {helper name: error} for those that don't)."""
    mask, missing = 0, {}
    for bit, (name, helper) in TASK_HELPERS.items():
        ok, err = probe_helper(helper)
        if ok:
            mask |= bit
        else:
            missing[name] = err
    return mask, missing


def load_dispatcher(prog_array_fd: int, netns_inode: int) -> int:
    """The per-network-namespace trampoline: ``skb->cb[0] = netns_inode; tail_call(progs, 0)``.

    Attach the returned fd (SO_ATTACH_BPF) to a raw socket opened inside that namespace. All
    dispatchers share the one loaded dns_filter through the BPF_PROG_ARRAY ``progs``.
    """
    insns = b"".join(
        [
            _mov64_reg(6, 1),  # r6 = ctx
            _insn(0xB4, 2, imm=netns_inode & 0xFFFFFFFF),  # w2 = netns inode
            _insn(0x63, 1, 2, off=SKB_CB0_OFFSET),  # *(u32 *)(ctx + cb[0]) = w2
            _insn(0x18, 2, 1, imm=prog_array_fd),  # r2 = progs (ld_imm64, BPF_PSEUDO_MAP_FD)
            _insn(0x00),
            _mov64_reg(1, 6),
            _mov64_imm(3, 0),
            _call(HELPER_TAIL_CALL),  # does not return when progs[0] is set
            _mov64_imm(0, 0),
            _EXIT,
        ]
    )
    return prog_load(insns, name="dnswatch_netns")


# ---------------------------------------------------------------- BPF_PROG_TEST_RUN


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, cb0: int = 0, ifindex: int = 0) -> Tuple[int, int]:
    """Run a socket filter once (or ``repeat`` times) over an Ethernet frame: (retval, ns per run).

    The kernel treats the first 14 bytes as Ethernet (``eth_type_trans``) and runs the program
    with skb->data at the network header. ``cb0`` lands in skb->cb[0] (dns_filter reports it as
    meta.netns; tests use it to tag frames).
    """
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    ctx = None
    if cb0 or ifindex:
        ctx = ctypes.create_string_buffer(SKB_CTX_SIZE)
        struct.pack_into("<I", ctx, 40, ifindex)
        struct.pack_into("<I", ctx, SKB_CB0_OFFSET, cb0 & 0xFFFFFFFF)
    attr = ctypes.create_string_buffer(80)
    struct.pack_into(
        "<IIIIQQIIIIQQIII",
        attr,
        0,
        prog_fd,
        0,  # retval (out)
        len(data),
        0,  # data_size_out
        ctypes.addressof(data_in),
        0,  # data_out: not wanted
        max(1, repeat),
        0,  # duration (out)
        SKB_CTX_SIZE if ctx is not None else 0,
        0,
        ctypes.addressof(ctx) if ctx is not None else 0,
        0,
        0,  # flags
        0,  # cpu
        0,  # batch_size
    )
    ret = bpf(BPF_PROG_TEST_RUN, attr)
    if ret < 0:
        raise BpfError(-ret, "BPF_PROG_TEST_RUN")
    retval, = struct.unpack_from("<I", attr, 4)
    duration, = struct.unpack_from("<I", attr, 36)
    if retval >= 1 << 31:
        retval -= 1 << 32
    return retval, duration


def to_ethernet(linktype: int, data: bytes) -> Optional[bytes]:
    """Give a captured frame an Ethernet header (what BPF_PROG_TEST_RUN expects), or None."""
    if linktype == LINKTYPE_ETHERNET:
        return data
    zero_macs = b"\0" * 12
    if linktype in (LINKTYPE_RAW, LINKTYPE_DLT_RAW1, LINKTYPE_DLT_RAW2, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not data:
            return None
        version = data[0] >> 4
        et = {4: b"\x08\x00", 6: b"\x86\xdd"}.get(version)
        return zero_macs + et + data if et else None
    if linktype == LINKTYPE_LINUX_SLL and len(data) >= 16:
        return zero_macs + data[14:16] + data[16:]
    if linktype == LINKTYPE_LINUX_SLL2 and len(data) >= 20:
        return zero_macs + data[0:2] + data[20:]
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP) and len(data) >= 4:
        if linktype == LINKTYPE_LOOP:
            family = int.from_bytes(data[:4], "big")
        else:  # host byte order of the capturing machine: accept either
            family = int.from_bytes(data[:4], "little")
            if family > 0xFFFF:
                family = int.from_bytes(data[:4], "big")
        if family == 2:
            return zero_macs + b"\x08\x00" + data[4:]
        if family in (10, 24, 28, 30):  # AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, macOS
            return zero_macs + b"\x86\xdd" + data[4:]
        return None
    return None


class FilterRunner:
    """The production filter loaded once for BPF_PROG_TEST_RUN; keeps fragment state across runs.

    A frame is kept iff the run emitted a ring record (dns_filter always returns 0). Each run puts
    its sequence number in skb->cb[0], which comes back as the event's netns field.
    """

    def __init__(self, ports: Sequence[int] = (53,), responses: bool = False, max_capture: int = 256):
        from dnswatch.sources import live  # bcc lives there only

        self.filter = live.load_filter(ports, responses, max_capture=max_capture, loopback_dedup=False,
                                       copy_window_ns=0,
                                       page_cnt=256 // (os.cpu_count() or 1) or 1, wakeup_events=4096)
        self.filter.open_events()
        self._seq = 0
        self._events: List[Tuple[tuple, bytes]] = []

    def run(self, frames: Iterable[bytes], linktype: int = LINKTYPE_ETHERNET) -> List[bool]:
        out: List[bool] = []
        batch: List[int] = []  # seq numbers awaiting collection; None for skipped frames
        pending = 0
        for frame in frames:
            eth = to_ethernet(linktype, bytes(frame))
            if eth is None or len(eth) < TEST_RUN_MIN.get(int.from_bytes(eth[12:14], "big"), 14):
                batch.append(-1)  # cannot run, and could not be kept
                continue
            eth = eth[:TEST_RUN_MAX]
            self._seq = (self._seq % 0xFFFFFFF0) + 1
            prog_test_run(self.filter.prog_fd, eth, cb0=self._seq)
            batch.append(self._seq)
            pending += len(eth) + 136
            if pending > 256 * 4096 // 4:  # drain well before the ring can fill
                out.extend(self._collect(batch))
                batch, pending = [], 0
        out.extend(self._collect(batch))
        return out

    def _collect(self, batch: List[int]) -> List[bool]:
        events = self.filter.read()
        self._events += events
        kept = {meta[8] for meta, _ in events}
        if self.filter.counters()["emit_failures"]:
            raise RuntimeError("the ring buffer was full during test runs")
        return [seq in kept for seq in batch]

    def take_events(self) -> List[Tuple[tuple, bytes]]:
        ev, self._events = self._events, []
        return ev

    def close(self) -> None:
        self.filter.close()

    def __enter__(self) -> "FilterRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def verdicts(frames: Iterable[bytes], ports: Sequence[int] = (53,), responses: bool = False,
             linktype: int = LINKTYPE_ETHERNET) -> List[bool]:
    """Keep (True) / drop for each frame, in order, by the kernel filter itself.

    Loads the filter once; fragment state carries across frames as it does live. Frames are
    Ethernet unless ``linktype`` says otherwise (raw IP, Linux cooked, BSD loopback get an Ethernet
    header first). The copy rules (5: loopback, 6: other capture points) are live-only and not applied.
    """
    with FilterRunner(ports, responses) as runner:
        return runner.run(frames, linktype)
