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
