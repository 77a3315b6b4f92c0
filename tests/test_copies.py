"""Keep contract rule 6: a packet seen at several capture points (the sender's namespace, the far side of its veth,
a router's other interface) reaches user space once, dropped in the kernel and counted in kernel_copies; a retry
at the same point, a packet rewritten by NAT and a copy outside the window still go up.

First the filter itself under BPF_PROG_TEST_RUN (the capture point is skb->cb[0], the dispatcher's netns tag),
then `dnswatch watch --all-netns` over real namespaces.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import sys
import time

import pytest

from netlab import Lab, Watch, require_privileges, server_and_client

pytestmark = pytest.mark.privileged

QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"


def _query(dns_id=0x4242, qr=False) -> bytes:
    return struct.pack("!HHHHHH", dns_id, 0x8180 if qr else 0x0100, 1, 0, 0, 0) + QUESTION


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _frame(src="198.18.0.2", dst="198.18.0.1", sport=40000, dport=53, payload=None, proto=17, mf=False) -> bytes:
    """Ethernet + IPv4 + UDP (or a TCP segment carrying the message) around a DNS message; ``mf``: a first
    fragment."""
    payload = _query() if payload is None else payload
    if proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + \
            struct.pack("!H", len(payload)) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x2000 if mf else 0, 64, proto, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + l4


def _frame6(sport=40000, payload=None) -> bytes:
    payload = _query() if payload is None else payload
    l4 = struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), 17, 64, socket.inet_pton(socket.AF_INET6, "fd00::2"),
                     socket.inet_pton(socket.AF_INET6, "fd00::1"))
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x86\xdd" + ip + l4


@pytest.fixture(scope="module")
def kernel():
    require_privileges()
    from dnswatch.sources.live import load_filter

    f = load_filter((53,), True, loopback_dedup=False, page_cnt=16)  # test runs on lo: rule 5 would drop them all
    f.open_events()
    yield f
    f.close()


def _points(f) -> list:
    """The capture points (netns tags) of the records the ring holds."""
    return [meta[8] for meta, _packet in f.read()]


def _run(f, *sightings) -> list:
    """Run each (frame, capture point) through the filter; the points whose sighting went up, and the copies
    dropped meanwhile."""
    from dnswatch.sources.bpf_testrun import prog_test_run

    before = f.counters()["kernel_copies"]
    for frame, point in sightings:
        prog_test_run(f.prog_fd, frame, cb0=point)
    return _points(f), f.counters()["kernel_copies"] - before


def test_a_copy_at_another_point_is_dropped_once_counted(kernel):
    q = _frame(sport=41001)
    assert _run(kernel, (q, 1), (q, 2), (q, 3)) == ([1], 2)  # pod, node side, routed on: the first goes up
    r = _frame("198.18.0.1", "198.18.0.2", 53, 41001, _query(qr=True))
    assert _run(kernel, (r, 2), (r, 1)) == ([2], 1)  # responses too
    q6 = _frame6(sport=41001)
    assert _run(kernel, (q6, 1), (q6, 2)) == ([1], 1)
    assert _run(kernel, (_frame6(sport=41001, payload=_query(0x4343)), 2)) == ([2], 0)


def test_a_skipped_packet_is_counted_once(kernel):
    before = kernel.counters()
    short = _frame(sport=41007, payload=_query()[:10])
    many = _frame(sport=41007, payload=struct.pack("!HHHHHH", 0x4242, 0x0100, 17, 0, 0, 0) + QUESTION * 17)
    assert _run(kernel, (short, 1), (short, 2), (many, 1), (many, 2), (many, 1)) == ([], 2)
    after = kernel.counters()
    assert after["kernel_skip_short"] - before["kernel_skip_short"] == 1
    assert after["kernel_skip_qdcount"] - before["kernel_skip_qdcount"] == 2  # the last one again at its point


def test_the_same_bytes_at_the_same_point_are_a_retry(kernel):
    q = _frame(sport=41002)
    # dnsperf reusing an id at once, or a client retrying: every attempt goes up; each attempt's copy does not
    assert _run(kernel, (q, 1), (q, 2), (q, 1), (q, 2)) == ([1, 1], 2)


def test_what_differs_is_another_packet(kernel):
    q = _frame(sport=41003)
    cases = [
        _frame(sport=41003, dst="198.18.0.99"),  # DNAT: the service VIP rewritten (lookups pairs the two)
        _frame(sport=41004),  # another port
        _frame(sport=41003, payload=_query(dns_id=0x4343)),  # another id
        _frame(sport=41003, payload=_query()[:-4] + b"\x00\x1c\x00\x01"),  # another question (AAAA)
        _frame(src="198.18.0.3", sport=41003),  # another client with the same port and id
    ]
    assert _run(kernel, (q, 1), *[(c, 2) for c in cases]) == ([1] + [2] * len(cases), 0)


def test_tcp_and_fragments_go_up_to_user_space(kernel):
    t = _frame(sport=41005, proto=6)
    assert _run(kernel, (t, 1), (t, 2)) == ([1, 2], 0)
    first = _frame(sport=41005, mf=True)
    assert _run(kernel, (first, 1), (first, 2)) == ([1, 2], 0)


def test_a_sighting_after_the_window_goes_up():
    require_privileges()
    from dnswatch.sources.bpf_testrun import prog_test_run
    from dnswatch.sources.live import load_filter

    f = load_filter((53,), False, loopback_dedup=False, copy_window_ns=2_000_000, page_cnt=16)
    try:
        f.open_events()
        q = _frame(sport=41006)
        prog_test_run(f.prog_fd, q, cb0=1)
        prog_test_run(f.prog_fd, q, cb0=2)
        time.sleep(0.02)
        prog_test_run(f.prog_fd, q, cb0=2)
        assert _points(f) == [1, 2] and f.counters()["kernel_copies"] == 1
    finally:
        f.close()


def test_the_window_is_the_correlators():
    from dnswatch.correlate import COPY_WINDOW
    from dnswatch.sources.live import COPY_WINDOW_NS

    assert COPY_WINDOW_NS == round(COPY_WINDOW * 1e9)


# ---------------------------------------------------------------- live, every namespace watched


def _capture(db):
    con = sqlite3.connect(db)
    frames, duplicates, dropped, notes = con.execute("select frames, duplicates, dropped, notes from captures").fetchone()
    return frames, duplicates, dropped, json.loads(notes)


def _rows(db, where, params=()):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute(f"select * from queries where {where}", params)]


def test_a_query_through_a_veth_is_stored_once_with_its_process(tmp_path):
    require_privileges()
    with server_and_client() as lab:
        lab.unbound(lab.server, ["198.18.1.1"])
        db = tmp_path / "once.db"
        watch = Watch(lab, None, db, "--all-netns", "--responses", "-q")
        try:
            time.sleep(0.3)
            dig = lab.spawn(lab.client, "dig", "+tries=1", "+time=2", "@198.18.1.1", "www.example.test", "A",
                            stdout=open(os.devnull, "w"))
            assert dig.wait(timeout=10) == 0
            time.sleep(0.5)
        finally:
            assert watch.stop() == 0, "".join(watch.stderr)
        (row,) = _rows(db, "qname = 'www.example.test'")
        assert (row["status"], row["comm"], row["netns"]) == ("answered", "dig",
                                                              os.stat(f"/var/run/netns/{lab.client}").st_ino)
        assert row["pid"] is not None
        frames, duplicates, dropped, _ = _capture(db)
        # the query as dig sent it and the response as unbound sent it went up; their other sightings did not
        assert (frames, duplicates, dropped) == (2, 2, 0)


def test_a_retransmitted_query_is_still_an_attempt(tmp_path):
    require_privileges()
    sender = ("import socket, sys, time\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "q = bytes.fromhex(sys.argv[1])\n"
              "for pause in (0, 0.005, 0.3):\n"
              "    time.sleep(pause); s.sendto(q, ('198.18.1.3', 53))\n")
    with server_and_client() as lab:
        lab.run(lab.server, "ip", "addr", "add", "198.18.1.3/24", "dev", f"{lab.tag}a1")  # nobody answers there
        db = tmp_path / "retry.db"
        watch = Watch(lab, None, db, "--all-netns", "--responses", "-q")
        try:
            time.sleep(0.3)
            lab.run(lab.client, sys.executable, "-c", sender, _query(0x5151).hex())
            time.sleep(0.5)
        finally:
            assert watch.stop() == 0, "".join(watch.stderr)
        (row,) = _rows(db, "dns_id = ?", (0x5151,))
        # three attempts, 5 ms and 300 ms apart, each seen in C and again in S: three attempts, three copies
        assert (row["attempts"], row["status"]) == (3, "unanswered")
        frames, duplicates, _, notes = _capture(db)
        assert (frames, duplicates, notes["retries"]) == (3, 3, 2)


def test_a_copy_after_nat_still_reaches_user_space(tmp_path):
    """C -> router N (DNAT of a service VIP to S) -> S. The query rewritten by N, and the response un-rewritten,
    are new packets: they go up, and the lookups stage pairs the query with its rewritten copy (nat_dst)."""
    require_privileges()
    vip = "198.18.60.10"
    lab = Lab()
    try:
        client, router, server = lab.netns("C"), lab.netns("N"), lab.netns("S")
        a = lab.link(router, client, 1)
        b = lab.link(router, server, 2)
        lab.run(client, "ip", "route", "add", "default", "via", a["a4"])
        lab.run(server, "ip", "route", "add", "default", "via", b["a4"])
        lab.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        lab.unbound(server, [b["b4"]])
        rules = (f"table ip {lab.tag}svc {{\n chain pre {{\n  type nat hook prerouting priority -100;\n"
                 f"  ip daddr {vip} udp dport 53 dnat to {b['b4']}\n }}\n}}\n")
        (lab.tmp / "svc.nft").write_text(rules)
        lab.run(router, "nft", "-f", str(lab.tmp / "svc.nft"))
        db = tmp_path / "nat.db"
        watch = Watch(lab, None, db, "--all-netns", "--responses", "--lookups", "-q")
        try:
            time.sleep(0.3)
            out = lab.run(client, "dig", "+short", "+tries=1", "+time=2", f"@{vip}", "www.example.test", "A").stdout
            assert "198.18.0.80" in out
            time.sleep(0.5)
        finally:
            assert watch.stop() == 0, "".join(watch.stderr)
        (row,) = _rows(db, "qname = 'www.example.test'")
        assert (row["src"], row["dst"], row["nat_dst"], row["status"], row["comm"]) == (
            a["b4"], vip, b["b4"], "answered", "dig")
        frames, duplicates, dropped, _ = _capture(db)
        # up: the query in C and after DNAT in N, the response in S and after un-DNAT in N; the 4 others dropped
        assert (frames, duplicates, dropped) == (4, 4, 0)
    finally:
        lab.close()
