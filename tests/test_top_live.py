"""Live, privileged: `top` on a real terminal (tmux, read back with capture-pane), watch's timeout lines,
--no-db and --json -q, every namespace by default as root, and `watch -w` then `replay` keeping pid, comm and pod."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab import ROOT, Lab, Watch, require_privileges, server_and_client, sh
from test_pods import SERVER, assert_pod
from test_pods import node  # noqa: F401 - fixture
from test_pods import rows as pod_rows

pytestmark = pytest.mark.privileged


@pytest.fixture
def lab():
    require_privileges()
    with server_and_client() as lab:
        lab.unbound(lab.server, ["198.18.1.1"])
        lab.run(lab.server, "ip", "addr", "add", "198.18.1.99/32", "dev", "lo")  # reachable, but no server: unanswered
        yield lab


def dig(lab: Lab, *args: str) -> None:
    lab.run(lab.client, "dig", "+tries=1", "+time=1", *args, check=False)


class Tmux:
    """A private tmux server (its own socket) running one command in a 160x40 window."""

    def __init__(self, lab: Lab, command: list):
        from conftest import require_tool

        require_tool("tmux")
        self.socket = f"{lab.tag}-top"
        self.base = ["tmux", "-L", self.socket]
        sh(*self.base, "-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", "160", "-y", "40",
           " ".join(command) + "; sleep 30")
        sh(*self.base, "resize-window", "-t", "top", "-x", "160", "-y", "40", check=False)

    def screen(self) -> str:
        return sh(*self.base, "capture-pane", "-p", "-t", "top").stdout

    def keys(self, *keys: str) -> None:
        sh(*self.base, "send-keys", "-t", "top", *keys)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never showed on the screen:\n{screen}")

    def close(self) -> None:
        sh(*self.base, "kill-server", check=False)


def test_live_top_on_a_terminal(lab, tmp_path):
    db = tmp_path / "top.db"
    command = ["ip", "netns", "exec", lab.client, sys.executable, "-m", "dnswatch", "top", "--host-only",
               "--db", str(db), "--interval", "0.3", "--timeout", "1"]
    tmux = Tmux(lab, [f"cd {ROOT} &&"] + command)
    try:
        tmux.wait_for("dnswatch top", 60)
        for _ in range(3):
            dig(lab, "@198.18.1.1", "www.example.test", "A")
        dig(lab, "@198.18.1.1", "nope.example.test", "A")
        dig(lab, "@198.18.1.99", "lost.example.test", "A")  # nobody there: unanswered after 1 s
        screen = tmux.wait_for("lost.example.test", 15)
        line = next(ln for ln in screen.splitlines() if ln.startswith("www.example.test"))
        assert line.split()[1] == "3"  # count
        nx = next(ln for ln in screen.splitlines() if ln.startswith("nope.example.test"))
        assert nx.split()[3] == "1"  # NXDOMAIN column
        lost = next(ln for ln in screen.splitlines() if ln.startswith("lost.example.test"))
        assert lost.split()[5] == "1"  # unanswered column
        assert "q quit" in screen and "/ filter" in screen and "p pause" in screen
        tmux.keys("b")  # group by registered domain
        screen = tmux.wait_for("by domain")
        assert any(ln.startswith("example.test") and ln.split()[1] == "5" for ln in screen.splitlines())
        tmux.keys("/", "w", "w", "w", "Enter")
        screen = tmux.wait_for("filter 'www'")
        tmux.keys("q")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "dnswatch top" in tmux.screen():
            time.sleep(0.2)
        assert "dnswatch top" not in tmux.screen(), "q did not end top"
    finally:
        tmux.close()
    con = sqlite3.connect(db)
    got = dict(con.execute("select qname, count(*) from queries group by 1"))
    assert got == {"www.example.test": 3, "nope.example.test": 1, "lost.example.test": 1}
    assert con.execute("select status from queries where qname = 'lost.example.test'").fetchone()[0] == "unanswered"


def test_timeouts_no_db_and_json_quiet(lab, tmp_path):
    db = tmp_path / "never.db"
    watch = Watch(lab, lab.client, db, "--responses", "--timeout", "1", "--no-db", "--wide")
    try:
        dig(lab, "@198.18.1.1", "www.example.test")
        dig(lab, "@198.18.1.99", "lost.example.test")
        time.sleep(1.5)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    out, err = "".join(watch.stdout), "".join(watch.stderr)
    t = [ln for ln in watch.stdout if " T " in ln]
    assert len(t) == 1 and "lost.example.test" in t[0] and t[0].rstrip().endswith("unanswered after 1.0s")
    assert "NOERROR" in out and "\x1b[" not in out  # not a terminal: no colour
    assert "rows stored" not in err and "nothing stored (--no-db)" in err
    assert not db.exists()

    watch = Watch(lab, lab.client, tmp_path / "j.db", "--responses", "--timeout", "1", "--json", "-q")
    try:
        dig(lab, "@198.18.1.1", "warmup.example.test")
        dig(lab, "@198.18.1.99", "lost.example.test")
        time.sleep(1.5)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    out = "".join(watch.stdout)
    events = [json.loads(ln) for ln in out.splitlines()]
    assert events and {e["event"] for e in events} >= {"query", "timeout"}
    assert any(e["event"] == "timeout" and e["qname"] == "lost.example.test" for e in events)
    answered = [e for e in events if e["status"] == "answered" and e["qname"] == "warmup.example.test"]
    assert answered and all(isinstance(e["answers"], list) for e in answered)


def test_every_namespace_by_default_as_root(lab, tmp_path):
    db = tmp_path / "all.db"
    watch = Watch(lab, None, db, "--responses", narrow=False)
    try:
        late = lab.netns("L")  # a namespace made after the start is picked up, and said so
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("picked up" in ln and late in ln for ln in watch.stderr):
            time.sleep(0.2)
        dig(lab, "@198.18.1.1", "www.example.test")
        time.sleep(0.5)
        lab.delete_netns(late)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("released" in ln and late in ln for ln in watch.stderr):
            time.sleep(0.2)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    err = "".join(watch.stderr)
    assert "network namespaces" in err.splitlines()[0]
    assert f"{late} (" in err and "picked up" in err and "released" in err
    (r,) = [r for r in pod_rows(db, "qname = 'www.example.test'")]
    assert r["comm"] == "dig" and r["pid"]  # the client's namespace, with its process
    line = next(ln for ln in watch.stdout if "www.example.test" in ln and " Q " in ln)
    assert lab.client in line  # the line names the namespace it came from


def test_write_pcapng_then_replay_keeps_the_sender(node, tmp_path):  # noqa: F811
    web = node.pod("web-7d9c5", "shop", "nginx", "systemd")
    db = tmp_path / "live.db"
    pcap = tmp_path / "kept.pcapng"
    watch = Watch(node.lab, None, db, "--all-netns", "--responses", "--k8s-log-dir", str(node.logs),
                  "-w", str(pcap))
    try:
        dig_pid, _ = node.run_in(web, "dig", "+tries=1", "+time=2", f"@{SERVER}", "www.example.test", "A")
        getent_pid, _ = node.run_in(web, "getent", "ahosts", "api.example.test")
        time.sleep(0.5)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    assert "packets written to" in "".join(watch.stderr)
    replayed = tmp_path / "replayed.db"
    out = subprocess.run([sys.executable, "-m", "dnswatch", "replay", str(pcap), "--db", str(replayed),
                          "--no-progress"], capture_output=True, text=True, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    key = "qname, qtype, src, sport, dns_id"
    fields = ("pid", "comm", "container_id", "pod", "pod_namespace", "status", "rcode")

    def by_query(path):
        return {tuple(r[k] for k in key.split(", ")): tuple(r[f] for f in fields)
                for r in pod_rows(path, "qname in ('www.example.test', 'api.example.test')")}

    live, again = by_query(db), by_query(replayed)
    assert live and again == live
    (r,) = pod_rows(replayed, "qname = 'www.example.test'")
    assert_pod({**r, "netns": web["netns_inode"]} | {"container": web["container"], "pod_uid": web["uid"]}, web,
               dig_pid, "dig")
    assert all(v[0] == getent_pid for k, v in again.items() if k[0] == "api.example.test")
