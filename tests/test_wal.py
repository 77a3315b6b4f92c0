"""The WAL stays bounded while the log is written, and shrinks once a reader that held it long goes away (a
query stalled on a full pipe keeps its snapshot, and SQLite cannot start the WAL over meanwhile). Limits are
lowered here so that a few thousand rows show it; the writer process of a bulk load inherits them."""
from __future__ import annotations

import os
import sqlite3
import time

import pytest

from dnswatch import store as store_module
from dnswatch.schema import QUERY_COLUMNS
from dnswatch.store import Store

LIMIT = 256 << 10


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    monkeypatch.setattr(store_module, "WAL_LIMIT", LIMIT)
    monkeypatch.setattr(store_module, "MAX_WAL_FRAMES", 64)
    monkeypatch.setattr(store_module, "TRUNCATE_EVERY", 0.1)
    monkeypatch.setattr(store_module, "BATCH_ROWS", 500)


def _rows(n: int, start: int, width: int):
    out = []
    for i in range(start, start + n):
        row = [None] * len(QUERY_COLUMNS)
        row[:8] = [1.7e9 + i, 1, "198.18.0.2", 40000 + i % 20000, "198.18.0.1", 53, "udp", i & 0xFFFF]
        row[8] = f"name-{i}.padding-{'x' * 60}.example.test"
        out.append(row[:width] if width < len(QUERY_COLUMNS) else row)
    return out


def _wal(db) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except FileNotFoundError:
        return 0


def _write(store: Store, batches: int, start: int) -> int:
    for b in range(batches):
        for row in _rows(500, start + b * 500, len(QUERY_COLUMNS)):
            store.add(row)
        store.flush()
        if store._writer is None:
            time.sleep(0.02)  # live batches come once a second: the checkpointer keeps up between them
    return start + batches * 500


@pytest.mark.parametrize("bulk", [True, False], ids=["replay", "watch"])
def test_wal_is_bounded_without_readers(tmp_path, bulk):
    db = tmp_path / "b.db"
    with Store(str(db), live_columns=not bulk, bulk=bulk) as store:
        store.start_capture("pcap", "test", {})
        biggest, n, last, one_batch = 0, 0, 0, 1
        for _ in range(40):
            n = _write(store, 1, n)
            time.sleep(0.01)  # the checkpointer runs beside the writer
            now = _wal(db)
            one_batch = max(one_batch, now - last)  # what one batch adds: its rows, names, indexes and sums
            biggest, last = max(biggest, now), now
    # the limit, plus the CHECKPOINT_EVERY batches before a checkpoint (and the one being written): flat, however
    # many batches come
    assert biggest <= LIMIT + (store_module.CHECKPOINT_EVERY + 2) * one_batch, (biggest, one_batch)
    assert _wal(db) == 0  # closed: checkpointed and gone


@pytest.mark.parametrize("bulk", [True, False], ids=["replay", "watch"])
def test_wal_shrinks_once_a_stalled_reader_goes(tmp_path, bulk):
    db = tmp_path / "s.db"
    with Store(str(db), live_columns=not bulk, bulk=bulk) as store:
        store.start_capture("pcap", "test", {})
        n = _write(store, 2, 0)
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        reader.execute("begin")
        assert reader.execute("select count(*) from queries").fetchone()[0] == 1000  # its snapshot, kept
        n = _write(store, 20, n)
        grown = _wal(db)
        assert grown > 4 * LIMIT  # the reader's snapshot held it: SQLite had to append
        reader.execute("commit")  # the reader goes on reading, but no longer from that snapshot
        deadline = time.monotonic() + 5
        while _wal(db) > LIMIT and time.monotonic() < deadline:  # no writes needed: the checkpointer truncates
            time.sleep(0.05)
        assert _wal(db) <= LIMIT, (grown, _wal(db))
        n = _write(store, 10, n)  # and it stays bounded afterwards: the limit and a few batches (20 made `grown`)
        assert _wal(db) <= LIMIT + (store_module.CHECKPOINT_EVERY + 2) * grown / 20, (_wal(db), grown)
        assert reader.execute("select count(*) from queries").fetchone()[0] == n
    # the writer closed while the reader stayed connected: it emptied the WAL anyway
    assert _wal(db) == 0
    reader.close()


def test_a_long_wal_left_by_an_earlier_run_is_emptied_at_the_next_start(tmp_path):
    db = tmp_path / "l.db"
    with Store(str(db)) as store:
        store.start_capture("live", "test", {})
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        reader.execute("begin")
        reader.execute("select count(*) from queries").fetchone()
        _write(store, 20, 0)
    reader.execute("commit")
    assert _wal(db) > 4 * LIMIT  # the reader held it through the writer's close
    reader.close()  # a reader cannot checkpoint: the WAL stays until a writer comes
    assert _wal(db) > 4 * LIMIT
    with Store(str(db)):
        assert _wal(db) <= LIMIT


def test_a_query_stalled_on_a_full_pipe_does_not_hold_the_wal(tmp_path):
    """`query | slow-reader`: the pipe fills, the rest goes to a spool and the query's read transaction ends,
    so a writer can empty the WAL while the output waits to be read. Then every row arrives."""
    import json
    import subprocess
    import sys

    from conftest import PCAPS, replay

    db = tmp_path / "q.db"
    replay(db, PCAPS / "dnsperf_small.pcap")
    total = sqlite3.connect(db).execute("select count(*) from queries").fetchone()[0]
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("pragma wal_autocheckpoint = 0")
    proc = subprocess.Popen([sys.executable, "-m", "dnswatch", "query", "select * from queries", "--nl", "--db",
                             str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # nobody reads: the pipe (64 KiB) is full long before the ~400 KB of rows are out
        assert proc.poll() is None  # still waiting to write the rest
        writer.execute("insert into captures (kind) values ('meanwhile')")
        writer.execute("pragma busy_timeout = 200")
        blocked, _log, _done = writer.execute("pragma wal_checkpoint(truncate)").fetchone()
        assert blocked == 0 and _wal(db) == 0  # no reader holds a snapshot any more
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        writer.close()
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == total > 300 and all(json.loads(line)["id"] for line in lines)


@pytest.mark.parametrize("fmt", ["--nl", "--json", "--csv", "--table"])
@pytest.mark.parametrize("spooled", [False, True], ids=["reading", "spooled"])
def test_a_query_stops_when_its_reader_goes_away(tmp_path, fmt, spooled):
    """`query ... | head -1`: once the reader has gone the query stops (spooled or not: a spooled one looks at the
    pipe as it spools) and the process ends quietly, as a command whose output pipe broke (SIGPIPE: 141 in a
    shell). The statement here would run for hours to its end; the table format reads every row first, so it
    gets a short one."""
    import signal
    import subprocess
    import sys

    from conftest import PCAPS, replay

    db = tmp_path / "q.db"
    replay(db, PCAPS / "dnsperf_small.pcap")
    rows = 40000 if fmt == "--table" else 10 ** 10  # (a table of 40,000 rows is more than a pipe holds)
    sql = f"with recursive r(i) as (select 1 union all select i + 1 from r where i < {rows}) select i from r"
    proc = subprocess.Popen([sys.executable, "-m", "dnswatch", "query", sql, fmt, "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if spooled:
            time.sleep(1.0)  # nobody reads: the pipe fills, the rest goes to the spool
        assert proc.stdout.readline()
        proc.stdout.close()
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGPIPE and err == b""
