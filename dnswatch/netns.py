"""Network namespaces to capture in: resolving ``--netns`` and discovering every namespace (``--all-netns``).

A namespace is named by a path that can be opened for ``setns``: a bind mount made by ``ip netns add``
(``/var/run/netns/NAME``) or a process's ``/proc/PID/ns/net``. Kubernetes pods' namespaces are found
through their processes (hostPID gives us every process on the node).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional

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
