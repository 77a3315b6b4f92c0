"""Stopping `dnswatch watch` under load (root, bcc): Ctrl-C (SIGINT) behaves exactly like SIGTERM, every time.

A bounded flood of numbered queries (~40k q/s: the DNS id and the first label, <seq // 65536>.flood.test, number
them; names repeat as on a busy node) leaves namespace C for 198.18.1.1 while
`watch --quiet` runs in C; the signal lands at a random moment of the flood. Each run must stop within a
second, print its summary and store every query the kernel passed up: sequence numbers 0..n-1 with no gap,
at least as many as the sender had sent when the signal left, and the same count in the summary line, in
``captures`` and in the rows.
"""
from __future__ import annotations

import mmap
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab import Lab, Watch, require_privileges, server_and_client

pytestmark = pytest.mark.privileged

RATE = 40_000
RUNS = 20

# The sender publishes how many queries it has sent in the first 8 bytes of a shared file, after each burst.
FLOOD = r"""
import mmap, socket, struct, sys, time
rate, seconds, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with open(path, "r+b") as f:
    shared = mmap.mmap(f.fileno(), 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("198.18.1.1", 53))
burst = max(1, rate // 200)
tail = b"\x05flood\x04test\x00\x00\x01\x00\x01"
sent, start = 0, time.monotonic()
deadline = start + seconds
while time.monotonic() < deadline:
    for _ in range(burst):
        try:
            s.send(struct.pack("!HHHHHH", sent & 0xFFFF, 0x0100, 1, 0, 0, 0) + b"\x02%02x" % (sent >> 16) + tail)
        except ConnectionRefusedError:  # the ICMP port unreachable of an earlier query: nothing listens there
            continue
        sent += 1
    shared[:8] = struct.pack("<Q", sent)
    ahead = start + sent / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
"""


@pytest.fixture
def lab():
    require_privileges()
    with server_and_client() as lab:
        yield lab


def _flood_rows(db: Path):
    con = sqlite3.connect(db)
    try:
        seqs = [int(name.split(".")[0], 16) << 16 | dns_id
                for name, dns_id in con.execute("select qname, dns_id from queries where qname like '%.flood.test'")]
        cap = con.execute("select status, queries, dropped, ended from captures").fetchone()
    finally:
        con.close()
    return sorted(seqs), cap


def _one_run(lab: Lab, tmp: Path, run: int, sig: int) -> dict:
    db = tmp / f"sig{run}.db"
    counter = tmp / f"sent{run}"
    counter.write_bytes(b"\0" * 8)
    watch = Watch(lab, lab.client, db, "--quiet")
    sender = lab.spawn(lab.client, sys.executable, "-c", FLOOD, str(RATE), "4", str(counter))
    try:
        with open(counter, "r+b") as f:
            shared = mmap.mmap(f.fileno(), 8)
        time.sleep(random.uniform(0.4, 1.2))
        sent_before = struct.unpack("<Q", shared[:8])[0]
        t0 = time.monotonic()
        watch.proc.send_signal(sig)
        try:
            rc = watch.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # the signal was swallowed: report it with the other runs
            rc = None
        took = time.monotonic() - t0
    finally:
        sender.kill()
        sender.wait()
        if watch.proc.poll() is None:
            watch.proc.kill()
    time.sleep(0.1)  # the pump threads read the last lines
    seqs, cap = _flood_rows(db)
    stderr = "".join(watch.stderr)
    summary = re.search(r"([\d,]+) queries, .*; ([\d,]+) rows stored", stderr)
    return {"rc": rc, "took": took, "sent_before": sent_before, "seqs": seqs, "cap": cap, "stderr": stderr,
            "summary": tuple(int(g.replace(",", "")) for g in summary.groups()) if summary else None}


def _check(r: dict) -> None:
    seqs, (status, queries, dropped, ended) = r["seqs"], r["cap"]
    assert r["rc"] == 0, r["stderr"]
    assert "Traceback" not in r["stderr"] and "Exception ignored" not in r["stderr"], r["stderr"]
    assert r["took"] < 1.0, f"stopped after {r['took']:.2f}s"
    assert r["sent_before"] > 1000, "the flood did not start"
    assert seqs == list(range(len(seqs))), "a query in the middle of the flood was lost"
    assert len(seqs) >= r["sent_before"], (len(seqs), r["sent_before"])
    assert r["summary"] == (len(seqs), len(seqs)), (r["summary"], len(seqs))
    assert (status, queries, dropped) == ("interrupted", len(seqs), 0) and ended


def test_sigint_under_load_stops_at_once_and_loses_nothing(lab, tmp_path):
    results = [_one_run(lab, tmp_path, i, signal.SIGINT) for i in range(RUNS)]
    failures = []
    for i, r in enumerate(results):
        try:
            _check(r)
        except AssertionError as exc:
            failures.append(f"run {i}: {exc}")
    assert not failures, "\n".join(failures)


def test_sigterm_under_load_is_the_same(lab, tmp_path):
    for i in range(3):
        _check(_one_run(lab, tmp_path, i, signal.SIGTERM))
