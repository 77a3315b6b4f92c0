"""deploy/grafana/dnswatch.json: valid PromQL (promtool) over only the metrics watch --metrics exports."""
from __future__ import annotations

import json
import re

import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, require_tool, run
from dnswatch.metrics import MetricsSink, exposition
from dnswatch.schema import LOOKUP_COLUMNS
from test_metrics import row

DASHBOARD = ROOT / "deploy" / "grafana" / "dnswatch.json"


def expressions():
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def exported_names():
    sink = MetricsSink()
    sink(row(pod="web", pod_namespace="shop", container="c"))
    sink(row(comm="curl", status="unanswered"))
    lookup = [None] * len(LOOKUP_COLUMNS)
    for k, v in dict(pod="web", pod_namespace="shop", rcode="NOERROR", answered_name="a", queries=3, wasted=2,
                     total_ms=1.0).items():
        lookup[LOOKUP_COLUMNS.index(k)] = v
    sink.lookup(lookup)
    sink.set_health(losses={"decode": 1}, skipped={"fragments": 1}, frames=1, malformed=0, duplicates=0, rows_stored=2,
                    namespaces=2, log_bytes=4096, pending=0, kernel_seen=1, kernel_kept=1, perf_buffer_pages=64)
    names = set()
    for family in text_string_to_metric_families(exposition(sink).decode()):
        names |= {s.name for s in family.samples}
    return names


def test_dashboard_uses_only_exported_metrics():
    names = exported_names()
    used = {m for expr in expressions() for m in re.findall(r"\bdnswatch_[a-z_]+", expr)}
    assert used and used <= names, used - names
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for topic in ("queries per second", "response codes", "p95", "nxdomain", "losses", "search-path", "lookup duration"):
        assert topic in titles


def test_dashboard_queries_are_valid_promql(tmp_path):
    promtool = require_tool("promtool")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}",
         "expr": e.replace("$__rate_interval", "1m").replace("$pod_namespace", ".*").replace("$instance", ".*")}
        for i, e in enumerate(expressions())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = run([promtool, "check", "rules", str(path)])
    assert "SUCCESS" in out.stdout + out.stderr
