"""The DaemonSet serves metrics on a named port, announces it to Prometheus, and the PodMonitor finds it."""
from __future__ import annotations

import yaml

from conftest import ROOT
from dnswatch.metrics import parse_listen

KUBE = ROOT / "deploy" / "kubernetes"


def daemonset():
    return next(d for d in yaml.safe_load_all((KUBE / "dnswatch.yaml").read_text()) if d and d["kind"] == "DaemonSet")


def test_daemonset_serves_and_announces_metrics():
    ds = daemonset()
    template = ds["spec"]["template"]
    (container,) = template["spec"]["containers"]
    args = container["args"]
    listen = args[args.index("--metrics") + 1]
    env = {e["name"]: e for e in container["env"]}
    assert listen == "$(POD_IP):9553" and env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    host, port = parse_listen(listen.replace("$(POD_IP)", "10.0.0.7"))
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["metrics"]["containerPort"] == port == 9553
    notes = template["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == str(port)
    assert notes["prometheus.io/path"] == "/metrics"


def test_podmonitor_selects_the_daemonset_port():
    (pm,) = [d for d in yaml.safe_load_all((KUBE / "podmonitor.yaml").read_text()) if d]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    ds = daemonset()
    assert pm["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] == "/metrics"
