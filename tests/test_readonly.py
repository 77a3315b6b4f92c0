"""`query` and `search` only read: SQLite's authorizer refuses what would write or reach other files, attached
logs are read-only, and a log on read-only media (no -shm can be created) is read all the same, -wal included."""
from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import IN_CI, PCAPS, replay
from dnswatch.cli import cli

DIG = PCAPS / "udp_v4_dig.pcap"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "log.db"
    replay(path, DIG)
    return path


REFUSED = [
    ("vacuum into '{tmp}/copy.db'", "VACUUM"),
    ("vacuum", "VACUUM"),
    ("attach '{tmp}/other.db' as o", "ATTACH"),
    ("attach 'file:{tmp}/other.db?mode=rwc' as o", "ATTACH"),
    ("detach main", "DETACH"),
    ("pragma user_version = 7", "setting PRAGMA user_version"),
    ("pragma journal_mode = delete", "setting PRAGMA journal_mode"),
    ("pragma main.synchronous = off", "PRAGMA synchronous"),
    ("pragma query_only = 0", "PRAGMA query_only"),
    ("pragma writable_schema = 1", "PRAGMA writable_schema"),
    ("pragma optimize", "PRAGMA optimize"),
    ("pragma wal_checkpoint(truncate)", "PRAGMA wal_checkpoint"),
    ("select load_extension('{tmp}/evil.so')", "load_extension()"),
    ("create temp table t as select * from queries", "CREATE"),
    ("create temp view v as select 1", "CREATE"),
    ("create table t(x)", "CREATE"),
    ("drop table queries", "DROP"),
    ("analyze", "ANALYZE"),
]


def _files(d: Path):
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(("-wal", "-shm")))  # a reader's own


@pytest.mark.parametrize("sql,what", REFUSED)
def test_query_refuses_what_writes(runner, db, tmp_path, sql, what):
    before = _files(tmp_path)
    size = db.stat().st_size
    result = runner.invoke(cli, ["query", sql.format(tmp=tmp_path), "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: query only reads the log"), result.output
    assert what in result.output and "Traceback" not in result.output
    assert _files(tmp_path) == before  # created nothing
    assert db.stat().st_size == size


def test_writes_to_the_log_say_read_only(runner, db):
    for sql in ("delete from queries", "insert into captures (kind) values ('x')", "update queries set qname = 'x'"):
        result = runner.invoke(cli, ["query", sql, "--db", str(db)])
        assert result.exit_code == 1 and "query only reads the log" in result.output, result.output
    assert json.loads(runner.invoke(cli, ["query", "select count(*) n from queries", "--db", str(db)]).output) == [
        {"n": 12}]


READS = [
    ("pragma table_info(queries)", lambda rows: any(r["name"] == "qname" for r in rows)),
    ("select name from pragma_table_info('captures') where name = 'status'", lambda rows: rows == [{"name": "status"}]),
    ("pragma user_version", lambda rows: "user_version" in rows[0]),
    ("pragma integrity_check", lambda rows: rows == [{"integrity_check": "ok"}]),
    ("pragma journal_mode", lambda rows: rows == [{"journal_mode": "wal"}]),
    ("pragma database_list", lambda rows: rows[0]["name"] == "main"),
    ("with t(n) as (select count(*) from queries) select n from t", lambda rows: rows == [{"n": 12}]),
    ("select count(*) n from queries, json_each(answers)", lambda rows: rows[0]["n"] > 0),
    ("select upper(qname) q, max(ts) from queries group by 1 order by 1 limit 1", lambda rows: len(rows) == 1),
]


@pytest.mark.parametrize("sql,ok", READS)
def test_query_still_reads(runner, db, sql, ok):
    result = runner.invoke(cli, ["query", sql, "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert ok(json.loads(result.output)), result.output


def test_search_still_works(runner, db):
    result = runner.invoke(cli, ["search", "example", "--db", str(db)])
    assert result.exit_code == 0 and json.loads(result.output), result.output


def test_attached_logs_are_read_only(runner, db, tmp_path):
    other = tmp_path / "other.db"
    replay(other, PCAPS / "udp_port5353.pcap")
    before = other.stat().st_size, other.stat().st_mtime_ns
    for sql in ("delete from o.queries", "pragma o.user_version = 3", "vacuum o"):
        result = runner.invoke(cli, ["query", sql, "--db", str(db), "--attach", "o", str(other)])
        assert result.exit_code == 1 and "query only reads the log" in result.output, (sql, result.output)
    ok = runner.invoke(cli, ["query", "select count(*) n from o.queries", "--db", str(db), "--attach", "o", str(other)])
    assert json.loads(ok.output) == [{"n": 8}]
    assert (other.stat().st_size, other.stat().st_mtime_ns) == before
    # the connection really opened it read-only (not only the authorizer)
    from dnswatch.store import open_readonly

    conn = open_readonly(str(db), [("o", str(other))]).conn
    conn.set_authorizer(None)
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
        conn.execute("delete from o.queries")


def test_infinity_is_not_written_as_json_infinity(runner, db):
    for fmt in ("--json", "--nl"):
        result = runner.invoke(cli, ["query", "select 1e999 big, -1e999 small, 1.5 x", "--db", str(db), fmt])
        assert result.exit_code == 0, result.output
        assert "Infinity," not in result.output.replace('"Infinity"', "")
        rows = json.loads(result.output) if fmt == "--json" else [json.loads(line) for line in result.output.splitlines()]
        assert rows == [{"big": "Infinity", "small": "-Infinity", "x": 1.5}]


# -- read-only media (root: a read-only bind mount) ----------------------------------------------------

def _require_root():
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if IN_CI:
            pytest.fail("CI runs as root, with mount")
        pytest.skip("needs root (a read-only bind mount)")


@pytest.fixture
def readonly_dir(tmp_path):
    _require_root()
    d = tmp_path / "media"
    d.mkdir()
    mounted = []

    def seal():
        subprocess.run(["mount", "--bind", str(d), str(d)], check=True)
        mounted.append(d)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(d)], check=True)
        assert not os.access(d, os.W_OK)

    try:
        yield d, seal
    finally:
        gc.collect()  # the CliRunner's connections, which keep the mount busy
        for m in mounted:
            if subprocess.run(["umount", str(m)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(m)], check=True)


def _log_with_wal(src: Path, dest: Path, with_shm: bool = False) -> None:
    """Copy ``src`` as a node would leave it while being written: rows still in its -wal."""
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("pragma wal_autocheckpoint = 0")
    con.execute("insert into queries (ts, qname) values (1, 'only-in-the-wal.example.test')")
    shutil.copy(src, dest)
    shutil.copy(f"{src}-wal", f"{dest}-wal")
    if with_shm:
        shutil.copy(f"{src}-shm", f"{dest}-shm")
    con.close()


@pytest.mark.parametrize("layout", ["db+wal", "db+wal+shm", "db"])
def test_logs_on_read_only_media_are_read_whole(runner, db, readonly_dir, layout):
    media, seal = readonly_dir
    log = media / "log.db"
    if layout == "db":
        shutil.copy(db, log)  # closed cleanly: no -wal, still WAL mode
        expected = 12
    else:
        _log_with_wal(db, log, with_shm=layout.endswith("shm"))
        expected = 13
    seal()
    for args in (["query", "select count(*) n from queries"], ["search", "--limit", "0"]):
        result = runner.invoke(cli, [*args, "--db", str(log)])
        assert result.exit_code == 0, result.output
        out = result.stdout if hasattr(result, "stdout") else result.output
        rows = json.loads(out)
        assert (rows[0]["n"] if args[0] == "query" else len(rows)) == expected, out
    # attached from read-only media too
    result = runner.invoke(cli, ["query", "select count(*) n from m.queries", "--db", str(db), "--attach", "m", str(log)])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["n"] == expected, result.output
    assert sorted(p.name for p in media.iterdir()) == sorted(
        {"db": ["log.db"], "db+wal": ["log.db", "log.db-wal"], "db+wal+shm": ["log.db", "log.db-shm", "log.db-wal"]}[layout])
