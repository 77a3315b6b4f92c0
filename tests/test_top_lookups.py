"""`dnswatch top --by lookup`: each client's lookups and the queries its search path wasted, over a log (the
lookups table, against lookups.top_lookups' SQL) and live (the stage's lookups as they end), and the screen at
fixed widths."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import replay
from dnswatch.cli import cli
from dnswatch.lookups import top_lookups
from dnswatch.pipeline import Pipeline
from dnswatch.sources.pcap import read_frames
from dnswatch.store import Store, open_readonly
from dnswatch.top import GROUPS, TopStats, log_stats
from dnswatch.topview import TopScreen
from test_lookups import POD, POD_B, cluster_capture
from test_top import screen_text as top_screen_text

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("toplk") / "cluster.pcap"
    cluster_capture(path)
    return path


@pytest.fixture(scope="module")
def db(capture, tmp_path_factory):
    path = tmp_path_factory.mktemp("toplkdb") / "l.db"
    replay(path, capture)  # lookups are on by default
    return path


def test_lookup_view_matches_the_readme_query(db):
    conn = open_readonly(str(db)).conn
    snap = log_stats(conn).snapshot(by="lookup", limit=0)
    sql = top_lookups(conn, by="pod")  # pod, else process, else address: the same key
    assert [(k.key, k.count, k.queries, k.wasted, k.wasted_pct, k.unresolved) for k in snap.keys] == [
        (r["client"], r["lookups"], r["queries"], r["wasted"], r["wasted_pct"], r["unresolved"]) for r in sql]
    assert [k.key for k in snap.keys] == [POD, POD_B]  # most wasted first; the server's hops are left out
    assert (snap.lookups, snap.lookup_queries, snap.wasted) == (3, 20, 14)
    assert snap.keys[0].max_ms == max(r["max_total_ms"] for r in sql)
    by_key = log_stats(conn).snapshot(by="lookup", sort="key", reverse=True)
    assert [k.key for k in by_key.keys] == [POD_B, POD]


def test_live_lookups_are_the_logs(capture, tmp_path):
    """Live top gets each lookup from the stage as it ends: the same numbers as the log's lookups table."""
    path = tmp_path / "live.db"
    stats = TopStats()
    with Store(str(path)) as store:
        pipe = Pipeline(store, "pcap", "x", (53,), sinks=(stats.add,), lookups=True)
        pipe.lookups.on_lookup = stats.add_lookup
        pipe.feed_all(read_frames(str(capture)))
        pipe.finish()
    a = stats.snapshot(by="lookup", limit=0)
    b = log_stats(open_readonly(str(path)).conn).snapshot(by="lookup", limit=0)
    assert a.keys and [k.__dict__ for k in a.keys] == [k.__dict__ for k in b.keys]
    assert (a.lookups, a.wasted) == (b.lookups, b.wasted) == (3, 14)


def screen_text(db, width: int) -> str:
    return top_screen_text(db, width, by="lookup")


@pytest.mark.parametrize("width", [80, 160])
def test_lookup_screen_snapshot(db, width):
    text = screen_text(db, width)
    golden = GOLDEN / f"top_lookup_{width}.txt"
    if os.environ.get("DNSWATCH_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()
    assert all(len(line) <= width for line in text.splitlines())


def test_lookup_key_and_cli(runner, db, capture):
    screen = TopScreen(lambda **kw: None)
    screen.key(str(GROUPS.index("lookup") + 1))
    assert screen.by == "lookup"
    result = runner.invoke(cli, ["top", "--db", str(db), "--log", "--once", "--by", "lookup"])
    assert result.exit_code == 0, result.output
    js = runner.invoke(cli, ["top", "--db", str(db), "--log", "--json", "--by", "lookup"])
    assert js.exit_code == 0, js.output
    snap = json.loads(js.output)
    assert snap["wasted"] == 14 and snap["keys"][0]["key"] == POD
    for k in snap["keys"]:
        assert any(line.split()[:4] == [k["key"], f"{k['count']:,}", f"{k['share']:.1f}", f"{k['queries']:,}"]
                   for line in result.output.splitlines())
    # --no-lookups: no lookups to rank, no lookup_id, and the DNAT copies stay two rows
    off = db.parent / "off.db"
    replay(off, capture, extra=("--no-lookups",))
    conn = open_readonly(str(off)).conn
    assert conn.execute("select count(*), count(lookup_id) from queries").fetchone() == (44, 0)
    assert log_stats(conn).snapshot(by="lookup").keys == []
