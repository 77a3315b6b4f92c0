"""Every way of ending a capture sets its status and keeps its rows: signals (a flag, never an exception),
errors ('failed' with the reason), for `watch`'s loop (a fake capture here; tests/test_signals.py has the real
one under load) and for `replay`."""
from __future__ import annotations

import json
import os
import signal
import sqlite3

import pytest

from dnswatch.model import LINKTYPE_RAW, Frame
from dnswatch.pipeline import Pipeline
from dnswatch.stop import StopSignals
from dnswatch.store import Store
from dnswatch.watch import run_watch


def _query_frame(i: int, ts: float) -> Frame:
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, UDP

    pkt = IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=40000 + i, dport=53) / DNS(id=i, qd=DNSQR(qname=f"n{i}.example.test"))
    return Frame(ts, LINKTYPE_RAW, bytes(pkt))


class FakeCapture:
    """Hands out ``per_poll`` frames per poll; ``signal_at``: the poll during which a signal arrives (as it would in
    bcc's perf callback); ``fail_at``: the poll that raises."""

    def __init__(self, total: int, per_poll: int = 10, signal_at=None, signum=signal.SIGINT, fail_at=None):
        self.frames = [_query_frame(i, 1.7e9 + i * 0.001) for i in range(total)]
        self.per_poll, self.signal_at, self.signum, self.fail_at = per_poll, signal_at, signum, fail_at
        self.polls = 0
        self.detached = self.closed = False
        self.after_detach = 0  # frames handed out after detach (must be the backlog only)

    def poll(self, _timeout_ms):
        self.polls += 1
        if self.fail_at == self.polls:
            raise RuntimeError("the capture broke")
        batch, self.frames = self.frames[:self.per_poll], self.frames[self.per_poll:]
        if self.signal_at == self.polls:
            os.kill(os.getpid(), self.signum)  # the handler runs here, in the middle of the read
            assert self.detached, "the handler detaches at once"
        return batch

    def detach(self):
        self.detached = True

    def stop(self):
        self.detach()
        backlog, self.frames = self.frames[:25], []  # what the kernel had kept before the detach
        return backlog

    def stats(self):
        return {"lost_samples": 0}

    def close(self):
        self.closed = True


def _capture_row(db):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return dict(con.execute("select * from captures").fetchone()), con.execute("select count(*) from queries").fetchone()[0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_in_the_perf_read_stops_cleanly(tmp_path, signum):
    db = tmp_path / "w.db"
    capture = FakeCapture(200, signal_at=3, signum=signum)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with Store(str(db)) as store:
        pipeline = Pipeline(store, "live", "fake", expect_responses=False)
        summary = run_watch(capture, pipeline)
    assert capture.polls == 3 and capture.closed
    # 3 polls of 10, then the 25 the kernel had kept: every one stored, none lost to the signal
    assert summary.queries == summary.rows == 55
    cap, rows = _capture_row(db)
    assert (cap["status"], cap["queries"], rows) == ("interrupted", 55, 55) and cap["ended"]
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_an_error_records_failed(tmp_path):
    db = tmp_path / "f.db"
    capture = FakeCapture(100, fail_at=4)
    with Store(str(db)) as store:
        pipeline = Pipeline(store, "live", "fake", expect_responses=False)
        with pytest.raises(RuntimeError):
            run_watch(capture, pipeline)
    cap, rows = _capture_row(db)
    assert (cap["status"], cap["queries"], rows) == ("failed", 55, 55) and cap["ended"]
    assert json.loads(cap["notes"])["error"] == "RuntimeError: the capture broke"
    assert capture.closed


def test_ignored_signals_stay_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested and stop.name == "SIGINT"
            os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing
            assert stop.name == "SIGINT"
    finally:
        signal.signal(signal.SIGHUP, old)


# -- replay ------------------------------------------------------------------------------------------

def _raw_query(i: int) -> bytes:
    """IPv4/UDP/DNS query number i (distinct source port and id), built by hand: scapy is too slow for thousands."""
    import socket
    import struct

    dns = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + b"\x01q\x07example\x04test\x00\x00\x01\x00\x01"
    udp = struct.pack("!HHHH", 1024 + (i >> 16) * 7 + i % 50000, 53, 8 + len(dns), 0) + dns
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton("198.18.0.2"),
                     socket.inet_aton("198.18.0.1"))
    return ip + udp


def _pcap_records(n: int, first: int = 0) -> bytes:
    import struct

    out = []
    for i in range(first, first + n):
        data = _raw_query(i)
        ts = 1.7e9 + i * 0.001
        out.append(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(data), len(data)) + data)
    return b"".join(out)


PCAP_HEADER_RAW = __import__("struct").pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # LINKTYPE_RAW


def _slow_replay(tmp_path, per_tick: int = 50, tick: float = 0.05):
    """`dnswatch replay -` fed ``per_tick`` frames every ``tick`` seconds from a thread; returns (proc, fed)."""
    import subprocess
    import sys
    import threading
    import time

    db = tmp_path / "slow.db"
    proc = subprocess.Popen([sys.executable, "-m", "dnswatch", "replay", "-", "--db", str(db), "--no-progress"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fed = {"n": 0, "log": [], "stop": False}

    def feed():
        try:
            proc.stdin.write(PCAP_HEADER_RAW)
            while not fed["stop"] and fed["n"] < 200_000:
                proc.stdin.write(_pcap_records(per_tick, fed["n"]))
                proc.stdin.flush()
                fed["n"] += per_tick
                fed["log"].append((time.monotonic(), fed["n"]))
                time.sleep(tick)
        except (BrokenPipeError, ValueError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    return db, proc, fed


def _captures(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("select * from captures")], \
            con.execute("select count(*) from queries").fetchone()[0]
    finally:
        con.close()


def test_replay_counters_stay_current(tmp_path):
    import time

    db, proc, fed = _slow_replay(tmp_path)
    try:
        time.sleep(2.5)
        now = time.monotonic()
        caps, rows = _captures(db)
        # every frame fed more than 1.2 s ago is counted (rows follow when their queries time out)
        old = max(n for t, n in fed["log"] if t < now - 1.2)
        assert caps[0]["status"] == "running"
        assert caps[0]["frames"] >= old and caps[0]["queries"] >= old, (caps[0], old)
    finally:
        fed["stop"] = True
        time.sleep(0.2)
        proc.stdin.close()
        proc.wait(timeout=30)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    caps, rows = _captures(db)
    assert caps[0]["status"] == "complete" and caps[0]["frames"] == fed["n"] and rows == fed["n"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_replay_records_and_summarises(tmp_path, signum):
    import re
    import time

    db, proc, fed = _slow_replay(tmp_path)
    try:
        time.sleep(1.0)
        proc.send_signal(signum)
        proc.wait(timeout=10)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        fed["stop"] = True
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    name = signal.Signals(signum).name
    assert f"interrupted by {name}" in err.decode() and b"Traceback" not in err
    m = re.search(rb"(\d[\d,]*) frames, .* (\d[\d,]*) rows, .*; interrupted", out)
    assert m, out
    caps, rows = _captures(db)
    frames, summary_rows = (int(g.replace(b",", b"")) for g in m.groups())
    assert (caps[0]["status"], caps[0]["frames"], rows) == ("interrupted", frames, summary_rows)
    assert caps[0]["ended"] and 0 < frames <= fed["n"]


@pytest.mark.parametrize("records", [0, 300])
def test_a_signal_ends_replay_from_a_silent_pipe(tmp_path, records):
    """`tcpdump -w - | dnswatch replay -` where the writer goes quiet (or never wrote): the stop still takes effect
    at once, with every frame that came stored."""
    import subprocess
    import sys
    import time

    db = tmp_path / "silent.db"
    proc = subprocess.Popen([sys.executable, "-m", "dnswatch", "replay", "-", "--db", str(db), "--no-progress"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if records:
            proc.stdin.write(PCAP_HEADER_RAW + _pcap_records(records, 0))
            proc.stdin.flush()
        time.sleep(1.5)  # the pipe stays open and silent
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    assert proc.returncode == 1, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err and "Error: -:" not in err, err
    if records:
        caps, rows = _captures(db)
        assert (caps[0]["status"], caps[0]["frames"], rows) == ("interrupted", records, records), out


def test_an_exception_in_replay_records_failed(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from conftest import PCAPS
    from dnswatch import pipeline as pipeline_module
    from dnswatch.cli import cli

    real, calls = pipeline_module.parse_message, {"n": 0}

    def breaks(payload):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("decoder bug")
        return real(payload)

    monkeypatch.setattr(pipeline_module, "parse_message", breaks)
    monkeypatch.setattr(pipeline_module, "DECODED", {})  # no message found decoded already: each goes to breaks()
    db = tmp_path / "e.db"
    result = CliRunner().invoke(cli, ["replay", str(PCAPS / "udp_v4_dig.pcap"), "--db", str(db)])
    assert isinstance(result.exception, RuntimeError)
    assert "; failed" in result.output  # the summary came first
    caps, rows = _captures(db)
    assert caps[0]["status"] == "failed" and caps[0]["ended"]
    assert json.loads(caps[0]["notes"])["error"] == "RuntimeError: decoder bug"


# -- the watch command, on a fake capture (the real one: tests/test_signals.py) ------------------------------

class FakeLive(FakeCapture):
    def __init__(self, **_options):
        super().__init__(100, **FakeLive.behaviour)
        self.on_task = None

    def open(self):
        pass

    def describe(self):
        return "fake"

    def link_socket(self, _inode):
        return None


@pytest.mark.parametrize("how", ["signal", "error"])
def test_watch_prints_its_summary_however_it_ends(tmp_path, monkeypatch, how):
    from click.testing import CliRunner

    from dnswatch.cli import cli
    from dnswatch.sources import live

    FakeLive.behaviour = {"signal_at": 3, "signum": signal.SIGTERM} if how == "signal" else {"fail_at": 4}
    monkeypatch.setattr(live, "LiveCapture", FakeLive)
    db = tmp_path / "w.db"
    result = CliRunner().invoke(cli, ["watch", "--db", str(db), "--quiet"])
    assert "55 queries" in result.stderr and "55 rows stored" in result.stderr, result.stderr
    cap, rows = _capture_row(db)
    if how == "signal":
        assert result.exit_code == 0, result.stderr
        assert (cap["status"], rows) == ("interrupted", 55)
    else:
        assert isinstance(result.exception, RuntimeError)
        assert (cap["status"], rows) == ("failed", 55)


def test_closable_output_stops_once_when_the_reader_goes(tmp_path):
    """`watch | head`: the first write to a closed pipe asks for a stop; later writes are dropped quietly."""
    import os

    from dnswatch.output import ClosableOutput
    from dnswatch.stop import OUTPUT_CLOSED, StopSignals

    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    stop = StopSignals()
    out = ClosableOutput(stream, lambda: stop.request(OUTPUT_CLOSED))
    out.write("first\n")
    out.flush()
    os.close(read_end)
    for _ in range(3):
        out.write("more\n")
        out.flush()
    assert out.closed_by_reader and stop.requested and stop.name == OUTPUT_CLOSED
    stream.close()  # its fd now points at /dev/null: closing flushes nothing into a dead pipe
