"""Pods built the way a node builds them, with real kernel objects, watched with `dnswatch watch --all-netns`.

A "node" namespace N runs unbound on 198.18.9.53. Each pod is a network namespace with a veth to N, a
cgroup v2 folder named like the kubelet's (systemd or cgroupfs driver), and kubelet-style log folders under
--k8s-log-dir. Clients (dig, getent, python) start inside both the pod's cgroup and its namespace.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from netlab import ROOT, Lab, Watch, require_privileges, sh
from dnswatch.enrich import cgroup_root

pytestmark = pytest.mark.privileged

SERVER = "198.18.9.53"
PY_COMM = Path(sys.executable).name[:15]


class Node:
    def __init__(self, lab: Lab, logs: Path):
        self.lab = lab
        self.logs = logs
        self.node = lab.netns("N")
        lab.run(self.node, "ip", "addr", "add", f"{SERVER}/32", "dev", "lo")
        lab.unbound(self.node, [SERVER])
        root = cgroup_root()
        assert root, "no cgroup v2 mount"
        self.cgroup_base = Path(root) / f"{lab.tag}-node"
        self.cgroup_base.mkdir()
        lab.cgroups.append(self.cgroup_base)
        self.subnet = 10

    def pod(self, name: str, namespace: str, container: str, layout: str) -> dict:
        self.subnet += 1
        uid = str(uuid.uuid4())
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        ns = self.lab.netns(f"p{self.subnet}")
        link = self.lab.link(self.node, ns, self.subnet)
        self.lab.run(ns, "ip", "route", "add", "default", "via", link["a4"])
        self.lab.resolv_conf(ns, SERVER)
        if layout == "systemd":
            parts = ["kubepods.slice", "kubepods-burstable.slice",
                     f"kubepods-burstable-pod{uid.replace('-', '_')}.slice", f"cri-containerd-{cid}.scope"]
        else:  # cgroupfs driver
            parts = ["kubepods", "besteffort", f"pod{uid}", cid]
        cg = self.cgroup_base
        for part in parts:
            cg = cg / part
            if not cg.exists():
                cg.mkdir()
                self.lab.cgroups.append(cg)
        pod_dir = self.logs / "pods" / f"{namespace}_{name}_{uid}" / container
        pod_dir.mkdir(parents=True)
        (pod_dir / "0.log").write_text("")
        (self.logs / "containers").mkdir(exist_ok=True)
        (self.logs / "containers" / f"{name}_{namespace}_{container}-{cid}.log").symlink_to(pod_dir / "0.log")
        return {"name": name, "namespace": namespace, "container": container, "uid": uid, "cid": cid, "netns": ns,
                "cgroup": cg, "ip": link["b4"], "netns_inode": os.stat(f"/var/run/netns/{ns}").st_ino}

    def delete(self, pod: dict) -> None:
        self.lab.delete_netns(pod["netns"])
        for link in (self.logs / "containers").glob(f"{pod['name']}_*"):
            link.unlink()
        for d in sorted(self.logs.glob(f"pods/{pod['namespace']}_{pod['name']}_*/**/*"), reverse=True):
            d.unlink() if d.is_file() else d.rmdir()

    def pause(self, pod: dict) -> None:
        """The pod's sandbox process (the kubelet's pause container): in its cgroup and namespace until the end."""
        script = f'echo $$ > {pod["cgroup"]}/cgroup.procs && exec ip netns exec {pod["netns"]} sleep 120'
        proc = self.lab.spawn(None, "sh", "-c", script)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == pod["netns_inode"]:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("the pause process never entered the pod's namespace")

    def run_in(self, pod: dict, *cmd: str) -> tuple:
        """Start cmd inside the pod's cgroup and network namespace; (pid, stdout). The shell joins the cgroup,
        then execs `ip netns exec`, which execs the client: one pid throughout."""
        script = f'echo $$ > {pod["cgroup"]}/cgroup.procs && exec ip netns exec {pod["netns"]} "$@"'
        proc = self.lab.spawn(None, "sh", "-c", script, "sh", *cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{out}\n{err}"
        return proc.pid, out


@pytest.fixture
def node(tmp_path):
    require_privileges()
    lab = Lab()
    try:
        yield Node(lab, tmp_path / "log")
    finally:
        lab.close()


def rows(db: Path, where: str, params=()) -> list:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute(f"select * from queries where {where} order by ts", params)]


def assert_pod(row: dict, pod: dict, pid: int, comm: str) -> None:
    got = (row["pod"], row["pod_namespace"], row["container"], row["container_id"], row["pod_uid"], row["netns"],
           row["pid"], row["comm"])
    assert got == (pod["name"], pod["namespace"], pod["container"], pod["cid"], pod["uid"], pod["netns_inode"], pid,
                   comm)


def test_queries_are_attributed_to_pods(node, tmp_path):
    web = node.pod("web-7d9c5", "shop", "nginx", "systemd")
    db = tmp_path / "pods.db"
    watch = Watch(node.lab, None, db, "--all-netns", "--responses", "--k8s-log-dir", str(node.logs))
    try:
        # a pod created after dnswatch started is picked up at the next rescan
        api = node.pod("api-5f8b", "billing", "app", "cgroupfs")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            node.run_in(api, "dig", "+tries=1", "+time=1", f"@{SERVER}", "warmup.example.test")
            if rows(db, "qname = 'warmup.example.test' and pod = ? and pid is not null", (api["name"],)):
                break
            time.sleep(0.5)
        assert rows(db, "qname = 'warmup.example.test' and pod = ? and pid is not null", (api["name"],)), \
            "new pod never picked up"
        dig_pid, _ = node.run_in(web, "dig", "+tries=1", "+time=2", f"@{SERVER}", "www.example.test", "A")
        getent_pid, _ = node.run_in(api, "getent", "ahosts", "api.example.test")
        py_pid, _ = node.run_in(api, sys.executable, "-c",
                                "import socket; socket.getaddrinfo('mx.example.test', 443, socket.AF_INET)")
        time.sleep(0.5)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)

    (r,) = rows(db, "qname = 'www.example.test'")
    assert_pod(r, web, dig_pid, "dig")
    assert r["status"] == "answered" and r["src"] == web["ip"]
    got = rows(db, "qname = 'api.example.test'")
    assert got and all(r["pid"] == getent_pid for r in got)
    for r in got:
        assert_pod(r, api, getent_pid, "getent")
    (r,) = rows(db, "qname = 'mx.example.test'")
    assert_pod(r, api, py_pid, PY_COMM)
    screen = "".join(watch.stdout)
    assert "shop/web-7d9c5:nginx" in screen and "billing/api-5f8b:app" in screen
    # the node namespace sees each query again on its way in: stored once
    assert len(rows(db, "qname = 'www.example.test'")) == 1


def test_same_source_port_in_two_pods(node, tmp_path):
    a = node.pod("alpha-1", "team-a", "client", "systemd")
    b = node.pod("beta-1", "team-b", "client", "cgroupfs")
    db = tmp_path / "ports.db"
    sender = ("import socket, struct, sys\n"
              "s = socket.socket(); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.bind(('0.0.0.0', 40404))\n"
              "q = struct.pack('!HHHHHH', 4242, 0x0100, 1, 0, 0, 0) + b'\\x03www\\x07example\\x04test\\x00\\x00\\x01\\x00\\x01'\n"
              f"s.sendto(q, ('{SERVER}', 53)); s.settimeout(2); s.recv(512)\n")
    watch = Watch(node.lab, None, db, "--all-netns", "--responses", "--k8s-log-dir", str(node.logs))
    try:
        pid_a, _ = node.run_in(a, sys.executable, "-c", sender)
        pid_b, _ = node.run_in(b, sys.executable, "-c", sender)
        time.sleep(0.5)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    got = rows(db, "dns_id = 4242")
    assert len(got) == 2
    by_pod = {r["pod"]: r for r in got}
    assert_pod(by_pod["alpha-1"], a, pid_a, PY_COMM)
    assert_pod(by_pod["beta-1"], b, pid_b, PY_COMM)
    assert by_pod["alpha-1"]["sport"] == by_pod["beta-1"]["sport"] == 40404
    assert all(r["status"] == "answered" for r in got)


def test_deleted_pod_leaves_nothing_stale(node, tmp_path):
    old = node.pod("old-pod", "shop", "web", "systemd")
    db = tmp_path / "churn.db"
    watch = Watch(node.lab, None, db, "--all-netns", "--responses", "--k8s-log-dir", str(node.logs))
    try:
        old_pid, _ = node.run_in(old, "dig", "+tries=1", "+time=2", f"@{SERVER}", "www.example.test")
        node.delete(old)
        new = node.pod("new-pod", "shop", "web", "cgroupfs")  # may get the same IP, subnet and even netns inode
        deadline = time.monotonic() + 15
        new_pid = None
        while time.monotonic() < deadline:
            new_pid, _ = node.run_in(new, "dig", "+tries=1", "+time=1", f"@{SERVER}", "api.example.test")
            if rows(db, "qname = 'api.example.test' and pid = ?", (new_pid,)):
                break
            time.sleep(0.5)
        time.sleep(0.3)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    (r,) = rows(db, "qname = 'www.example.test'")
    assert_pod(r, old, old_pid, "dig")
    got = rows(db, "qname = 'api.example.test' and pid = ?", (new_pid,))
    assert got
    for r in got:
        assert_pod(r, new, new_pid, "dig")
    assert not rows(db, "qname = 'api.example.test' and pod = 'old-pod'")


def test_pod_not_picked_up_is_found_through_its_veth(node, tmp_path):
    """dnswatch captures in the node namespace only, so pods' queries are seen on the node side of their veth
    (softirq: no process). A pod created after watch started is found through the veth it came in on, at once;
    a namespace holding no pod gives no pod, even sending from a pod's address (the link decides)."""
    db = tmp_path / "veth.db"
    kept = tmp_path / "veth.pcapng"
    watch = Watch(node.lab, None, db, "--netns", node.node, "--k8s-log-dir", str(node.logs), "-w", str(kept))
    try:
        router = node.lab.netns("r")
        link = node.lab.link(node.node, router, 30)
        node.lab.run(router, "ip", "route", "add", "default", "via", link["a4"])
        node.lab.run(router, "dig", "+tries=1", "+time=1", f"@{SERVER}", "nopod.example.test", check=False)
        new = node.pod("fresh-6c4d", "shop", "web", "systemd")  # after watch started, and asked at once
        node.pause(new)
        node.run_in(new, "dig", "+tries=1", "+time=2", f"@{SERVER}", "www.example.test", "A")
        node.lab.run(router, "ip", "addr", "add", f"{new['ip']}/32", "dev", "lo")
        node.lab.run(router, "dig", "+tries=1", "+time=1", "-b", new["ip"], f"@{SERVER}", "spoofed.example.test",
                     check=False)
        time.sleep(0.5)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    node_inode = os.stat(f"/var/run/netns/{node.node}").st_ino
    (r,) = rows(db, "qname = 'www.example.test'")
    got = (r["pod"], r["pod_namespace"], r["container"], r["container_id"], r["pod_uid"], r["netns"], r["pid"],
           r["pod_via"], r["src"])
    assert got == (new["name"], new["namespace"], new["container"], new["cid"], new["uid"], node_inode, None,
                   "veth", new["ip"])
    (r,) = rows(db, "qname = 'nopod.example.test'")
    assert (r["pod"], r["container_id"], r["pod_via"], r["src"]) == (None, None, None, link["b4"])
    (r,) = rows(db, "qname = 'spoofed.example.test'")
    assert (r["pod"], r["container_id"], r["pod_via"], r["src"]) == (None, None, None, new["ip"])
    # the kept packets say so too: replay gives the same pods
    replayed = tmp_path / "replayed.db"
    sh(sys.executable, "-m", "dnswatch", "replay", str(kept), "--db", str(replayed), "--no-progress", cwd=str(ROOT))
    got = {r["qname"]: (r["pod"], r["pod_uid"], r["pod_via"]) for r in rows(replayed, "1")}
    assert got == {"www.example.test": (new["name"], new["uid"], "veth"), "nopod.example.test": (None, None, None),
                   "spoofed.example.test": (None, None, None)}
