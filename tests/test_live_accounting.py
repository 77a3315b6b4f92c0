"""Live loss accounting and ordering (root, bcc): every lost event counted once at its stage, and matching
that does not depend on the order the per-CPU perf buffers are read in."""
from __future__ import annotations

import json
import sqlite3
import struct
import sys
import time

import pytest

from netlab import Watch, require_privileges, server_and_client

pytestmark = pytest.mark.privileged


def dns_query(i: int, name: bytes = b"\x04loss\x07example\x04test\x00") -> bytes:
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"


def test_kernel_counts_the_dns_it_drops_by_reason():
    """Payloads shorter than a DNS header and too many questions: dropped in the kernel, counted there."""
    require_privileges()
    from scapy.all import IP, UDP, Ether

    from dnswatch.sources.bpf_testrun import FilterRunner

    def udp(payload: bytes, dport: int = 53) -> bytes:
        return bytes(Ether() / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=40000, dport=dport) / payload)

    too_many = struct.pack("!HHHHHH", 1, 0x0100, 17, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 17
    with FilterRunner((53,), False) as runner:
        before = runner.filter.counters()
        kept = runner.run([udp(b""), udp(b"x" * 7), udp(b"x" * 11), udp(b"x" * 11, dport=9999), udp(too_many),
                           udp(dns_query(1))])
        after = runner.filter.counters()
    assert kept == [False, False, False, False, False, True]
    delta = {k: after[k] - before[k] for k in after}
    assert delta["kernel_skip_short"] == 3  # not the one to port 9999: not DNS
    assert delta["kernel_skip_qdcount"] == 1
    assert delta["kernel_kept"] == 1 and delta["emit_failures"] == 0


@pytest.fixture
def lab():
    require_privileges()
    with server_and_client() as lab:
        yield lab


def test_ring_buffer_losses_are_counted_once(lab):
    """A burst into the smallest ring buffer, read only afterwards: what is not captured is exactly what the
    kernel counted as lost (each record it had no room for, once)."""
    from dnswatch.pipeline import Pipeline
    from dnswatch.sources.live import LiveCapture
    from dnswatch.watch import _losses

    n = 3000
    cap = LiveCapture(netns=[f"/var/run/netns/{lab.client}"], page_cnt=1, wakeup_events=1 << 20)
    cap.open()
    try:
        sender = ("import socket, struct\n"
                  "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  f"for i in range({n}):\n"
                  "    s.sendto(struct.pack('!HHHHHH', i, 0x0100, 1, 0, 0, 0) + "
                  "b'\\x04loss\\x07example\\x04test\\x00\\x00\\x01\\x00\\x01', ('198.18.1.1', 53))\n")
        lab.run(lab.client, sys.executable, "-c", sender)
        pipeline = Pipeline(None, "live", "test", expect_responses=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pipeline.feed_all(cap.poll(50))
            if cap.stats()["emit_failures"] + pipeline.correlator.queries >= n:
                break
        pipeline.feed_all(cap.drain())
        pipeline.source_losses, pipeline.source_lost_responses = _losses(cap)
        stats = cap.stats()
    finally:
        cap.close()
    s = pipeline.finish("complete")
    assert stats["emit_failures"] > 0, "the burst did not overflow one page: the test proves nothing"
    assert s.queries + stats["emit_failures"] == n
    assert s.dropped == stats["emit_failures"] == s.losses["kernel_perf_buffer"]
    assert stats["kernel_kept"] == n and s.lost_responses == {"kernel_perf_buffer": 0}  # all were queries


def test_short_payloads_live_are_counted(lab, tmp_path):
    db = tmp_path / "short.db"
    watch = Watch(lab, lab.client, db, "--quiet")
    try:
        lab.run(lab.client, sys.executable, "-c", (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for n in (0, 5, 11):\n"
            "    s.sendto(b'x' * n, ('198.18.1.1', 53))\n"))
        time.sleep(0.3)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    con = sqlite3.connect(db)
    dropped, notes = con.execute("select dropped, notes from captures").fetchone()
    losses = json.loads(notes)["losses"]
    assert losses["kernel_short_payload"] == 3 and dropped == 3 and losses["kernel_perf_buffer"] == 0
    assert "3 lost (kernel ring buffer 0, kernel short payload 3" in "".join(watch.stderr)


def test_no_split_transactions_under_load(lab, tmp_path):
    """dnsperf -> unbound with client and server on different CPUs, so queries and responses land in different
    per-CPU buffers: no transaction may come out as an unanswered query plus a response_only row."""
    server = lab.unbound(lab.server, ["198.18.1.1"])
    lab.run(None, "taskset", "-a", "-p", "-c", "1", str(server.pid))
    data = tmp_path / "names.txt"
    data.write_text("www.example.test A\napi.example.test A\nmail.example.test MX\nnope.example.test A\n")
    db = tmp_path / "load.db"
    watch = Watch(lab, lab.server, db, "--responses", "--quiet")
    try:
        lab.run(lab.client, "taskset", "-c", "0", "dnsperf", "-s", "198.18.1.1", "-d", str(data), "-Q", "10000",
                "-l", "3", "-c", "2", "-q", "500", "-t", "2", timeout=40)
        time.sleep(1.0)
    finally:
        assert watch.stop() == 0, "".join(watch.stderr)
    con = sqlite3.connect(db)
    answered = con.execute("select count(*) from queries where status = 'answered'").fetchone()[0]
    split = con.execute(
        "select count(*) from queries u join queries r on u.src = r.src and u.sport = r.sport and u.dns_id = r.dns_id "
        "and u.qname = r.qname and u.status = 'unanswered' and r.status = 'response_only'").fetchone()[0]
    assert answered > 20000 and split == 0
