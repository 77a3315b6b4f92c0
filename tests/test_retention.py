"""Retention of the dictionary tables: a flood of unique names (what a random-subdomain attack sends) under
--max-size, garbage collection of names, answer sets and senders while a writer runs, `dnswatch prune` at rest."""
from __future__ import annotations

import json
import os
import sqlite3
import time

from logcheck import writer_running
from test_logscale import live_row
from dnswatch.cli import cli
from dnswatch.layout import Retention
from dnswatch.schema import Q
from dnswatch.search import SearchFilters, run_search
from dnswatch.store import Store

BOUND = 3 * 1024 * 1024
DICTIONARIES = ("names", "answer_sets", "answer_items", "senders", "passive_dns", "rollups_hourly", "key_hours")


def flood_row(ts, k, pool=0):
    """Row k of a flood: a name never seen before (with ``pool``: name k % pool, seen again pool rows later, after
    its rows and entries went), answered (a wildcard zone), from one of a few processes."""
    j = k % pool if pool else k
    r = live_row(ts, f"x{j:07x}.victim.example", j, ip=f"198.51.{j // 250 % 250}.{j % 250}", pid=100 + j % 7)
    r[Q["query_size"]] = k  # stored as is: which row this is
    return r


def used_bytes(conn):
    return (conn.execute("pragma page_count").fetchone()[0] - conn.execute("pragma freelist_count").fetchone()[0]) * \
        conn.execute("pragma page_size").fetchone()[0]


def dangling(conn):
    """Ids of kept rows and aggregates that resolve to nothing: [] in a sound log."""
    found = []
    for column, table in (("qname", "names"), ("answers", "answer_sets"), ("sender", "senders"), ("shape", "shapes"),
                          ("src", "strings"), ("nat_dst", "strings")):
        found += [(column, i) for (i,) in conn.execute(
            f"select {column} from query_log where {column} is not null and {column} not in (select id from {table})")]
    found += [("key_hours", k) for (k,) in conn.execute(
        "select key from key_hours where kind = 1 and key not in (select id from names)")]
    found += [("rollups", q) for (q,) in conn.execute(
        "select qname from rollups_hourly where qname != 0 and qname not in (select id from names)")]
    found += [("answer_items", s, q) for s, q in conn.execute(
        "select set_id, qname from answer_items where set_id not in (select id from answer_sets) "
        "or qname not in (select id from names)")]
    return found


def check_rows(conn, pool=0):
    """Every kept row reads back as written (flood_row of its query_size). Returns how many."""
    n = 0
    for k, qname, answers, pid, comm in conn.execute("select query_size, qname, answers, pid, comm from queries"):
        want = flood_row(0, k, pool)
        assert (qname, answers, pid, comm) == (want[Q["qname"]], want[Q["answers"]], want[Q["pid"]],
                                               want[Q["comm"]]), k
        n += 1
    return n


def on_disk(db):
    """The log's bytes on disk: the file and its WAL."""
    return sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))


def counts(conn):
    return {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in ("query_log",) + DICTIONARIES}


def test_unique_name_flood_stays_within_the_size_bound(tmp_path):
    """Before: the dictionaries were never collected, so after ~10,000 unique names the bound deleted every raw
    row and the file went on growing (~550 bytes a name). Now: within the bound, the newest rows kept and whole."""
    db = str(tmp_path / "flood.db")
    store = Store(db, retention=Retention(max_bytes=BOUND, retain_rollups=400 * 86400))
    store.start_capture("live", "test", {})
    t0 = time.time() - 86400
    kept = []
    n = 40_000
    for k in range(n):
        store.add(flood_row(t0 + k * 0.5, k))
        if k % 1000 == 999:  # about what watch writes between two retention steps (once a second)
            store.flush()
            store.prune(seconds=5)
            conn = sqlite3.connect(db)
            assert used_bytes(conn) <= BOUND
            kept.append(counts(conn))
            conn.close()
    store.close()
    assert os.path.getsize(db) <= BOUND + 1024 * 1024  # freed pages are reused
    conn = sqlite3.connect(db)
    assert min(c["query_log"] for c in kept[10:]) >= 3000  # never emptied: BOUND / RAW_FLOOR_BYTES rows at least
    assert max(c["names"] for c in kept) < 20_000  # collected: not the 40,000 written
    newest = conn.execute("select max(query_size) from queries").fetchone()[0]
    assert newest == n - 1
    assert check_rows(conn) == kept[-1]["query_log"]
    assert dangling(conn) == []
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    # the newest names and answers still resolve through search (by name, by answer)
    name = flood_row(0, n - 1)[Q["qname"]]
    cols, rows = run_search(conn, SearchFilters(name=name, limit=10))
    assert [r[cols.index("qname")] for r in rows] == [name]
    cols, rows = run_search(conn, SearchFilters(answer="198.51.159.249", limit=10))  # k = 39999
    assert name in {r[cols.index("qname")] for r in rows}


def test_rows_waiting_for_their_sums_do_not_hold_the_log_above_its_bound(tmp_path):
    """watch writes a batch of rows every fraction of a second and their sums every 10 s: under a flood of unique
    names the rows (and names) of those 10 s could not go, and a bound of a few MB ended several times over (1MB:
    13 MB). Above the bound a retention step writes the sums first: every row but the newest batch may go."""
    db = str(tmp_path / "pending.db")
    store = Store(db, retention=Retention(max_bytes=BOUND, retain_rollups=400 * 86400))
    store.start_capture("live", "test", {})
    t0 = time.time() - 3600
    for k in range(30_000):
        store.add(flood_row(t0 + k * 0.05, k))
        if k % 1800 == 1799:  # a second of the flood between two retention steps, its sums not written yet
            store._write_batch()
            store.prune(seconds=5)
            assert used_bytes(store.conn) <= BOUND
    store.close()
    conn = sqlite3.connect(db)
    assert dangling(conn) == [] and check_rows(conn) > 3000


def test_close_leaves_the_log_within_its_bound(tmp_path, monkeypatch):
    """Nothing pruned at the end of watch: the file stayed above --max-size (and rows older than --retain stayed)
    once watch ended. close() prunes until within the bounds and gives the free pages back, for at most
    SETTLE_SECONDS (store.settled says whether it got there)."""
    from dnswatch import store as store_module

    def filled(name, retention):
        db = str(tmp_path / name)
        store = Store(db, retention=retention)
        store.start_capture("live", "test", {})
        t0 = time.time() - 3600
        for k in range(12_000):  # ~8 MB once summed, no retention step on the way
            store.add(flood_row(t0 + k * 0.25, k))
        store._write_batch()
        return db, store

    db, store = filled("exit.db", Retention(max_bytes=BOUND, retain_rollups=400 * 86400))
    assert used_bytes(store.conn) > 1.3 * BOUND
    store.close()
    assert on_disk(db) <= BOUND
    assert store.settled is True and store.pruned > 0
    conn = sqlite3.connect(db)
    assert dangling(conn) == [] and check_rows(conn) > 3000
    assert conn.execute("select pruned_rows from captures").fetchone()[0] == store.pruned
    # --retain: no row older than it once closed
    db, store = filled("retain.db", Retention(retain=1800, retain_rollups=400 * 86400))
    store.close()
    assert store.settled is True
    oldest, n = sqlite3.connect(db).execute("select min(ts), count(*) from query_log").fetchone()
    assert n and oldest >= time.time() - 1800 - 60
    # the time limit: stopped early, and said so
    monkeypatch.setattr(store_module, "SETTLE_SECONDS", 0.0)
    db, store = filled("late.db", Retention(max_bytes=BOUND, retain_rollups=400 * 86400))
    store.close()
    assert store.settled is False and on_disk(db) > BOUND


POOL = 5000  # names that come back once their rows and entries were deleted, while the writer still caches them


def _flood_writer(db, started, stop):
    """watch's writer: rows of POOL names in turn, flushed every 200 rows."""
    store = Store(db)
    store.start_capture("live", "writer", {})
    k = 0
    t0 = time.time() - 3 * 3600
    while not stop.is_set() and k < 400_000:
        for _ in range(200):
            store.add(flood_row(t0 + k * 0.01, k, POOL))
            k += 1
        store.flush()
        started.set()
        time.sleep(0.01)  # ~10,000 rows a second: the pruner keeps the bound
    store.close()


def test_collection_while_a_writer_runs(tmp_path):
    """Another process prunes (and collects) while watch writes: the writer must never refer to an entry the
    pruner deleted (meta gc_epoch), and every kept row reads back as written."""
    db = str(tmp_path / "live.db")
    Store(db).close()
    with writer_running(_flood_writer, db) as proc:
        pruner = Store(db, retention=Retention(max_bytes=BOUND // 2, retain_rollups=400 * 86400))
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            pruner.prune(seconds=0.2)
        collected = sum(pruner._log.collected.values())
        pruner.close()
    assert proc.exitcode == 0
    conn = sqlite3.connect(db)
    assert collected and conn.execute("select value from meta where key = 'gc_epoch'").fetchone()[0] > 0
    assert check_rows(conn, POOL) > 0
    assert dangling(conn) == []


def test_collection_inside_the_writer(tmp_path):
    """watch's own retention steps between its batches: the writer's caches and templates forget what is
    deleted, the ids its pending sums hold are kept, and every row reads back as written."""
    db = str(tmp_path / "own.db")
    store = Store(db, retention=Retention(max_bytes=BOUND // 2, retain_rollups=400 * 86400))
    store.start_capture("live", "test", {})
    t0 = time.time() - 3 * 3600
    for k in range(30_000):
        store.add(flood_row(t0 + k * 0.3, k, POOL))
        if k % 700 == 699:
            store._write_batch()  # rows in, their sums still pending (as between watch's batches)
            store.prune(seconds=5)
    store.close()
    conn = sqlite3.connect(db)
    assert sum(store._log.collected.values()) > 0
    assert check_rows(conn, POOL) > 1000
    assert dangling(conn) == []
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_prune_command_collects_at_rest(tmp_path, runner):
    db = str(tmp_path / "rest.db")
    t0 = time.time() - 20 * 86400
    with Store(db) as store:
        store.start_capture("live", "test", {})
        for k in range(20_000):
            store.add(flood_row(t0 + k * 86.4, k))  # 20 days of unique names
    before = counts(sqlite3.connect(db))
    result = runner.invoke(cli, ["prune", "--retain", "7d", "--retain-rollups", "14d", "--db", db])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    after = counts(conn)
    assert after["query_log"] == conn.execute("select count(*) from queries where ts >= ?",
                                              (time.time() - 7 * 86400 - 60,)).fetchone()[0]
    # exactly what kept rows and kept key_hours (the rollups of the last 14 days) refer to
    assert after["names"] == conn.execute("select count(*) from (select qname from query_log union "
                                          "select key from key_hours where kind = 1)").fetchone()[0]
    assert after["answer_sets"] == after["answer_items"] == after["query_log"] > 0
    assert conn.execute("select min(last_seen) from passive_dns").fetchone()[0] >= time.time() - 15 * 86400 - 3600
    assert after["names"] < before["names"] and "dictionary entries" in result.output
    assert dangling(conn) == [] and check_rows(conn) == after["query_log"]
    note = json.loads(conn.execute("select notes from captures where kind = 'prune'").fetchone()[0])
    assert note["collected"]["names"] == before["names"] - after["names"]


def test_readers_count_hours_the_bound_took_from_raw_rows(tmp_path):
    """Under a flood the bound takes the aggregates of hours raw rows still cover: top() and the rollup path of
    log_stats then count those hours from the raw rows, and agree with them."""
    from dnswatch.aggregate import top
    from dnswatch.top import log_stats

    db = str(tmp_path / "hours.db")
    store = Store(db, retention=Retention(max_bytes=BOUND, retain_rollups=400 * 86400))
    store.start_capture("live", "test", {})
    t0 = (int(time.time()) // 3600 - 14) * 3600
    for k in range(20_000):  # 11 hours, ~1,800 unique names an hour
        store.add(flood_row(t0 + k * 2.0, k))
        if k % 1000 == 999:
            store.flush()
            store.prune(seconds=5)
    store.close()
    conn = sqlite3.connect(db)
    oldest, newest = conn.execute("select min(ts), max(ts) from query_log").fetchone()
    partial = conn.execute("select value from meta where key = 'aggregates_partial_before'").fetchone()[0]
    assert partial > oldest + 2 * 3600  # whole hours covered by raw rows lost their aggregates
    since, until = oldest, newest + 1
    for key in ("comm", "src", "qtype"):
        raw = dict(conn.execute(f"select {key}, count(*) from queries where ts >= ? and ts < ? group by 1",
                                (since, until)))
        assert dict(top(conn, key, since, until, 10)) == raw
    exact = log_stats(conn, since, until)
    rolled = log_stats(conn, since, until, rollups=True)
    assert rolled.all.count == exact.all.count == conn.execute("select count(*) from query_log").fetchone()[0]


def test_retention_values_that_would_empty_the_log_are_refused(tmp_path, runner):
    """--max-size below an empty log's size, or --retain 0, would delete every row: a clear error instead."""
    db = tmp_path / "keep.db"
    Store(str(db)).close()
    for args, hint in ((["--max-size", "0"], "--max-size"), (["--max-size", "500KB"], "--max-size"),
                       (["--retain", "0"], "--retain"), (["--retain-rollups", "0s"], "--retain-rollups")):
        result = runner.invoke(cli, ["prune", *args, "--db", str(db)])
        assert result.exit_code == 2 and hint in result.output and "Traceback" not in result.output, result.output


def test_a_damaged_log_says_how_to_recover_it(tmp_path, runner):
    db = tmp_path / "damaged.db"
    store = Store(str(db))
    store.add(live_row(time.time(), "a.example", 1))
    store.close()
    data = bytearray(db.read_bytes())
    for at in range(4096, len(data), 4096):  # every page but the header's: its b-tree headers scrambled
        data[at:at + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))
    result = runner.invoke(cli, ["prune", "--retain", "7d", "--db", str(db)])
    assert result.exit_code == 1 and "damaged" in result.output and ".recover" in result.output, result.output
