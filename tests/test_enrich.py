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
