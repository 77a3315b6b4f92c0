"""Lookups from packets alone (replay): a Kubernetes search path with ndots:5 behind a service VIP (DNAT copies),
a server forwarding upstream (hops), the A/AAAA pair, TC fallback to TCP, and lookups kept apart."""
from __future__ import annotations

import json
import socket
import sqlite3
import struct
import time
from typing import List, Optional

import dnslib
import pytest

from conftest import replay
from dnswatch.cli import cli
from dnswatch.correlate import Correlator
from dnswatch.dns import parse_message
from dnswatch.lookups import LookupStage, top_lookups
from dnswatch.model import Segment
from dnswatch.schema import LOOKUP_COLUMNS, QUERY_COLUMNS

SEARCH = ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local")
POD, POD_B, VIP, SERVER, UPSTREAM = "198.18.1.2", "198.18.1.3", "198.18.9.10", "198.18.2.2", "198.18.3.2"


def _ip_udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    checksum = 0
    for i in range(0, 20, 2):
        checksum += (header[i] << 8) | header[i + 1]
    while checksum >> 16:
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
    header = header[:10] + struct.pack("!H", ~checksum & 0xFFFF) + header[12:]
    return header + udp


class Pcap:
    """A raw-IP pcap built packet by packet."""

    def __init__(self):
        self.packets: List[tuple] = []

    def add(self, ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        self.packets.append((ts, _ip_udp(src, sport, dst, dport, payload)))

    def write(self, path) -> None:
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
            for ts, data in sorted(self.packets, key=lambda p: p[0]):
                sec = int(ts)
                f.write(struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(data), len(data)))
                f.write(data)


def query(dns_id: int, name: str, qtype: str = "A") -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = dns_id
    return bytes(q.pack())


def reply(dns_id: int, name: str, qtype: str = "A", rcode: int = 0, answer: Optional[str] = None,
          tc: bool = False) -> bytes:
    r = dnslib.DNSRecord(dnslib.DNSHeader(id=dns_id, qr=1, ra=1, rd=1, rcode=rcode, tc=int(tc)),
                         q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))
    if answer:
        rdata = dnslib.A(answer) if qtype == "A" else dnslib.AAAA(answer)
        r.add_answer(dnslib.RR(name, getattr(dnslib.QTYPE, qtype), rdata=rdata, ttl=30))
    return bytes(r.pack())


def cluster_capture(path, t0: float = 1_800_000_000.0) -> None:
    """POD asks api.example.com (4 candidates x A/AAAA) and, later, db (answered at its second candidate); POD_B
    asks api.example.com once more. Everything goes to VIP, is seen again after DNAT to SERVER; SERVER forwards
    api.example.com upstream, which answers in 5 ms."""
    p = Pcap()
    dns_id = [100]

    def exchange(t: float, client: str, sport: int, name: str, qtype: str, rcode: int, answer: Optional[str],
                 upstream: bool = False) -> float:
        dns_id[0] += 1
        i = dns_id[0]
        q = query(i, name, qtype)
        p.add(t, client, sport, VIP, 53, q)  # in the pod's namespace
        p.add(t + 0.00002, client, sport, SERVER, 53, q)  # after DNAT, in the server pod's namespace
        done = t + 0.0005
        if upstream:
            u = query(i + 5000, name, qtype)
            p.add(t + 0.0002, SERVER, 50000 + i, UPSTREAM, 53, u)
            p.add(t + 0.0052, UPSTREAM, 53, SERVER, 50000 + i, reply(i + 5000, name, qtype, rcode, answer))
            done = t + 0.0055
        r = reply(i, name, qtype, rcode, answer)
        p.add(done, SERVER, 53, client, sport, r)
        p.add(done + 0.00002, VIP, 53, client, sport, r)
        return done

    def resolve(t: float, client: str, sport: int, asked: str, answered_at: int, upstream_at: int = -1) -> None:
        candidates = [f"{asked}.{s}" for s in SEARCH] + [asked]
        for n, name in enumerate(candidates[:answered_at + 1]):
            ok = n == answered_at
            ends = [exchange(t, client, sport, name, qtype, 0 if ok else 3,
                             ("198.18.5.5" if qtype == "A" else "fd00::5") if ok else None, upstream=n == upstream_at)
                    for qtype in ("A", "AAAA")]
            t = max(ends) + 0.0001

    resolve(t0, POD, 41000, "api.example.com", 3, upstream_at=3)
    resolve(t0 + 0.5, POD, 41001, "db", 1)
    resolve(t0 + 10.0, POD_B, 42000, "api.example.com", 3, upstream_at=3)
    p.write(path)


def lookups(db) -> List[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("select * from lookups order by ts")]


@pytest.fixture
def cluster_db(tmp_path):
    pcap = tmp_path / "cluster.pcap"
    cluster_capture(pcap)
    db = tmp_path / "l.db"
    replay(db, pcap, extra=("--lookups",))
    return db


def test_search_path_lookup_from_replay(cluster_db):
    conn = sqlite3.connect(cluster_db)
    # each query stored once: 8 + 4 + 8 client queries (the DNAT copies merged), 2 + 2 upstream queries
    assert conn.execute("select count(*) from queries").fetchone()[0] == 24
    assert conn.execute("select count(*) from queries where src in (?, ?)", (POD, POD_B)).fetchone()[0] == 20
    assert conn.execute("select count(distinct nat_dst) from queries where src = ?", (POD,)).fetchone() == (1,)
    assert conn.execute("select count(*) from queries where lookup_id is null").fetchone()[0] == 0
    api, upstream_a, upstream_aaaa, db_, api_b, upstream_b, _ = lookups(cluster_db)
    # dnsmasq forwards each of the pair from its own port: two lookups of the server, each a hop of the client's
    assert upstream_aaaa["forwarded_for"] == upstream_a["forwarded_for"] == api["lookup_id"]
    assert api["asked_name"] == "api.example.com"
    assert json.loads(api["candidates"]) == [f"api.example.com.{s}" for s in SEARCH] + ["api.example.com"]
    assert json.loads(api["qtypes"]) == ["A", "AAAA"]
    assert (api["answered_name"], api["rcode"], api["queries"], api["wasted"]) == ("api.example.com", "NOERROR", 8, 6)
    assert (api["src"], api["dst"], api["nat_dst"]) == (POD, VIP, SERVER)
    assert api["total_ms"] == pytest.approx(4 * 0.6 + 5.0, abs=0.1)
    assert api["upstream_server"] == UPSTREAM and api["upstream_latency_ms"] == pytest.approx(5.0, abs=0.01)
    assert api["upstream_lookup_id"] in (upstream_a["lookup_id"], upstream_aaaa["lookup_id"])
    assert (upstream_a["src"], upstream_a["asked_name"], upstream_a["queries"]) == (SERVER, "api.example.com", 1)
    assert db_["asked_name"] == "db" and db_["answered_name"] == "db.svc.cluster.local"
    assert (db_["queries"], db_["wasted"], db_["rcode"], db_["upstream_server"]) == (4, 2, "NOERROR", None)
    assert (api_b["src"], api_b["asked_name"], api_b["wasted"]) == (POD_B, "api.example.com", 6)
    assert upstream_b["forwarded_for"] == api_b["lookup_id"]
    # every query row points at its lookup, and the lookup's count matches
    for lk in (api, db_, api_b):
        n = conn.execute("select sum(attempts) from queries where lookup_id = ?", (lk["lookup_id"],)).fetchone()[0]
        assert n == lk["queries"]


def test_search_lookups_and_top(cluster_db, runner):
    result = runner.invoke(cli, ["search", "--lookups", "example.com", "--db", str(cluster_db)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["asked_name"] for r in rows] == ["api.example.com"] * 2  # client lookups, newest first; not the hops
    assert rows[0]["src"] == POD_B and rows[0]["wasted"] == 6
    result = runner.invoke(cli, ["search", "--lookups", "--min-wasted", "1", "--db", str(cluster_db)])
    assert {r["asked_name"] for r in json.loads(result.output)} == {"api.example.com", "db"}
    conn = sqlite3.connect(cluster_db)
    top = top_lookups(conn, by="client")
    assert top[0]["client"] == POD and (top[0]["lookups"], top[0]["queries"], top[0]["wasted"]) == (2, 12, 8)


def test_search_lookups_by_a_name_json_escapes(tmp_path, runner):
    """candidates is JSON: a name's backslashes (presentation escapes) and quotes are spelled \\\\ and \\" there, so
    `search --lookups NAME` matches the name as JSON writes it, not the raw text."""
    p = Pcap()
    names = {"caf\\195\\169.example.test": [b"caf\xc3\xa9", b"example", b"test"],
             'q"uo\\\\te.example.test': [b'q"uo\\te', b"example", b"test"],
             "ctl\\001x.example.test": [b"ctl\x01x", b"example", b"test"]}
    for i, labels in enumerate(names.values()):
        q = dnslib.DNSRecord(dnslib.DNSHeader(id=i + 1, rd=1), q=dnslib.DNSQuestion(dnslib.DNSLabel(labels), 1))
        p.add(1_800_000_000.0 + i, POD, 40000 + i, SERVER, 53, bytes(q.pack()))
    p.write(tmp_path / "escapes.pcap")
    db = tmp_path / "escapes.db"
    replay(db, tmp_path / "escapes.pcap", extra=("--lookups",))
    for name in names:
        result = runner.invoke(cli, ["search", "--lookups", name, "--db", str(db)])
        assert result.exit_code == 0, result.output
        assert [r["asked_name"] for r in json.loads(result.output)] == [name]
    for typed, name in (("café.example.test", "caf\\195\\169.example.test"),
                        ("ctl\x01x.example.test", "ctl\\001x.example.test")):
        result = runner.invoke(cli, ["search", "--lookups", typed, "--db", str(db)])  # as stored: \DDD
        assert result.exit_code == 0, result.output
        assert [r["asked_name"] for r in json.loads(result.output)] == [name]


class Stage:
    """Correlator -> LookupStage on synthetic segments."""

    def __init__(self):
        self.rows: List[dict] = []
        self.lookups: List[dict] = []
        self.stage = LookupStage(lambda row: self.rows.append(dict(zip(QUERY_COLUMNS, row))), 1)
        self.stage.on_lookup = lambda row: self.lookups.append(dict(zip(LOOKUP_COLUMNS, row)))  # every lookup
        self.c = Correlator(self.stage, 1)

    def q(self, ts, payload, sport=40000, proto="udp", src=POD):
        seg = Segment(ts, src, sport, SERVER, 53, proto, payload, None, None)
        self.c.query(seg, parse_message(payload), (payload[0] << 8) | payload[1])

    def r(self, ts, payload, sport=40000, proto="udp", src=POD):
        seg = Segment(ts, SERVER, 53, src, sport, proto, payload, None, None)
        self.c.response(seg, parse_message(payload), (payload[0] << 8) | payload[1])

    def done(self):
        self.c.flush()
        self.stage.flush()
        return self.lookups


def test_tc_fallback_is_one_lookup():
    s = Stage()
    s.q(10.0, query(1, "big.example.test"))
    s.r(10.001, reply(1, "big.example.test", tc=True))
    s.q(10.002, query(2, "big.example.test"), sport=40001, proto="tcp")
    s.r(10.004, reply(2, "big.example.test", answer="198.18.5.6"), sport=40001, proto="tcp")
    (lk,) = s.done()
    assert (lk["queries"], lk["tcp"], lk["rcode"], lk["answered_name"], lk["wasted"]) == (2, 1, "NOERROR",
                                                                                         "big.example.test", 0)
    assert lk["total_ms"] == 4.0
    assert len({r["lookup_id"] for r in s.rows}) == 1


def test_same_name_again_is_a_new_lookup_and_unrelated_names_stay_apart():
    s = Stage()
    for i, t in enumerate((20.0, 20.01)):  # the same name resolved twice in a row
        s.q(t, query(10 + i, "www.example.test"), sport=40010 + i)
        s.r(t + 0.001, reply(10 + i, "www.example.test", answer="198.18.5.7"), sport=40010 + i)
    s.q(20.02, query(20, "nope.example.test"), sport=40020)
    s.r(20.021, reply(20, "nope.example.test", rcode=3), sport=40020)
    s.q(20.022, query(21, "other.example.test"), sport=40021)  # another name, not an expansion of nope
    s.r(20.023, reply(21, "other.example.test", answer="198.18.5.8"), sport=40021)
    s.q(20.03, query(30, "www.example.test"), sport=40030, src=POD_B)  # another client, same name
    s.r(20.031, reply(30, "www.example.test", answer="198.18.5.7"), sport=40030, src=POD_B)
    got = s.done()
    assert [(lk["src"], lk["asked_name"], lk["queries"]) for lk in sorted(got, key=lambda x: x["ts"])] == [
        (POD, "www.example.test", 1), (POD, "www.example.test", 1), (POD, "nope.example.test", 1),
        (POD, "other.example.test", 1), (POD_B, "www.example.test", 1)]


def test_unanswered_candidate_and_bounded_memory():
    s = Stage()
    s.q(30.0, query(1, "slow.shop.svc.cluster.local"))  # never answered: its lookup still ends
    s.stage.advance(40.0)
    s.c.expire(40.0)
    s.stage.advance(60.0)
    assert len(s.lookups) == 1 and s.lookups[0]["rcode"] is None and s.lookups[0]["total_ms"] is None
    assert not s.stage._open and not s.stage._by_client and not s.stage._held


def test_memory_bounds_end_lookups_early_and_count_it(monkeypatch):
    import dnswatch.lookups as lk

    monkeypatch.setattr(lk, "MAX_OPEN_BYTES", 3 * (lk.LOOKUP_BYTES + lk.QUERY_BYTES + 40))
    monkeypatch.setattr(lk, "MAX_HOLD_BYTES", 2 * lk.ROW_BYTES)
    s = Stage()
    for i in range(10):  # ten names at once: more open lookups and held rows than the bounds allow
        s.q(50.0 + i * 0.001, query(100 + i, f"n{i}.example.test"), sport=41000 + i)
        s.r(50.0005 + i * 0.001, reply(100 + i, f"n{i}.example.test", answer="198.18.5.9"), sport=41000 + i)
    s.stage.advance(50.02)
    assert s.stage.bounded["lookups_ended_early"] > 0 and s.stage.bounded["rows_released_early"] > 0
    assert s.stage._open_bytes <= lk.MAX_OPEN_BYTES and s.stage._held_bytes <= lk.MAX_HOLD_BYTES
    got = s.done()  # nothing lost: every row and every lookup still comes out
    assert len(s.rows) == 10 and len(got) == 10 and {r["lookup_id"] for r in s.rows} == {g["lookup_id"] for g in got}


def test_live_rows_wait_only_for_a_nat_copy():
    """Live, a row goes on HOLD_LIVE after it came (wall clock), and the watch loop polls sooner meanwhile."""
    import dnswatch.lookups as lk
    from dnswatch.watch import HELD_POLL_MS, POLL_MS, run_watch

    rows = []
    stage = LookupStage(rows.append, 1, live=True)
    row = [None] * len(QUERY_COLUMNS)
    for column, value in (("ts", 100.0), ("response_ts", 100.001), ("src", POD), ("sport", 40000), ("dst", SERVER),
                          ("proto", "udp"), ("dns_id", 1), ("qname", "a.example.test"), ("qtype", "A"),
                          ("qtype_num", 1), ("status", "answered"), ("rcode", "NOERROR"), ("ancount", 1),
                          ("attempts", 1)):
        row[QUERY_COLUMNS.index(column)] = value
    stage.take(row)
    stage.advance(100.001 + lk.HOLD_LIVE / 2)
    assert rows == [] and stage.holding
    stage.advance(100.001 + lk.HOLD_LIVE)
    assert len(rows) == 1 and not stage.holding and lk.HOLD_LIVE <= 0.05

    from test_health import _Pipeline, _QuietCapture

    class Capture(_QuietCapture):
        timeouts: List[int] = []

        def poll(self, timeout_ms):
            self.timeouts.append(timeout_ms)
            return super().poll(timeout_ms)

    class Pipe(_Pipeline):
        lookups = type("Held", (), {"holding": True})()

    capture = Capture()
    run_watch(capture, Pipe(), duration=0.05)
    assert HELD_POLL_MS in capture.timeouts and POLL_MS not in capture.timeouts and HELD_POLL_MS < POLL_MS


def test_one_query_lookups_are_read_from_their_rows(tmp_path):
    """A lookup of one query with no hop is not stored: the lookups view gives the same row from the queries row
    as the stage built (dnsperf: most lookups are one query)."""
    from dnswatch.pipeline import Pipeline
    from dnswatch.sources.pcap import read_frames
    from dnswatch.store import Store

    from conftest import PCAPS

    path = tmp_path / "plain.db"
    ended = []
    with Store(str(path)) as store:
        pipe = Pipeline(store, "pcap", "x", (53,), lookups=True)
        pipe.lookups.on_lookup = ended.append
        pipe.feed_all(read_frames(str(PCAPS / "dnsperf_small.pcap")))
        pipe.finish()
    conn = sqlite3.connect(path)
    stored = conn.execute("select count(*) from lookup_groups").fetchone()[0]
    view = {r[0]: r for r in conn.execute("select * from lookups")}
    assert len(view) == len(ended) and stored < len(ended) / 2  # most were never written
    for row in ended:
        got = view[row[0]]
        for column, a, b in zip(LOOKUP_COLUMNS, got, row):
            if isinstance(b, float):
                assert a == pytest.approx(b, abs=0.002), column
            else:
                assert a == b, (column, a, b)


def test_a_log_whose_lookups_is_a_table_migrates(tmp_path):
    """Logs written before the view stored every lookup in a table named lookups: it becomes lookup_groups, and
    its rows are not seen twice (their queries rows' lookup_id is in it)."""
    from conftest import PCAPS

    db = tmp_path / "old.db"
    replay(db, PCAPS / "dnsperf_small.pcap")
    conn = sqlite3.connect(db)
    before = conn.execute("select * from lookups order by lookup_id").fetchall()
    conn.execute("drop view lookups")
    conn.execute("alter table lookup_groups rename to lookups")
    conn.execute("delete from lookups")
    conn.executemany(f"insert into lookups values ({', '.join('?' for _ in LOOKUP_COLUMNS)})", before)  # all stored
    conn.commit()
    conn.close()
    replay(db, PCAPS / "udp_v4_dig.pcap")
    conn = sqlite3.connect(db)
    kinds = dict(conn.execute("select name, type from sqlite_master where name in ('lookups', 'lookup_groups')"))
    assert kinds == {"lookups": "view", "lookup_groups": "table"}
    first = conn.execute("select * from lookups where capture_id = 1 order by lookup_id").fetchall()
    assert first == before
    assert conn.execute("select count(*) from lookups where capture_id = 2").fetchone()[0] > 0


def test_a_response_without_its_query_makes_no_lookup(tmp_path):
    """dns_orphans.pcap has 3 responses whose query was not seen: they were lookups of 0 queries, 'answered' in
    0.0 ms (what lowered top's average and counted in its lookups, not in the metrics'). No query, no lookup: the
    view leaves them out, and a log written before gets the new view when a writer opens it."""
    from dnswatch.store import Store
    from conftest import PCAPS

    db = tmp_path / "orphans.db"
    replay(db, PCAPS / "dns_orphans.pcap")
    con = sqlite3.connect(db)
    orphans = con.execute("select count(*) from queries where status = 'response_only'").fetchone()[0]
    assert orphans == 3
    got = dict(con.execute("select lookup_id, queries from lookups"))
    assert got and min(got.values()) >= 1
    assert set(got) == {i for (i,) in con.execute("select lookup_id from queries where status != 'response_only'")}
    assert sum(r["lookups"] for r in top_lookups(con, by="client")) == len(got)
    # a log of schema 2 (its view showed them): the next writer recreates the views
    con.execute("drop view lookups")
    con.execute("create view lookups as select * from lookup_groups union all select lookup_id, capture_id, ts, "
                + ", ".join(["NULL"] * (len(LOOKUP_COLUMNS) - 3)) + " from queries where lookup_id is not null")
    con.execute("pragma user_version = 2")
    con.commit()
    assert con.execute("select count(*) from lookups").fetchone()[0] == len(got) + orphans
    con.close()
    Store(str(db)).close()
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from lookups").fetchone()[0] == len(got)
