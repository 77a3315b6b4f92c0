"""Lookups live, with real resolvers in pod-like namespaces: a Kubernetes search path (ndots:5) from glibc getent,
Python getaddrinfo, a musl-linked client and dig +search, to a service VIP DNATed (nftables, in the node namespace)
to a dnsmasq server pod that answers the cluster zone and forwards the rest to unbound in the node namespace.
Then the capture of the same run, replayed, gives the same lookups (without the process columns)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab import Watch, sh
from test_pods import SERVER as UPSTREAM, node  # noqa: F401 - the fixture
from conftest import replay, require_tool

pytestmark = pytest.mark.privileged

VIP = "198.18.100.10"
SEARCH = "shop.svc.cluster.local svc.cluster.local cluster.local"
MUSL_CLIENT = r"""
#include <netdb.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], "443", &hints, &res);
    if (rc) { fprintf(stderr, "%s\n", gai_strerror(rc)); return 1; }
    freeaddrinfo(res);
    usleep(300000);  /* a real client uses its answer: exe is read from /proc while the sender runs */
    return 0;
}
"""


def lookups(db: Path, where: str = "1", params=()) -> list:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute(f"select * from lookups where {where} order by ts", params)]


def test_search_path_lookups_live_and_replayed(node, tmp_path):  # noqa: F811
    for tool in ("dnsmasq", "musl-gcc", "nft", "tcpdump"):
        require_tool(tool)
    lab = node.lab
    musl = tmp_path / "musl-resolve"
    (tmp_path / "c.c").write_text(MUSL_CLIENT)
    sh("musl-gcc", "-static", "-O1", "-o", str(musl), str(tmp_path / "c.c"))
    lab.run(node.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    dns = node.pod("coredns-6d4b", "kube-system", "coredns", "systemd")
    client = node.pod("web-7d9c5", "shop", "app", "systemd")
    (Path("/etc/netns") / client["netns"] / "resolv.conf").write_text(
        f"nameserver {VIP}\nsearch {SEARCH}\noptions ndots:5 timeout:2 attempts:2\n")
    table = lab.tag + "svc"
    rules = (f"table ip {table} {{\n chain pre {{\n  type nat hook prerouting priority -100;\n"
             f"  ip daddr {VIP} udp dport 53 dnat to {dns['ip']}\n  ip daddr {VIP} tcp dport 53 dnat to {dns['ip']}\n"
             " }\n}")
    (tmp_path / "svc.nft").write_text(rules + "\n")
    lab.run(node.node, "nft", "-f", str(tmp_path / "svc.nft"))
    # dnsmasq in the server pod's cgroup and namespace: the cluster zone locally, the rest upstream (no cache)
    script = (f'echo $$ > {dns["cgroup"]}/cgroup.procs && exec ip netns exec {dns["netns"]} dnsmasq -k -C /dev/null '
              f'--no-resolv --no-hosts --bind-interfaces --listen-address={dns["ip"]} --cache-size=0 --user=root '
              f'--server={UPSTREAM} --local=/cluster.local/ --host-record=api.shop.svc.cluster.local,198.18.7.7 '
              f'--host-record=db.svc.cluster.local,198.18.7.8 --pid-file= --log-facility=-')
    lab.spawn(None, "sh", "-c", script, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while "198.18.7.7" not in lab.run(client["netns"], "dig", "+short", "+tries=1", "+time=1", f"@{VIP}",
                                      "api.shop.svc.cluster.local", check=False).stdout:
        assert time.monotonic() < deadline, "dnsmasq behind the VIP does not answer"
        time.sleep(0.2)
    db = tmp_path / "live.db"
    pcap = tmp_path / "node.pcap"
    dump = lab.spawn(node.node, "tcpdump", "-i", "any", "-U", "-w", str(pcap), "-s", "0", "udp port 53 or tcp port 53",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watch = Watch(lab, None, db, "--all-netns", "--responses", "--lookups", "--k8s-log-dir", str(node.logs), "-q")
    try:
        time.sleep(2.5)  # the pods' namespaces are picked up
        runs = {}
        runs["getent"] = node.run_in(client, "getent", "ahosts", "www.example.test")[0]
        time.sleep(0.3)
        runs["python"] = node.run_in(client, sys.executable, "-c",
                                     "import socket; socket.getaddrinfo('mx.example.test', 443)")[0]
        time.sleep(0.3)
        runs["musl"] = node.run_in(client, str(musl), "api.example.test")[0]
        time.sleep(0.3)
        runs["dig"] = node.run_in(client, "dig", "+search", "+tries=1", "+time=2", "txt.example.test", "TXT")[0]
        time.sleep(0.3)
        runs["short"] = node.run_in(client, "getent", "ahosts", "db")[0]
        time.sleep(1.5)
    finally:
        rc = watch.stop()
        dump.terminate()
        dump.wait(timeout=10)
        lab.run(node.node, "nft", "delete", "table", "ip", table, check=False)
    assert rc == 0, "".join(watch.stderr)

    by_pid = {lk["pid"]: lk for lk in lookups(db, "pod = ?", (client["name"],))}
    expanded = {"getent": "www.example.test", "python": "mx.example.test", "musl": "api.example.test",
                "dig": "txt.example.test"}
    con = sqlite3.connect(db)
    for who, asked in expanded.items():
        lk = by_pid[runs[who]]
        candidates = json.loads(lk["candidates"])
        assert candidates == [f"{asked}.{s}" for s in SEARCH.split()] + [asked], (who, candidates)
        assert (lk["asked_name"], lk["answered_name"], lk["rcode"]) == (asked, asked, "NOERROR"), who
        per_candidate = lk["queries"] // 4 if who != "dig" else 1
        assert lk["wasted"] == 3 * per_candidate, (who, lk)
        assert (lk["server_pod"], lk["server_pod_namespace"], lk["nat_dst"]) == (dns["name"], "kube-system",
                                                                                 dns["ip"]), who
        assert lk["upstream_server"] == UPSTREAM and lk["upstream_latency_ms"] > 0, (who, lk)
        assert 0 < lk["upstream_latency_ms"] < lk["total_ms"] < 2000, (who, lk)
        # each query stored once, by the client's row (with its NAT destination): no row for the DNATed copy
        rows = con.execute("select src, dst, nat_dst, pid, attempts from queries where lookup_id = ?",
                           (lk["lookup_id"],)).fetchall()
        assert sum(r[4] for r in rows) == lk["queries"]
        assert {r[:4] for r in rows} == {(client["ip"], VIP, dns["ip"], runs[who])}
    assert con.execute("select count(*) from queries where src = ? and dst = ?", (client["ip"], dns["ip"])).fetchone() == (0,)
    assert by_pid[runs["musl"]]["exe"] == str(musl)
    short = by_pid[runs["short"]]
    assert (short["asked_name"], short["answered_name"], short["wasted"]) == ("db", "db.svc.cluster.local",
                                                                             short["queries"] // 2)
    assert short["upstream_server"] is None  # answered by the server pod itself

    # replay of the node's capture: the same lookups, from addresses and ports alone
    rdb = tmp_path / "replay.db"
    replay(rdb, pcap, extra=("--lookups",))
    replayed = {lk["asked_name"]: lk for lk in lookups(rdb, "src = ?", (client["ip"],))}
    for who, asked in expanded.items():
        live, again = by_pid[runs[who]], replayed[asked]
        for column in ("candidates", "answered_name", "rcode", "queries", "wasted", "nat_dst", "upstream_server"):
            assert again[column] == live[column], (who, column)
        assert again["pid"] is None and again["exe"] is None
