"""watch --json lines: the native schema (dnswatch schema --json-lines) and Elastic Common Schema documents,
validated against a pinned copy of the ECS field definitions (tests/ecs/ecs_flat_v8.17.0.yml)."""
from __future__ import annotations

import io
import ipaddress
import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from conftest import capture_files, ports_for
from dnswatch.cli import cli
from dnswatch.correlate import Q
from dnswatch.jsonlines import ECS_MAPPING, ECS_VERSION, SCHEMA_VERSION, JsonLinesSink, ecs, json_lines_schema, native
from dnswatch.pipeline import Pipeline
from dnswatch.schema import QUERY_COLUMNS
from dnswatch.sources.pcap import PcapReader

ECS_FIELDS = Path(__file__).parent / "ecs" / f"ecs_flat_v{ECS_VERSION}.yml"
ROWS = []


def all_rows():
    """Every row of every test capture (hostile names, response-only, unanswered, TCP, IPv6...)."""
    if not ROWS:
        for path in capture_files():
            pipeline = Pipeline(None, "pcap", str(path), ports_for(path), sinks=[lambda r: ROWS.append(list(r))])
            reader = PcapReader(str(path))
            try:
                pipeline.feed_all(reader.frames())
            except Exception:  # noqa: BLE001 - a damaged file ends early; its rows so far are what we want
                pass
            reader.close()
            pipeline.finish()
        assert len(ROWS) > 500
    return ROWS


def live_row(**values):
    r = [None] * len(QUERY_COLUMNS)
    base = dict(ts=1764600000.25, capture_id=1, src="198.18.11.2", sport=40000, dst="198.18.9.53", dport=53,
                proto="udp", dns_id=4242, qname="www.example.test", qtype="A", qtype_num=1, qclass="IN",
                opcode="QUERY", status="answered", rcode="NOERROR", rcode_num=0,
                answers='[{"name": "www.example.test", "type": "A", "ttl": 300, "data": "198.18.0.80"}]',
                ancount=1, latency_ms=0.412, response_ts=1764600000.250412, query_flags="rd",
                response_flags="aa rd ra", edns_udp_size=1232, edns_do=1, query_size=45, response_size=61,
                decoder="dnslib", ifname="eth0", pid=4711, tid=4712, comm="dig", thread_name="isc-net-0000",
                uid=0, cgroup_id=123, netns=4026532000, container_id="ab" * 32, container="nginx",
                pod="web-7d9c5", pod_namespace="shop", pod_uid="5c2e0c7e-8f0e-4a8e-9a55-0f4b2a8c9d10")
    base.update(values)
    for k, v in base.items():
        r[Q[k]] = v
    return r


# -- native schema -------------------------------------------------------------------------------

_JSON_TYPES = {"integer": int, "number": (int, float), "string": str, "array": list, "object": dict,
               "null": type(None)}


def check(value, spec, where):
    """The subset of JSON Schema json_lines_schema() uses: type, const, enum, properties, items, required."""
    if "const" in spec:
        assert value == spec["const"], where
    if "enum" in spec:
        assert value in spec["enum"], where
    if "type" in spec:
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        ok = any(isinstance(value, _JSON_TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        assert ok, f"{where}: {value!r} is not {types}"
    if isinstance(value, dict) and "properties" in spec:
        for key in spec.get("required", []):
            assert key in value, f"{where}: {key} missing"
        if spec.get("additionalProperties") is False:
            assert set(value) <= set(spec["properties"]), f"{where}: {set(value) - set(spec['properties'])}"
        for key, sub in spec["properties"].items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in spec:
        for i, item in enumerate(value):
            check(item, spec["items"], f"{where}[{i}]")
    if spec.get("format") == "date-time" and value is not None:
        datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_native_lines_follow_their_schema():
    schema = json_lines_schema()
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION == 1
    events = set()
    for r in all_rows():
        line = json.loads(json.dumps(native(r, "node-1")))
        check(line, schema, line.get("qname"))
        assert list(line) == list(schema["properties"])  # every field, in the documented order
        events.add((line["event"], line["status"]))
        if line["status"] == "answered":
            assert isinstance(line["answers"], list)
    assert {("query", "answered"), ("timeout", "unanswered"), ("response", "response_only")} <= events


def test_native_line_of_a_live_row():
    line = native(live_row(), "node-1")
    assert line["time"] == "2025-12-01T14:40:00.250000Z"
    assert line["answers"] == [{"name": "www.example.test", "type": "A", "ttl": 300, "data": "198.18.0.80"}]
    assert line["pod"] == "web-7d9c5" and line["event"] == "query" and line["host"] == "node-1"
    assert native(live_row(status="unanswered", rcode=None, answers=None), "n")["event"] == "timeout"


def test_schema_command_prints_the_json_lines_schema(runner):
    out = runner.invoke(cli, ["schema", "--json-lines"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == json_lines_schema()
    ecs_out = runner.invoke(cli, ["schema", "--ecs", "--json"])
    assert json.loads(ecs_out.output)["ecs_version"] == ECS_VERSION
    assert "dns.question.name" in runner.invoke(cli, ["schema", "--ecs"]).output


def test_sink_writes_one_line_per_row():
    out = io.StringIO()
    sink = JsonLinesSink(out, "ecs", host="node-1")
    sink(live_row())
    sink(live_row(status="unanswered"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2 and lines[0]["dns"]["question"]["name"] == "www.example.test"
    with pytest.raises(ValueError):
        JsonLinesSink(out, "xml")


# -- ECS -----------------------------------------------------------------------------------------

def ecs_fields():
    fields = yaml.safe_load(ECS_FIELDS.read_text())
    header = ECS_FIELDS.read_text().splitlines()[:4]
    assert any(f"v{ECS_VERSION}" in line for line in header)
    return fields


def flatten(doc, prefix=""):
    """(dotted name, value) for every leaf; arrays of objects (dns.answers) flatten each element."""
    for key, value in doc.items():
        name = prefix + key
        if isinstance(value, dict):
            yield from flatten(value, name + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield name, value
            for item in value:
                yield from flatten(item, name + ".")
        else:
            yield name, value


def valid(ecs_type, value):
    if ecs_type in ("keyword", "wildcard", "match_only_text", "constant_keyword", "text"):
        return isinstance(value, str)
    if ecs_type == "long":
        return isinstance(value, int) and not isinstance(value, bool) and -2 ** 63 <= value < 2 ** 63
    if ecs_type == "ip":
        ipaddress.ip_address(value)
        return True
    if ecs_type == "date":
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value.endswith("Z")
    if ecs_type == "object":
        return isinstance(value, (dict, list))
    raise AssertionError(f"type {ecs_type} not handled by the test")


def validate_ecs(doc, fields):
    seen = set()
    for name, value in flatten(doc):
        if name.startswith("dnswatch."):
            continue  # custom fields, under their own namespace as ECS asks
        assert name in fields, f"{name} is not an ECS {ECS_VERSION} field"
        spec = fields[name]
        seen.add(name)
        values = value if isinstance(value, list) and spec["type"] != "object" else [value]
        if isinstance(value, list):
            assert "array" in spec.get("normalize", []), f"{name} is an array but ECS says a single value"
        if "array" in spec.get("normalize", []) and spec["type"] != "object":
            assert isinstance(value, list), f"{name}: ECS normalizes it to an array"
        for v in values:
            assert v is not None, name
            assert valid(spec["type"], v), f"{name}: {v!r} is not an ECS {spec['type']}"
            if "allowed_values" in spec:
                assert v in spec["allowed_values"], f"{name}: {v!r} not among {spec['allowed_values']}"
    return seen


def test_ecs_documents_match_the_ecs_field_definitions():
    fields = ecs_fields()
    used = set()
    for r in all_rows() + [live_row(), live_row(status="unanswered", rcode=None, answers=None, latency_ms=None,
                                                 response_ts=None, response_flags=None, response_size=None),
                           live_row(src="fd00:18:11::2", dst="fd00:18:9::53", pod=None, pod_namespace=None,
                                    container=None, container_id=None, pod_uid=None)]:
        doc = json.loads(json.dumps(ecs(r, "node-1")))
        used |= validate_ecs(doc, fields)
    # every pinned definition is used, and every mapped field is pinned
    assert used == set(fields), set(fields) ^ used
    mapped = {f.strip() for field, _ in ECS_MAPPING if not field.startswith("dnswatch")
              for f in field.split("/")}
    assert {f for f in fields if not f.startswith("dns.answers.")} <= mapped | {"dns.answers"}
    assert mapped <= set(fields)


def test_ecs_document_of_a_live_row():
    doc = ecs(live_row(), "node-1")
    assert doc["@timestamp"] == "2025-12-01T14:40:00.250000Z"
    assert doc["dns"]["question"] == {"name": "www.example.test", "type": "A", "class": "IN",
                                      "registered_domain": "example.test", "top_level_domain": "test",
                                      "subdomain": "www"}
    assert doc["dns"]["response_code"] == "NOERROR" and doc["dns"]["type"] == "answer"
    assert doc["dns"]["resolved_ip"] == ["198.18.0.80"]
    assert doc["dns"]["answers"] == [{"name": "www.example.test", "type": "A", "ttl": 300, "data": "198.18.0.80",
                                      "class": "IN"}]
    assert doc["dns"]["header_flags"] == ["AA", "RD", "RA", "DO"]
    assert doc["client"] == {"ip": "198.18.11.2", "port": 40000, "bytes": 45}
    assert doc["event"]["duration"] == 412000 and doc["event"]["outcome"] == "success"
    assert doc["process"] == {"pid": 4711, "name": "dig", "thread": {"id": 4712, "name": "isc-net-0000"}}
    assert doc["orchestrator"] == {"type": "kubernetes", "namespace": "shop",
                                   "resource": {"type": "pod", "name": "web-7d9c5",
                                                "id": "5c2e0c7e-8f0e-4a8e-9a55-0f4b2a8c9d10"}}
    assert doc["container"] == {"id": "ab" * 32, "name": "nginx"}
    assert doc["ecs"]["version"] == ECS_VERSION
    timeout = ecs(live_row(status="unanswered", rcode=None, answers=None), "node-1")
    assert timeout["event"]["outcome"] == "failure" and timeout["dns"]["type"] == "query"
    assert "answers" not in timeout["dns"] and "response_code" not in timeout["dns"]


def test_the_validator_catches_type_errors():
    fields = ecs_fields()
    for broken in ({"dns": {"id": 4242}}, {"client": {"ip": "not-an-ip"}}, {"process": {"pid": "4711"}},
                   {"event": {"category": "network"}}, {"event": {"outcome": "ok"}}, {"dns": {"qname": "x"}},
                   {"@timestamp": "yesterday"}):
        with pytest.raises((AssertionError, ValueError)):
            validate_ecs(broken, fields)
