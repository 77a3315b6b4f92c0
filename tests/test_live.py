"""Live capture end to end (root, bcc): real unbound, real clients in a network namespace, `dnswatch watch`.

Topology: namespace S runs unbound on 198.18.1.1 / fd00:18:1::1; namespace C (198.18.1.2 / fd00:18:1::2) runs
the clients and `dnswatch watch` (the client's packets leave C, so the kernel knows which task sent them).
"""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab import Lab, Watch, require_privileges, server_and_client

pytestmark = pytest.mark.privileged

PY_COMM = Path(sys.executable).name[:15]


@pytest.fixture
def lab():
    require_privileges()
    with server_and_client() as lab:
        lab.unbound(lab.server, ["198.18.1.1", "fd00:18:1::1"])
        lab.resolv_conf(lab.client, "198.18.1.1")
        yield lab


def rows(db: Path, where: str = "1", params=()) -> list:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute(f"select * from queries where {where} order by ts", params)]


def capture_row(db: Path) -> dict:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return dict(con.execute("select * from captures order by id desc limit 1").fetchone())


def dig_id(output: str) -> int:
    return int(re.search(r"id: (\d+)", output).group(1))


def client_run(lab: Lab, *cmd: str):
    """Run a client in namespace C; returns (pid, stdout). `ip netns exec` execs, so the pid is the client's."""
    proc = lab.spawn(lab.client, *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=20)
    return proc.pid, out


def test_clients_are_attributed(lab, tmp_path):
    db = tmp_path / "live.db"
    watch = Watch(lab, lab.client, db, "--responses")
    try:
        dig_pid, dig_out = client_run(lab, "dig", "+tries=1", "+time=2", "-b", "198.18.1.2#40001", "@198.18.1.1",
                                      "www.example.test", "A")
        tcp_pid, tcp_out = client_run(lab, "dig", "+tcp", "+tries=1", "+time=2", "@fd00:18:1::1",
                                      "www.example.test", "AAAA")
        nx_pid, nx_out = client_run(lab, "dig", "+tries=1", "+time=2", "@198.18.1.1", "nope.example.test", "A")
        kdig_pid, kdig_out = client_run(lab, "kdig", "+retry=0", "+timeout=2", "@198.18.1.1", "api.example.test", "A")
        getent_pid, getent_out = client_run(lab, "getent", "ahosts", "www.example.test")
        py_pid, py_out = client_run(lab, sys.executable, "-c",
                                    "import socket; print(socket.getaddrinfo('api.example.test', 80, socket.AF_INET))")
        time.sleep(0.5)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)

    # dig over UDP/IPv4, with a fixed source port
    (r,) = rows(db, "qname = 'www.example.test' and qtype = 'A' and pid = ?", (dig_pid,))
    assert (r["dns_id"], r["sport"], r["dport"], r["proto"], r["comm"]) == (dig_id(dig_out), 40001, 53, "udp", "dig")
    assert (r["src"], r["dst"], r["status"], r["rcode"]) == ("198.18.1.2", "198.18.1.1", "answered", "NOERROR")
    assert json.loads(r["answers"])[0]["data"] == "198.18.0.80"
    assert r["latency_ms"] > 0 and r["netns"] and r["ifname"]
    # dig over TCP/IPv6
    (r,) = rows(db, "qname = 'www.example.test' and qtype = 'AAAA' and pid = ?", (tcp_pid,))
    assert (r["dns_id"], r["proto"], r["src"], r["dst"], r["comm"]) == (
        dig_id(tcp_out), "tcp", "fd00:18:1::2", "fd00:18:1::1", "dig")
    assert r["rcode"] == "NOERROR" and json.loads(r["answers"])[0]["data"] == "fd00:18::80"
    # NXDOMAIN with its latency
    (r,) = rows(db, "qname = 'nope.example.test'")
    assert (r["pid"], r["comm"], r["rcode"], r["dns_id"]) == (nx_pid, "dig", "NXDOMAIN", dig_id(nx_out))
    assert r["latency_ms"] > 0
    # kdig
    (r,) = rows(db, "qname = 'api.example.test' and comm = 'kdig'")
    assert (r["pid"], r["dns_id"], r["rcode"]) == (kdig_pid, dig_id(kdig_out), "NOERROR")
    # glibc through /etc/netns/C/resolv.conf: getent and Python's getaddrinfo
    assert "198.18.0.80" in getent_out
    got = rows(db, "qname = 'www.example.test' and pid = ?", (getent_pid,))
    assert got and {r["comm"] for r in got} == {"getent"} and all(r["dport"] == 53 for r in got)
    got = rows(db, "qname = 'api.example.test' and pid = ?", (py_pid,))
    assert got and {r["comm"] for r in got} == {PY_COMM} and {r["qtype"] for r in got} == {"A"}
    # the terminal view showed them, names and processes included
    screen = "".join(watch.stdout)
    assert f"{dig_pid}/dig" in screen and "www.example.test" in screen and "NXDOMAIN" in screen


def test_queries_only_by_default_and_filters(lab, tmp_path):
    db = tmp_path / "q.db"
    watch = Watch(lab, lab.client, db, "--json", "--comm", "dig")
    try:
        dig_pid, _ = client_run(lab, "dig", "+tries=1", "+time=2", "@198.18.1.1", "www.example.test", "A")
        client_run(lab, "getent", "ahosts", "mail.example.test")  # filtered out by --comm
        time.sleep(0.3)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    events = [json.loads(line) for line in watch.stdout if line.startswith("{")]
    assert [(e["event"], e["qname"], e["pid"], e["status"]) for e in events] == [
        ("query", "www.example.test", dig_pid, "query_only")]  # one line per stored row (dnswatch schema --json-lines)
    # the filters choose what is shown: everything captured is stored
    stored = rows(db)
    assert ("www.example.test", "query_only", "dig") in [(r["qname"], r["status"], r["comm"]) for r in stored]
    assert {"getent"} <= {r["comm"] for r in stored}
    cap = capture_row(db)
    assert cap["responses"] == 0  # the kernel passed no responses up


def test_non_dns_flood_never_reaches_user_space(lab, tmp_path):
    db = tmp_path / "f.db"
    watch = Watch(lab, lab.client, db, "--responses")
    try:
        lab.run(lab.client, sys.executable, "-c", (
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "deadline = time.monotonic() + 10\n"
            "for i in range(20000):\n"
            "    s.sendto(b'x' * 64, ('198.18.1.1', 9999 + i % 3))\n"
            "    if time.monotonic() > deadline: break\n"
        ), timeout=30)
        client_run(lab, "dig", "+tries=1", "+time=2", "@198.18.1.1", "www.example.test", "A")
        time.sleep(0.3)
    finally:
        assert watch.stop() == 0
    cap = capture_row(db)
    assert cap["frames"] == 2  # the dig query and its response: not one of the 20,000 datagrams
    assert cap["dropped"] == 0


def test_loopback_query_is_stored_once(lab, tmp_path):
    lab.unbound(lab.client, ["127.0.0.1"])
    db = tmp_path / "lo.db"
    watch = Watch(lab, lab.client, db, "--responses")
    try:
        pid, out = client_run(lab, "dig", "+tries=1", "+time=2", "@127.0.0.1", "txt.example.test", "TXT")
        time.sleep(0.3)
    finally:
        assert watch.stop() == 0
    got = rows(db, "qname = 'txt.example.test'")
    assert len(got) == 1
    assert (got[0]["pid"], got[0]["comm"], got[0]["rcode"], got[0]["dns_id"]) == (pid, "dig", "NOERROR", dig_id(out))
    assert capture_row(db)["duplicates"] == 0


def test_clean_stop_loses_nothing(lab, tmp_path):
    db = tmp_path / "stop.db"
    n = 300
    watch = Watch(lab, lab.client, db)
    sender = (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range({n}):\n"
        "    q = struct.pack('!HHHHHH', i, 0x0100, 1, 0, 0, 0) + b'\\x04stop\\x07example\\x04test\\x00\\x00\\x01\\x00\\x01'\n"
        "    s.sendto(q, ('198.18.1.1', 53))\n"
    )
    lab.run(lab.client, sys.executable, "-c", sender)
    assert watch.stop() == 0  # SIGTERM right after the last packet left
    got = rows(db, "qname = 'stop.example.test'")
    assert sorted(r["dns_id"] for r in got) == list(range(n))
    cap = capture_row(db)
    assert cap["status"] == "interrupted" and cap["queries"] == n and cap["dropped"] == 0
    assert "300 queries" in "".join(watch.stderr)


def test_reader_going_away_ends_watch_cleanly(lab, tmp_path):
    """`watch | head -n 2`: once head has its lines and exits, watch ends as with --count (status complete, the
    summary printed, exit 0), with no traceback."""
    db = tmp_path / "head.db"
    err = tmp_path / "watch.err"
    cmd = (f"set -o pipefail; {sys.executable} -m dnswatch watch --host-only --db {db} 2>{err} | head -n 2; "
           "echo rc=$?")
    shell = lab.spawn(lab.client, "bash", "-c", cmd, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C to end" not in (err.read_text() if err.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
        sender = ("import socket, struct, time\n"
                  "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "for i in range(200):\n"
                  "    q = struct.pack('!HHHHHH', i, 0x0100, 1, 0, 0, 0) + b'\\x04head\\x07example\\x04test\\x00\\x00\\x01\\x00\\x01'\n"
                  "    s.sendto(q, ('198.18.1.1', 53))\n"
                  "    time.sleep(0.01)\n")
        lab.run(lab.client, sys.executable, "-c", sender, timeout=30)
        out, _ = shell.communicate(timeout=30)
    finally:
        if shell.poll() is None:
            shell.kill()
    lines = out.splitlines()
    assert len(lines) == 3 and lines[-1] == "rc=0", out + err.read_text()
    assert all("head.example.test" in line for line in lines[:2])
    stderr = err.read_text()
    assert "Traceback" not in stderr and "queries shown" in stderr, stderr
    assert capture_row(db)["status"] == "complete"


def test_forwarded_queries_carry_no_process(tmp_path):
    """A query routed through a namespace leaves it as 'outgoing' too, but in softirq: the task the kernel
    sees then is not the sender, so no process may be recorded for it."""
    require_privileges()
    lab = Lab()
    try:
        client, router, server = lab.netns("C"), lab.netns("R"), lab.netns("S")
        lab.link(router, client, 2)  # client 198.18.2.2 -> router 198.18.2.1
        lab.link(server, router, 3)  # router 198.18.3.2 -> server 198.18.3.1
        lab.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        lab.run(client, "ip", "route", "add", "198.18.3.0/24", "via", "198.18.2.1")
        lab.run(server, "ip", "route", "add", "198.18.2.0/24", "via", "198.18.3.2")
        lab.unbound(server, ["198.18.3.1"])
        db = tmp_path / "fwd.db"
        watch = Watch(lab, router, db, "--responses")
        try:
            for _ in range(5):  # several, so a lucky interrupted task cannot pass by chance
                lab.run(client, "dig", "+tries=1", "+time=2", "@198.18.3.1", "www.example.test", "A")
            time.sleep(0.3)
        finally:
            assert watch.stop() == 0
        got = rows(db, "qname = 'www.example.test'")
        assert len(got) == 5 and all(r["status"] == "answered" for r in got)
        assert all(r["pid"] is None and r["comm"] is None and r["cgroup_id"] is None for r in got), got
        assert capture_row(db)["duplicates"] == 10  # queries and responses seen coming in and going out
    finally:
        lab.close()


def test_unprivileged_watch_says_what_to_fix(tmp_path):
    require_privileges()  # root, to drop to nobody
    tmp_path.chmod(0o777)
    out = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
                          sys.executable, "-m", "dnswatch", "watch", "--db", str(tmp_path / "n.db")],
                         capture_output=True, text=True, timeout=60, cwd=str(Path(__file__).parent.parent))
    assert out.returncode == 1
    assert "not permitted to capture" in out.stderr and "CAP_BPF" in out.stderr
    assert "Traceback" not in out.stderr and "compile" not in out.stderr
