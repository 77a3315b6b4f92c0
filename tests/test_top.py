"""`dnswatch top`: its numbers against SQL over the same log, the screen at fixed widths, keys, --once/--json."""
from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from dnswatch.cli import cli
from dnswatch.correlate import Row
from dnswatch.pipeline import Pipeline
from dnswatch.schema import QUERY_COLUMNS
from dnswatch.sources.pcap import read_frames
from dnswatch.store import open_readonly
from dnswatch.top import GROUPS, TopStats, log_stats, registered_domain
from dnswatch.topview import TopScreen, render
from conftest import PCAPS, replay

GOLDEN = Path(__file__).parent / "golden"
FILES = (PCAPS / "dnsperf_small.pcap", PCAPS / "udp_v4_dig.pcap", PCAPS / "dns_orphans.pcap",
         PCAPS / "tcp_kdig_v6.pcapng")

# key expressions in SQL for the groupings that SQL can express directly
SQL_KEYS = {
    "name": "lower(qname)",
    "server": "dst",
    "qtype": "qtype",
    "rcode": "coalesce(rcode, CASE WHEN status IN ('unanswered', 'query_only') THEN status END)",
}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("top") / "top.db"
    replay(path, *FILES)
    return path


def sql_p(con, where: str, params, p: float):
    """Nearest-rank percentile in SQL: the ceil(p% * n)-th smallest latency (rounded to the microsecond)."""
    n = con.execute(f"select count(latency_ms) from queries where {where}", params).fetchone()[0]
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100 * n))
    return con.execute(f"select round(latency_ms, 3) from queries where {where} and latency_ms is not null "
                       f"order by round(latency_ms, 3) limit 1 offset ?", (*params, rank - 1)).fetchone()[0]


@pytest.mark.parametrize("by", sorted(SQL_KEYS))
def test_numbers_match_sql(db, by):
    con = sqlite3.connect(db)
    snap = log_stats(open_readonly(str(db)).conn).snapshot(by=by, limit=0)
    total = con.execute("select count(*) from queries").fetchone()[0]
    assert snap.total == total
    assert snap.unanswered == con.execute("select count(*) from queries where status = 'unanswered'").fetchone()[0]
    for p, got in ((50, snap.p50_ms), (95, snap.p95_ms), (99, snap.p99_ms)):
        assert got == sql_p(con, "1", (), p)
    expr = SQL_KEYS[by]
    expected = {}
    for key, n, nx, sf, un in con.execute(
            f"select coalesce({expr}, '-'), count(*), sum(rcode = 'NXDOMAIN'), sum(rcode = 'SERVFAIL'), "
            f"sum(status = 'unanswered') from queries group by 1"):
        p95 = sql_p(con, f"coalesce({expr}, '-') = ?", (key,), 95)
        expected[key] = (n, round(100 * n / total, 1), nx or 0, sf or 0, un or 0, p95)
    got = {k.key: (k.count, k.share, k.nxdomain, k.servfail, k.unanswered, k.p95_ms) for k in snap.keys}
    assert got == expected
    # sorted by count, then key
    assert [k.count for k in snap.keys] == sorted((k.count for k in snap.keys), reverse=True)


def test_rcode_mix_and_window_match_sql(db):
    con = sqlite3.connect(db)
    snap = log_stats(open_readonly(str(db)).conn).snapshot(by="name")
    mix = dict(con.execute(f"select coalesce({SQL_KEYS['rcode']}, '-'), count(*) from queries group by 1"))
    assert snap.rcodes == mix
    lo, hi = con.execute("select min(ts), max(ts) from queries").fetchone()
    assert (snap.first_ts, snap.last_ts) == (lo, hi)
    assert snap.rate == pytest.approx(snap.total / (hi - lo))
    # a window over the ts index: the same as SQL's
    mid = (lo + hi) / 2
    part = log_stats(open_readonly(str(db)).conn, since=mid).snapshot()
    assert part.total == con.execute("select count(*) from queries where ts >= ?", (mid,)).fetchone()[0]


def test_live_sink_sees_what_the_log_stores(tmp_path):
    """The pipeline sink (live top) gets exactly the stored rows: its snapshot equals the log's."""
    from dnswatch.store import Store

    path = tmp_path / "sink.db"
    stats = TopStats()
    with Store(str(path)) as store:
        pipe = Pipeline(store, "pcap", "x", (53,), sinks=(stats.add,))
        for f in FILES[:3]:
            pipe.feed_all(read_frames(str(f)))
        pipe.finish()
    from_log = log_stats(open_readonly(str(path)).conn)
    for by in GROUPS:
        a, b = stats.snapshot(by=by, limit=0), from_log.snapshot(by=by, limit=0)
        assert [k.__dict__ for k in a.keys] == [k.__dict__ for k in b.keys], by
        assert (a.total, a.p95_ms, a.rcodes) == (b.total, b.p95_ms, b.rcodes)


def row(**kw) -> Row:
    r: Row = [None] * len(QUERY_COLUMNS)
    for k, v in kw.items():
        r[QUERY_COLUMNS.index(k)] = v
    return r


def test_client_process_pod_and_domain_keys():
    stats = TopStats()
    stats.add(row(ts=1.0, qname="www.shop.example.co.uk", src="10.0.0.5", comm="curl", pid=9, pod="web-1",
                  pod_namespace="shop", status="answered", rcode="NOERROR", latency_ms=1.0))
    stats.add(row(ts=2.0, qname="API.Example.com", src="10.0.0.6", comm="dig", pid=7, status="answered",
                  rcode="SERVFAIL", latency_ms=3.0))
    stats.add(row(ts=3.0, qname="x.example.com", src="198.18.0.9", status="unanswered"))
    keys = lambda by: {k.key: k.count for k in stats.snapshot(by=by).keys}  # noqa: E731
    assert keys("client") == {"shop/web-1": 1, "dig": 1, "198.18.0.9": 1}  # pod, else process, else address
    assert keys("process") == {"curl": 1, "dig": 1, "-": 1}
    assert keys("pod") == {"shop/web-1": 1, "-": 2}
    assert keys("domain") == {"example.co.uk": 1, "example.com": 2}
    assert keys("name") == {"www.shop.example.co.uk": 1, "api.example.com": 1, "x.example.com": 1}
    assert keys("rcode") == {"NOERROR": 1, "SERVFAIL": 1, "unanswered": 1}
    snap = stats.snapshot(by="domain")
    com = next(k for k in snap.keys if k.key == "example.com")
    assert (com.servfail, com.unanswered, com.p95_ms) == (1, 1, 3.0)
    assert registered_domain("localhost") == "localhost"


def screen_text(db, width: int, by: str = "name") -> str:
    """The top screen over the log ``db`` at ``width`` columns, grouped ``by``, as the terminal shows it."""
    stats = log_stats(open_readonly(str(db)).conn)
    screen = TopScreen(lambda **kw: stats.snapshot(**kw), by=by)
    with open(os.devnull, "w") as devnull:
        console = Console(record=True, width=width, file=devnull, color_system=None)
        console.print(render(stats.snapshot(by=by, limit=10), width, footer=screen.footer()))
        return console.export_text()


@pytest.mark.parametrize("width", [80, 160])
def test_screen_snapshot(db, width):
    text = screen_text(db, width)
    golden = GOLDEN / f"top_{width}.txt"
    assert text == golden.read_text()
    assert all(len(line) <= width for line in text.splitlines())


def test_keys_change_the_view(db):
    stats = log_stats(open_readonly(str(db)).conn)
    screen = TopScreen(lambda **kw: stats.snapshot(**kw))
    screen.key("b")
    assert screen.by == "domain"
    screen.key("3")
    assert screen.by == "client"
    screen.key("s")
    assert screen.sort == "nxdomain"
    for ch in "/nxdomain\r":
        screen.key(ch)
    assert screen.filter == "nxdomain" and screen.typing is None
    screen.key("1")
    snap = screen.current(10)
    assert snap.keys and all("nxdomain" in k.key for k in snap.keys)
    screen.key("p")
    frozen = screen.current(10)
    stats.add(row(ts=9.9e9, qname="nxdomain.late.test", status="unanswered"))
    assert screen.current(10) is frozen  # paused: the same numbers
    assert "resume" in screen.footer().plain
    screen.key("p")
    assert any(k.key == "nxdomain.late.test" for k in screen.current(10).keys)
    screen.key("q")
    assert screen.quit
    footer = TopScreen(lambda **kw: None).footer().plain
    for word in ("group", "sort", "filter", "pause", "quit"):
        assert word in footer


def test_once_table_and_json_are_the_same_numbers(runner, db):
    result = runner.invoke(cli, ["top", "--db", str(db), "--log", "--once", "--by", "qtype"])
    assert result.exit_code == 0, result.output
    js = runner.invoke(cli, ["top", "--db", str(db), "--log", "--json", "--by", "qtype"])
    assert js.exit_code == 0, js.output
    snap = json.loads(js.output)
    for k in snap["keys"]:
        assert any(line.split()[:2] == [k["key"], f"{k['count']:,}"] for line in result.output.splitlines())
    assert f"total {snap['total']:,}" in result.output
    # a stdout that is not a terminal gets a snapshot without --once
    plain = runner.invoke(cli, ["top", "--db", str(db), "--log", "--by", "qtype"])
    assert plain.exit_code == 0 and f"total {snap['total']:,}" in plain.output


def test_top_over_a_window_and_errors(runner, db):
    result = runner.invoke(cli, ["top", "--db", str(db), "--since", "1h", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"] == 0
    result = runner.invoke(cli, ["top", "--db", str(db), "--since", "1h", "--until", "2h"])
    assert result.exit_code == 1 and "is after --until" in result.output
    result = runner.invoke(cli, ["top", "--db", str(db), "--log", "-i", "eth0"])
    assert result.exit_code == 2 and "live top" in result.output
