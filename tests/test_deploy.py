"""The Kubernetes manifest is valid YAML of the right kinds, with exactly the privileges it documents."""
from __future__ import annotations

import yaml

from conftest import ROOT


def docs():
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "dnswatch.yaml").read_text()) if d]


def test_kinds():
    assert [d["kind"] for d in docs()] == ["Namespace", "ServiceAccount", "DaemonSet"]


def test_daemonset_privileges_and_mounts():
    ds = next(d for d in docs() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/sys/fs/cgroup", "/host/var/log", "/var/run/netns", "/lib/modules", "/usr/src"):
        assert mounts[path]["readOnly"] is True
    assert not mounts["/var/lib/dnswatch"].get("readOnly")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["hostPath"]["path"] == "/var/lib/dnswatch"
    assert "--all-netns" in container["args"]
    assert {e["name"]: e.get("value") for e in container["env"]}["DNSWATCH_DB"].startswith("/var/lib/dnswatch/")
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]
