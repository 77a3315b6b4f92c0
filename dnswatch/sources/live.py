"""Live capture: the eBPF socket filter in ``bpf/dns_filter.c`` keeps DNS packets in the kernel and
hands each one to user space in a single record, on the ring buffer of the CPU it ran on, with what the
kernel knew about it.

This is the only module that imports bcc, and only inside functions: everything else in dnswatch
works without it.
"""
from __future__ import annotations

import bisect
import contextlib
import ctypes
import fcntl
import gc
import mmap
import operator
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from dnswatch.model import LINKTYPE_ETHERNET, LINKTYPE_RAW, Frame
from dnswatch.netns import LinkSocket
from dnswatch.sources import bpf_testrun as _sys
from dnswatch.sources.bpf_testrun import TASK_ALL, TASK_HELPERS
from dnswatch.sources.ring import EVENT_META, EventRings, Framing  # noqa: F401 (EVENT_META: the record's layout)

# The bound perf events had (their size was a u16), kept as the contract for --max-capture.
MAX_CAPTURE_LIMIT = 65400
DEFAULT_MAX_CAPTURE = MAX_CAPTURE_LIMIT
MAX_PORTS = 16


def default_page_cnt() -> int:
    """Pages of each CPU's ring: 8 MiB (~45k typical DNS events: >1 s of a 40k q/s flood with responses, for a
    reader that a busy node's scheduler holds back) on small hosts, scaled down to keep the total near 64 MiB on
    many-CPU ones, never below 512 KiB."""
    ncpu = os.cpu_count() or 1
    pages = 2048
    while pages > 128 and pages * 4096 * ncpu > 64 << 20:
        pages //= 2
    return pages


def ring_pages(page_cnt: int) -> int:
    """Pages of each ring buffer (one per CPU, :func:`ring_count`): page_cnt, up to a power of two."""
    return 1 << (max(1, page_cnt) - 1).bit_length()


# Rings at most (dns_filter.c's RINGS): CPUs past it share one by modulo, and with it the ring's lock.
MAX_RINGS = 64


def _cpu_ids(kind: str, default: int) -> int:
    """1 + the highest CPU id in /sys/devices/system/cpu/<kind> ("0-3,6")."""
    try:
        text = Path("/sys/devices/system/cpu", kind).read_text().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return default


def possible_cpus() -> int:
    """How many CPU ids the kernel can hand out (bpf_get_smp_processor_id() < this): the scratch slots."""
    return _cpu_ids("possible", max(64, os.cpu_count() or 1))


def ring_count() -> int:
    """Rings the filter writes: one per online CPU id (CPU n writes ring n % this), at most MAX_RINGS."""
    return max(1, min(MAX_RINGS, _cpu_ids("online", os.cpu_count() or 1)))


# Wakeups. By default the kernel wakes the reader only for a record written while it had read everything
# (BPF ring buffer's own rule): at once under light traffic (enrichment reads /proc/PID while the sender
# still exists), and not at all while it works through a batch, so a busy reader costs the senders no
# irq_work per packet. LiveCapture(wakeup_events > 1) compiles in BPF_RB_NO_WAKEUP: the reader then hears
# of records at poll()'s timeout only.
WAKEUP_EVENTS = 1

# Reorder window. Each CPU writes its own ring, in kernel time order, and a read merges the rings by kernel
# time; but a record is written microseconds after its ktime, so one of another CPU that is older than the last
# record read can still be on its way (and the rings are read one after another). poll() therefore
# hands on only the frames whose kernel time is older than the moment the read began, less
# REORDER_MARGIN_NS, in kernel time order; younger ones wait, and poll() sleeps until the oldest of them is
# due (at most REORDER_POLL_MS), REORDER_BATCH_NS more so that a busy ring is read in batches. Bounded in bytes too: past REORDER_MAX_BYTES the oldest go on at once.
REORDER_MARGIN_NS = 2_000_000
REORDER_BATCH_NS = 2_000_000
REORDER_POLL_MS = 5
REORDER_MAX_BYTES = 8 << 20

_FIX_BCC = (
    "apt-get install python3-bpfcc linux-headers-$(uname -r) (on Debian: linux-headers-amd64, "
    "and ln -s the installed /usr/src/linux-headers-* as /lib/modules/$(uname -r)/build)"
)
_FIX_PRIV = "run as root, or grant CAP_BPF, CAP_NET_RAW and CAP_PERFMON (e.g. setcap or a privileged container)"

# the kernel's counters, in dns_filter.c's CNT_* order. emit_failures: records the ring buffers refused (the
# loss), emit_refused: the part of them their ring had room for (not a full ring); skip_*: DNS-port packets the
# keep rule drops, by reason.
_COUNTERS = ("kernel_seen", "kernel_kept", "emit_failures", "kernel_slow_loads", "kernel_skip_short",
             "kernel_skip_qdcount", "emit_failures_responses", "kernel_copies", "emit_refused")

# Rule 6 of the keep contract: a copy of a kept packet at another capture point within this window is dropped in
# the kernel (kernel_copies). The same window as correlate.COPY_WINDOW, which recognises the copies it lets through.
COPY_WINDOW_NS = 50_000_000

_ETH_P_ALL = 0x0003
_SO_ATTACH_BPF = 50
_SIOCGIFNAME = 0x8910
_SIOCGIFHWADDR = 0x8927
_CLONE_NEWNET = 0x40000000
# ARPHRD types whose frames start with an Ethernet header in AF_PACKET/SOCK_RAW
_ARPHRD_ETHERLIKE = {1, 6, 772}  # ETHER, IEEE802, LOOPBACK


class LiveCaptureError(Exception):
    """Live capture cannot start. ``str()`` is one line saying what is wrong and how to fix it.

    ``log`` keeps compiler / verifier output for --debug (never shown otherwise).
    """

    def __init__(self, message: str, fix: Optional[str] = None, log: str = ""):
        super().__init__(f"{message}. Fix: {fix}" if fix else message)
        self.problem = message
        self.fix = fix
        self.log = log


def import_bcc():
    """Import bcc (Debian's python3-bpfcc), also from outside a venv's reach. Raises LiveCaptureError."""
    try:
        import bcc  # noqa: F401
    except Exception:
        dist = "/usr/lib/python3/dist-packages"
        if dist not in sys.path and os.path.isdir(dist):
            sys.path.append(dist)
        try:
            import bcc  # noqa: F811
        except Exception as e:
            raise LiveCaptureError(f"cannot import bcc ({e.__class__.__name__}: {e})", _FIX_BCC) from None
    return bcc


def filter_source() -> Path:
    """Path of dns_filter.c: packaged next to the modules, or at the top of a source checkout."""
    here = Path(__file__).resolve()
    for cand in (here.parent.parent / "bpf" / "dns_filter.c", here.parent.parent.parent / "bpf" / "dns_filter.c"):
        if cand.is_file():
            return cand
    raise LiveCaptureError("bpf/dns_filter.c is missing from the installation", "reinstall dnswatch")


# The image's own header tree (the Dockerfile sets it): used when the node has none. A socket filter
# uses only stable uapi headers, so any recent tree compiles it for the running kernel.
BUNDLED_HEADERS_ENV = "DNSWATCH_KERNEL_HEADERS"


def node_headers_dir() -> Path:
    return Path("/lib/modules") / os.uname().release / "build"


def _has_headers(build: Path) -> bool:
    """bcc's own test: include/linux/kconfig.h in build/, or in its source/ sibling (Debian's split trees)."""
    source = build.parent / "source"
    return (build / "include/linux/kconfig.h").is_file() or (
        build.is_dir() and (source / "include/linux/kconfig.h").is_file())


def headers_choice() -> Tuple[Path, str]:
    """The header tree bcc compiles against, and whose it is: "BCC_KERNEL_SOURCE" (the user's), "node"
    (/lib/modules/$(uname -r)/build), or "image" (DNSWATCH_KERNEL_HEADERS, when the node has none)."""
    user = os.environ.get("BCC_KERNEL_SOURCE")
    bundled = os.environ.get(BUNDLED_HEADERS_ENV)
    if user and user != bundled:  # (equal: set by _use_headers earlier in this process)
        return Path(user), "BCC_KERNEL_SOURCE"
    node = node_headers_dir()
    if bundled and not _has_headers(node) and (Path(bundled) / "include/linux/kconfig.h").is_file():
        return Path(bundled), "image"
    return node, "node"


def headers_dir() -> Path:
    return headers_choice()[0]


def _use_headers() -> None:
    """Point bcc at the image's headers when the node has none (bcc reads BCC_KERNEL_SOURCE per compile)."""
    path, whose = headers_choice()
    if whose == "image":
        os.environ["BCC_KERNEL_SOURCE"] = str(path)
    elif whose == "node" and os.environ.get("BCC_KERNEL_SOURCE"):
        del os.environ["BCC_KERNEL_SOURCE"]  # ours, from before the node's headers appeared


@contextlib.contextmanager
def _capture_stderr(sink: List[str]):
    """bcc prints clang diagnostics and verifier logs on fd 2: keep them for --debug instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def _check_ports(ports: Sequence[int]) -> Tuple[int, ...]:
    out = tuple(dict.fromkeys(int(p) for p in ports))
    if not out or len(out) > MAX_PORTS or not all(0 < p < 65536 for p in out):
        raise ValueError(f"ports must be 1 to {MAX_PORTS} numbers in 1..65535, got {list(ports)!r}")
    return out


class LoadedFilter:
    """dns_filter compiled and loaded (not attached). Built by :func:`load_filter`."""

    def __init__(self, bpf, fn, ports, responses, max_capture, loopback_dedup, task_meta, task_missing, fallback, log,
                 ring_pages, copy_window_ns=COPY_WINDOW_NS, ring_fds=()):
        self.bpf = bpf
        self.fn = fn
        self.prog_fd: int = fn.fd
        self.ports: Tuple[int, ...] = ports
        self.responses: bool = responses
        self.max_capture: int = max_capture
        self.loopback_dedup: bool = loopback_dedup
        self.copy_window_ns: int = copy_window_ns  # rule 6; 0: every copy goes up
        self.task_meta: int = task_meta  # TASK_* bits compiled in
        self.task_missing: Dict[str, str] = task_missing  # helper name -> why it does not load
        self.fallback: Optional[str] = fallback  # set when task metadata had to be compiled out
        self.log: str = log
        self.prog_array_fd: int = bpf[b"progs"].map_fd
        self.ring_pages = ring_pages  # of each ring
        self.ring_fds: List[int] = [bpf[b"events"].map_fd, *ring_fds]  # rings[i]; ours to close from 1 on
        self.ring: Optional[EventRings] = None
        self._closed = False

    def open_events(self) -> None:
        """Map the ring buffers for :meth:`poll` / :meth:`read`."""
        try:
            self.ring = EventRings(self.ring_fds, self.ring_pages * mmap.PAGESIZE)
        except OSError as e:
            raise LiveCaptureError(f"cannot map the ring buffers ({len(self.ring_fds)} of {self.ring_pages} pages:"
                                   f" {e})", "run as root or grant CAP_BPF and CAP_PERFMON") from None

    def poll(self, timeout_ms: int, read: Optional[Callable[[EventRings], list]] = None) -> Tuple[int, list]:
        """Wait up to timeout_ms for a record (not at all if one is there), then read what the rings hold.

        Returns (mark, records): mark is CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns) taken just before
        the read, records are (EVENT_META fields, packet bytes) in kernel time order, or what ``read(rings)`` gives
        (LiveCapture's frames)."""
        self.ring.wait(timeout_ms)
        mark = time.monotonic_ns()
        return mark, self.ring.read() if read is None else read(self.ring)

    def read(self) -> List[Tuple[tuple, bytes]]:
        """What the rings hold now, without waiting, in kernel time order: (EVENT_META fields, packet bytes)."""
        return self.ring.read()

    def counters(self) -> Dict[str, int]:
        table = self.bpf[b"counters"]
        return {name: int(sum(v.value if hasattr(v, "value") else v for v in table.getvalue(table.Key(i))))
                for i, name in enumerate(_COUNTERS)}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.ring is not None:
                self.ring.close()
                self.ring = None
            for fd in self.ring_fds[1:]:  # (the array of rings keeps them until bpf.cleanup)
                os.close(fd)
            self.ring_fds = self.ring_fds[:1]
            self.bpf.cleanup()


def load_filter(ports: Sequence[int] = (53,), responses: bool = False, max_capture: int = DEFAULT_MAX_CAPTURE,
                loopback_dedup: bool = True, task_meta: Optional[int] = None, debug: bool = False,
                copy_window_ns: int = COPY_WINDOW_NS, page_cnt: Optional[int] = None,
                wakeup_events: int = WAKEUP_EVENTS) -> LoadedFilter:
    """Compile and load dns_filter with these settings.

    Each CPU gets a ring buffer of ``page_cnt`` pages (:func:`ring_pages`, :func:`ring_count`); ``wakeup_events`` > 1:
    no wakeups
    (see WAKEUP_EVENTS). Task helpers are probed first (a tiny program per helper); those the kernel refuses in socket
    filters are compiled out. If the filter still fails to load with task metadata, it is retried
    without, and ``fallback`` says so. ``loopback_dedup`` and ``copy_window_ns`` (0: off) are the keep contract's
    copy rules 5 and 6 (BPF_PROG_TEST_RUN turns them off: its frames all look alike). Raises LiveCaptureError.
    """
    ports = _check_ports(ports)
    if not 64 <= max_capture <= MAX_CAPTURE_LIMIT:
        raise ValueError(f"max_capture must be within 64..{MAX_CAPTURE_LIMIT}, got {max_capture}")
    bcc = import_bcc()
    from dnswatch.doctor import check_privileges  # one definition of "privileged enough"

    privileges = check_privileges()
    if not privileges.ok:  # before compiling: unprivileged, bcc's failure would read like a header problem
        raise LiveCaptureError(f"not permitted to capture ({privileges.detail})", _FIX_PRIV)
    src = filter_source()
    _use_headers()
    missing: Dict[str, str] = {}
    if task_meta is None:
        try:
            task_meta, missing = _sys.probe_task_helpers()
        except OSError as e:
            task_meta, missing = TASK_ALL, {}
            if getattr(e, "errno", None) in (1, 13):  # EPERM, EACCES
                raise LiveCaptureError("not permitted to load eBPF programs", _FIX_PRIV) from None
    fallback = None
    if task_meta != TASK_ALL and missing:
        fallback = "kernel refuses " + ", ".join(sorted(missing)) + " in socket filters"
    pages = ring_pages(page_cnt or default_page_cnt())
    rings = ring_count()
    logs: List[str] = []
    last_err: Optional[Exception] = None
    for mask in ([task_meta, 0] if task_meta else [0]):
        cflags = [
            "-DDNS_PORTS=" + ",".join(str(p) for p in ports),
            f"-DRESPONSES={int(bool(responses))}",
            f"-DMAX_CAPTURE={int(max_capture)}",
            f"-DLOOPBACK_DEDUP={int(bool(loopback_dedup))}",
            f"-DCOPY_WINDOW_NS={max(0, int(copy_window_ns))}",
            f"-DTASK_META={mask}",
            f"-DRING_PAGES={pages}",
            f"-DRINGS={rings}",
            f"-DRING_WAKEUP={int(wakeup_events > 1)}",
            f"-DNR_CPUS={possible_cpus()}",
        ]
        b = None
        try:
            with _capture_stderr(logs):
                b = bcc.BPF(src_file=str(src).encode(), cflags=cflags)
                fn = b.load_func(b"dns_filter", bcc.BPF.SOCKET_FILTER)
        except Exception as e:  # bcc raises bare Exceptions
            last_err = e
            if b is not None:
                b.cleanup()
            if b is None:
                break  # a compile error does not depend on the task helpers
            continue
        if mask != task_meta:
            fallback = f"task metadata compiled out: the filter does not load with it ({last_err})"
            missing = {name: "filter did not load with it" for name, _ in TASK_HELPERS.values()}
        b[b"progs"][ctypes.c_int(0)] = ctypes.c_int(fn.fd)  # the per-netns dispatchers' tail-call target
        ring_fds = _fill_rings(b, rings, pages)
        log = "".join(logs)
        if debug and log.strip():
            sys.stderr.write(log)
        return LoadedFilter(b, fn, ports, bool(responses), int(max_capture), bool(loopback_dedup), mask, missing,
                            fallback, log, pages, max(0, int(copy_window_ns)), ring_fds)

    log = "".join(logs)
    if debug and log.strip():
        sys.stderr.write(log)
    msg = str(last_err)
    if "super-user" in msg or "Operation not permitted" in msg or os.geteuid() != 0 and "Permission denied" in msg:
        raise LiveCaptureError("not permitted to load eBPF programs", _FIX_PRIV, log)
    if "Failed to compile" in msg:
        hdr = headers_dir()
        if not hdr.exists():
            why = "dangling link" if hdr.is_symlink() else "missing"
            raise LiveCaptureError(f"kernel headers not found ({hdr}: {why})", _FIX_BCC, log)
        raise LiveCaptureError("the DNS filter does not compile against these kernel headers"
                               " (--debug shows the compiler output)", _FIX_BCC, log)
    raise LiveCaptureError(f"the kernel refused the DNS filter ({msg}; --debug shows the verifier log)",
                           "use a kernel >= 5.8 with BPF enabled, or report a bug with the --debug output", log)


def _fill_rings(b, rings: int, pages: int) -> List[int]:
    """rings[0] = the filter's own ``events``, rings[1..] = new ring buffers of the same size (their fds, the
    caller's to close), all before any packet can reach the filter (an empty slot would lose its CPU's records)."""
    table = b[b"rings"]
    table[ctypes.c_int(0)] = ctypes.c_int(b[b"events"].map_fd)
    fds: List[int] = []
    try:
        for i in range(1, rings):
            fds.append(_sys.ringbuf_create(pages * mmap.PAGESIZE))
            table[ctypes.c_int(i)] = ctypes.c_int(fds[-1])
    except Exception as e:  # BpfError, or bcc's bare Exception from the update
        for fd in fds:
            os.close(fd)
        b.cleanup()
        raise LiveCaptureError(f"cannot create the ring buffers ({rings} of {pages} pages: {e})",
                               "give the process more locked memory (ulimit -l) or a smaller ring") from None
    return fds


# ---------------------------------------------------------------- sockets and namespaces


class _SockaddrLL(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("protocol", ctypes.c_ushort), ("ifindex", ctypes.c_int),
                ("hatype", ctypes.c_ushort), ("pkttype", ctypes.c_ubyte), ("halen", ctypes.c_ubyte),
                ("addr", ctypes.c_ubyte * 8)]


_libc = ctypes.CDLL(None, use_errno=True)


def _open_tap(prog_fd: int, ifname: Optional[str]) -> socket.socket:
    """AF_PACKET raw socket seeing every packet (of one interface, or all), filtered by prog_fd.

    Created with protocol 0 (nothing delivered) and bound to ETH_P_ALL only once the filter is
    attached, so no unfiltered packet is ever queued. The filter returns 0: the queue stays empty.
    """
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_BPF, prog_fd)
        sll = _SockaddrLL(family=socket.AF_PACKET, protocol=socket.htons(_ETH_P_ALL),
                          ifindex=socket.if_nametoindex(ifname) if ifname else 0)
        if _libc.bind(s.fileno(), ctypes.byref(sll), ctypes.sizeof(sll)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    except BaseException:
        s.close()
        raise
    return s


def _in_netns(path: str, fn: Callable[[], object]) -> object:
    """Run fn in a thread that has joined the network namespace at path (other threads stay put)."""
    result: List[object] = []
    err: List[BaseException] = []

    def body() -> None:
        try:
            with open(path, "rb") as f:
                if _libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({path}): {os.strerror(e)}")
            result.append(fn())
        except BaseException as e:  # re-raised in the caller
            err.append(e)

    t = threading.Thread(target=body, name="dnswatch-netns")
    t.start()
    t.join()
    if err:
        raise err[0]
    return result[0]


def netns_inode(path: str = "/proc/thread-self/ns/net") -> int:
    return os.stat(path).st_ino


def _ifinfo(sock: socket.socket, ifindex: int) -> Optional[Tuple[str, int]]:
    """(name, LINKTYPE_*) of ifindex in the socket's network namespace, via ioctls on it."""
    try:
        req = struct.pack("16si20x", b"", ifindex)
        name = fcntl.ioctl(sock.fileno(), _SIOCGIFNAME, req)[:16].split(b"\0", 1)[0]
        req = struct.pack("16s24x", name)
        hatype = struct.unpack_from("H", fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, req), 16)[0]
    except OSError:
        return None
    return name.decode(errors="replace"), LINKTYPE_ETHERNET if hatype in _ARPHRD_ETHERLIKE else LINKTYPE_RAW


class _NetnsTaps:
    """The sockets of one network namespace and its interface names."""

    def __init__(self, inode: int, path: Optional[str]):
        self.inode = inode
        self.path = path
        self.sockets: List[socket.socket] = []
        self.dispatcher_fd: Optional[int] = None
        self.ifaces: Dict[int, Tuple[Optional[str], int]] = {}
        self._misses: Dict[int, float] = {}
        self.links: Optional[LinkSocket] = None  # rtnetlink in this namespace (enrich.VethPeers)

    def iface(self, ifindex: int) -> Tuple[Optional[str], int]:
        hit = self.ifaces.get(ifindex)
        if hit is not None:
            return hit
        now = time.monotonic()
        if now - self._misses.get(ifindex, -10.0) < 1.0:
            return None, LINKTYPE_ETHERNET
        info = _ifinfo(self.sockets[0], ifindex) if self.sockets else None
        if info is None:
            self._misses[ifindex] = now
            return None, LINKTYPE_ETHERNET
        self.ifaces[ifindex] = info
        return info

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []
        if self.links is not None:
            self.links.close()
        if self.dispatcher_fd is not None:
            os.close(self.dispatcher_fd)
            self.dispatcher_fd = None


# ---------------------------------------------------------------- the source


class LiveCapture:
    """Frames of DNS traffic from the kernel.

    ``interfaces``: names to capture on (None: all interfaces). ``netns``: paths of network
    namespaces to capture in (``/var/run/netns/NAME``, ``/proc/PID/ns/net``); None: only ours. Each
    namespace gets its own sockets and a dispatcher program tagging its packets with the namespace
    inode (``PacketMeta.netns``); all share one loaded filter. A packet seen in several namespaces comes up
    once (the first sighting; keep contract rule 6) unless ``copy_window_ns`` is 0.
    """

    def __init__(self, interfaces: Optional[List[str]] = None, ports: Sequence[int] = (53,), responses: bool = False,
                 max_capture: int = DEFAULT_MAX_CAPTURE, debug: bool = False, netns: Optional[Sequence[str]] = None,
                 page_cnt: Optional[int] = None, wakeup_events: int = WAKEUP_EVENTS,
                 copy_window_ns: int = COPY_WINDOW_NS):
        self.interfaces = list(interfaces) if interfaces else None
        self.ports = _check_ports(ports)
        self.responses = bool(responses)
        if not 64 <= max_capture <= MAX_CAPTURE_LIMIT:
            raise ValueError(f"max_capture must be within 64..{MAX_CAPTURE_LIMIT}, got {max_capture}")
        self.max_capture = int(max_capture)
        self.debug = debug
        self.netns_paths = list(netns) if netns else None
        self.page_cnt = page_cnt or default_page_cnt()
        if self.page_cnt & (self.page_cnt - 1):
            raise ValueError(f"page_cnt must be a power of two, got {page_cnt}")
        self.wakeup_events = max(1, int(wakeup_events))
        self.copy_window_ns = copy_window_ns  # keep contract rule 6 (0: off, every copy comes up)
        self.filter: Optional[LoadedFilter] = None
        self._taps: Dict[int, _NetnsTaps] = {}
        self._own_inode = netns_inode()
        self._held: List[Frame] = []  # read, but younger than the reorder window's mark
        self._released_kt = 0  # kernel time of the last frame handed on
        self.reorder_late = 0  # frames read after a younger one was handed on (0 unless the margin is too short)
        self.reorder_forced = 0  # frames handed on early because the window hit REORDER_MAX_BYTES
        self._framing = Framing(self._lookup_where, self._comm)  # ring records -> frames
        self._where = self._framing.where  # netns << 32 | ifindex -> (inode, name, linktype)
        self._comms = self._framing.comms  # the kernel's task names, decoded
        # called with the sender's pid as each event is read (before the reorder window holds it): what must be
        # looked up while the sender still exists (enrich.ProcessNames.name: /proc/PID/comm) is looked up then
        self.on_task: Optional[Callable[[int], object]] = None
        self.on_process: Optional[Callable[[int], object]] = None  # every sender: its exe etc. read while it exists
        self._ts_offset = 0.0
        self._task_meta = 0

    # -- lifecycle

    def open(self) -> None:
        if self.filter is not None:
            return
        self.filter = load_filter(self.ports, self.responses, self.max_capture, debug=self.debug,
                                  copy_window_ns=self.copy_window_ns, page_cnt=self.page_cnt,
                                  wakeup_events=self.wakeup_events)
        self._task_meta = self.filter.task_meta
        try:
            if self.netns_paths is None:
                taps = _NetnsTaps(self._own_inode, None)
                self._taps[0] = taps  # cb[0] stays 0 without a dispatcher
                self._open_sockets(taps, self.filter.prog_fd)
            else:
                for path in self.netns_paths:
                    self.add_netns(path)
            self._ts_offset = _realtime_offset()
            self.filter.open_events()
        except LiveCaptureError:
            self.close()
            raise
        except PermissionError as e:
            self.close()
            raise LiveCaptureError(f"cannot open raw sockets ({e.strerror})", _FIX_PRIV) from None
        except OSError as e:
            self.close()
            raise LiveCaptureError(f"cannot start capturing ({e})",
                                   "check the interface / namespace names (ip link, ip netns)") from None
        except BaseException:
            self.close()
            raise

    def add_netns(self, path: str) -> Optional[int]:
        """Start capturing in the namespace at ``path`` (its own sockets and dispatcher, the shared filter).
        Returns its inode, or None if it is captured already."""
        assert self.filter is not None, "open() first"
        inode = netns_inode(path)
        if inode in self._taps:
            return None
        taps = _NetnsTaps(inode, path)
        self._taps[inode] = taps
        try:
            taps.dispatcher_fd = _sys.load_dispatcher(self.filter.prog_array_fd, inode)
            if inode == self._own_inode:
                self._open_sockets(taps, taps.dispatcher_fd)
            else:
                _in_netns(path, lambda: self._open_sockets(taps, taps.dispatcher_fd))
        except BaseException:
            self._taps.pop(inode, None)
            taps.close()
            raise
        return inode

    def remove_netns(self, inode: int) -> None:
        """Stop capturing in a namespace (it vanished): our sockets no longer keep it alive."""
        taps = self._taps.pop(inode, None)
        if taps is not None:
            taps.close()
        self._where.clear()

    def netns_inodes(self) -> List[int]:
        return [t.inode for t in self._taps.values()]

    def link_socket(self, inode: int) -> Optional[LinkSocket]:
        """rtnetlink opened in a captured namespace (the other end of a veth: enrich.VethPeers)."""
        taps = self._taps.get(inode) or self._taps.get(0)
        return taps.links if taps is not None and taps.inode == inode else None

    def _open_sockets(self, taps: _NetnsTaps, prog_fd: int) -> None:
        for ifname in self.interfaces or [None]:
            taps.sockets.append(_open_tap(prog_fd, ifname))
        for ifindex, _name in socket.if_nameindex():  # in this thread's namespace
            info = _ifinfo(taps.sockets[0], ifindex)
            if info is not None:
                taps.ifaces[ifindex] = info
        taps.links = LinkSocket()

    def detach(self) -> None:
        """Stop taking packets, at once: every socket is re-bound to protocol 0, so the kernel delivers it nothing
        more (the sockets stay open for interface lookups). Safe to call from a signal handler, also while a
        ring read is running (a read is bounded by what the ring held when it began)."""
        for taps in list(self._taps.values()):
            for s in list(taps.sockets):
                sll = _SockaddrLL(family=socket.AF_PACKET, protocol=0, ifindex=0)
                _libc.bind(s.fileno(), ctypes.byref(sll), ctypes.sizeof(sll))

    def stop(self) -> List[Frame]:
        """End of capture: detach first, so nothing new enters the ring, then return every record the
        kernel had already kept (the caller stores them; :meth:`close` then unloads the filter)."""
        if self.filter is None:
            return []
        self.detach()
        out = self.poll(0)
        # then what the reorder window holds, and a packet the filter was handling on another CPU as its
        # socket was re-bound (written a moment later)
        out += self.drain()
        return out

    def close(self) -> None:
        for taps in self._taps.values():
            taps.close()
        self._taps = {}
        if self.filter is not None:
            self.filter.close()
            self.filter = None

    def __enter__(self) -> "LiveCapture":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- data

    def poll(self, timeout_ms: int) -> List[Frame]:
        """Frames that arrived, in kernel time order, waiting at most timeout_ms for the first (with
        wakeup_events > 1, light traffic is returned when the timeout expires). Call from one thread.

        A frame is handed on once no frame older than it can still be unwritten in the ring (see
        REORDER_MARGIN_NS), so the order does not depend on which CPU wrote first.
        """
        if self.filter is None:
            raise RuntimeError("LiveCapture.poll() before open()")
        self._ts_offset = _realtime_offset()
        deadline = time.monotonic_ns() + max(0, int(timeout_ms)) * 1_000_000
        while True:
            now = time.monotonic_ns()
            if self._held:
                # nothing held goes on before it is REORDER_MARGIN_NS old: sleep till then (and REORDER_BATCH_NS
                # more, so that a busy ring is read in batches rather than a record per wakeup)
                pause = min(self._held[0].meta.ktime_ns + REORDER_MARGIN_NS + REORDER_BATCH_NS - now,
                            REORDER_POLL_MS * 1_000_000, deadline - now)
                if pause > 0:
                    time.sleep(pause * 1e-9)
                mark, frames = self.filter.poll(0, self._read)
            else:
                mark, frames = self.filter.poll(max(0, (deadline - now) // 1_000_000), self._read)
            out = self._release(frames, mark - REORDER_MARGIN_NS)
            if out or not self._held or time.monotonic_ns() >= deadline:
                return out

    def drain(self) -> List[Frame]:
        """Every frame read so far, the reorder window's too (the end of a capture)."""
        frames = self.filter.poll(0, self._read)[1] if self.filter is not None else []
        return self._release(frames, None)

    def _read(self, rings: EventRings) -> List[Frame]:
        """The frames of what the rings hold (``self._framing.ordered``: in kernel time order from the last held on;
        the usual case, as the rings' records come in kernel time order, so sorting is seldom needed)."""
        framing = self._framing
        framing.ts_offset, framing.task_meta = self._ts_offset, self._task_meta
        collecting = gc.isenabled()
        gc.disable()  # as Pipeline.feed_all: two tuples per record and no cycles, so no rescans while they are made
        try:
            return rings.read_frames(framing, self._held[-1].meta.ktime_ns if self._held else 0, self.on_task,
                                     self.on_process)
        finally:
            if collecting:
                gc.enable()

    def _release(self, new: List[Frame], mark: Optional[int]) -> List[Frame]:
        """The frames of a read (``_read``) and those held that are older than ``mark`` (None: all of them), in
        kernel time order; the younger ones are held."""
        held = self._held
        ordered = self._framing.ordered
        if held:
            new = held + new
        if not new:
            return new
        if not ordered:
            new.sort(key=_by_ktime)
        if mark is None:
            cut = len(new)
        else:
            cut = len(new) if new[-1].meta.ktime_ns < mark else bisect.bisect_left(new, mark, key=_by_ktime)
            if cut < len(new) and sum(map(len, map(_frame_data, new[cut:]))) > REORDER_MAX_BYTES:
                size = 0
                for i in range(len(new) - 1, cut - 1, -1):
                    size += len(new[i].data)
                    if size > REORDER_MAX_BYTES:  # the window is full: the oldest go on now
                        self.reorder_forced += i + 1 - cut
                        cut = i + 1
                        break
        if cut == len(new):
            out, self._held = new, []
        else:
            out, self._held = new[:cut], new[cut:]
        if out:
            first = out[0].meta.ktime_ns
            if first < self._released_kt:
                self.reorder_late += sum(1 for f in out if f.meta.ktime_ns < self._released_kt)
            self._released_kt = out[-1].meta.ktime_ns
        return out

    def _comm(self, raw: bytes) -> str:
        """A task name as the kernel gives it (16 bytes, NUL-padded) as text; cached, as few names send DNS."""
        if len(self._comms) >= 4096:
            self._comms.clear()
        text = self._comms[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
        return text

    def _lookup_where(self, netns_tag: int, ifindex: int) -> Tuple[int, Optional[str], int]:
        """(namespace inode, interface name, linktype) of an event's netns tag and ifindex; cached once known."""
        taps = self._taps.get(netns_tag) or self._taps.get(0)
        if taps is None:
            return netns_tag, None, LINKTYPE_ETHERNET
        ifname, linktype = taps.iface(ifindex)
        hit = (taps.inode, ifname, linktype)
        if ifname is not None:
            self._where[netns_tag << 32 | ifindex] = hit
        return hit

    # -- reporting

    def stats(self) -> Dict[str, int]:
        """Counters. The loss is ``emit_failures`` (each record a ring refused, once: the rings keep no count;
        ``emit_refused`` of them while the ring had room). ``kernel_skip_*``: DNS-port packets the keep rule drops,
        by reason. ``kernel_copies``: copies of a kept packet at another capture point the kernel dropped (rule 6:
        stored once, not a loss)."""
        out = {"reorder_late": self.reorder_late, "reorder_forced": self.reorder_forced}
        if self.filter is not None:
            out.update(self.filter.counters())
        else:
            out.update(dict.fromkeys(_COUNTERS, 0))
        return out

    @property
    def task_metadata(self) -> bool:
        """Whether frames can carry pid/comm/uid/cgroup (False on kernels refusing the helpers)."""
        return bool(self._task_meta)

    @property
    def fallback(self) -> Optional[str]:
        return self.filter.fallback if self.filter is not None else None

    @property
    def debug_log(self) -> str:
        return self.filter.log if self.filter is not None else ""

    def describe(self) -> str:
        where = ", ".join(self.interfaces) if self.interfaces else "all interfaces"
        if self.netns_paths is not None:
            n = len(self._taps) or len(self.netns_paths)
            where += f" in {n} network namespace{'s' if n != 1 else ''}"
        ports = ",".join(str(p) for p in self.ports)
        what = "queries and responses" if self.responses else "queries only"
        text = f"{where}, ports {ports}, {what}"
        if self.filter is not None and self.filter.fallback:
            text += " (no process info: " + self.filter.fallback + ")"
        return text


_by_ktime = operator.attrgetter("meta.ktime_ns")  # a frame's kernel time (a C call: the sort's key per frame)
_frame_data = operator.itemgetter(2)  # its bytes


def _realtime_offset() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC (bpf_ktime_get_ns is CLOCK_MONOTONIC), best of three reads."""
    best = None
    for _ in range(3):
        m0 = time.monotonic_ns()
        r = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    return best[1] * 1e-9
