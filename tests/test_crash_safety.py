"""kill -9 during replay leaves a log that opens and passes integrity_check; query never hits 'database is
locked' while replay writes."""
from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time

import pytest

from conftest import PCAPS
from dnswatch.sources.pcap import read_frames


@pytest.fixture(scope="module")
def big_capture(tmp_path_factory):
    """~300k frames: the dnsperf capture repeated with shifted timestamps."""
    frames = list(read_frames(str(PCAPS / "dnsperf_small.pcap")))
    path = tmp_path_factory.mktemp("big") / "big.pcap"
    t0 = frames[0].ts
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for rep in range(420):
            for f in frames:
                ts = f.ts - t0 + rep + 1.7e9
                out.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(f.data), len(f.data)) + f.data)
    return path


def _start_replay(capture, db):
    return subprocess.Popen([sys.executable, "-m", "dnswatch", "replay", str(capture), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _rows(db) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        return con.execute("select count(*) from queries").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_9_leaves_a_sound_log(tmp_path, big_capture):
    db = tmp_path / "k.db"
    proc = _start_replay(big_capture, db)
    deadline = time.monotonic() + 60
    while _rows(db) < 20000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "replay finished before it could be killed; make the capture bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    n = con.execute("select count(*) from queries").fetchone()[0]
    assert n >= 20000
    status = con.execute("select status from captures").fetchone()[0]
    assert status == "running"  # never marked complete: a reader can tell the run was cut short


def test_query_while_replay_writes(tmp_path, big_capture):
    db = tmp_path / "c.db"
    proc = _start_replay(big_capture, db)
    try:
        deadline = time.monotonic() + 60
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        queries = 0
        while proc.poll() is None and time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-m", "dnswatch", "query",
                                  "select count(*) n, max(ts) from queries", "--db", str(db)],
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            assert "locked" not in out.stderr
            queries += 1
        assert queries >= 3
    finally:
        proc.kill()
        proc.wait()
