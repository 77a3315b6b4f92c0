"""The writer process of a bulk load (Store(..., bulk=True), what replay uses): rows arrive complete and in
order, its errors come back as StoreError, and it never outlives its parent."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import dnswatch.store as store
from dnswatch.schema import QUERY_COLUMNS, Q
from dnswatch.store import Store, StoreError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="bulk mode needs fork")


def _row(capture_id: int, i: int) -> list:
    row = [None] * len(QUERY_COLUMNS)
    row[Q["ts"]], row[Q["capture_id"]] = 1.7e9 + i, capture_id
    row[Q["dns_id"]], row[Q["qname"]] = i & 0xFFFF, f"n{i}.test"
    return row


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_rows_complete_and_in_order(tmp_path):
    path = tmp_path / "b.db"
    s = Store(str(path), live_columns=False, bulk=True)
    pid = s._writer.pid
    cid = s.start_capture("pcap", "x", {})
    n = store.BATCH_ROWS * 3 + 123  # whole batches, whole multi-row INSERTs and a remainder
    for i in range(n):
        s.add(_row(cid, i))
    s.update_capture(cid, {"frames": n, "status": "complete"})
    s.close()
    assert _gone(pid)
    assert not os.path.exists(str(path) + "-wal")  # the last connection checkpointed and removed it
    con = sqlite3.connect(path)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    got = con.execute("select id, dns_id, qname, pid from queries order by id").fetchall()
    assert [r[1] for r in got] == [i & 0xFFFF for i in range(n)]
    assert got[-1][2] == f"n{n - 1}.test" and all(r[3] is None for r in got)
    assert con.execute("select frames, status from captures").fetchone() == (n, "complete")


def test_open_error_is_a_store_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="not a dnswatch/SQLite database"):
        Store(str(bad), live_columns=False, bulk=True)


def test_write_error_comes_back(tmp_path, monkeypatch):
    real = store._Log.write
    calls = []

    def failing(self, rows, malformed, *args, **kwargs):  # the child inherits this through fork
        calls.append(1)
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        real(self, rows, malformed, *args, **kwargs)

    monkeypatch.setattr(store._Log, "write", failing)
    s = Store(str(tmp_path / "f.db"), live_columns=False, bulk=True)
    cid = s.start_capture("pcap", "x", {})
    with pytest.raises(StoreError, match="disk is full"):
        for i in range(store.BATCH_ROWS * 10):
            s.add(_row(cid, i))
        s.flush()
    with pytest.raises(StoreError):
        s.close()
    assert s._writer.pid is None  # reaped


def test_writer_killed_is_a_store_error(tmp_path):
    s = Store(str(tmp_path / "k.db"), live_columns=False, bulk=True)
    cid = s.start_capture("pcap", "x", {})
    os.kill(s._writer.pid, signal.SIGKILL)
    with pytest.raises(StoreError, match="ended unexpectedly"):
        for i in range(store.BATCH_ROWS * 4):
            s.add(_row(cid, i))
        s.flush()


def test_writer_dies_with_its_parent(tmp_path):
    db = tmp_path / "p.db"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_store_bulk import _row
        from dnswatch.store import Store
        s = Store({str(db)!r}, live_columns=False, bulk=True)
        cid = s.start_capture("pcap", "x", {{}})
        for i in range(12000):
            s.add(_row(cid, i))
        s.flush()
        print(s._writer.pid, flush=True)
        for i in range(12000, 14000):
            s.add(_row(cid, i))  # the batch being filled: lost with the parent
        time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        writer = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
    assert _gone(writer), "the writer process outlived its parent"
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert con.execute("select count(*) from queries").fetchone()[0] == 12000
