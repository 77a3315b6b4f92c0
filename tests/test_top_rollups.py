"""`dnswatch top` over a long window: whole hours from the hourly rollups, the partial hours at both ends from raw
rows. On a log written through Store, the counts, NXDOMAIN, SERVFAIL and unanswered per key (and the largest
latency) must equal SQL over the raw rows; percentiles are not invented."""
from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3

import pytest
from rich.console import Console

from dnswatch.cli import cli
from dnswatch.schema import QUERY_COLUMNS, Q
from dnswatch.store import Store, open_readonly
from dnswatch.top import ROLLUP_GROUPS, log_stats, registered_domain
from dnswatch.topview import render

T0 = 1_700_000_000 - 1_700_000_000 % 3600 + 1000  # 1000 s into an hour: the first hour is partial
HOURS = 5
NAMES = ["www.example.com", "WWW.Example.COM", "api.example.com", "x.example.org", "cdn.shop.example.co.uk",
         "nope.invalid", "fail.example.net"]
RCODE_SQL = "coalesce(rcode, CASE WHEN status IN ('unanswered', 'query_only') THEN status END)"
# the groupings as the rollups key them, in SQL over the raw rows
SQL_KEYS = {
    "name": "lower(qname)",
    "qtype": "qtype",
    "rcode": RCODE_SQL,
    "process": "comm",
    "pod": "CASE WHEN pod IS NOT NULL THEN coalesce(pod_namespace, '-') || '/' || pod END",
}


def row(ts, i, rnd):
    r = [None] * len(QUERY_COLUMNS)
    name = NAMES[i % len(NAMES)]
    r[Q["ts"]], r[Q["src"]], r[Q["sport"]], r[Q["dst"]], r[Q["dport"]], r[Q["proto"]] = (
        ts, f"10.0.0.{i % 4}", 40000 + i % 1000, "10.0.0.1", 53, "udp")
    r[Q["dns_id"]], r[Q["qname"]] = i % 65536, name
    r[Q["qtype"]], r[Q["qtype_num"]] = ("A", 1) if i % 3 else ("AAAA", 28)
    if i % 5:
        r[Q["pid"]], r[Q["comm"]] = 100 + i % 3, f"cmd{i % 3}"
    if i % 4 == 0:
        r[Q["pod"]], r[Q["pod_namespace"]] = f"web-{i % 2}", "shop"
    roll = rnd.random()
    if roll < 0.1:
        r[Q["status"]] = "unanswered"
    elif roll < 0.15:
        r[Q["status"]] = "query_only"
    else:
        r[Q["status"]] = "answered"
        rcode = "NXDOMAIN" if name == "nope.invalid" else "SERVFAIL" if roll < 0.2 else "NOERROR"
        r[Q["rcode"]], r[Q["rcode_num"]] = rcode, {"NOERROR": 0, "SERVFAIL": 2, "NXDOMAIN": 3}[rcode]
        r[Q["latency_ms"]] = round(rnd.uniform(0.1, 40.0), 3)
    return r


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("rollups") / "r.db")
    rnd = random.Random(7)
    store = Store(path)
    store.start_capture("live", "test", {})
    ts = float(T0)
    i = 0
    while ts < T0 + HOURS * 3600:
        store.add(row(ts, i, rnd))
        ts += rnd.uniform(0.5, 4.0)
        i += 1
    store.close()
    return path


def expected(con, by, lo, hi):
    where = "ts >= ? AND ts <= ?"
    out = {}
    if by == "domain":  # registered domain: Python's public suffix list over SQL's rows
        for qname, n, nx, sf, un, mx in con.execute(
                f"select qname, count(*), total(rcode = 'NXDOMAIN'), total(rcode = 'SERVFAIL'), "
                f"total(status = 'unanswered'), max(latency_ms) from queries where {where} group by qname", (lo, hi)):
            key = registered_domain(qname)
            have = out.get(key, (0, 0, 0, 0, None))
            out[key] = (have[0] + n, have[1] + int(nx), have[2] + int(sf), have[3] + int(un),
                        mx if have[4] is None else max(have[4], mx) if mx is not None else have[4])
        return out
    for key, n, nx, sf, un, mx in con.execute(
            f"select coalesce({SQL_KEYS[by]}, '-'), count(*), total(rcode = 'NXDOMAIN'), total(rcode = 'SERVFAIL'), "
            f"total(status = 'unanswered'), max(latency_ms) from queries where {where} group by 1", (lo, hi)):
        out[key] = (n, int(nx), int(sf), int(un), mx)
    return out


@pytest.mark.parametrize("by", sorted(ROLLUP_GROUPS))
def test_rollups_give_the_counts_sql_gives(log, by):
    lo, hi = T0 + 1234.5, T0 + (HOURS - 1) * 3600 + 777.25  # partial hours at both ends
    stats = log_stats(open_readonly(log).conn, lo, hi, rollups=True)
    assert stats.rollup_hours is not None
    h0, h1 = stats.rollup_hours
    assert h0 > lo and h1 <= hi and h1 - h0 >= 2 * 3600 and h0 % 3600 == 0 == h1 % 3600
    snap = stats.snapshot(by=by, limit=0)
    con = sqlite3.connect(log)
    total, un = con.execute("select count(*), total(status = 'unanswered') from queries where ts >= ? and ts <= ?",
                            (lo, hi)).fetchone()
    assert (snap.total, snap.unanswered) == (total, un)
    assert (snap.p50_ms, snap.p95_ms, snap.p99_ms) == (None, None, None)  # not in the rollups: not invented
    assert snap.max_ms == con.execute("select max(latency_ms) from queries where ts >= ? and ts <= ?",
                                      (lo, hi)).fetchone()[0]
    mix = dict(con.execute(f"select coalesce({RCODE_SQL}, '-'), count(*) from queries where ts >= ? and ts <= ? "
                           "group by 1", (lo, hi)))
    assert snap.rcodes == mix
    got = {k.key: (k.count, k.nxdomain, k.servfail, k.unanswered, k.max_ms) for k in snap.keys}
    want = expected(con, by, lo, hi)
    assert got == want
    assert all(k.p95_ms is None for k in snap.keys)
    assert sum(snap.spark) == pytest.approx(total, abs=SPARK_SLACK)


SPARK_SLACK = 60  # spread hours are rounded per bucket


def test_raw_rows_serve_short_windows_and_client_server(log):
    conn = open_readonly(log).conn
    lo = T0 + 4000.0
    short = log_stats(conn, lo, lo + 5400, rollups=True)  # one whole hour only
    assert short.rollup_hours is None
    raw = log_stats(conn, lo, lo + 5400)
    assert [k.__dict__ for k in short.snapshot(limit=0).keys] == [k.__dict__ for k in raw.snapshot(limit=0).keys]
    assert raw.snapshot().p95_ms is not None
    assert log_stats(conn, T0, T0 + HOURS * 3600).rollup_hours is None  # rollups=False: every row


def test_unaggregated_rows_fall_back_to_raw(log, tmp_path):
    """Rows a killed writer left above meta.aggregated_id are not in the rollups: read raw rows."""
    copy = str(tmp_path / "k.db")
    shutil.copy(log, copy)
    con = sqlite3.connect(copy)
    con.execute("update meta set value = 1 where key = 'aggregated_id'")
    con.commit()
    con.close()
    stats = log_stats(open_readonly(copy).conn, T0 + 10.0, T0 + 4 * 3600.0, rollups=True)
    assert stats.rollup_hours is None


def test_cli_over_rollups(runner, log):
    lo, hi = str(T0 + 100), str(T0 + 4 * 3600 + 100)
    js = runner.invoke(cli, ["top", "--db", log, "--since", lo, "--until", hi, "--json", "--by", "rcode"])
    assert js.exit_code == 0, js.output
    snap = json.loads(js.output)
    assert snap["rollup_hours"] and snap["latency_ms"]["p95"] is None and snap["latency_ms"]["max"] is not None
    con = sqlite3.connect(log)
    counts = dict(con.execute(f"select {RCODE_SQL}, count(*) from queries where ts >= ? and ts <= ? group by 1",
                              (float(lo), float(hi))))
    assert {k["key"]: k["count"] for k in snap["keys"]} == counts
    client = json.loads(runner.invoke(cli, ["top", "--db", log, "--since", lo, "--until", hi, "--json",
                                            "--by", "client"]).output)
    assert client["rollup_hours"] is None and client["total"] == snap["total"]  # raw rows: exact, percentiles
    assert client["latency_ms"]["p95"] is not None
    text = runner.invoke(cli, ["top", "--db", log, "--since", lo, "--until", hi, "--once"]).output
    assert "max ms" in text and "p95 -" in text and "hourly rollups" in text


def test_screen_over_rollups_labels_max(log):
    stats = log_stats(open_readonly(log).conn, T0 + 100.0, T0 + 4 * 3600 + 100.0, rollups=True)
    for width in (80, 160):
        with open(os.devnull, "w") as devnull:
            console = Console(record=True, width=width, file=devnull, color_system=None)
            console.print(render(stats.snapshot(by="name", limit=10), width))
            text = console.export_text()
        assert "max ms" in text and "p95 ms" not in text and "p50 -  p95 -  p99 -  max" in text
        assert all(len(line) <= width for line in text.splitlines())


def test_whole_hours_come_from_the_rollups(log, tmp_path):
    """With the raw rows of the whole hours gone (as retention leaves them), the counts stay: the rollups
    served them; the partial hours still come from raw rows."""
    lo, hi = T0 + 1234.5, T0 + (HOURS - 1) * 3600 + 777.25
    before = log_stats(open_readonly(log).conn, lo, hi, rollups=True).snapshot(by="name", limit=0)
    h0, h1 = before.rollup_hours
    copy = str(tmp_path / "p.db")
    shutil.copy(log, copy)
    con = sqlite3.connect(copy)
    assert con.execute("delete from query_log where ts >= ? and ts < ?", (h0, h1)).rowcount > 0
    con.commit()
    con.close()
    after = log_stats(open_readonly(copy).conn, lo, hi, rollups=True).snapshot(by="name", limit=0)
    assert [k.__dict__ for k in after.keys] == [k.__dict__ for k in before.keys]
    assert after.total == before.total


def test_window_times_and_open_ends(log):
    """first/last times are the rows' own (raw rows kept), and --log / no --until work over the rollups."""
    conn = open_readonly(log).conn
    con = sqlite3.connect(log)
    lo, hi = con.execute("select min(ts), max(ts) from queries").fetchone()
    for since, until in ((None, None), (T0 + 100.0, None)):
        stats = log_stats(conn, since, until, rollups=True)
        assert stats.rollup_hours is not None
        snap = stats.snapshot(limit=0)
        want = con.execute("select count(*), min(ts) from queries where ts >= ?", (since or 0,)).fetchone()
        assert (snap.total, snap.first_ts, snap.last_ts) == (want[0], want[1], hi)
        assert snap.rate == pytest.approx(snap.total / (hi - want[1]))


@pytest.mark.parametrize("window", [[], ["--since", "3650d"]])
def test_an_old_capture_is_read_from_its_raw_rows(runner, tmp_path, window):
    """A capture of a few seconds replayed long after it was made: the whole hours between it and now (or a
    --since far before it) are empty, so the raw rows answer, exact percentiles included (they showed '-')."""
    from conftest import PCAPS, replay

    db = tmp_path / "old.db"
    replay(db, PCAPS / "udp_v4_dig.pcap")
    result = runner.invoke(cli, ["top", "--db", str(db), "--log", "--json", *window])
    assert result.exit_code == 0, result.output
    snap = json.loads(result.stdout)
    assert snap["rollup_hours"] is None and snap["latency_ms"]["p95"] is not None, snap
