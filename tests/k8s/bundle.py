#!/usr/bin/env python3
"""Make tests/k8s/kubernetes-<version>-strict.json: the strict JSON schemas of the kinds deploy/kubernetes uses,
with every definition they reference, in one file (refs rewritten to #/$defs/...).

Source: the PyPI package kubernetes-validate (Apache-2.0), which ships kubernetes-json-schema's
"local-strict" schemas generated from the Kubernetes OpenAPI:
  pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-1.37.0-py3-none-any.whl
  python3 tests/k8s/bundle.py kubernetes_validate/kubernetes-json-schema/v1.34.0-local-strict v1.34.0
"""
import json
import sys
from pathlib import Path

KINDS = {"Namespace": "namespace-v1.json", "ServiceAccount": "serviceaccount-v1.json",
         "DaemonSet": "daemonset-apps-v1.json"}
PREFIX = "/api/_definitions.json#/$defs/"


def main(src: str, version: str) -> None:
    src_dir = Path(src)
    defs = json.loads((src_dir / "_definitions.json").read_text())["$defs"]
    used: dict = {}

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith((PREFIX, "#/$defs/")):
                name = ref.rsplit("/", 1)[1]
                node["$ref"] = "#/$defs/" + name
                if name not in used:
                    used[name] = None
                    used[name] = walk(json.loads(json.dumps(defs[name])))
            for k, v in node.items():
                if k != "$ref":
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        return node

    kinds = {}
    for kind, name in KINDS.items():
        schema = walk(json.loads((src_dir / name).read_text()))
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        kinds[kind] = schema
    bundle = {
        "$comment": f"Kubernetes {version} strict schemas (kubernetes-validate 1.37.0 on PyPI, "
                    f"kubernetes-json-schema/{version}-local-strict) for {', '.join(KINDS)}: made by tests/k8s/bundle.py",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "kinds": kinds,
        "$defs": dict(sorted(used.items())),
    }
    out = Path(__file__).parent / f"kubernetes-{version}-strict.json"
    out.write_text(json.dumps(bundle, indent=1, sort_keys=False) + "\n")
    print(out, len(used), "definitions")


if __name__ == "__main__":
    main(*sys.argv[1:])
