"""cgroup paths of the usual runtimes and drivers, and kubelet log folders, to container and pod."""
from __future__ import annotations

import os

import pytest

from dnswatch.correlate import I_CGROUP, I_CONTAINER, I_CONTAINER_ID, I_NETNS, I_POD, I_POD_NS, I_POD_UID
from dnswatch.enrich import Enricher, KubeletLogs, TTLCache, parse_cgroup_path
from dnswatch.schema import QUERY_COLUMNS

CID = "0123456789abcdef" * 4
UID = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9"


@pytest.mark.parametrize("path, expected", [
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{CID}.scope", (CID, UID, "containerd")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
     f"crio-{CID}.scope", (CID, UID, "cri-o")),
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/docker-{CID}.scope", (CID, UID, "docker")),
    (f"/kubepods/burstable/pod{UID}/{CID}", (CID, UID, "kubernetes")),
    (f"/kubepods/pod{UID}/{CID}", (CID, UID, "kubernetes")),
    (f"/system.slice/docker-{CID}.scope", (CID, None, "docker")),
    (f"/docker/{CID}", (CID, None, "docker")),
    (f"/machine.slice/libpod-{CID}.scope/container", (CID, None, "podman")),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", (CID, None, "podman")),
    ("/system.slice/ssh.service", (None, None, None)),
    ("/", (None, None, None)),
])
def test_parse_cgroup_path(path, expected):
    assert tuple(parse_cgroup_path(path)) == expected


def _kubelet_tree(root, pod="web-7d9c", ns="shop", container="nginx", cid=CID, uid=UID):
    (root / "containers").mkdir(parents=True, exist_ok=True)
    pod_dir = root / "pods" / f"{ns}_{pod}_{uid}" / container
    pod_dir.mkdir(parents=True, exist_ok=True)
    (pod_dir / "0.log").write_text("")
    link = root / "containers" / f"{pod}_{ns}_{container}-{cid}.log"
    link.symlink_to(pod_dir / "0.log")


def test_kubelet_logs(tmp_path):
    _kubelet_tree(tmp_path)
    logs = KubeletLogs(str(tmp_path), clock=iter(range(0, 10**6, 10)).__next__)
    (pod, container) = logs.container(CID)
    assert (pod.namespace, pod.name, container) == ("shop", "web-7d9c", "nginx")
    assert logs.pod(UID) == ("shop", "web-7d9c")
    assert logs.container("f" * 64) is None


def test_enricher_from_cgroup(tmp_path):
    cgroot = tmp_path / "cg"
    scope = cgroot / "kubepods.slice" / f"kubepods-pod{UID.replace('-', '_')}.slice" / f"cri-containerd-{CID}.scope"
    scope.mkdir(parents=True)
    _kubelet_tree(tmp_path / "log")
    enrich = Enricher(k8s_log_dir=str(tmp_path / "log"), cgroup_root_dir=str(cgroot), proc=str(tmp_path / "noproc"))
    row = [None] * len(QUERY_COLUMNS)
    row[I_CGROUP] = os.stat(scope).st_ino
    enrich(row)
    assert (row[I_CONTAINER_ID], row[I_CONTAINER], row[I_POD_UID], row[I_POD_NS], row[I_POD]) == (
        CID, "nginx", UID, "shop", "web-7d9c")
    # host process: nothing filled
    host = [None] * len(QUERY_COLUMNS)
    host[I_CGROUP] = os.stat(cgroot).st_ino
    host[I_NETNS] = 4026531840
    enrich(host)
    assert host[I_POD] is None and host[I_CONTAINER_ID] is None


def test_ttl_cache_bounds_and_expiry():
    now = [0.0]
    cache: TTLCache[int, str] = TTLCache(size=2, ttl=5, clock=lambda: now[0])
    cache.put(1, "a")
    cache.put(2, "b")
    cache.put(3, "c")
    assert cache.get(1) is None and cache.get(3) == "c"
    now[0] = 6
    assert cache.get(3) is None


def _fake_process(proc, pid: int, start: int, exe: str, ppid: int, comm: str = "x (y) z") -> None:
    d = proc / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    # comm may hold spaces and parentheses: fields are counted after the last ')'
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 " + "0 " * 12 + f"{start} 0 0\n")
    link = d / "exe"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(exe)


def test_reused_pid_does_not_carry_the_old_executable(tmp_path):
    from dnswatch.enrich import FRESH, ProcessContexts

    proc = tmp_path / "proc"
    _fake_process(proc, 1, 1, "/sbin/init", 0, "systemd")
    (proc / "1" / "comm").write_text("systemd\n")
    _fake_process(proc, 7, 1, "/usr/sbin/containerd-shim", 1)
    (proc / "7" / "comm").write_text("containerd-shim\n")
    _fake_process(proc, 4242, 5000, "/usr/bin/curl", 1)
    now = [0.0]
    contexts = ProcessContexts(str(proc), clock=lambda: now[0])
    assert contexts.context(4242) == ("/usr/bin/curl", 1, "systemd")
    # curl exits, pid 4242 goes to a new process (another start time) with another parent
    _fake_process(proc, 4242, 9000, "/usr/bin/wget", 7)
    assert contexts.context(4242) == ("/usr/bin/curl", 1, "systemd")  # within FRESH: the identity just read
    now[0] += FRESH + 0.01
    assert contexts.context(4242) == ("/usr/bin/wget", 7, "containerd-shim")
    # and the cache is by (pid, start time): the same process again is not read again
    (proc / "7" / "comm").write_text("renamed\n")
    now[0] += FRESH + 0.01
    assert contexts.context(4242).parent_comm == "containerd-shim"
    now[0] += FRESH + 0.01
    import shutil
    shutil.rmtree(proc / "4242")
    assert contexts.context(4242) == ("/usr/bin/wget", 7, "containerd-shim")  # gone: its last identity, not curl's


def test_process_context_of_a_real_process():
    import os
    import sys

    from dnswatch.enrich import ProcessContexts

    ctx = ProcessContexts().context(os.getpid())
    assert ctx.exe == os.path.realpath(sys.executable) or os.path.basename(ctx.exe).startswith("python")
    assert ctx.ppid == os.getppid()
    with open(f"/proc/{os.getppid()}/comm") as f:
        assert ctx.parent_comm == f.read().strip()
