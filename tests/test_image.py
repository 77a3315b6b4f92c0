"""The node image (root, podman, mmdebstrap): built by scripts/image from a clean clone, then run from its own
files with chroot, as the DaemonSet runs it: read-only root, the image's environment, /tmp and the log folder
writable, the host's /proc, /sys and /dev, and neither /lib/modules nor /usr/src of the host.

(Containers cannot be started in this sandbox, the runtime's rlimits are refused; podman builds with
--isolation=chroot and mounts the image, and a private mount namespace per command keeps nothing behind.)
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, require_tool
from netlab import Lab, require_privileges
from test_golden import snapshot

pytestmark = pytest.mark.privileged

# Inside a private mount namespace: the host's kernel views, writable /tmp and /run, the log folder (the
# DaemonSet's hostPath) and /run/netns; then the image's entrypoint with the image's environment only.
IN_ROOT = r"""
set -eu
root=$1; data=$2; shift 2
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount -t tmpfs tmpfs "$root/run"
mount --bind "$data" "$root/var/lib/dnswatch"
if [ -d /run/netns ]; then mkdir "$root/run/netns"; mount --rbind /run/netns "$root/run/netns"; fi
exec chroot "$root" "$@"
"""


class Image:
    def __init__(self, tag: str, root: Path, data: Path):
        self.tag, self.root, self.data = tag, root, data
        config = json.loads(subprocess.run(["podman", "image", "inspect", tag], check=True, capture_output=True,
                                           text=True).stdout)[0]["Config"]
        self.env = config.get("Env", [])
        self.entrypoint = config["Entrypoint"]
        self.cmd = config.get("Cmd", [])

    def command(self, *args: str):
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_ROOT, "in-root",
                str(self.root), str(self.data), "env", "-i", *self.env, *self.entrypoint, *args]

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"dnswatch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="module")
def image():
    require_privileges()
    for tool in ("podman", "mmdebstrap", "git", "unshare", "chroot"):
        require_tool(tool)
    work = Path(tempfile.mkdtemp(prefix="dnswatch-image-"))
    tag = f"localhost/dnswatch-test:{os.getpid()}"
    mounted = False
    try:
        clone = work / "clone"
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", head], check=True)
        start = time.monotonic()
        build = subprocess.run([str(clone / "scripts" / "image"), "--tag", tag], capture_output=True, text=True,
                               timeout=1200)
        assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
        print(f"\nimage {tag} built from a clean clone of {head[:12]} in {time.monotonic() - start:.0f} s")
        root = Path(subprocess.run(["podman", "image", "mount", tag], check=True, capture_output=True,
                                   text=True).stdout.strip())
        mounted = True
        data = work / "data"
        data.mkdir()
        img = Image(tag, root, data)
        img.clone = clone
        yield img
    finally:
        if mounted:
            subprocess.run(["podman", "image", "unmount", tag], capture_output=True)
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def test_no_host_headers_visible(image):
    release = os.uname().release
    listing = image.run("--help").stdout  # the entrypoint works
    assert "watch" in listing
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_ROOT, "in-root",
                            str(image.root), str(image.data), "sh", "-c",
                            f"test ! -e /lib/modules/{release} && ls /usr/src"], capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.strip() == "", probe.stderr


def test_doctor_uses_the_images_headers(image):
    result = image.run("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert all(checks[name]["ok"] for name in ("privileges", "bcc", "kernel headers", "eBPF filter")), checks
    assert checks["kernel headers"]["detail"].startswith("the image's own, /opt/dnswatch/kernel-headers")
    assert "compiles and loads" in checks["eBPF filter"]["detail"]
    assert "the image's own" in image.run("doctor").stdout


@pytest.mark.parametrize("name", ["udp_v4_dig.pcap", "tcp_kdig_v6.pcapng", "dns_hostile.pcap"])
def test_replay_matches_golden(image, name):
    shutil.copy(image.clone / "pcaps" / name, image.data / name)
    db = image.data / f"{name}.db"
    image.run("replay", f"/var/lib/dnswatch/{name}", "--db", f"/var/lib/dnswatch/{db.name}", "--no-progress")
    expected = json.loads((image.clone / "tests" / "golden" / f"{name}.json").read_text())
    assert snapshot(db) == expected


def test_watch_all_netns_captures_a_pod_query(image):
    lab = Lab()
    try:
        server = lab.netns("S")
        client = lab.netns("C")
        lab.link(server, client, 1)
        lab.unbound(server, ["198.18.1.1"])
        client_inode = os.stat(f"/run/netns/{client}").st_ino
        db = image.data / "live.db"
        heartbeat = "/var/lib/dnswatch/heartbeat"
        proc = subprocess.Popen(image.command("watch", "--all-netns", "--responses", "--json", "--duration", "8",
                                              "--db", "/var/lib/dnswatch/live.db", "--heartbeat", heartbeat),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lab.procs.append(proc)
        err: list = []
        ready = threading.Event()

        def pump():
            for line in proc.stderr:
                err.append(line)
                if "Ctrl-C to end" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        assert ready.wait(60) and proc.poll() is None, "".join(err)
        time.sleep(0.5)
        dig = lab.run(client, "dig", "+tries=1", "+time=2", "@198.18.1.1", "www.example.test", "A")
        assert "198.18.0.80" in dig.stdout
        alive = image.run("health", "--heartbeat", heartbeat, "--max-age", "5", check=False)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(err)
        assert image.run("health", "--heartbeat", heartbeat, check=False).returncode == 1  # watch has ended
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert any(e["qname"] == "www.example.test" and e["event"] == "query" for e in events), out
        con = sqlite3.connect(db)
        con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute("select * from queries where qname = 'www.example.test'")]
        assert rows and any(r["status"] == "answered" and r["netns"] == client_inode and r["comm"] == "dig"
                            for r in rows), rows
    finally:
        lab.close()
