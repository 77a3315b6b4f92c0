"""The Kubernetes manifest: valid against the Kubernetes API schema of its kinds (pinned, strict: unknown fields
fail), with exactly the privileges it documents, and matching the image (entrypoint, environment, CLI options)."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from conftest import ROOT
from dnswatch.cli import cli

SCHEMA = ROOT / "tests" / "k8s" / "kubernetes-v1.34.0-strict.json"  # made by tests/k8s/bundle.py


def docs():
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "dnswatch.yaml").read_text()) if d]


def daemonset() -> dict:
    return next(d for d in docs() if d["kind"] == "DaemonSet")


def container() -> dict:
    (c,) = daemonset()["spec"]["template"]["spec"]["containers"]
    return c


def validator(kind: str) -> jsonschema.Draft202012Validator:
    bundle = json.loads(SCHEMA.read_text())
    schema = dict(bundle["kinds"][kind], **{"$defs": bundle["$defs"]})
    return jsonschema.Draft202012Validator(schema)


def test_kinds():
    assert [d["kind"] for d in docs()] == ["Namespace", "ServiceAccount", "DaemonSet"]


@pytest.mark.parametrize("doc", docs(), ids=lambda d: d["kind"])
def test_valid_against_kubernetes_schema(doc):
    errors = sorted(validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_rejects_what_the_api_rejects():
    """The pinned schema is strict: a misspelt field or a wrong type fails (so the test above means something)."""
    ds = daemonset()
    ds["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    assert not validator("DaemonSet").is_valid(ds)
    ds = daemonset()
    ds["spec"]["template"]["spec"]["hostPID"] = "yes"
    assert not validator("DaemonSet").is_valid(ds)


def test_daemonset_privileges_and_mounts():
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    c = container()
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/fs/cgroup", "/host/var/log", "/var/run/netns"):
        assert mounts[path]["readOnly"] is True
    # the image carries its own kernel headers: the node's are not needed
    assert "/lib/modules" not in mounts and "/usr/src" not in mounts
    assert not mounts["/var/lib/dnswatch"].get("readOnly")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/var/lib/dnswatch"]["name"]]["hostPath"]["path"] == "/var/lib/dnswatch"
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]


def dockerfile() -> dict:
    text = (ROOT / "Dockerfile").read_text()
    env = dict(re.findall(r"^ENV (\w+)=(\S+)", text, re.M))
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", text, re.M)
    return {"env": env, "entrypoint": json.loads(entrypoint)}


def test_matches_the_image():
    c = container()
    image = dockerfile()
    assert "command" not in c and image["entrypoint"] == ["dnswatch"]  # args go to the image's entrypoint
    assert c["args"][0] == "watch" and "--all-netns" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    db = env.get("DNSWATCH_DB", image["env"]["DNSWATCH_DB"])
    assert db.rsplit("/", 1)[0] in mounts  # the log lands on the hostPath volume, not the read-only root
    assert env["DNSWATCH_HEARTBEAT"].startswith("/tmp/") and "/tmp" in mounts
    assert image["env"]["DNSWATCH_KERNEL_HEADERS"] == "/opt/dnswatch/kernel-headers"


def test_args_are_options_of_watch():
    c = container()
    watch = cli.commands["watch"]
    known = {opt for p in watch.params for opt in p.opts}
    given = [a for a in c["args"][1:] if a.startswith("--")]
    pending = {"--metrics"} - known  # issue 12's metrics sink, merged separately
    assert set(given) - known - pending == set()
    if not pending:
        watch.make_context("watch", list(c["args"][1:]))  # parses as the container will


def test_metrics_and_liveness():
    ds = daemonset()
    c = container()
    notes = ds["spec"]["template"]["metadata"]["annotations"]
    (port,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == str(port["containerPort"])
    listen = c["args"][c["args"].index("--metrics") + 1]
    assert listen.endswith(f":{port['containerPort']}")
    env = {e["name"]: e for e in c["env"]}
    for var in re.findall(r"\$\((\w+)\)", listen):  # the kubelet expands $(VAR) from the container's env
        assert var in env
    for probe in ("startupProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[:2] == ["dnswatch", "health"]
        cli.commands["health"].make_context("health", command[2:] + ["--heartbeat", "x"])
    resources = c["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
