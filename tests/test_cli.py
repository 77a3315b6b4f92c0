"""The commands as a user runs them: replay, query, search, schema, and the errors a user can cause."""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from dnswatch.cli import cli
from conftest import PCAPS, replay

DIG = PCAPS / "udp_v4_dig.pcap"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "dns.db"
    replay(path, DIG, PCAPS / "dns_hostile.pcap", PCAPS / "tcp_kdig_v6.pcapng")
    return path


def test_replay_summary_and_private_file(runner, tmp_path):
    path = tmp_path / "new.db"
    result = runner.invoke(cli, ["replay", str(DIG), "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "24 frames, 24 DNS messages (12 queries, 12 responses, 0 malformed)" in result.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    con = sqlite3.connect(path)
    assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_replay_json_summary(runner, tmp_path):
    result = runner.invoke(cli, ["replay", str(DIG), "--db", str(tmp_path / "x.db"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[0])
    assert summary["queries"] == 12 and summary["responses"] == 12 and summary["rows"] == 12


def test_replay_from_stdin_gzipped(tmp_path):
    data = gzip.compress(DIG.read_bytes())
    out = subprocess.run([sys.executable, "-m", "dnswatch", "replay", "-", "--db", str(tmp_path / "s.db")],
                         input=data, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert b"12 queries" in out.stdout


def test_db_from_environment(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("DNSWATCH_DB", str(tmp_path / "env.db"))
    assert runner.invoke(cli, ["replay", str(DIG)]).exit_code == 0
    result = runner.invoke(cli, ["query", "select count(*) n from queries"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"n": 12}]


@pytest.mark.parametrize("args, message", [
    (["replay", "/nonexistent.pcap"], "no such file"),
    (["replay", __file__], "not a pcap or pcapng capture"),
])
def test_replay_errors_are_one_line(runner, tmp_path, args, message):
    result = runner.invoke(cli, args + ["--db", str(tmp_path / "e.db")])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_unsupported_link_type(runner, tmp_path):
    bad = tmp_path / "bad.pcap"
    data = bytearray(DIG.read_bytes())
    data[20:24] = (147).to_bytes(4, "little")  # LINKTYPE_USER0
    bad.write_bytes(bytes(data))
    result = runner.invoke(cli, ["replay", str(bad), "--db", str(tmp_path / "e.db")])
    assert result.exit_code == 1
    assert "unsupported link type 147" in result.output


def test_one_bad_file_loses_nothing_else(runner, tmp_path):
    path = tmp_path / "m.db"
    result = runner.invoke(cli, ["replay", "/nonexistent.pcap", str(DIG), "--db", str(path)])
    assert result.exit_code == 1
    assert "12 queries" in result.output
    assert sqlite3.connect(path).execute("select count(*) from queries").fetchone()[0] == 12


def test_damaged_file_warns_and_keeps_frames(runner, tmp_path):
    result = runner.invoke(cli, ["replay", str(PCAPS / "fmt_truncated_last.pcap"), "--db", str(tmp_path / "d.db")])
    assert result.exit_code == 0, result.output
    assert "truncated last record" in result.output
    assert "2 queries" in result.output


def test_query_formats(runner, db):
    sql = "select qname, qtype, rcode from queries where qname = 'mail.example.test' order by qtype"
    j = runner.invoke(cli, ["query", sql, "--db", str(db)])
    assert j.exit_code == 0, j.output
    assert json.loads(j.output)[0]["qname"] == "mail.example.test"
    nl = runner.invoke(cli, ["query", sql, "--db", str(db), "--nl"])
    assert [json.loads(line)["qname"] for line in nl.output.splitlines()] == ["mail.example.test"] * len(
        json.loads(j.output))
    c = runner.invoke(cli, ["query", sql, "--db", str(db), "--csv"])
    rows = list(csv.reader(io.StringIO(c.output)))
    assert rows[0] == ["qname", "qtype", "rcode"]
    t = runner.invoke(cli, ["query", sql, "--db", str(db), "--table"])
    assert "mail.example.test" in t.output and "qtype" in t.output.splitlines()[0]


def test_query_is_read_only(runner, db):
    result = runner.invoke(cli, ["query", "delete from query_log", "--db", str(db)])
    assert result.exit_code == 1
    assert "readonly" in result.output or "read-only" in result.output


def test_bad_sql_is_one_line(runner, db):
    result = runner.invoke(cli, ["query", "select nope from nothing", "--db", str(db)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: SQL error:")


def test_query_missing_db(runner, tmp_path):
    result = runner.invoke(cli, ["query", "select 1", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no such database" in result.output


def test_search_filters(runner, db):
    def search(*args):
        result = runner.invoke(cli, ["search", *args, "--db", str(db), "--limit", "0"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert {r["qname"] for r in search("MAIL.example", "--contains")} == {"mail.example.test"}  # substring
    assert {r["qname"] for r in search("MAIL.example.TEST")} == {"mail.example.test"}  # a domain, any case
    under = {r["qname"].lower() for r in search("example.test")}  # the domain and every name under it
    assert "example.test" in under and "mail.example.test" in under and all(
        n == "example.test" or n.endswith(".example.test") for n in under)
    assert search("xample.test") == []  # a domain, not a substring
    assert all(r["qtype"] == "AAAA" for r in search("example.test", "--type", "aaaa"))
    nx = search("--rcode", "NXDOMAIN")
    assert nx and all(r["rcode"] == "NXDOMAIN" for r in nx)
    assert {r["qname"] for r in search("*.wild.example.test")} <= {"x.wild.example.test"}
    assert search("--since", "2000-01-01", "--until", "2000-01-02") == []
    assert len(search("--since", "2000-01-01")) > 0
    assert {r["qname"] for r in search("--answer", "198.18.0.10")} == {"a.example.test"}  # via its CNAME chain


def test_search_bad_time(runner, db):
    result = runner.invoke(cli, ["search", "--since", "yesterday-ish", "--db", str(db)])
    assert result.exit_code == 1 and "cannot read time" in result.output


def test_search_output_escapes_control_bytes(runner, db):
    result = runner.invoke(cli, ["search", "red", "--contains", "--db", str(db), "--table"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\027[31mred" in result.output


def test_schema_lists_every_column(runner):
    from dnswatch.schema import TABLES

    result = runner.invoke(cli, ["schema"])
    assert result.exit_code == 0
    for table in TABLES:
        for column in table.columns:
            assert column.name in result.output
    as_json = json.loads(runner.invoke(cli, ["schema", "--json"]).output)
    assert {t["table"] for t in as_json} == {t.name for t in TABLES}
    assert {"queries", "captures", "malformed", "passive_dns", "rollups_hourly", "lookups"} <= {t["table"] for t in as_json}


def test_contract_columns_exist(db):
    cols = {r[1] for r in sqlite3.connect(db).execute("pragma table_info(queries)")}
    for name in ("ts src sport dst dport proto dns_id qname qtype qclass opcode rcode answers latency_ms pid tid comm "
                 "uid cgroup_id container_id pod pod_namespace netns ifname capture_id").split():
        assert name in cols


def test_locked_database_gives_clear_error(tmp_path, monkeypatch):
    import dnswatch.store as store

    path = tmp_path / "l.db"
    store.Store(str(path)).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 200)
    try:
        with pytest.raises(store.StoreError, match="locked"):
            s = store.Store(str(path))
            s.close()
    finally:
        holder.execute("ROLLBACK")


def test_query_across_attached_logs(runner, tmp_path):
    a, b = tmp_path / "node-a.db", tmp_path / "node b.db"
    replay(a, DIG)
    replay(b, PCAPS / "udp_port5353.pcap")
    sql = ("select 'a' node, count(*) n from queries union all select 'b', count(*) from b.queries")
    result = runner.invoke(cli, ["query", sql, "--db", str(a), "--attach", "b", str(b)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"node": "a", "n": 12}, {"node": "b", "n": 8}]
    write = runner.invoke(cli, ["query", "delete from b.query_log", "--db", str(a), "--attach", "b", str(b)])
    assert write.exit_code == 1  # attached logs are read-only too
    missing = runner.invoke(cli, ["query", "select 1", "--db", str(a), "--attach", "c", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "no such database" in missing.output
