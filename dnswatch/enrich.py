"""From a query's cgroup id (or network namespace) to its container and Kubernetes pod.

No API credentials are needed: a cgroup v2 id is the inode number of the cgroup's folder, the folder's
path names the container (and the pod UID under Kubernetes), and the kubelet's log folders name the pod,
its namespace and the container:

    /var/log/pods/<namespace>_<pod>_<pod uid>/<container>/0.log
    /var/log/containers/<pod>_<namespace>_<container>-<container id>.log

When the kernel could not name the sending task (a packet handled in softirq), the network namespace
stands in: a pod's network namespace belongs to its pod. A query seen only on the node side of a pod's veth
(its namespace not picked up yet) belongs to the pod owning the namespace at the other end of that veth
(``VethPeers``), else to the pod holding its source address (``PodAddresses``). ``pod_via`` records which.

A miss walks /proc, the cgroup tree or the log folders again at most once a second, but at once (up to ten
times a second) for a key no walk has missed yet: the first query of a pod created a moment ago finds it.

Every cache is bounded and expires, and a folder that is gone is looked up again, so a container that
went away never lends its name to a newcomer. What one row got serves the rows of the same sender and capture
point for FRESH seconds (0.1 s, as a process identity read from /proc does).
"""
from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from typing import Callable, Dict, Generic, Iterator, List, NamedTuple, Optional, Tuple, TypeVar

from dnswatch.correlate import (I_CGROUP, I_COMM, I_CONTAINER, I_CONTAINER_ID, I_NETNS, I_PID, I_POD, I_POD_NS,
                                I_POD_UID, I_SRC, I_TID, Row)
from dnswatch.model import Segment, ipv6_text
from dnswatch.netns import PEER_KINDS, LinkSocket
from dnswatch.schema import Q

I_EXE, I_PPID, I_PARENT_COMM, I_POD_VIA = Q["exe"], Q["ppid"], Q["parent_comm"], Q["pod_via"]
PACKET_OUTGOING = 4

CGROUP_MOUNTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")  # hybrid hosts mount v2 at .../unified
CACHE_SIZE = 8192
CACHE_TTL = 30.0
FRESH = 0.1  # seconds a process identity read from /proc serves without reading /proc/PID/stat again
RESCAN_INTERVAL = 1.0  # at most one walk of the cgroup tree per second, however many misses
FIRST_MISS_INTERVAL = 0.1  # ...except for a key no walk missed yet: then at most ten walks a second
LINK_TTL = 2.0  # a veth's peer namespace is asked again after this (a link moved to another namespace)

_ID = r"([0-9a-f]{12,64})"
_UID = r"([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
# (regex, runtime) for the container's own folder; the pod UID is looked for in the whole path
_CONTAINER_PATTERNS = (
    (re.compile(r"(?:^|/)cri-containerd-" + _ID + r"\.scope$"), "containerd"),
    (re.compile(r"(?:^|/)crio-(?:conmon-)?" + _ID + r"\.scope$"), "cri-o"),
    (re.compile(r"(?:^|/)docker-" + _ID + r"\.scope$"), "docker"),
    (re.compile(r"(?:^|/)libpod-(?:conmon-)?" + _ID + r"\.scope(?:/container)?$"), "podman"),
    (re.compile(r"/kubepods(?:/[a-z]+)?/pod" + _UID + r"/" + _ID + r"$"), "kubernetes"),  # cgroupfs driver
    (re.compile(r"^/docker/" + _ID + r"$"), "docker"),
    (re.compile(r"/libpod_parent/libpod-" + _ID + r"$"), "podman"),
)
_POD_UID = re.compile(r"pod" + _UID + r"(?:\.slice)?(?:/|$)")
_CONTAINER_LOG = re.compile(r"^([^_/]+)_([^_/]+)_(.+)-([0-9a-f]{64})\.log$")
_POD_DIR = re.compile(r"^([^_/]+)_([^_/]+)_([0-9a-f-]{36})$")

K = TypeVar("K")
V = TypeVar("V")


class Container(NamedTuple):
    container_id: Optional[str]
    pod_uid: Optional[str]
    runtime: Optional[str]


class Pod(NamedTuple):
    namespace: str
    name: str


class Rescans:
    """When a cache miss may walk its source again: once per RESCAN_INTERVAL; at once (at most every
    FIRST_MISS_INTERVAL) for a key that no walk has missed yet, as it may be new since the last walk; and, given
    ``sent`` (when the packet was sent, CLOCK_MONOTONIC seconds), for such a key whenever the last walk began
    before the packet was sent (what the packet came from may be newer than that walk, so a miss there proves
    nothing). Each key walks that way once before it is missed: callers pass ``sent`` only for keys an outsider
    cannot make up (a veth's namespace id, not a source address)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last = -RESCAN_INTERVAL
        self._last_monotonic = -RESCAN_INTERVAL  # the last walk's start in CLOCK_MONOTONIC (clock may be a test's)
        self._missed: "TTLCache[object, bool]" = TTLCache(size=4096, ttl=CACHE_TTL, clock=clock)

    def due(self, key: object, sent: Optional[float] = None) -> bool:
        since = self.clock() - self.last
        if since >= RESCAN_INTERVAL:
            return True
        if self._missed.get(key) is not None:
            return False
        return since >= FIRST_MISS_INTERVAL or (sent is not None and self._last_monotonic < sent)

    def scanned(self) -> None:
        self.last = self.clock()
        self._last_monotonic = time.monotonic()

    def missed(self, key: object) -> None:
        self._missed.put(key, True)


class TTLCache(Generic[K, V]):
    """LRU with expiry: entries older than ``ttl`` seconds are misses."""

    def __init__(self, size: int = CACHE_SIZE, ttl: float = CACHE_TTL, clock: Callable[[], float] = time.monotonic):
        self.size, self.ttl, self.clock = size, ttl, clock
        self._data: "OrderedDict[K, Tuple[float, V]]" = OrderedDict()

    def get(self, key: K) -> Optional[V]:
        hit = self._data.get(key)
        if hit is None:
            return None
        if self.clock() - hit[0] > self.ttl:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return hit[1]

    def put(self, key: K, value: V) -> None:
        self._data[key] = (self.clock(), value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


def cgroup_root() -> Optional[str]:
    """The cgroup v2 mount point: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones."""
    for path in CGROUP_MOUNTS:
        # cgroup.controllers exists only at a v2 root; otherwise ask the mount table
        if os.path.exists(os.path.join(path, "cgroup.controllers")) or _is_cgroup2(path):
            return path
    return None


def _is_cgroup2(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == path and line.split()[2] == "cgroup2" for line in mounts)
    except OSError:
        return False


def parse_cgroup_path(path: str) -> Container:
    """Container id, pod UID and runtime named by a cgroup path (relative to the cgroup root)."""
    path = path.rstrip("/")
    pod = _POD_UID.search(path)
    pod_uid = pod.group(1).replace("_", "-") if pod else None
    for pattern, runtime in _CONTAINER_PATTERNS:
        m = pattern.search(path)
        if m:
            return Container(m.groups()[-1], pod_uid, runtime)
    return Container(None, pod_uid, None)


class CgroupPaths:
    """cgroup id -> path, by walking the cgroup v2 tree (an id is its folder's inode number)."""

    def __init__(self, root: Optional[str] = None, clock: Callable[[], float] = time.monotonic):
        self.root = root if root is not None else cgroup_root()
        self._paths: Dict[int, str] = {}
        self._rescans = Rescans(clock)

    def path(self, cgroup_id: int) -> Optional[str]:
        if self.root is None:
            return None
        p = self._paths.get(cgroup_id)
        if p is not None:
            if os.path.isdir(self.root + p):
                return p
            del self._paths[cgroup_id]  # gone: never reuse its name
        if not self._rescans.due(cgroup_id):
            return None
        self._rescans.scanned()
        self._paths = dict(self._walk())
        p = self._paths.get(cgroup_id)
        if p is None:
            self._rescans.missed(cgroup_id)
        return p

    def _walk(self) -> Iterator[Tuple[int, str]]:
        root = self.root
        assert root is not None
        for dirpath, _dirs, _files in os.walk(root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            yield ino, dirpath[len(root):] or "/"


class KubeletLogs:
    """Pod and container names from the kubelet's log folders under ``log_dir`` (default /var/log)."""

    def __init__(self, log_dir: str = "/var/log", clock: Callable[[], float] = time.monotonic):
        self.log_dir = log_dir
        self._containers: Dict[str, Tuple[Pod, str]] = {}  # container id -> (pod, container name)
        self._pods: Dict[str, Pod] = {}  # pod uid -> pod
        self._rescans = Rescans(clock)

    def _scan(self, key: str) -> bool:
        if not self._rescans.due(key):
            return False
        self._rescans.scanned()
        containers: Dict[str, Tuple[Pod, str]] = {}
        pods: Dict[str, Pod] = {}
        try:
            for name in os.listdir(os.path.join(self.log_dir, "containers")):
                m = _CONTAINER_LOG.match(name)
                if m:
                    containers[m.group(4)] = (Pod(m.group(2), m.group(1)), m.group(3))
        except OSError:
            pass
        try:
            for name in os.listdir(os.path.join(self.log_dir, "pods")):
                m = _POD_DIR.match(name)
                if m:
                    pods[m.group(3)] = Pod(m.group(1), m.group(2))
        except OSError:
            pass
        self._containers, self._pods = containers, pods
        return True

    def container(self, container_id: str) -> Optional[Tuple[Pod, str]]:
        hit = self._lookup_container(container_id)
        if hit is None and self._scan(container_id):
            hit = self._lookup_container(container_id)
            if hit is None:
                self._rescans.missed(container_id)
        return hit

    def _lookup_container(self, container_id: str) -> Optional[Tuple[Pod, str]]:
        hit = self._containers.get(container_id)
        if hit is None and len(container_id) < 64:  # a short id (cgroupfs layouts, tests): unique prefix
            matches = [v for k, v in self._containers.items() if k.startswith(container_id)]
            hit = matches[0] if len(matches) == 1 else None
        return hit

    def pod(self, pod_uid: str) -> Optional[Pod]:
        hit = self._pods.get(pod_uid)
        if hit is None and self._scan(pod_uid):
            hit = self._pods.get(pod_uid)
            if hit is None:
                self._rescans.missed(pod_uid)
        return hit


class NetnsOwners:
    """Network namespace inode -> a cgroup path of a process living in it (for packets seen in softirq).

    Namespace inodes are reused once a namespace is gone, so every hit is checked again: the process we
    learned it from must still live in that namespace.
    """

    def __init__(self, proc: str = "/proc", clock: Callable[[], float] = time.monotonic):
        self.proc = proc
        self._owners: Dict[int, Tuple[str, str]] = {}  # netns inode -> (pid, cgroup path)
        self.rescans = Rescans(clock)

    def cgroup_path(self, netns: int) -> Optional[str]:
        hit = self._owner(netns)
        if hit is None and self.rescans.due(netns):
            self.rescan()
            hit = self._owners.get(netns)
            if hit is None:
                self.rescans.missed(netns)
        return hit[1] if hit is not None else None

    def _owner(self, netns: int) -> Optional[Tuple[str, str]]:
        hit = self._owners.get(netns)
        if hit is not None and self._netns_of(hit[0]) != netns:
            del self._owners[netns]
            hit = None
        return hit

    def pid(self, netns: int) -> Optional[int]:
        """The process we know lives in namespace ``netns`` (checked again), without walking /proc."""
        hit = self._owner(netns)
        return int(hit[0]) if hit is not None else None

    def pids(self) -> List[Tuple[int, int]]:
        """(netns inode, pid) of every pod or container namespace found by the last walk."""
        return [(ino, int(pid)) for ino, (pid, _path) in self._owners.items()]

    def rescan(self) -> None:
        self.rescans.scanned()
        self._owners = self._scan()

    def _netns_of(self, pid: str) -> Optional[int]:
        try:
            return os.stat(f"{self.proc}/{pid}/ns/net").st_ino
        except OSError:
            return None

    def _scan(self) -> Dict[int, Tuple[str, str]]:
        owners: Dict[int, Tuple[str, str]] = {}
        try:
            pids = [p for p in os.listdir(self.proc) if p.isdigit()]
        except OSError:
            return owners
        for pid in pids:
            ino = self._netns_of(pid)
            if ino is None or ino in owners:
                continue
            try:
                with open(f"{self.proc}/{pid}/cgroup") as f:
                    for line in f:
                        if line.startswith("0::"):
                            path = line[3:].strip()
                            c = parse_cgroup_path(path)
                            if c.pod_uid or c.container_id:
                                owners[ino] = (pid, path)
                            break
            except OSError:
                continue
        return owners


class PodAddresses:
    """Address -> network namespace of the pod holding it (for packets seen only on the node side of a pod's veth,
    and for the server pod behind a NAT address). Pod addresses are unique on a node; each pod namespace's local
    addresses are read from /proc/PID/net (fib_trie, if_inet6) of a process living in it (NetnsOwners)."""

    def __init__(self, owners: NetnsOwners, clock: Callable[[], float] = time.monotonic):
        self.owners = owners
        self._netns: Dict[str, int] = {}
        self._rescans = Rescans(clock)

    def netns(self, address: str) -> Optional[int]:
        hit = self._netns.get(address)
        if hit is None or self.owners.pid(hit) is None:
            if not self._rescans.due(address):
                return None
            self._rescans.scanned()
            if self.owners.rescans.due(address):
                self.owners.rescan()
            self._netns = self._scan()
            hit = self._netns.get(address)
            if hit is None:
                self._rescans.missed(address)
        return hit

    def _scan(self) -> Dict[str, int]:
        found: Dict[str, int] = {}
        for ino, (pid, _path) in list(self.owners._owners.items()):
            for address in _local_addresses(f"{self.owners.proc}/{pid}/net"):
                found.setdefault(address, ino)
        return found


class VethPeers:
    """(capture namespace, ifindex) -> the pod namespace at the other end of that veth, for a query seen only on
    the node side of a pod's veth before its namespace was picked up.

    rtnetlink in the capture namespace (``link_socket(inode)``: the live capture keeps one per namespace it
    captures in; sysfs would show the namespace that mounted it, not the one asked about) gives the link's kind
    and IFLA_LINK_NETNSID, the capture namespace's id for the peer's namespace. Ids map to inodes by asking the id
    of each pod namespace's process (RTM_GETNSID by pid): an id is freed with its namespace and may be given to
    a new one, so a known id is checked against its process on every use.
    """

    def __init__(self, owners: NetnsOwners, clock: Callable[[], float] = time.monotonic):
        self.owners = owners
        self.link_socket: Optional[Callable[[int], Optional[LinkSocket]]] = None  # set by the live capture's user
        self._links: TTLCache[Tuple[int, int], int] = TTLCache(size=CACHE_SIZE, ttl=LINK_TTL, clock=clock)
        self._ids: TTLCache[int, Dict[int, int]] = TTLCache(size=1024, ttl=CACHE_TTL, clock=clock)
        self._rescans = Rescans(clock)

    def peer(self, netns: int, ifindex: int, sent: Optional[float] = None) -> Optional[int]:
        """The inode of the pod namespace at the other end; 0 when the link is a veth whose other end holds no
        pod that we know of; None when it is no veth to another namespace (or the namespace cannot be asked).
        ``sent``: when the packet was sent (CLOCK_MONOTONIC seconds; see Rescans.due)."""
        sock = self.link_socket(netns) if self.link_socket is not None else None
        if sock is None:
            return None
        key = (netns, ifindex)
        nsid = self._links.get(key)
        if nsid is None:
            link = sock.link(ifindex)
            ok = link is not None and link.kind in PEER_KINDS and link.peer_nsid is not None
            nsid = link.peer_nsid if ok else -1  # type: ignore[union-attr]
            self._links.put(key, nsid)
        return self._namespace(netns, sock, nsid, sent) if nsid >= 0 else None

    def _namespace(self, netns: int, sock: LinkSocket, nsid: int, sent: Optional[float]) -> int:
        ids = self._ids.get(netns) or {}
        inode = ids.get(nsid)
        if inode is not None:
            pid = self.owners.pid(inode)
            if pid is not None and sock.nsid_of_pid(pid) == nsid:
                return inode
        key = (netns, nsid)
        if not self._rescans.due(key, sent):
            return 0
        self._rescans.scanned()
        if self.owners.rescans.due(key, sent):
            self.owners.rescan()
        ids = {}
        for inode, pid in self.owners.pids():
            got = sock.nsid_of_pid(pid)
            if got is not None:
                ids[got] = inode
        self._ids.put(netns, ids)
        if nsid not in ids:
            self._rescans.missed(key)
        return ids.get(nsid, 0)


def _local_addresses(net: str) -> Iterator[str]:
    try:
        with open(f"{net}/fib_trie") as f:
            last = None
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text == "/32 host LOCAL" and last is not None and not last.startswith("127."):
                    yield last
    except OSError:
        pass
    try:
        with open(f"{net}/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[5] != "lo" and not fields[0].startswith("fe80"):
                    yield ipv6_text(bytes.fromhex(fields[0]))
    except (OSError, ValueError):
        pass


class ProcessNames:
    """pid -> the process's command name. The kernel only knows the sending thread's name; the process's
    is read from /proc while the sender is (almost always) still waiting for its answer."""

    def __init__(self, proc: str = "/proc", clock: Callable[[], float] = time.monotonic):
        self.proc = proc
        self._names: TTLCache[int, str] = TTLCache(size=4096, ttl=2.0, clock=clock)  # short: pids are reused

    def name(self, pid: int) -> Optional[str]:
        hit = self._names.get(pid)
        if hit is None:
            try:
                with open(f"{self.proc}/{pid}/comm") as f:
                    hit = f.read().rstrip("\n")
            except OSError:
                return None
            self._names.put(pid, hit)
        return hit


class ProcessContext(NamedTuple):
    exe: Optional[str]
    ppid: Optional[int]
    parent_comm: Optional[str]


class ProcessContexts:
    """pid -> executable path, parent pid and parent's command name, read once per process.

    Cached by (pid, start time): /proc/PID/stat is read again once the pid's identity is more than FRESH seconds
    old, because a pid reused by a new process must not inherit the old one's identity (reuse within FRESH would
    take the kernel's whole pid space in that time); within FRESH the identity just read serves every row of that
    pid (a client sending 40k queries a second must not cost 40k reads of /proc). The rest (readlink of exe, the
    parent's comm) is read once per process.

    Live, ``seen`` is called when the kernel's event is read, while the sender surely exists (getent, curl and the
    like exit as soon as they have their answer, before the row is built): what it reads is the pid's latest
    identity, used when the process is gone by the time ``context`` asks."""

    def __init__(self, proc: str = "/proc", size: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.proc = proc
        self.size = size
        self.clock = clock
        self._cache: "OrderedDict[Tuple[int, int], ProcessContext]" = OrderedDict()
        self._latest: "OrderedDict[int, Tuple[float, ProcessContext]]" = OrderedDict()  # pid -> (read at, identity)

    def seen(self, pid: int) -> None:
        """A packet from ``pid`` was just read: learn its identity now unless it was learnt in the last FRESH s."""
        self.context(pid)

    def start(self, pid: int) -> Optional[Tuple[int, int]]:
        """(ppid, start time in clock ticks since boot) of ``pid``, or None if it is gone."""
        try:
            with open(f"{self.proc}/{pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()  # comm may hold spaces and parentheses
            return int(fields[1]), int(fields[19])
        except (OSError, ValueError, IndexError):
            return None

    def context(self, pid: int) -> Optional[ProcessContext]:
        latest = self._latest.get(pid)
        if latest is not None and self.clock() - latest[0] <= FRESH:
            return latest[1]
        started = self.start(pid)
        if started is None:  # gone: what it was when its packet was read, if that was recent
            return latest[1] if latest is not None and self.clock() - latest[0] <= CACHE_TTL else None
        ppid, start = started
        key = (pid, start)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self._remember(pid, hit)
            return hit
        try:
            exe: Optional[str] = os.readlink(f"{self.proc}/{pid}/exe")
        except OSError:
            exe = None  # kernel threads, or not allowed to look
        try:
            with open(f"{self.proc}/{ppid}/comm") as f:
                parent_comm: Optional[str] = f.read().rstrip("\n")
        except OSError:
            parent_comm = None
        hit = ProcessContext(exe, ppid, parent_comm)
        if self.start(pid) != started:  # the process changed while we read it (exec or exit and reuse)
            return hit
        self._cache[key] = hit
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        self._remember(pid, hit)
        return hit

    def _remember(self, pid: int, hit: ProcessContext) -> None:
        self._latest[pid] = (self.clock(), hit)
        self._latest.move_to_end(pid)
        while len(self._latest) > self.size:
            self._latest.popitem(last=False)


class Enricher:
    """Fills comm (the process's name), container_id, container, pod, pod_namespace, pod_uid and pod_via of a
    row (called by the correlator when a query is first seen)."""

    def __init__(self, k8s_log_dir: str = "/var/log", cgroup_root_dir: Optional[str] = None,
                 proc: str = "/proc", clock: Callable[[], float] = time.monotonic):
        self.cgroups = CgroupPaths(cgroup_root_dir, clock)
        self.kubelet = KubeletLogs(k8s_log_dir, clock)
        self.netns_owners = NetnsOwners(proc, clock)
        self.process_names = ProcessNames(proc, clock)
        self.processes = ProcessContexts(proc, clock=clock)
        self.pod_addresses = PodAddresses(self.netns_owners, clock)
        self.veth_peers = VethPeers(self.netns_owners, clock)  # its link_socket is the live capture's
        self._by_cgroup: TTLCache[int, Tuple] = TTLCache(clock=clock)  # cgroup ids are never reused
        self._recent: Dict[tuple, tuple] = {}  # a row's sender columns -> (when, what _decide gave them)
        self.clock = clock

    def __call__(self, row: Row, seg: Optional[Segment] = None) -> None:
        # What a row gets depends only on these columns and its capture point: rows that share them within FRESH
        # get what the first of them got (at 40k queries/s most rows repeat a recent sender: one dict lookup
        # instead of the process, cgroup, namespace and veth lookups and their rescan checks)
        meta = seg.meta if seg is not None else None
        key = (row[I_PID], row[I_TID], row[I_CGROUP], row[I_NETNS], row[I_SRC],
               None if meta is None else (meta.pkt_type, meta.netns, meta.ifindex))
        now = self.clock()
        hit = self._recent.get(key)
        if hit is None or now - hit[0] > FRESH:
            hit = self._recent[key] = (now, *self._decide(row, meta))
            if len(self._recent) > CACHE_SIZE:
                self._recent.clear()
                self._recent[key] = hit
        _t, name, ctx, info, via = hit
        if name is not None:
            row[I_COMM] = name
        if ctx is not None:
            row[I_EXE], row[I_PPID], row[I_PARENT_COMM] = ctx
        if info is not None:
            (row[I_CONTAINER_ID], row[I_CONTAINER], row[I_POD_UID], row[I_POD_NS], row[I_POD]) = info
            row[I_POD_VIA] = via

    def _decide(self, row: Row, meta) -> Tuple[Optional[str], Optional[ProcessContext], Optional[Tuple], Optional[str]]:
        """(process name, process context, container and pod columns, pod_via) for a row of this sender."""
        name = ctx = None
        pid = row[I_PID]
        if pid is not None and pid != row[I_TID]:  # sent by a thread: name the process, as ps does
            name = self.process_names.name(pid)
        if pid is not None:
            ctx = self.processes.context(pid)
        cgroup_id = row[I_CGROUP]
        info = None
        via = "cgroup"
        if cgroup_id:
            info = self._by_cgroup.get(cgroup_id)
            if info is None:
                path = self.cgroups.path(cgroup_id)
                info = self._describe(path) if path is not None else None
                if info is not None:
                    self._by_cgroup.put(cgroup_id, info)
        no_container = info is None or (info[0] is None and info[2] is None)  # neither container id nor pod
        if no_container and row[I_NETNS]:
            info, via = self._by_netns(row[I_NETNS]), "netns"
        if info is None or info[4] is None:
            # seen only on the node side of a pod's veth (its namespace not picked up yet): the pod at the other
            # end of the veth it came in on; the link decides, so a namespace holding no pod lends no address's pod
            peer = self._peer(meta) if meta is not None else None
            if peer is not None:
                found, how = (self._by_netns(peer) if peer else None), "veth"
            else:
                found, how = (self._by_address(row[I_SRC]) if row[I_SRC] else None), "address"
            if found is not None:
                info, via = found, how
        if info is None:
            return name, ctx, None, None
        return name, ctx, info, via if info[0] is not None or info[2] is not None else None

    def _peer(self, meta) -> Optional[int]:
        """The namespace at the other end of the veth a query came in on (not one it left by: the node's own
        queries to a pod go out on that pod's veth)."""
        if meta.pkt_type == PACKET_OUTGOING or not meta.netns:
            return None
        return self.veth_peers.peer(meta.netns, meta.ifindex, meta.ktime_ns * 1e-9 if meta.ktime_ns else None)

    def _by_netns(self, netns: int) -> Optional[Tuple]:
        path = self.netns_owners.cgroup_path(netns)
        return self._describe(path) if path is not None else None

    def _by_address(self, address: str) -> Optional[Tuple]:
        netns = self.pod_addresses.netns(address)
        return self._by_netns(netns) if netns is not None else None

    def server_pod(self, address: str) -> Tuple[Optional[str], Optional[str]]:
        """(pod, namespace) holding ``address`` (a NAT copy's destination), for the lookups stage."""
        info = self._by_address(address)
        return (info[4], info[3]) if info is not None else (None, None)

    def _describe(self, path: str) -> Tuple[Optional[str], Optional[str], Optional[str], Optional[str], Optional[str]]:
        c = parse_cgroup_path(path)
        container_name = pod_ns = pod_name = None
        if c.container_id:
            hit = self.kubelet.container(c.container_id)
            if hit is not None:
                (pod_ns, pod_name), container_name = hit
        if pod_name is None and c.pod_uid:
            pod = self.kubelet.pod(c.pod_uid)
            if pod is not None:
                pod_ns, pod_name = pod
        return c.container_id, container_name, c.pod_uid, pod_ns, pod_name
