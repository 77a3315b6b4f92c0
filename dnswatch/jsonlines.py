"""``watch --json``: one JSON object per stored row, in dnswatch's own versioned schema or as Elastic Common Schema.

A line is written when its row is complete, from the same rows the log stores: a query with its response
(``event`` "query"), a query whose response never came (``event`` "timeout"), a response whose query was not
seen (``event`` "response"). ``dnswatch schema --json-lines`` prints the schema (a JSON Schema document)
and ``dnswatch schema --ecs`` the ECS mapping, field by field.

Version 1 of the native schema: every column of the ``queries`` table under its own name (``dnswatch schema``
says what each means), ``answers`` as an array instead of JSON text, and ``schema_version``, ``event``, ``time``
and ``host``. Fields may be added within a version (ignore the ones you do not know); a field is renamed,
removed, or changes meaning or type only with a new ``schema_version``.
"""
from __future__ import annotations

import json
import socket
from datetime import datetime, timezone
from functools import lru_cache
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from dnswatch.correlate import Row
from dnswatch.schema import QUERIES, QUERY_COLUMNS

SCHEMA_VERSION = 1
ECS_VERSION = "8.17.0"  # the ECS release whose field definitions the documents follow (tests/ecs/)
FORMATS = ("native", "ecs")

_EVENT = {"answered": "query", "query_only": "query", "unanswered": "timeout", "response_only": "response"}
_SQL_JSON = {"INTEGER": "integer", "REAL": "number", "TEXT": "string"}
_ANSWER = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "type": {"type": "string"}, "ttl": {"type": ["integer", "null"]},
                   "data": {"type": "string"}},
    "required": ["data"],
}


def json_lines_schema() -> Dict[str, Any]:
    """The native line format as a JSON Schema (draft 2020-12), built from the log's schema so they cannot drift."""
    props: Dict[str, Any] = {
        "schema_version": {"const": SCHEMA_VERSION, "description": "Version of this line format."},
        "event": {"enum": ["query", "timeout", "response"],
                  "description": "'query': a query (answered, or captured without --responses); 'timeout': a query "
                                 "with no response within --timeout; 'response': a response whose query was not seen."},
        "time": {"type": "string", "format": "date-time",
                 "description": "ts as RFC 3339 UTC with microseconds (2026-11-01T14:30:00.123456Z)."},
        "host": {"type": "string", "description": "Host name of the machine that captured it (the node)."},
    }
    for c in QUERIES.columns:
        if c.name == "id":
            continue  # the log's row id is assigned when written, after the line is out
        if c.name == "answers":
            props["answers"] = {"type": ["array", "null"], "items": _ANSWER,
                                "description": "Answer section: a list of {name, type, ttl, data}; [] for an answer "
                                               "with none; null until answered."}
            continue
        props[c.name] = {"type": [_SQL_JSON[c.type.split()[0]], "null"], "description": c.doc}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:dnswatch:json-lines:v{SCHEMA_VERSION}",
        "title": f"dnswatch watch --json line, schema version {SCHEMA_VERSION}",
        "type": "object",
        "properties": props,
        "required": list(props),  # every field is on every line (null when unknown)
    }


def _time(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _answers(text: Optional[str]) -> Optional[List[Dict[str, Any]]]:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def native(row: Row, host: str) -> Dict[str, Any]:
    d = dict(zip(QUERY_COLUMNS, row))
    out: Dict[str, Any] = {"schema_version": SCHEMA_VERSION, "event": _EVENT.get(d["status"], "query"),
                           "time": _time(d["ts"]), "host": host}
    out.update(d)
    out["answers"] = _answers(d["answers"])
    return out


# -- Elastic Common Schema -----------------------------------------------------------------------

# (ECS field, where its value comes from): the documented mapping, printed by `dnswatch schema --ecs`.
ECS_MAPPING: Tuple[Tuple[str, str], ...] = (
    ("@timestamp", "ts: when the query was seen (the response's time for a response without query)"),
    ("ecs.version", f"'{ECS_VERSION}'"),
    ("event.kind", "'event'"),
    ("event.category", "['network']"),
    ("event.type", "['connection', 'protocol']"),
    ("event.dataset", "'dnswatch.dns'"),
    ("event.module", "'dnswatch'"),
    ("event.start", "ts"),
    ("event.end", "response_ts (answered rows)"),
    ("event.duration", "latency_ms, in nanoseconds (answered rows)"),
    ("event.outcome", "'success' for NOERROR, 'failure' for another rcode or a timeout, 'unknown' without --responses"),
    ("network.protocol", "'dns'"),
    ("network.transport", "proto ('udp', 'tcp')"),
    ("network.type", "'ipv4' or 'ipv6', from src"),
    ("network.bytes", "query_size + response_size"),
    ("client.ip / source.ip", "src"),
    ("client.port / source.port", "sport"),
    ("client.bytes / source.bytes", "query_size"),
    ("server.ip / destination.ip", "dst"),
    ("server.port / destination.port", "dport"),
    ("server.bytes / destination.bytes", "response_size"),
    ("related.ip", "src, dst and every A/AAAA answer"),
    ("dns.id", "dns_id, as a string (ECS keyword)"),
    ("dns.op_code", "opcode"),
    ("dns.type", "'answer' when a response was seen, else 'query'"),
    ("dns.header_flags", "response_flags (else query_flags) in upper case, plus 'DO' when edns_do"),
    ("dns.response_code", "rcode"),
    ("dns.question.name", "qname"),
    ("dns.question.type", "qtype"),
    ("dns.question.class", "qclass"),
    ("dns.question.registered_domain", "qname's registered domain, from the Public Suffix List"),
    ("dns.question.top_level_domain", "qname's public suffix"),
    ("dns.question.subdomain", "qname without its registered domain"),
    ("dns.answers", "answers: [{name, type, class: qclass, ttl, data}]"),
    ("dns.resolved_ip", "data of the A and AAAA answers"),
    ("process.pid", "pid"),
    ("process.name", "comm"),
    ("process.thread.id", "tid"),
    ("process.thread.name", "thread_name"),
    ("user.id", "uid, as a string (ECS keyword)"),
    ("container.id", "container_id"),
    ("container.name", "container"),
    ("orchestrator.type", "'kubernetes' when the pod is known"),
    ("orchestrator.namespace", "pod_namespace"),
    ("orchestrator.resource.type", "'pod' when the pod is known"),
    ("orchestrator.resource.name", "pod"),
    ("orchestrator.resource.id", "pod_uid"),
    ("host.name", "host name of the capturing machine (the node)"),
    ("observer.ingress.interface.name", "ifname"),
    ("dnswatch.*", "custom fields (not ECS): schema_version, status, latency_ms, capture_id, decoder, decode_note, "
                   "ancount, edns_udp_size, edns_do, ecs, netns, cgroup_id"),
)
_DNSWATCH_FIELDS = ("status", "latency_ms", "capture_id", "decoder", "decode_note", "ancount", "edns_udp_size",
                    "edns_do", "ecs", "netns", "cgroup_id")


@lru_cache(maxsize=1)
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=8192)
def _domain_parts(name: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(registered domain, public suffix, subdomain) of a query name, or Nones."""
    name = name.rstrip(".").lower()
    if not name or "\\" in name:
        return None, None, None
    try:
        tld = _psl().publicsuffix(name)
        registered = _psl().privatesuffix(name)
    except Exception:  # noqa: BLE001 - an odd name is simply not split
        return None, None, None
    sub = name[: -len(registered) - 1] if registered and len(name) > len(registered) else None
    return registered, tld, sub


def _put(doc: Dict[str, Any], path: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = path.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[leaf] = value


def ecs(row: Row, host: str) -> Dict[str, Any]:
    d = dict(zip(QUERY_COLUMNS, row))
    status = d["status"]
    answered = status in ("answered", "response_only")
    rcode = d["rcode"]
    doc: Dict[str, Any] = {"@timestamp": _time(d["ts"])}
    put = _put
    put(doc, "ecs.version", ECS_VERSION)
    put(doc, "event.kind", "event")
    put(doc, "event.category", ["network"])
    put(doc, "event.type", ["connection", "protocol"])
    put(doc, "event.dataset", "dnswatch.dns")
    put(doc, "event.module", "dnswatch")
    put(doc, "event.start", _time(d["ts"]))
    if status == "answered":
        put(doc, "event.end", _time(d["response_ts"]))
        if d["latency_ms"] is not None:
            put(doc, "event.duration", int(round(d["latency_ms"] * 1_000_000)))
    if answered:
        put(doc, "event.outcome", "success" if rcode == "NOERROR" else "failure")
    else:
        put(doc, "event.outcome", "failure" if status == "unanswered" else "unknown")
    put(doc, "network.protocol", "dns")
    put(doc, "network.transport", d["proto"])
    if d["src"]:
        put(doc, "network.type", "ipv6" if ":" in d["src"] else "ipv4")
    sizes = [n for n in (d["query_size"], d["response_size"]) if n is not None]
    if sizes:
        put(doc, "network.bytes", sum(sizes))
    for side, ip, port, size in (("client", d["src"], d["sport"], d["query_size"]),
                                 ("server", d["dst"], d["dport"], d["response_size"])):
        for field in (side, "source" if side == "client" else "destination"):
            put(doc, f"{field}.ip", ip)
            put(doc, f"{field}.port", port)
            put(doc, f"{field}.bytes", size)
    put(doc, "dns.id", None if d["dns_id"] is None else str(d["dns_id"]))
    put(doc, "dns.op_code", d["opcode"])
    put(doc, "dns.type", "answer" if answered else "query")
    flags = (d["response_flags"] if answered else d["query_flags"]) or ""
    header = [f.upper() for f in flags.split() if f.upper() in ("AA", "TC", "RD", "RA", "AD", "CD")]
    if d["edns_do"]:
        header.append("DO")
    if header:
        put(doc, "dns.header_flags", header)
    put(doc, "dns.response_code", rcode)
    qname = d["qname"]
    put(doc, "dns.question.name", qname)
    put(doc, "dns.question.type", d["qtype"])
    put(doc, "dns.question.class", d["qclass"])
    if qname:
        registered, tld, sub = _domain_parts(qname)
        put(doc, "dns.question.registered_domain", registered)
        put(doc, "dns.question.top_level_domain", tld)
        put(doc, "dns.question.subdomain", sub)
    answers = _answers(d["answers"])
    related = [ip for ip in (d["src"], d["dst"]) if ip]
    if answers is not None:
        out, resolved = [], []
        for a in answers:
            if not isinstance(a, dict):
                continue
            item = {k: a[k] for k in ("name", "type", "ttl", "data") if a.get(k) is not None}
            if d["qclass"]:
                item["class"] = d["qclass"]
            out.append(item)
            if a.get("type") in ("A", "AAAA") and isinstance(a.get("data"), str):
                resolved.append(a["data"])
        put(doc, "dns.answers", out)
        if resolved:
            put(doc, "dns.resolved_ip", resolved)
            related.extend(ip for ip in resolved if ip not in related)
    if related:
        put(doc, "related.ip", list(dict.fromkeys(related)))
    put(doc, "process.pid", d["pid"])
    put(doc, "process.name", d["comm"])
    put(doc, "process.thread.id", d["tid"])
    put(doc, "process.thread.name", d["thread_name"])
    put(doc, "user.id", None if d["uid"] is None else str(d["uid"]))
    put(doc, "container.id", d["container_id"])
    put(doc, "container.name", d["container"])
    if d["pod"]:
        put(doc, "orchestrator.type", "kubernetes")
        put(doc, "orchestrator.resource.type", "pod")
    put(doc, "orchestrator.namespace", d["pod_namespace"])
    put(doc, "orchestrator.resource.name", d["pod"])
    put(doc, "orchestrator.resource.id", d["pod_uid"])
    put(doc, "host.name", host)
    put(doc, "observer.ingress.interface.name", d["ifname"])
    custom = {"schema_version": SCHEMA_VERSION}
    custom.update((k, d[k]) for k in _DNSWATCH_FIELDS if d[k] is not None)
    doc["dnswatch"] = custom
    return doc


class JsonLinesSink:
    """A row sink writing one line per row to ``out`` (``fmt``: 'native' or 'ecs')."""

    def __init__(self, out: IO[str], fmt: str = "native", host: Optional[str] = None,
                 row_filter: Optional[Callable[[Row], bool]] = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown JSON format {fmt!r}")
        self.out = out
        self.render = ecs if fmt == "ecs" else native
        self.host = host or socket.gethostname()
        self.row_filter = row_filter
        self.lines = 0

    def __call__(self, row: Row) -> None:
        if self.row_filter is not None and not self.row_filter(row):
            return
        self.out.write(json.dumps(self.render(row, self.host), ensure_ascii=True) + "\n")
        self.out.flush()
        self.lines += 1
