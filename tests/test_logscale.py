"""The log at scale: retention, rollups and passive DNS against the raw rows, export while writing, a full disk,
migration of a round-1 log, domain search and top()."""
from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import IN_CI, PCAPS, ROOT, replay
from dnswatch.aggregate import raw_counts, top
from dnswatch.cli import cli
from dnswatch.layout import Retention
from dnswatch.maintain import export, parse_duration, parse_size
from dnswatch.schema import QUERY_COLUMNS, Q, SCHEMA_VERSION
from dnswatch.store import Store
from logcheck import rollups_and_rows, writer_running

NAMES = ["www.example.com", "example.com", "api.example.com", "a.b.example.com", "myexample.com",
         "WWW.Example.COM", "x.example.org", "api-1.shop.example.net", "cdn.example.net", "example.comx"]


def live_row(ts, name, i=0, status="answered", ip=None, pid=100, pod="web-1"):
    r = [None] * len(QUERY_COLUMNS)
    r[Q["ts"]], r[Q["src"]], r[Q["sport"]], r[Q["dst"]], r[Q["dport"]], r[Q["proto"]] = (
        ts, "10.0.0.2", 40000 + i % 1000, "10.0.0.1", 53, "udp")
    r[Q["dns_id"]], r[Q["qname"]], r[Q["qtype"]], r[Q["qtype_num"]], r[Q["status"]] = i % 65536, name, "A", 1, status
    r[Q["pid"]], r[Q["comm"]], r[Q["pod"]], r[Q["pod_namespace"]] = pid, f"cmd{pid % 3}", pod, "shop"
    if status == "answered":
        r[Q["rcode"]], r[Q["rcode_num"]], r[Q["latency_ms"]] = "NOERROR", 0, round(0.1 + (i % 7) / 10, 3)
        r[Q["answers"]] = json.dumps([{"name": name, "type": "A", "ttl": 60, "data": ip or f"198.51.100.{i % 5}"}])
    return r


def count(db, sql, *params):
    return sqlite3.connect(db).execute(sql, params).fetchone()[0]


def test_parse_options():
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90m") == 5400 and parse_duration("30") == 30
    assert parse_size("20GB") == 20 * 10 ** 9 and parse_size("1.5GiB") == int(1.5 * 2 ** 30)
    with pytest.raises(ValueError):
        parse_size("lots")


def test_retention_keeps_exactly_the_window(tmp_path):
    db = str(tmp_path / "r.db")
    now = time.time()
    store = Store(db, retention=Retention(retain=3600))
    cap = store.start_capture("live", "test", {})
    stamps = [now - 7200 + k * 1.7 for k in range(4000)]  # two hours, oldest first, as watch writes them
    for k, ts in enumerate(stamps):
        store.add(live_row(ts, NAMES[k % len(NAMES)], k))
        if k % 500 == 499:
            store.flush()
            store.prune()  # what maybe_flush does every second in watch
            cutoff = time.time() - 3600
            kept = [t for t in stamps[:k + 1] if t >= cutoff]
            assert count(db, "select count(*) from queries where ts < ?", cutoff) == 0
            assert count(db, "select count(*) from queries") >= len(kept)  # nothing inside the window deleted
    store.flush()
    store.prune()
    cutoff = time.time() - 3600
    assert count(db, "select count(*) from queries") == len([t for t in stamps if t >= cutoff])
    pruned = sqlite3.connect(db).execute("select pruned_rows, pruned_before from captures where id = ?", (cap,)).fetchone()
    assert pruned[0] == len([t for t in stamps if t < cutoff]) and pruned[1] < cutoff
    # rollups and passive DNS are not pruned with the raw rows
    assert count(db, "select sum(count) from rollups_hourly") == len(stamps)
    store.close()


def test_retention_keeps_the_size_bound(tmp_path):
    db = str(tmp_path / "s.db")
    bound = 3 * 1024 * 1024
    store = Store(db, retention=Retention(max_bytes=bound))
    store.start_capture("live", "test", {})
    now = time.time() - 86400
    sizes = []
    for k in range(60_000):
        store.add(live_row(now + k, f"host{k % 400}.example.com", k))
        if k % 2000 == 1999:
            store.flush()
            store.prune(seconds=5)
            conn = sqlite3.connect(db)
            used = (conn.execute("pragma page_count").fetchone()[0] - conn.execute("pragma freelist_count").fetchone()[0])
            sizes.append(used * 4096)
            assert used * 4096 <= bound
    store.close()
    assert max(sizes) <= bound and os.path.getsize(db) <= bound + 1024 * 1024  # freed pages are reused
    conn = sqlite3.connect(db)
    ids = [r[0] for r in conn.execute("select ts from queries order by ts")]
    assert ids[-1] == now + 59_999 and ids == sorted(ids) and len(ids) == ids[-1] - ids[0] + 1  # the newest, no gaps
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_prune_command_on_a_log_at_rest(tmp_path, runner):
    db = str(tmp_path / "p.db")
    now = time.time()
    with Store(db) as store:
        store.start_capture("live", "test", {})
        for k in range(1000):
            store.add(live_row(now - 86400 * 10 + k * 864, "www.example.com", k))
    result = runner.invoke(cli, ["prune", "--retain", "5d", "--db", db])
    assert result.exit_code == 0, result.output
    assert count(db, "select count(*) from queries where ts < ?", now - 5 * 86400 - 60) == 0
    n = count(db, "select count(*) from queries")
    assert 490 <= n <= 510 and f"{1000 - n:,} rows pruned" in result.output
    assert count(db, "select pruned_rows from captures where kind = 'prune'") == 1000 - n


def test_rollups_and_passive_dns_agree_with_raw_rows(tmp_path):
    db = tmp_path / "a.db"
    replay(db, *[p for p in sorted(PCAPS.glob("*.pcap")) if "hostile" not in p.name][:12])
    now = time.time()
    rng = random.Random(5)
    with Store(str(db)) as store:
        store.start_capture("live", "test", {})
        for k in range(3000):
            status = rng.choice(["answered"] * 8 + ["unanswered"])
            store.add(live_row(now - rng.uniform(0, 5 * 3600), rng.choice(NAMES), k, status, pid=rng.choice([1, 2, 3]),
                               pod=rng.choice(["web-1", "web-2", None])))
    conn = sqlite3.connect(db)
    rolled, raw = rollups_and_rows(conn)
    assert raw and rolled == raw
    for key in ("qname", "comm", "pod", "rcode", "src"):
        by_key = Counter(dict(conn.execute(
            f"select {key} collate binary, count(*) from queries where {key} is not null group by 1")))
        column, table = ("name", "names") if key == "qname" else ("s", "strings")
        kind = {"qname": 1, "comm": 2, "pod": 3, "rcode": 5, "src": 7}[key]
        assert dict(conn.execute(f"select (select {column} from {table} where id = key), sum(n) from key_hours "
                                 f"where kind = {kind} group by key")) == by_key
    raw_pdns = conn.execute(
        "select a.value->>'name', a.value->>'type', a.value->>'data', min(ts), max(ts), count(*) "
        "from queries, json_each(answers) a group by 1, 2, 3 order by 1, 2, 3").fetchall()
    pdns = conn.execute("select name, type, data, first_seen, last_seen, count from passive_dns "
                        "order by 1, 2, 3").fetchall()
    assert raw_pdns and pdns == raw_pdns
    # who first resolved it: the first row holding the answer
    for name, data in conn.execute("select name, data from passive_dns").fetchall():
        first = conn.execute("select first_qname, first_pid, first_pod from passive_dns where name = ? and data = ?",
                             (name, data)).fetchone()
        row = conn.execute("select qname, pid, pod from queries, json_each(answers) a where a.value->>'data' = ? "
                           "and a.value->>'name' = ? order by ts limit 1", (data, name)).fetchone()
        assert first == row


def test_top_agrees_with_raw_counts(tmp_path):
    db = str(tmp_path / "t.db")
    now = time.time()
    rng = random.Random(7)
    weights = [1 / (k + 1) for k in range(200)]
    with Store(db) as store:
        store.start_capture("live", "test", {})
        for k in range(20000):
            name = f"n{rng.choices(range(200), weights)[0]}.example.com"
            store.add(live_row(now - rng.uniform(0, 30 * 3600), name, k, pid=rng.randint(1, 30)))
    conn = sqlite3.connect(db)
    for since, until in [(now - 3600, now), (now - 7 * 86400, now), (now - 10.5 * 3600, now - 2.25 * 3600)]:
        for key in ("qname", "comm", "pod"):
            got = top(conn, key, since, until, 10)
            counts = Counter(dict(conn.execute(
                f"select {key}, count(*) from queries where ts >= ? and ts < ? and {key} is not null group by 1",
                (since, until))))
            expected = sorted(counts.values(), reverse=True)[:10]
            assert [c for _, c in got] == expected
            assert all(counts[v] == c for v, c in got)
    assert raw_counts(conn, "qname", now - 3600, now, {"pod": ["web-1"]})
    assert top(conn, "qname", now - 7200, now, 3, filters={"pid": [1, 2]})


def test_search_domain_glob_and_answer(tmp_path, runner):
    db = str(tmp_path / "d.db")
    now = time.time()
    with Store(db) as store:
        store.start_capture("live", "test", {})
        for k, name in enumerate(NAMES * 3):
            store.add(live_row(now - k, name, k, ip="203.0.113.9" if name == "cdn.example.net" else None))

    def names(*args):
        result = runner.invoke(cli, ["search", *args, "--db", db, "--limit", "0", "--nl"])
        assert result.exit_code == 0, result.output
        return {json.loads(line)["qname"] for line in result.output.splitlines()}

    assert names("example.com") == {"www.example.com", "example.com", "api.example.com", "a.b.example.com",
                                    "WWW.Example.COM"}
    assert names("EXAMPLE.com.") == names("example.com")
    assert names("*.example.com") == {"www.example.com", "api.example.com", "a.b.example.com", "WWW.Example.COM"}
    assert names("*example.com") == names("example.com") | {"myexample.com"}
    assert names("api-?.*.net") == {"api-1.shop.example.net"}
    assert names("example.co", "--contains") == set(NAMES) - {"x.example.org", "api-1.shop.example.net",
                                                               "cdn.example.net"}
    assert names("--answer", "203.0.113.9") == {"cdn.example.net"}
    assert "scan" in runner.invoke(cli, ["search", "--help"]).output


def test_answer_search_reaches_past_pruned_rows(tmp_path, runner):
    db = str(tmp_path / "pd.db")
    now = time.time()
    with Store(db) as store:
        store.start_capture("live", "test", {})
        store.add(live_row(now - 90 * 86400, "old.example.com", 1, ip="192.0.2.77", pid=4242))
        store.add(live_row(now - 60, "new.example.com", 2, ip="192.0.2.77"))
    assert runner.invoke(cli, ["prune", "--retain", "30d", "--db", db]).exit_code == 0
    result = runner.invoke(cli, ["search", "--answer", "192.0.2.77", "--since", "180d", "--db", db, "--nl"])
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["qname"], r["status"]) for r in rows] == [("new.example.com", "answered"),
                                                         ("old.example.com", "passive_dns")]
    assert rows[1]["pid"] == 4242  # who first resolved it


def _writer(db, started, stop):
    store = Store(db)
    store.start_capture("live", "writer", {})
    k = 0
    while not stop.is_set():
        for _ in range(200):
            store.add(live_row(time.time(), f"h{k % 500}.example.com", k))
            k += 1
        store.flush()
        started.set()
    store.close()


def test_export_while_writing(tmp_path):
    db = str(tmp_path / "w.db")
    Store(db).close()
    with writer_running(_writer, db):
        time.sleep(0.5)
        committed = count(db, "select max(id) from query_log")  # every row committed before export starts
        out = str(tmp_path / "copy.db")
        rows = export(db, out)
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        assert not os.path.exists(out + "-wal")
        conn = sqlite3.connect(out)
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        ids = [r[0] for r in conn.execute("select id from queries order by id")]
        assert rows == len(ids) and ids[-1] >= committed and ids == list(range(1, len(ids) + 1))
        assert conn.execute("select count(*) from passive_dns").fetchone()[0] > 0
        since = str(tmp_path / "since.db")
        export(db, since, since=time.time() - 0.2)
        assert 0 < count(since, "select count(*) from queries") < rows + 10_000
        with pytest.raises(Exception, match="exists"):
            export(db, out)


def test_full_disk_recovers(tmp_path):
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the full-disk test needs root (mount)")
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        db = str(mnt / "full.db")
        warnings = []
        store = Store(db, on_warning=warnings.append)
        cap = store.start_capture("live", "test", {})
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # leave ~600 KB for the log
            try:
                f.write(b"\0" * (4 * 1024 * 1024 - os.path.getsize(db) - 600 * 1024))
            except OSError:
                pass
        added = 0
        for k in range(40_000):
            store.add(live_row(time.time(), f"host{k}.example{k % 50}.com", k))
            added += 1
            if k % 500 == 499:
                store.flush()
                if store.disk_full and store.unstored > 3000:
                    break
        assert store.disk_full and store.unstored > 0
        assert len(warnings) == 1 and "disk full" in warnings[0]
        filler.unlink()  # space returns
        for k in range(2000):
            store.add(live_row(time.time(), f"again{k}.example.com", k))
            added += 1
        store.flush()
        assert not store.disk_full and len(warnings) == 2 and "resumed" in warnings[1]
        store.update_capture(cap, {"status": "complete"})
        store.close()
        conn = sqlite3.connect(db)
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        stored = conn.execute("select count(*) from queries").fetchone()[0]
        assert stored == added - store.unstored  # nothing lost beyond what was reported
        assert conn.execute("select count(*) from queries where qname like 'again%'").fetchone()[0] == 2000
        assert conn.execute("select unstored from captures where id = ?", (cap,)).fetchone()[0] == store.unstored
        assert conn.execute("select sum(count) from rollups_hourly").fetchone()[0] == stored
        conn.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_migration_from_a_round1_log(tmp_path, runner):
    db = str(tmp_path / "old.db")
    conn = sqlite3.connect(db)
    sql = (ROOT / "tests" / "fixtures" / "round1_schema.sql").read_text()
    sql = sql.replace("    [pod_uid] TEXT\n", "    [pod_namespace_x] TEXT\n")  # and a column missing, as older builds
    conn.executescript(sql)
    conn.execute("pragma journal_mode = wal")
    old_cols = [r[1] for r in conn.execute("pragma table_info(queries)") if r[1] != "id"]
    rows = []
    for k in range(50):
        r = dict(zip(QUERY_COLUMNS, live_row(1_700_000_000 + k, NAMES[k % len(NAMES)], k)))
        rows.append(r)
        conn.execute(f"insert into queries ({', '.join(c for c in old_cols if c in r)}) values "
                     f"({', '.join('?' for c in old_cols if c in r)})", [r[c] for c in old_cols if c in r])
    conn.commit()
    conn.close()
    result = runner.invoke(cli, ["search", "example.com", "--db", db])
    assert result.exit_code == 1 and "dnswatch migrate" in result.output  # readers say how, never a traceback
    replay(Path(db), PCAPS / "dnsperf_small.pcap")  # a writer migrates in place
    conn = sqlite3.connect(db)
    assert conn.execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("select type from sqlite_master where name = 'queries'").fetchone()[0] == "view"
    got = conn.execute("select id, ts, qname, answers, pid, pod, pod_uid from queries where id <= 50 "
                       "order by id").fetchall()
    assert got == [(k + 1, r["ts"], r["qname"], r["answers"], r["pid"], r["pod"], None) for k, r in enumerate(rows)]
    assert conn.execute("select count(*) from queries").fetchone()[0] == 50 + 360
    assert conn.execute("select sum(count) from rollups_hourly").fetchone()[0] == 50 + 360
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    result = runner.invoke(cli, ["search", "example.com", "--db", db, "--limit", "0"])
    assert result.exit_code == 0 and len(json.loads(result.output)) > 0


def test_sums_of_a_killed_writer_are_recovered(tmp_path):
    db = str(tmp_path / "k.db")
    Store(db).close()
    pid = os.fork()
    if pid == 0:  # a watch-like writer killed after committing rows whose sums were still in memory
        try:
            store = Store(db)
            store.start_capture("live", "killed", {})
            for k in range(3000):
                store.add(live_row(time.time() - k, NAMES[k % len(NAMES)], k))
                if k % 1000 == 999:
                    store._write_batch()  # what maybe_flush does: rows committed, sums deferred
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert count(db, "select count(*) from queries") == 3000
    assert (count(db, "select coalesce(sum(count), 0) from rollups_hourly")) < 3000
    Store(db).close()  # the next writer adds what is missing
    assert count(db, "select sum(count) from rollups_hourly") == 3000
    assert count(db, "select sum(n) from key_hours where kind = 1") == 3000
    assert count(db, "select sum(count) from passive_dns") == 3000


def test_sums_survive_a_failed_transaction(tmp_path, monkeypatch):
    import dnswatch.layout as layout

    db = str(tmp_path / "f.db")
    store = Store(db)
    store.start_capture("live", "test", {})
    for k in range(100):
        store.add(live_row(time.time() - k, "www.example.com", k))
    store._write_batch()  # committed, sums pending
    real = layout.LogWriter._insert

    def failing(self, out):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(layout.LogWriter, "_insert", failing)
    for k in range(50):
        store.add(live_row(time.time(), "lost.example.com", k))
    store._write_batch()
    assert store.unstored == 50
    monkeypatch.setattr(layout.LogWriter, "_insert", real)
    for k in range(10):
        store.add(live_row(time.time(), "again.example.com", k))
    store.close()
    assert count(db, "select count(*) from queries") == 110
    assert count(db, "select sum(count) from rollups_hourly") == 110


def test_prune_max_size_at_rest_gives_pages_back(tmp_path, runner):
    db = str(tmp_path / "m.db")
    replay(Path(db), PCAPS / "dnsperf_small.pcap")
    with Store(db) as store:
        store.start_capture("live", "test", {})
        for k in range(30_000):
            store.add(live_row(time.time() - 30_000 + k, f"h{k % 300}.example.com", k))
    assert os.path.getsize(db) > 2_000_000
    result = runner.invoke(cli, ["prune", "--max-size", "1MB", "--db", db])
    assert result.exit_code == 0, result.output
    assert os.path.getsize(db) <= 1_000_000 and not os.path.exists(db + "-wal")
    conn = sqlite3.connect(db)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    newest = conn.execute("select max(ts) from queries").fetchone()[0]
    assert newest == conn.execute("select max(ts) from query_log").fetchone()[0] > time.time() - 10  # newest kept


def test_migration_adds_columns_missing_from_a_current_log(tmp_path):
    from dnswatch.schema import TABLES, create_sql

    db = str(tmp_path / "cols.db")
    conn = sqlite3.connect(db)
    for table in TABLES[1:] + TABLES[:1]:
        for statement in create_sql(table):
            statement = statement.replace("    [ecs] TEXT,\n", "").replace("    [unstored] INTEGER,\n", "")
            if "CREATE VIEW" in statement:
                statement = statement.replace("    l.[ecs] AS [ecs],\n", "")
            conn.execute(statement)
    conn.execute("pragma user_version = 1")
    conn.commit()
    assert "ecs" not in [r[1] for r in conn.execute("pragma table_info(query_log)")]
    conn.close()
    replay(Path(db), PCAPS / "dnsperf_small.pcap")  # would fail at its first insert without the migration
    conn = sqlite3.connect(db)
    assert "ecs" in [r[1] for r in conn.execute("pragma table_info(queries)")]
    assert "unstored" in [r[1] for r in conn.execute("pragma table_info(captures)")]
    assert conn.execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("select count(*) from queries").fetchone()[0] == 360
