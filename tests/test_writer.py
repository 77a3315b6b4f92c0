"""The write path (layout.LogWriter): rows written in large batches, through templates and caches that fill and
empty, give the same log as rows written one at a time; and the sums agree with the rows."""
from __future__ import annotations

import json
import os
import random
import sqlite3
import time

import pytest

import dnswatch.layout as layout
import dnswatch.store as store
from dnswatch.schema import LIVE_ONLY_FROM, QUERY_COLUMNS, Q
from dnswatch.store import Store
from logcheck import rollups_and_rows

T0 = 1_700_000_000.0


def rows(n: int, seed: int = 3) -> list:
    """Rows over three hours, out of time order, with equal times, rows without a name, a time or answers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = [None] * len(QUERY_COLUMNS)
        name = rng.choice(["a.test", "b.test", "c.example", "WWW.c.example", None]) if i % 50 else None
        r[Q["ts"]] = None if i == 7 else T0 + rng.choice([rng.uniform(0, 3 * 3600), 1800.0])  # ties at T0 + 1800
        r[Q["capture_id"]], r[Q["sport"]], r[Q["dns_id"]] = 1, 1024 + i, i & 0xFFFF
        r[Q["src"]] = rng.choice(["10.0.0.2", "10.0.0.3", "fd00::9", None])
        r[Q["dst"]], r[Q["dport"]], r[Q["proto"]] = "10.0.0.1", 53, rng.choice(["udp", "tcp"])
        r[Q["qname"]], r[Q["qtype"]], r[Q["qtype_num"]] = name, "A", 1
        status = rng.choice(["answered"] * 6 + ["unanswered", "response_only"])
        r[Q["status"]] = status
        if status != "unanswered":
            r[Q["rcode"]], r[Q["rcode_num"]] = rng.choice([("NOERROR", 0), ("NXDOMAIN", 3)])
            data = [f"198.51.100.{rng.randrange(6)}" for _ in range(rng.choice([0, 1, 2]))]
            r[Q["answers"]] = json.dumps([{"name": name or ".", "type": "A", "ttl": 60, "data": d} for d in data])
            if r[Q["ts"]] is not None:
                lat = rng.choice([0.135, 1.5, rng.uniform(0, 50)])
                r[Q["latency_ms"]] = r[Q["first_attempt_latency_ms"]] = lat
                r[Q["response_ts"]] = r[Q["ts"]] + lat / 1000
        r[Q["attempts"]] = 1
        r[Q["pid"]], r[Q["comm"]] = rng.choice([(None, None), (10, "curl"), (11, "dig")])
        r[Q["pod"]], r[Q["pod_namespace"]] = rng.choice([(None, None), ("web-1", "shop")])
        out.append(r)
    return out


def write(path: str, batches: list, live: bool) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    layout.prepare(conn)
    log = layout.LogWriter(conn, len(QUERY_COLUMNS) if live else LIVE_ONLY_FROM)
    for batch in batches:
        log.write(batch, [])
    log.flush()
    conn.close()


def contents(path: str) -> dict:
    conn = sqlite3.connect(path)
    out = {
        "queries": conn.execute("select * from queries order by id").fetchall(),
        "rollups": conn.execute("select hour, qname, qtype, rcode, comm, pod_namespace, pod, count, unanswered, "
                                "answered, round(latency_sum, 9), latency_max from rollups order by 1, 2, 3, 4, 5, 6, 7"
                                ).fetchall(),
        "keys": conn.execute("select kind, case when kind = 1 then (select name from names where id = key) else "
                             "(select s from strings where id = key) end, hour, n from key_hours order by 1, 2, 3"
                             ).fetchall(),
        "pdns": conn.execute("select * from passive_dns order by 1, 2, 3").fetchall(),
        "items": conn.execute("select data, (select answers from answer_sets where id = set_id), "
                              "(select name from names where id = qname) from answer_items order by 1, 2, 3").fetchall(),
    }
    conn.close()
    return out


@pytest.mark.parametrize("live", [False, True], ids=["pcap", "live"])
def test_batches_and_small_caches_change_nothing(tmp_path, monkeypatch, live):
    data = rows(3000)
    write(str(tmp_path / "one.db"), [[r] for r in data], live)
    write(str(tmp_path / "big.db"), [data[:2500], data[2500:]], live)
    monkeypatch.setattr(layout, "CACHE_ENTRIES", 40)  # every cache and the templates fill and empty many times
    monkeypatch.setattr(layout, "TEMPLATE_BYTES", 2000)
    write(str(tmp_path / "small.db"), [data[i:i + 700] for i in range(0, len(data), 700)], live)
    one = contents(str(tmp_path / "one.db"))
    assert len(one["queries"]) == 3000 and one["pdns"] and one["items"]
    assert contents(str(tmp_path / "big.db")) == one
    assert contents(str(tmp_path / "small.db")) == one


def test_sums_agree_with_the_rows(tmp_path):
    db = str(tmp_path / "s.db")
    with Store(db) as store:
        store.start_capture("live", "test", {})
        for r in rows(4000, seed=8):
            store.add(r)
    conn = sqlite3.connect(db)
    rolled, raw = rollups_and_rows(conn)
    assert rolled == raw
    raw_pdns = conn.execute(
        "select a.value->>'name', a.value->>'type', a.value->>'data', min(ts), max(ts), count(*) "
        "from queries, json_each(answers) a group by 1, 2, 3 order by 1, 2, 3").fetchall()
    assert raw_pdns == conn.execute("select name, type, data, first_seen, last_seen, count from passive_dns "
                                    "order by 1, 2, 3").fetchall()
    # who first resolved it: the first row (by time, then as written) holding the answer
    for name, data, src, pid in conn.execute("select name, data, first_src, first_pid from passive_dns").fetchall():
        assert (src, pid) == conn.execute(
            "select src, pid from queries, json_each(answers) a where a.value->>'data' = ? and a.value->>'name' "
            "is ? order by ts, queries.id limit 1", (data, name)).fetchone()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="bulk mode needs fork")
def test_waiting_batches_share_a_transaction(tmp_path, monkeypatch):
    """The writer process of a bulk load inserts the batches that wait for it in one transaction, in order."""
    sizes = tmp_path / "sizes"
    real = store._Log.write

    def slow(self, rows, malformed, force=False, lookups=()):  # the child inherits this through fork
        with open(sizes, "a") as f:
            f.write(f"{len(rows)}\n")
        time.sleep(0.2)  # meanwhile the parent sends the next batches
        real(self, rows, malformed, force, lookups)

    monkeypatch.setattr(store._Log, "write", slow)
    db = str(tmp_path / "w.db")
    n = store.BATCH_ROWS * 6 + 7
    s = Store(db, live_columns=False, bulk=True)
    cid = s.start_capture("pcap", "x", {})
    for i, r in enumerate(rows(n)):
        r[Q["capture_id"]], r[Q["dns_id"]] = cid, i
        s.add(r)
    s.close()
    written = [int(x) for x in sizes.read_text().split() if int(x)]
    assert sum(written) == n and max(written) > store.BATCH_ROWS
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("select dns_id from queries order by id")] == list(range(n))
    assert conn.execute("select sum(count) from rollups_hourly").fetchone()[0] == n
