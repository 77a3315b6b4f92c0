"""The command line keeps its promises (issue 10): --db everywhere, search's checks and orders, JSON answers,
readable tables, complete help, replay's hints, and a log another user owns."""
from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnswatch.cli import cli
from conftest import PCAPS, replay

DIG = PCAPS / "udp_v4_dig.pcap"
V6 = PCAPS / "tcp_kdig_v6.pcapng"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "rules.db"
    replay(path, DIG, V6, PCAPS / "dnsperf_small.pcap")
    return path


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def search(db, *args):
    result = run("search", "--db", db, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- --db on every command that touches a log

def test_every_log_command_takes_db(db):
    for command in ("replay", "query", "search", "schema", "doctor", "top", "watch"):
        assert "--db PATH" in run(command, "--help").output, command
    result = run("schema", "--db", db)
    assert result.exit_code == 0 and "queries:" in result.output and "rows" in result.output
    assert json.loads(run("schema", "--db", db, "--json").output)["tables"][0]["missing"] == []
    result = run("doctor", "--db", db)
    assert f"log: {db}" in result.output


# -- search

def test_search_says_when_it_stopped_at_limit(db):
    result = run("search", "--db", db, "--limit", "3")
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) == 3
    assert "Stopped at --limit 3" in result.stderr
    everything = run("search", "--db", db, "--limit", "0")
    assert "Stopped" not in everything.stderr
    n = len(json.loads(everything.stdout))
    exact = run("search", "--db", db, "--limit", n)
    assert "Stopped" not in exact.stderr and len(json.loads(exact.stdout)) == n


@pytest.mark.parametrize("option, value, listed", [("--type", "AAA", "AAAA"), ("--rcode", "NXDOMIAN", "NXDOMAIN")])
def test_unknown_mnemonics_list_the_valid_ones(db, option, value, listed):
    result = run("search", "--db", db, option, value)
    assert result.exit_code == 1
    assert f"{option} {value}: unknown" in result.output and listed in result.output


def test_watch_checks_its_type_filter_before_capturing():
    result = run("watch", "--type", "AAA")
    assert result.exit_code == 2 and "AAAA" in result.output and "unknown" in result.output


def test_mnemonics_any_case_and_numbered(db):
    assert {r["qtype"] for r in search(db, "--type", "aaaa", "--limit", "0")} == {"AAAA"}
    assert search(db, "--type", "TYPE65000") == []
    assert {r["rcode"] for r in search(db, "--rcode", "nxdomain", "--limit", "0")} == {"NXDOMAIN"}


def test_reversed_window_is_an_error(db):
    result = run("search", "--db", db, "--since", "1h", "--until", "2h")
    assert result.exit_code == 1 and "is after --until" in result.output


def test_src_dst_take_cidr_and_any_ipv6_spelling(db):
    v6 = search(db, "--src", "fd00:18:0:0:0:0:0:2", "--limit", "0")
    v6_short = search(db, "--src", "FD00:18::2", "--limit", "0")
    con = sqlite3.connect(db)
    want = con.execute("select count(*) from queries where src = 'fd00:18::2'").fetchone()[0]
    assert want and len(v6) == len(v6_short) == want
    assert len(search(db, "--src", "fd00::/8", "--limit", "0")) == want
    v4 = con.execute("select count(*) from queries where dst like '198.18.%'").fetchone()[0]
    assert len(search(db, "--dst", "198.18.0.0/15", "--limit", "0")) == v4
    assert search(db, "--dst", "10.0.0.0/8") == []
    bad = run("search", "--db", db, "--src", "not-an-address")
    assert bad.exit_code == 1 and "not an address or prefix" in bad.output


def test_sort_and_reverse(db):
    lat = [r["latency_ms"] for r in search(db, "--sort", "latency", "--limit", "0") if r["latency_ms"] is not None]
    assert lat == sorted(lat, reverse=True)
    lat = [r["latency_ms"] for r in search(db, "--sort", "latency", "--reverse", "--limit", "0")
           if r["latency_ms"] is not None]
    assert lat == sorted(lat)
    names = [r["qname"].lower() for r in search(db, "--sort", "name", "--limit", "0")]
    assert names == sorted(names)
    ts = [r["ts_utc"] for r in search(db, "--limit", "0")]
    assert ts == sorted(ts, reverse=True)
    assert [r["ts_utc"] for r in search(db, "--reverse", "--limit", "0")] == sorted(ts)
    assert run("search", "--db", db, "--sort", "size").exit_code == 2


# -- formats

def test_answers_are_json_arrays(db):
    rows = search(db, "www.example.test", "--type", "A", "--limit", "1")
    assert isinstance(rows[0]["answers"], list) and rows[0]["answers"][0]["data"]
    line = run("search", "--db", db, "--nl", "--limit", "1").stdout.splitlines()[0]
    assert isinstance(json.loads(line)["answers"], list)
    q = json.loads(run("query", "--db", db, "select answers from queries where answers is not null limit 1").stdout)
    assert isinstance(q[0]["answers"], list)


def test_table_shows_utc_times_and_short_answers(db):
    out = run("query", "--db", db, "select ts, response_ts, answers from queries where ancount > 3 limit 1",
              "--table").stdout
    assert "e+09" not in out
    assert re.search(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", out)
    assert '"data"' not in out  # answers as their data, not JSON
    assert all(len(line) < 200 for line in out.splitlines())


def test_query_view_with_readable_times(db):
    rows = json.loads(run("query", "--db", db, "select ts_utc, ts from queries_utc limit 1").stdout)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rows[0]["ts_utc"])
    assert "queries_utc" in run("schema").output and "ts_utc" in run("query", "--help").output


# -- help

def test_help_is_complete():
    top = run("--help").output
    commands = top.split("Commands:")[1]
    assert "..." not in commands  # no truncated command descriptions
    assert set(cli.commands) == {line.split()[0] for line in commands.strip().splitlines()}
    for command in cli.commands.values():
        for param in command.params:
            if getattr(param, "param_type_name", "") == "option" and param.name != "help":
                assert param.help, f"{command.name} {param.opts} has no help"
    watch = run("watch", "--help").output
    for short in ("-i,", "-c,", "-w,", "-q"):
        assert short in watch
    assert "-i," in run("top", "--help").output
    assert "everything captured is stored" in watch  # the filters' choice is said


# -- replay

def test_replay_hints_dns_on_another_port(tmp_path):
    result = run("replay", PCAPS / "udp_port5353.pcap", "--db", tmp_path / "p.db", "--no-progress")
    assert result.exit_code == 0
    assert "0 DNS messages" in result.stdout and "on port 5353" in result.stdout and "--port 5353" in result.stdout
    js = run("replay", PCAPS / "udp_port5353.pcap", "--db", tmp_path / "q.db", "--json")
    assert json.loads(js.stdout.splitlines()[0])["dns_on_other_ports"] == {"5353": 16}
    ok = run("replay", PCAPS / "udp_port5353.pcap", "--port", "5353", "--db", tmp_path / "r.db", "--no-progress")
    assert "other ports" not in ok.stdout


def test_replaying_again_warns_or_skips(tmp_path):
    path = tmp_path / "twice.db"
    assert run("replay", DIG, "--db", path, "--no-progress").exit_code == 0
    again = run("replay", DIG, "--db", path, "--no-progress")
    assert again.exit_code == 0 and "is already in this log" in again.stderr and "--skip-existing" in again.stderr
    skip = run("replay", DIG, V6, "--db", path, "--no-progress", "--skip-existing")
    assert skip.exit_code == 0 and "Skipped" in skip.stderr
    con = sqlite3.connect(path)
    assert con.execute("select count(*) from captures").fetchone()[0] == 3  # DIG twice, V6 once


@pytest.mark.parametrize("status", ["running", "interrupted", "failed"])
def test_a_file_replayed_only_in_part_is_not_skipped(tmp_path, status):
    """A replay stopped, killed or failed (a full disk leaves 'running') holds part of its file: --skip-existing
    replays it again and says so, rather than leave the rest out."""
    path = tmp_path / "part.db"
    assert run("replay", DIG, "--db", path, "--no-progress").exit_code == 0
    con = sqlite3.connect(path)
    with con:
        con.execute("update captures set status = ?", (status,))
    again = run("replay", DIG, "--db", path, "--no-progress", "--skip-existing")
    assert again.exit_code == 0, again.output
    assert "Skipped" not in again.stderr
    assert "only in part (capture 1" in again.stderr and f"status {status}" in again.stderr
    assert con.execute("select count(*) from captures where status = 'complete'").fetchone()[0] == 1
    skip = run("replay", DIG, "--db", path, "--no-progress", "--skip-existing")  # now whole in capture 2
    assert skip.exit_code == 0 and "Skipped" in skip.stderr and "capture 2" in skip.stderr, skip.output
    con.close()


def test_total_line_after_several_files(tmp_path):
    result = run("replay", DIG, V6, "--db", tmp_path / "t.db", "--no-progress")
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("total of 2 files:")
    one = run("replay", DIG, "--db", tmp_path / "u.db", "--no-progress")
    assert "total" not in one.stdout


# -- a log another user made

def test_log_owned_by_another_user_says_how_to_read_it(db, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(db) else real(p, mode, **kw))
    for args in (["search"], ["query", "select 1"], ["top", "--log"]):
        result = run(*args, "--db", db)
        assert result.exit_code == 1, args
        assert "cannot open" in result.output and "belongs to" in result.output and "sudo" in result.output
        assert "chown" in result.output


# -- watch's summary

def test_watch_summary_does_not_call_refused_rows_stored(tmp_path):
    """A full disk: the rows a batch lost are not said to be stored (the summary said '18,000 rows stored (8,085
    could not be stored)' of a log holding 9,915)."""
    from dnswatch.cli import stored_text
    from dnswatch.store import Store

    store = Store(str(tmp_path / "s.db"))
    try:
        assert stored_text(10, store) == "10 rows stored"
        store.unstored, store.pruned = 4, 2
        text = stored_text(10, store)
        assert "10 rows stored" not in text and "4 rows and malformed messages not stored (disk full)" in text
        assert text.endswith(", 2 old rows pruned")
    finally:
        store.close()
    assert stored_text(10, None) == "nothing stored (--no-db)"


@pytest.mark.parametrize("typed,command", [("sql", "query"), ("find", "search"), ("live", "watch")])
def test_a_command_tried_under_another_name_says_which_it_is(typed, command):
    result = CliRunner().invoke(cli, [typed, "select 1"])
    assert result.exit_code == 2, result.output
    assert f"that is `dnswatch {command}`" in result.output


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "fifo-wal"])
def test_a_log_that_is_not_a_file_is_one_error(tmp_path, kind):
    """A FIFO as --db (or as its -wal) hung every reader for good; a folder said 'disk I/O error'; a device read
    as an empty log."""
    db = tmp_path / "log.db"
    if kind == "fifo":
        os.mkfifo(db)
    elif kind == "folder":
        db.mkdir()
    elif kind == "device":
        db = Path("/dev/zero")
    else:
        replay(db, DIG)
        wal = Path(str(db) + "-wal")
        if wal.exists():
            wal.unlink()
        os.mkfifo(wal)
    for args in (["query", "select 1"], ["search"], ["top", "--log", "--once"], ["export", str(tmp_path / "x.db")]):
        result = CliRunner().invoke(cli, [*args, "--db", str(db)])
        assert result.exit_code == 1, (args, result.output)
        assert "not a log file; pass the log's file as --db" in result.output, (args, result.output)
