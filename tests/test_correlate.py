"""Correlation rules on synthetic messages: retries are attempts of one row, copies are one packet seen at
several capture points, a query whose twin was answered is a new query (the rule in schema.QUERIES)."""
from __future__ import annotations

from typing import List, Optional

import dnslib
import pytest

from dnswatch.correlate import COPY_WINDOW, Correlator
from dnswatch.dns import parse_message
from dnswatch.model import PACKET_HOST, PACKET_OUTGOING, PacketMeta, Segment
from dnswatch.schema import QUERY_COLUMNS

CLIENT, SERVER = "198.18.0.2", "198.18.0.1"
POD = PacketMeta(0, 2, PACKET_OUTGOING, netns=4026530001)  # the pod side of a veth
NODE = PacketMeta(0, 7, PACKET_HOST, netns=4026530002)  # the node side of the same veth


def query(dns_id: int, name: str = "www.example.test", qtype: str = "A") -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = dns_id
    return bytes(q.pack())


def answer(dns_id: int, name: str = "www.example.test", ip: str = "198.18.0.80") -> bytes:
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=dns_id, qr=1, ra=1, rd=1), q=dnslib.DNSQuestion(name))
    q.add_answer(dnslib.RR(name, rdata=dnslib.A(ip), ttl=300))
    return bytes(q.pack())


class Run:
    def __init__(self, **kw):
        self.rows: List[dict] = []
        self.c = Correlator(lambda row: self.rows.append(dict(zip(QUERY_COLUMNS, row))), **kw)

    def q(self, ts: float, payload: bytes, meta: Optional[PacketMeta] = None, sport: int = 40000) -> None:
        seg = Segment(ts, CLIENT, sport, SERVER, 53, "udp", payload, None, meta)
        self.c.query(seg, parse_message(payload), (payload[0] << 8) | payload[1])

    def r(self, ts: float, payload: bytes, meta: Optional[PacketMeta] = None, sport: int = 40000) -> None:
        seg = Segment(ts, SERVER, 53, CLIENT, sport, "udp", payload, None, meta)
        self.c.response(seg, parse_message(payload), (payload[0] << 8) | payload[1])

    def done(self) -> List[dict]:
        self.c.flush()
        return self.rows


def test_retry_is_one_row_timed_from_the_retry():
    run = Run()
    run.q(100.0, query(7))
    run.q(101.0, query(7))  # the client's retransmission, 1 s later
    run.r(101.0003, answer(7))
    (row,) = run.done()
    assert (row["status"], row["attempts"], row["ts"]) == ("answered", 2, 100.0)
    assert row["latency_ms"] == 0.3  # tshark's dns.time: from the retransmission
    assert row["first_attempt_latency_ms"] == 1000.3
    assert (run.c.queries, run.c.retries, run.c.duplicates, run.c.unanswered) == (2, 1, 0, 0)


def test_retries_restart_the_wait_then_time_out_with_their_count():
    run = Run(timeout=5.0)
    run.q(0.0, query(9))
    run.q(4.0, query(9))
    run.c.expire(6.0)  # 6 s after the first attempt, 2 s after the last: still waiting
    assert run.rows == []
    run.c.expire(9.5)
    (row,) = run.rows
    assert (row["status"], row["attempts"], row["latency_ms"], row["first_attempt_latency_ms"]) == (
        "unanswered", 2, None, None)


def test_id_reused_after_its_answer_is_a_new_query():
    """dnsperf reuses an id as soon as its response arrives: same port, id and name, 0.3 ms apart."""
    run = Run()
    t = 10.0
    for i in range(5):
        run.q(t, query(42))
        run.r(t + 0.0001, answer(42))
        t += 0.0002
    rows = run.done()
    assert len(rows) == 5 and all(r["status"] == "answered" and r["attempts"] == 1 for r in rows)
    assert run.c.duplicates == 0 and run.c.repeated_responses == 0 and run.c.response_only == 0


def test_copies_at_two_capture_points_are_one_packet():
    run = Run()
    run.q(1.0, query(5), POD)
    run.q(1.00001, query(5), NODE)
    run.r(1.0004, answer(5), NODE)
    run.r(1.00041, answer(5), POD)
    (row,) = run.done()
    assert (row["attempts"], row["latency_ms"], run.c.duplicates, run.c.responses) == (1, 0.4, 2, 1)


def test_the_same_bytes_at_the_same_point_are_never_a_copy():
    """Queries only (no responses to tell a retry from id reuse): one capture point never sees a copy of its
    own packet, so dnsperf's reused id and name a millisecond later is a second row."""
    run = Run(expect_responses=False)
    run.q(1.0, query(5), POD)
    run.q(1.0001, query(5), NODE)  # copy
    run.q(1.001, query(5), POD)  # a new query, the same bytes
    run.q(1.00101, query(5), NODE)  # its copy: the node side has not seen this one yet
    rows = run.done()
    assert [r["status"] for r in rows] == ["query_only", "query_only"]
    assert run.c.duplicates == 2


def test_files_without_capture_points_decide_copies_by_time():
    run = Run()
    run.q(1.0, query(6))
    run.q(1.00002, query(6))  # e.g. tcpdump -i any seeing a routed packet twice
    run.r(1.0003, answer(6))
    run.r(1.00032, answer(6))
    (row,) = run.done()
    assert (row["attempts"], run.c.duplicates) == (1, 2)
    run = Run()
    run.q(1.0, query(6))
    run.q(1.0 + COPY_WINDOW * 2, query(6))  # later than a copy can be: a retry
    run.r(1.5, answer(6))
    (row,) = run.done()
    assert (row["attempts"], run.c.duplicates, run.c.retries) == (2, 0, 1)


def test_second_answer_to_an_answered_question_is_a_repeat_not_a_row():
    run = Run()
    run.q(1.0, query(8))
    run.q(2.0, query(8))
    run.r(2.0001, answer(8))  # answers the retry
    run.r(2.5, answer(8))  # the server answered the first attempt as well, late
    (row,) = run.done()
    assert row["attempts"] == 2
    assert (run.c.repeated_responses, run.c.response_only, run.c.duplicates) == (1, 0, 0)


def test_other_question_under_the_same_id_is_a_new_query():
    run = Run()
    run.q(1.0, query(3, "a.example.test"))
    run.q(1.5, query(3, "b.example.test"))
    run.r(1.6, answer(3, "b.example.test"))
    rows = run.done()
    assert [(r["qname"], r["status"], r["attempts"]) for r in rows] == [
        ("a.example.test", "unanswered", 1), ("b.example.test", "answered", 1)]


def test_response_without_its_query_is_response_only_with_zero_attempts():
    run = Run()
    run.r(1.0, answer(11))
    (row,) = run.done()
    assert (row["status"], row["attempts"]) == ("response_only", 0)


@pytest.mark.parametrize("n", [1000])
def test_memory_of_answers_is_bounded(n):
    run = Run(max_pending=100)
    for i in range(n):
        run.q(i * 1e-3, query(i % 65536, f"n{i}.example.test"), sport=1024 + i)
        run.r(i * 1e-3 + 1e-4, answer(i % 65536, f"n{i}.example.test"), sport=1024 + i)
    assert len(run.c.recent) <= 100 and len(run.done()) == n


def _counted(c) -> int:
    return sum(c._cost(entry) for entry in c.pending.values())


def test_waiting_queries_are_bounded_in_bytes_and_what_the_bound_gives_up_is_counted(monkeypatch):
    """A flood of distinct queries never answered: the table stays within its byte budget (each entry counted
    for what it holds: its Message too once parse_message's cache no longer shares it), the oldest go first as
    unanswered rows, and each is counted in ``evicted`` (the pipeline's memory_bounds loss)."""
    from dnswatch import correlate, dns
    run = Run(max_pending_bytes=200 * correlate.ENTRY_COST)
    for i in range(1000):
        if i % 300 == 0:
            monkeypatch.setitem(dns.cache_stats, "clears", dns.cache_stats["clears"] + 1)  # the cache starts over
        run.q(i * 1e-3, query(i % 65536, f"n{i}.example.test"), sport=1024 + i)
        assert run.c.pending_bytes == _counted(run.c) <= run.c.max_pending_bytes
    run.r(1.0, answer(999, "n999.example.test"), sport=1024 + 999)  # the newest still waits: answered
    assert run.c.evicted > 0 and len(run.c.pending) < 200
    rows = run.done()
    assert run.c.pending_bytes == 0 and run.c._shared == 0
    assert len(rows) == 1000 and sum(r["status"] == "unanswered" for r in rows) == 999
    assert [r["qname"] for r in rows[:3]] == ["n0.example.test", "n1.example.test", "n2.example.test"]


def test_retries_copies_and_answers_keep_the_byte_count_exact():
    run = Run()
    for i in range(50):
        run.q(1.0 + i, query(i), POD)
        run.q(1.00001 + i, query(i), NODE)  # copy
        run.q(2.0 + i, query(i), POD)  # retry
        assert run.c.pending_bytes == _counted(run.c)
        if i % 2:
            run.r(2.001 + i, answer(i), POD)
        assert run.c.pending_bytes == _counted(run.c)
    run.c.expire(100.0)
    assert run.c.pending_bytes == 0 and len(run.done()) == 50


def _bits(x: float) -> bytes:
    import struct
    return struct.pack("<d", x)


def test_ms3_is_round_bit_for_bit():
    """correlate.ms3(s) is round(s * 1000.0, 3), the same double (sign of zero too), ties and odd values included."""
    import math
    import random

    from dnswatch.correlate import ms3

    rng = random.Random(13)
    values = [0.0, -0.0, 1e-12, -1e-12, 0.0005, 0.0015, 0.0025, 2.5e-7, 5e-7, 1.5e-6, 0.1, 0.3, 1 / 3, 4.9999995e-4,
              999.9995, 1e5, 1e6, 1e9, 1e12, -0.0004, -3.7, math.inf, -math.inf, 1.0000005e-3, 123.4565e-3]
    values += [rng.uniform(0, 0.01) for _ in range(20000)]
    values += [rng.uniform(0, 10) for _ in range(20000)]
    values += [rng.expovariate(1 / 0.05) for _ in range(20000)]
    values += [k / 1e6 + 5e-10 * rng.choice((-1, 0, 1)) for k in range(0, 20000, 7)]  # near the microsecond ties
    values += [(k + 0.5) / 1e6 for k in range(0, 20000, 3)]
    for v in values:
        assert _bits(ms3(v)) == _bits(round(v * 1000.0, 3)), v
    assert math.isnan(ms3(math.nan))
