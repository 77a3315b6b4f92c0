"""Network namespaces to capture in: resolving ``--netns`` and discovering every namespace (``--all-netns``).

A namespace is named by a path that can be opened for ``setns``: a bind mount made by ``ip netns add``
(``/var/run/netns/NAME``) or a process's ``/proc/PID/ns/net``. Kubernetes pods' namespaces are found
through their processes (hostPID gives us every process on the node).

``LinkSocket`` asks rtnetlink about the links of one namespace: which namespace the other end of a veth is
in (for a query seen only on the node side of a pod's veth).
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Dict, Iterable, List, NamedTuple, Optional

NETNS_RUN_DIRS = ("/var/run/netns", "/run/netns")


class NetnsError(ValueError):
    """A --netns value that names no namespace."""


def resolve(spec: str, proc: str = "/proc") -> str:
    """A path for ``spec``: a path as is, a pid (-> /proc/PID/ns/net), or a name from ``ip netns``."""
    if spec.isdigit():
        path = f"{proc}/{spec}/ns/net"
        if not os.path.exists(path):
            raise NetnsError(f"--netns {spec}: no process {spec} (or no permission to see its namespace)")
        return path
    if "/" in spec:
        if not os.path.exists(spec):
            raise NetnsError(f"--netns {spec}: no such file; give /var/run/netns/NAME, /proc/PID/ns/net, a name or a pid")
        return spec
    for directory in NETNS_RUN_DIRS:
        path = os.path.join(directory, spec)
        if os.path.exists(path):
            return path
    raise NetnsError(f"--netns {spec}: no namespace of that name in {NETNS_RUN_DIRS[0]} (see `ip netns list`)")


def inode(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def discover(proc: str = "/proc", run_dirs: Iterable[str] = NETNS_RUN_DIRS) -> Dict[int, str]:
    """Every network namespace in use: inode -> a path to open it by. Named namespaces (ip netns) first,
    then one process per remaining namespace."""
    found: Dict[int, str] = {}
    for directory in run_dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            ino = inode(path)
            if ino is not None and ino not in found and _is_nsfs(path):
                found[ino] = path
    try:
        pids: List[str] = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        path = f"{proc}/{pid}/ns/net"
        ino = inode(path)
        if ino is not None and ino not in found:
            found[ino] = path
    return found


def _is_nsfs(path: str) -> bool:
    """A file under /var/run/netns that is really a namespace bind mount (an empty file when its mount is gone)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


# ---------------------------------------------------------------- rtnetlink (linux/rtnetlink.h, if_link.h)

_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWNSID, _RTM_GETNSID = 16, 18, 88, 90
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_IFLA_LINK, _IFLA_LINKINFO, _IFLA_LINK_NETNSID, _IFLA_INFO_KIND = 5, 18, 37, 1
_NETNSA_NSID, _NETNSA_PID = 1, 2
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
PEER_KINDS = ("veth", "netkit")  # links whose other end is a device in another namespace (a pod's eth0)


class Link(NamedTuple):
    kind: Optional[str]  # IFLA_INFO_KIND: "veth", "bridge"...; None for a plain device
    peer_ifindex: Optional[int]  # IFLA_LINK: the other end's ifindex (in its own namespace)
    peer_nsid: Optional[int]  # IFLA_LINK_NETNSID: the other end's namespace, by this namespace's id for it


def _attrs(data: bytes, offset: int = 0) -> Dict[int, bytes]:
    out: Dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out.setdefault(kind & _NLA_TYPE_MASK, data[offset + 4:offset + length])
        offset += (length + 3) & ~3
    return out


def parse_link(body: bytes) -> Link:
    """A Link from an RTM_NEWLINK message body (after the netlink header)."""
    attrs = _attrs(body, _IFINFOMSG.size)
    kind = _attrs(attrs.get(_IFLA_LINKINFO, b"")).get(_IFLA_INFO_KIND)
    peer = attrs.get(_IFLA_LINK)
    nsid = attrs.get(_IFLA_LINK_NETNSID)
    return Link(kind.rstrip(b"\0").decode(errors="replace") if kind is not None else None,
                struct.unpack("=I", peer[:4])[0] if peer is not None and len(peer) >= 4 else None,
                struct.unpack("=i", nsid[:4])[0] if nsid is not None and len(nsid) >= 4 else None)


class LinkSocket:
    """rtnetlink requests about the namespace this socket was opened in (a socket stays in the namespace it was
    created in, whichever thread uses it later: open it in a thread that joined the namespace)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)  # NETLINK_ROUTE
        self.sock.settimeout(1.0)  # answers are immediate; never hang the pipeline on one
        self.sock.bind((0, 0))
        self._seq = 0

    def link(self, ifindex: int) -> Optional[Link]:
        """The link ``ifindex`` of this namespace, or None if there is none (it went away)."""
        body = self._ask(_RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0), _RTM_NEWLINK)
        return parse_link(body) if body is not None else None

    def nsid_of_pid(self, pid: int) -> Optional[int]:
        """This namespace's id for the network namespace of process ``pid`` (None: none assigned, or no such
        process). Only namespaces linked to this one (a veth between them) have an id; asking assigns none."""
        attr = struct.pack("=HHI", 8, _NETNSA_PID, pid)
        body = self._ask(_RTM_GETNSID, b"\0\0\0\0" + attr, _RTM_NEWNSID)  # rtgenmsg, padded to 4
        nsid = _attrs(body, 4).get(_NETNSA_NSID) if body is not None else None
        value = struct.unpack("=i", nsid[:4])[0] if nsid is not None and len(nsid) >= 4 else -1
        return value if value >= 0 else None

    def _ask(self, kind: int, payload: bytes, answer: int) -> Optional[bytes]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        try:
            self.sock.send(_NLMSG.pack(_NLMSG.size + len(payload), kind, _NLM_F_REQUEST, seq, 0) + payload)
            for _ in range(16):  # skip late answers to requests that timed out
                data = self.sock.recv(65536)
                if len(data) < _NLMSG.size:
                    return None
                length, got, _flags, got_seq, _pid = _NLMSG.unpack_from(data)
                if got_seq != seq:
                    continue
                return data[_NLMSG.size:length] if got == answer else None  # NLMSG_ERROR: no such link or pid
        except OSError:  # timeout, or the namespace's socket was closed
            return None
        return None

    def close(self) -> None:
        self.sock.close()
