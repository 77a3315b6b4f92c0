"""A real Prometheus server scrapes `dnswatch watch --metrics` while pods in two namespaces resolve names.

Debian's prometheus (scripts/setup --test) runs on loopback with its own scrape config and storage folder;
the counts, NXDOMAIN counts and a latency quantile are read back through its HTTP query API.
"""
from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import require_tool
from netlab import Lab, Watch, require_privileges
from test_jsonlines import ecs_fields, validate_ecs
from test_pods import SERVER, Node

pytestmark = pytest.mark.privileged


@pytest.fixture
def node(tmp_path):
    require_privileges()
    require_tool("prometheus")
    lab = Lab()
    try:
        yield Node(lab, tmp_path / "log")
    finally:
        lab.close()  # watch, prometheus, unbound, namespaces, cgroups, temp folders


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, lab: Lab, target: str):
        self.dir = lab.tmp / "prometheus"
        (self.dir / "data").mkdir(parents=True)
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: dnswatch\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 900ms\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.address = f"127.0.0.1:{free_port()}"
        self.log = open(self.dir / "prometheus.log", "w")
        self.proc = lab.spawn(None, "prometheus", f"--config.file={config}",
                              f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address={self.address}",
                              "--storage.tsdb.retention.time=1h", stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=1).status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("prometheus did not start: " + (self.dir / "prometheus.log").read_text()[-2000:])

    def query(self, promql: str) -> dict:
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert body["status"] == "success", body
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}

    def by_pod(self, promql: str) -> dict:
        return {dict(k).get("pod"): v for k, v in self.query(promql).items()}

    def wait_for(self, promql: str, expected: dict, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        got = {}
        while time.monotonic() < deadline:
            got = self.by_pod(promql)
            if got == expected:
                return got
            time.sleep(0.5)
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def dig(node: Node, pod: dict, *queries: str) -> None:
    """One dig run sending each (name, type) query once, without retries or search lists."""
    args = []
    for q in queries:
        name, qtype = q.split("/")
        args += [name, qtype]
    node.run_in(pod, "dig", "+tries=1", "+time=2", "+nosearch", f"@{SERVER}", *args)


def test_prometheus_scrapes_per_pod_counts_nxdomain_and_latency(node, tmp_path):
    web = node.pod("web-7d9c5", "shop", "nginx", "systemd")
    api = node.pod("api-5f8b", "billing", "app", "cgroupfs")
    db = tmp_path / "metrics.db"
    watch = Watch(node.lab, None, db, "--all-netns", "--responses", "--json-format", "ecs",
                  "--k8s-log-dir", str(node.logs), "--metrics", "127.0.0.1:0")
    prometheus = None
    try:
        banner = "".join(watch.stderr)
        match = re.search(r"metrics on http://(127\.0\.0\.1:\d+)/metrics", banner)
        assert match, banner
        prometheus = Prometheus(node.lab, match.group(1))
        dig(node, web, *["www.example.test/A"] * 5, "www.example.test/AAAA", *["nope.example.test/A"] * 2)
        dig(node, api, *["api.example.test/A"] * 4, *["missing.example.test/A"] * 3)
        expected = {"web-7d9c5": 8, "api-5f8b": 7}
        scope = '{pod_namespace=~"shop|billing"}'
        got = prometheus.wait_for(f"sum by (pod) (dnswatch_queries_total{scope})", expected)
        assert got == expected
        nx = prometheus.wait_for(f'sum by (pod) (dnswatch_responses_total{{rcode="NXDOMAIN",'
                                 f'pod_namespace=~"shop|billing"}})', {"web-7d9c5": 2, "api-5f8b": 3})
        assert nx == {"web-7d9c5": 2, "api-5f8b": 3}
        assert prometheus.by_pod(f"sum by (pod) (dnswatch_unanswered_total{scope})") in ({}, {"web-7d9c5": 0,
                                                                                              "api-5f8b": 0})
        by_ns = {dict(k)["pod_namespace"]: v for k, v in prometheus.query(
            f"sum by (pod_namespace) (dnswatch_responses_total{scope})").items()}
        assert by_ns == {"shop": 8, "billing": 7}
        p95 = prometheus.by_pod("histogram_quantile(0.95, sum by (pod, le) "
                                f"(dnswatch_response_latency_seconds_bucket{scope}))")
        assert set(p95) == {"web-7d9c5", "api-5f8b"}
        # unbound answers from local data over a veth: well under 100 ms, never zero
        assert all(0 < v <= 0.1 for v in p95.values()), p95
        # every query is in one lookup: once the lookups end (1 s plus the timeout after their last query), their
        # queries add up to each pod's queries, and the NXDOMAIN names end as nxdomain lookups
        lookup_queries = prometheus.wait_for(f"sum by (pod) (dnswatch_lookup_queries_total{scope})", expected,
                                             timeout=30)
        assert lookup_queries == expected
        outcomes = {dict(k)["outcome"] for k in prometheus.query(f"sum by (outcome) (dnswatch_lookups_total{scope})")}
        assert outcomes == {"answered", "nxdomain"}, outcomes
        health = prometheus.query("dnswatch_netns_watched")
        assert health and all(v >= 3 for v in health.values()), health  # the node's, N and the two pods
        assert prometheus.query('up{job="dnswatch"}') and all(
            v == 1 for v in prometheus.query('up{job="dnswatch"}').values())
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert watch.stop() == 0, "".join(watch.stderr)
    # the same counts in the log: search and Prometheus agree
    con = sqlite3.connect(db)
    stored = dict(con.execute("select pod, count(*) from queries where pod_namespace in ('shop', 'billing') "
                              "and status != 'response_only' group by pod"))
    assert stored == expected
    # and in the ECS lines on stdout, which follow the ECS field definitions
    fields = ecs_fields()
    docs = [json.loads(line) for line in watch.stdout if line.startswith("{")]
    for doc in docs:
        validate_ecs(doc, fields)
    ours = [d for d in docs if d.get("orchestrator", {}).get("namespace") in ("shop", "billing")]
    assert len(ours) == 15
    nx = [d for d in ours if d["dns"]["response_code"] == "NXDOMAIN"]
    assert {d["dns"]["question"]["name"] for d in nx} == {"nope.example.test", "missing.example.test"}
    www = next(d for d in ours if d["dns"]["question"]["name"] == "www.example.test"
               and d["dns"]["question"]["type"] == "A")
    assert www["dns"]["resolved_ip"] == ["198.18.0.80"] and www["process"]["name"] == "dig"
    assert www["orchestrator"]["resource"] == {"type": "pod", "name": "web-7d9c5", "id": web["uid"]}
    assert www["container"] == {"id": web["cid"], "name": "nginx"} and www["event"]["duration"] > 0
