"""Prometheus metrics: counts from the same rows the log stores, bounded cardinality, the HTTP endpoint."""
from __future__ import annotations

import gc
import socket
import sqlite3
import tracemalloc
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import PCAPS, ports_for
from dnswatch.correlate import Q
from dnswatch.metrics import (LATENCY_BUCKETS, MetricsError, MetricsServer, MetricsSink, capture_health, exposition,
                              parse_listen)
from dnswatch.pipeline import Pipeline
from dnswatch.schema import QUERY_COLUMNS
from dnswatch.sources.pcap import PcapReader
from dnswatch.store import Store

# /metrics stays under this at the default --metrics-max-series 200, whatever the pod churn and query types
# (README, "Prometheus metrics": ~3 KB per label set typically, ~6 KB with lookups, at most ~12 KB)
MAX_SCRAPE_BYTES = 2_400_000


def row(**values):
    r = [None] * len(QUERY_COLUMNS)
    values.setdefault("status", "answered")
    values.setdefault("qtype", "A")
    if values["status"] == "answered":
        values.setdefault("rcode", "NOERROR")
        values.setdefault("latency_ms", 1.0)
    for k, v in values.items():
        r[Q[k]] = v
    return r


def samples(sink):
    out = {}
    for family in text_string_to_metric_families(exposition(sink).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(found, name, **match):
    return sum(v for labels, v in found.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_counts_by_pod_rcode_qtype_and_latency():
    sink = MetricsSink()
    web = dict(pod="web-1", pod_namespace="shop", container="nginx", comm="nginx")
    for _ in range(3):
        sink(row(**web, latency_ms=0.2))
    sink(row(**web, rcode="NXDOMAIN", qtype="AAAA", latency_ms=30.0))
    sink(row(**web, status="unanswered"))
    sink(row(comm="curl", qtype="TYPE65280", rcode="SERVFAIL", latency_ms=7000.0))
    sink(row(comm="curl", status="query_only"))
    sink(row(status="response_only", rcode="NOERROR"))
    found = samples(sink)
    assert total(found, "dnswatch_queries_total", pod="web-1") == 5
    assert total(found, "dnswatch_queries_total", pod="web-1", qtype="AAAA") == 1
    assert total(found, "dnswatch_responses_total", pod="web-1", rcode="NXDOMAIN") == 1
    assert total(found, "dnswatch_unanswered_total", pod="web-1") == 1
    # outside a pod, the process name is the label; odd types and rcodes fold into "other" values
    assert total(found, "dnswatch_queries_total", comm="curl", qtype="other") == 1
    assert total(found, "dnswatch_responses_total", comm="curl", rcode="SERVFAIL") == 1
    assert total(found, "dnswatch_queries_total", comm="curl") == 2
    assert total(found, "dnswatch_queries_total", comm="nginx") == 0  # a pod's rows carry pod labels, not comm
    assert total(found, "dnswatch_responses_total", comm="", pod="") == 1  # response without query: no sender
    assert total(found, "dnswatch_queries_total", comm="", pod="") == 0
    buckets = {labels["le"]: v for labels, v in found["dnswatch_response_latency_seconds_bucket"]
               if labels["pod"] == "web-1"}
    assert buckets["0.00025"] == 3 and buckets["0.025"] == 3 and buckets["0.05"] == 4 and buckets["+Inf"] == 4
    curl = {labels["le"]: v for labels, v in found["dnswatch_response_latency_seconds_bucket"]
            if labels["comm"] == "curl"}
    assert curl["5.0"] == 0 and curl["+Inf"] == 1  # above the last bucket
    assert LATENCY_BUCKETS[0] == 0.0001 and LATENCY_BUCKETS[-1] == 5.0
    assert total(found, "dnswatch_metrics_rows_total") == 8
    assert total(found, "dnswatch_metrics_folded_rows_total") == 0


def test_server_label():
    sink = MetricsSink(server_label=True)
    sink(row(comm="dig", dst="198.18.0.1"))
    sink(row(comm="dig", dst="198.18.0.2"))
    found = samples(sink)
    assert total(found, "dnswatch_queries_total", comm="dig", server="198.18.0.2") == 1
    assert "server" not in samples(MetricsSink())  # not a label unless asked for


def test_label_sets_fold_into_other_and_busy_ones_take_free_slots():
    clock = Clock()
    sink = MetricsSink(max_label_sets=3, idle_after=60, rebalance=10, clock=clock)
    for pod in ("a", "b", "c"):
        sink(row(pod=pod, pod_namespace="ns"))
    for _ in range(5):
        sink(row(pod="busy", pod_namespace="ns"))
    sink(row(pod="rare", pod_namespace="ns"))
    found = samples(sink)
    assert total(found, "dnswatch_queries_total", pod="other") == 6
    assert total(found, "dnswatch_metrics_folded_rows_total") == 6
    assert total(found, "dnswatch_queries_total", pod="busy") == 0
    # a, b, c go idle; at the next rebalance they leave, and the busiest folded pod gets a slot
    clock.now += 61
    sink(row(pod="a", pod_namespace="ns"))  # a is active again: it keeps its slot
    found = samples(sink)
    assert {who[1] for who in sink.series} == {"a", "busy", "rare"}
    pods = {labels["pod"] for labels, _ in found["dnswatch_queries_total"]}
    assert pods == {"a", "other"}  # busy has a slot but no rows counted in it yet
    assert total(found, "dnswatch_metrics_label_sets_evicted_total", reason="idle") == 2
    # no series went backwards: other kept its count, busy starts from its first row after admission
    assert total(found, "dnswatch_queries_total", pod="other") == 6
    assert total(found, "dnswatch_queries_total", pod="busy") == 0
    sink(row(pod="busy", pod_namespace="ns"))
    assert total(samples(sink), "dnswatch_queries_total", pod="busy") == 1


def test_a_much_busier_identity_displaces_a_quiet_one():
    clock = Clock()
    sink = MetricsSink(max_label_sets=2, idle_after=1e9, rebalance=10, clock=clock)
    sink(row(pod="quiet", pod_namespace="ns"))
    for _ in range(10):
        sink(row(pod="steady", pod_namespace="ns"))
    for _ in range(50):
        sink(row(pod="loud", pod_namespace="ns"))
    clock.now += 11
    sink.rebalance()
    sink(row(pod="loud", pod_namespace="ns"))
    found = samples(sink)
    assert total(found, "dnswatch_queries_total", pod="loud") == 1
    assert total(found, "dnswatch_queries_total", pod="steady") == 10
    assert total(found, "dnswatch_queries_total", pod="quiet") == 0
    assert total(found, "dnswatch_metrics_label_sets_evicted_total", reason="displaced") == 1


def _churn(sink, clock, start, n):
    for i in range(start, start + n):
        who = dict(pod=f"job-{i}-x7f2k", pod_namespace=f"batch-{i % 50}", container="worker")
        sink(row(**who, latency_ms=0.3 + (i % 7)))
        sink(row(**who, qtype="AAAA", rcode="NXDOMAIN", latency_ms=2.0))
        sink(row(**who, status="unanswered"))
        clock.now += 0.05


def test_five_thousand_pods_keep_metrics_bounded_and_memory_flat():
    clock = Clock()
    sink = MetricsSink(idle_after=60, rebalance=10, clock=clock)  # the defaults but for the clock's times
    _churn(sink, clock, 0, 5000)
    text = exposition(sink)
    assert len(text) < MAX_SCRAPE_BYTES, len(text)
    found = samples(sink)
    assert total(found, "dnswatch_metrics_label_sets") <= 200
    # every row is counted, under its pod or under other (the series of pods gone have ended)
    assert total(found, "dnswatch_metrics_rows_total") == 15000
    assert total(found, "dnswatch_metrics_folded_rows_total") > 0
    assert total(found, "dnswatch_queries_total", pod="other") == total(found, "dnswatch_metrics_folded_rows_total")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for round_ in range(1, 4):  # 15,000 more pods, each gone after its rows
            _churn(sink, clock, round_ * 5000, 5000)
            exposition(sink)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, f"memory grew by {grown} bytes over 15,000 more pods"
    assert len(exposition(sink)) < MAX_SCRAPE_BYTES


def _replay(path, store=None, sinks=()):
    pipeline = Pipeline(store, "pcap", str(path), ports_for(path), sinks=sinks)
    reader = PcapReader(str(path))
    pipeline.feed_all(reader.frames())
    reader.close()
    pipeline.finish()
    return pipeline


def test_metrics_agree_with_the_log(tmp_path):
    """One path: what the log stores is what Prometheus counts."""
    db = tmp_path / "agree.db"
    store = Store(str(db))
    sink = MetricsSink()
    for name in ("dnsperf_small.pcap", "dns_orphans.pcap", "udp_v4_dig.pcap", "tcp_two_msgs.pcap"):
        _replay(PCAPS / name, store, [sink])
    store.close()
    con = sqlite3.connect(db)
    found = samples(sink)
    queries = con.execute("select count(*) from queries where status != 'response_only'").fetchone()[0]
    assert queries and total(found, "dnswatch_queries_total") == queries
    for rcode, n in con.execute("select rcode, count(*) from queries where rcode is not null group by 1"):
        assert total(found, "dnswatch_responses_total", rcode=rcode) == n, rcode
    unanswered = con.execute("select count(*) from queries where status = 'unanswered'").fetchone()[0]
    assert total(found, "dnswatch_unanswered_total") == unanswered
    by_type = Counter(dict(con.execute("select qtype, count(*) from queries where status != 'response_only' "
                                       "group by 1")))
    for qtype, n in by_type.items():
        assert total(found, "dnswatch_queries_total", qtype=qtype) == n
    latencies = con.execute("select count(*) from queries where latency_ms is not null").fetchone()[0]
    assert total(found, "dnswatch_response_latency_seconds_count") == latencies


def test_capture_health_reports_losses_by_stage():
    pipeline = _replay(PCAPS / "dns_hostile.pcap")

    class FakeCapture:
        page_cnt = 64

        def stats(self):
            return {"lost_samples": 7, "emit_failures": 2, "kernel_seen": 100, "kernel_kept": 90}

        def netns_inodes(self):
            return [1, 2, 3]

    sink = MetricsSink()
    sink.set_health(**capture_health(pipeline, FakeCapture()))
    found = samples(sink)
    # a full perf buffer shows in both kernel counters: counted once
    assert total(found, "dnswatch_lost_total", stage="kernel_perf_buffer") == 7
    assert total(found, "dnswatch_lost_total", stage="memory_bounds") == pipeline.decoder.dropped()
    assert total(found, "dnswatch_malformed_messages_total") == pipeline.summary.malformed > 0
    assert total(found, "dnswatch_netns_watched") == 3
    assert total(found, "dnswatch_kernel_packets_seen_total") == 100
    assert total(found, "dnswatch_frames_total") == pipeline.summary.frames


def test_parse_listen():
    assert parse_listen("127.0.0.1:9553") == ("127.0.0.1", 9553)
    assert parse_listen("[::1]:9553") == ("::1", 9553)
    assert parse_listen(":9553") == ("0.0.0.0", 9553)
    for bad in ("9553", "localhost", "host:99999", "host:x", "host:-1"):
        with pytest.raises(MetricsError):
            parse_listen(bad)


def test_http_endpoint_and_a_busy_port():
    sink = MetricsSink()
    sink(row(pod="web-1", pod_namespace="shop", container="nginx"))
    server = MetricsServer(sink, "127.0.0.1:0")
    server.start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        assert 'dnswatch_queries_total{comm="",container="nginx",pod="web-1",pod_namespace="shop",qtype="A"} 1.0' \
            in body
        assert "process_resident_memory_bytes" in body
        busy = MetricsServer(MetricsSink(), f"127.0.0.1:{server.port}")
        with pytest.raises(MetricsError, match="choose another"):
            busy.start()
    finally:
        server.close()
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))


def test_scrape_size_is_bounded_even_for_every_qtype_and_rcode():
    """The documented worst case: 200 label sets, each with every query type and rcode there is."""
    from dnswatch.metrics import QTYPES, RCODES
    from dnswatch.schema import LOOKUP_COLUMNS

    sink = MetricsSink()
    for i in range(200):
        who = dict(pod=f"pod-{i:05d}-abcde", pod_namespace="namespace-of-some-length", container="container")
        for qtype in sorted(QTYPES) + ["TYPE999"]:
            for rcode in sorted(RCODES):
                sink(row(**who, qtype=qtype, rcode=rcode))
            sink(row(**who, qtype=qtype, status="unanswered"))
        for rcode in sorted(RCODES) + [None]:  # every lookup outcome, each with a duration
            lk = [None] * len(LOOKUP_COLUMNS)
            for k, v in dict(who, rcode=rcode, queries=2, wasted=1, total_ms=3.0).items():
                lk[LOOKUP_COLUMNS.index(k)] = v
            sink.lookup(lk)
            lk[LOOKUP_COLUMNS.index("answered_name")] = "x.example"
            sink.lookup(lk)
    size = len(exposition(sink))
    assert size < MAX_SCRAPE_BYTES, size
    print(f"worst-case /metrics for 200 label sets: {size} bytes")


def test_a_steady_identity_keeps_its_slot_against_an_equally_busy_one():
    clock = Clock()
    sink = MetricsSink(max_label_sets=1, idle_after=1e9, rebalance=10, clock=clock)
    for _ in range(5):  # several periods of 10 rows each for both
        for _ in range(10):
            sink(row(pod="steady", pod_namespace="ns"))
            sink(row(pod="rival", pod_namespace="ns"))
        clock.now += 10
        sink.rebalance()
    assert [who[1] for who in sink.series] == ["steady"]
    assert sink.evicted["displaced"] == 0


def test_watch_refuses_a_bad_or_busy_metrics_address(runner):
    from dnswatch.cli import cli

    out = runner.invoke(cli, ["watch", "--no-db", "--metrics", "localhost"])
    assert out.exit_code == 1 and "is not HOST:PORT" in out.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = runner.invoke(cli, ["watch", "--no-db", "--metrics", f"127.0.0.1:{s.getsockname()[1]}"])
    assert out.exit_code == 1 and "choose another --metrics address or port" in out.output, out.output


def test_metrics_url():
    server = MetricsServer(MetricsSink(), "[::1]:9553")
    assert server.url == "http://[::1]:9553/metrics"


def test_lookups_metrics_agree_with_the_lookups_view(tmp_path):
    """Lookups (search path, A/AAAA pairs, a resolver's upstream hop) are counted from the rows the lookups
    stage ends, the same ones the log's lookups view shows."""
    from test_lookups import cluster_capture

    pcap, db = tmp_path / "cluster.pcap", tmp_path / "l.db"
    cluster_capture(pcap)
    store = Store(str(db))
    sink = MetricsSink()
    for path in (pcap, PCAPS / "dnsperf_small.pcap", PCAPS / "udp_retry.pcap"):  # one-query lookups, retries
        pipeline = Pipeline(store, "pcap", str(path), ports_for(path), sinks=[sink], lookups=True)
        pipeline.lookups.on_lookup = sink.lookup
        reader = PcapReader(str(path))
        pipeline.feed_all(reader.frames())
        reader.close()
        pipeline.finish()
    store.close()
    con = sqlite3.connect(db)
    found = samples(sink)
    n, queries, wasted, timed = con.execute(
        "select count(*), sum(queries), sum(wasted), count(total_ms) from lookups where queries > 0").fetchone()
    assert n and wasted, (n, wasted)
    assert total(found, "dnswatch_lookups_total") == n
    assert total(found, "dnswatch_lookup_queries_total") == queries
    assert total(found, "dnswatch_search_path_wasted_queries_total") == wasted
    assert total(found, "dnswatch_lookup_duration_seconds_count") == timed
    outcomes = Counter()
    for answered, rcode in con.execute("select answered_name, rcode from lookups where queries > 0"):
        outcomes["answered" if answered is not None else
                 {"NXDOMAIN": "nxdomain", "NOERROR": "nodata", None: "unanswered"}.get(rcode, "other")] += 1
    for outcome, k in outcomes.items():
        assert total(found, "dnswatch_lookups_total", outcome=outcome) == k, outcome
    # the histogram's sum is the lookups' total_ms, in seconds
    ms = con.execute("select coalesce(sum(total_ms), 0) from lookups where queries > 0").fetchone()[0]
    assert abs(total(found, "dnswatch_lookup_duration_seconds_sum") - ms / 1000) < 1e-6


def test_lookups_are_counted_by_pod_and_fold_like_rows():
    from dnswatch.schema import LOOKUP_COLUMNS

    def lookup(**values):
        r = [None] * len(LOOKUP_COLUMNS)
        values.setdefault("queries", 1)
        values.setdefault("wasted", 0)
        for k, v in values.items():
            r[LOOKUP_COLUMNS.index(k)] = v
        return r

    sink = MetricsSink(max_label_sets=1)
    web = dict(pod="web-1", pod_namespace="shop", container="app")
    sink(row(**web))
    sink.lookup(lookup(**web, answered_name="api.example.com", rcode="NOERROR", queries=8, wasted=6, total_ms=4.0))
    sink.lookup(lookup(**web, rcode="NXDOMAIN", queries=2, total_ms=1.0))
    sink.lookup(lookup(**web, rcode=None))
    sink.lookup(lookup(pod="other-pod", pod_namespace="x", rcode="SERVFAIL", queries=3))  # no room: other
    sink.lookup(lookup(**web, rcode="NOERROR", answered_name="b.example", queries=0, total_ms=0.0))  # response only
    found = samples(sink)
    by = {"pod": "web-1", "pod_namespace": "shop", "container": "app"}
    assert total(found, "dnswatch_lookups_total", outcome="answered", **by) == 1
    assert total(found, "dnswatch_lookups_total", outcome="nxdomain", **by) == 1
    assert total(found, "dnswatch_lookups_total", outcome="unanswered", **by) == 1
    assert total(found, "dnswatch_lookup_queries_total", **by) == 11
    assert total(found, "dnswatch_search_path_wasted_queries_total", **by) == 6
    assert total(found, "dnswatch_lookup_duration_seconds_count", **by) == 2
    assert total(found, "dnswatch_lookups_total", pod="other", outcome="servfail") == 1
    # folded_rows counts query rows only, as dnswatch_metrics_rows does
    assert total(found, "dnswatch_metrics_folded_rows_total") == 0
    assert total(found, "dnswatch_metrics_rows_total") == 1
