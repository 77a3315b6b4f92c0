"""Cross-check against tshark: every DNS query tshark sees in pcaps/ is a row with the same name, type,
id, client address and port; every response it sees is stored with the same rcode, answer count and
answers (A/AAAA/CNAME/PTR/MX/TXT data compared; only what the schema documents is normalised: case, the
root written '.', TXT in presentation form). And no capture but the hostile one has decoder='raw' rows."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import sqlite_utils

from conftest import capture_files, ports_for, replay, require_tool

FIELDS = ["frame.number", "dns.id", "dns.qry.name", "dns.qry.type", "ip.src", "ipv6.src", "udp.srcport", "tcp.srcport"]
# tshark shows a name only approximately when it has bytes outside printable ASCII; compare the rest exactly
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.*-]+$")


def tshark_queries(path, ports):
    tshark = require_tool("tshark")
    cmd = [tshark, "-r", str(path), "-n", "-o", "tcp.desegment_tcp_streams:TRUE", "-Y", "dns.flags.response == 0",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for port in ports:
        if port != 53:
            cmd += ["-d", f"udp.port=={port},dns", "-d", f"tcp.port=={port},dns"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout  # damaged captures make tshark exit 2
    seen = set()
    for line in out.splitlines():
        cols = line.split("\t")
        cols += [""] * (len(FIELDS) - len(cols))
        _num, ids, names, types, src4, src6, usport, tsport = cols[:8]
        src = (src6 or src4).split(",")[-1]  # innermost address (tunnels, ICMP quotes)
        sport = (usport or tsport).split(",")[-1]
        for dns_id, name, qtype in zip(ids.split(","), names.split(","), types.split(",")):
            if not name or not PLAIN_NAME.match(name):
                continue
            seen.add((int(dns_id, 0), name.lower().rstrip("."), int(qtype), src, int(sport)))
    return seen


@pytest.mark.parametrize("path", capture_files(), ids=lambda p: p.name)
def test_every_tshark_query_is_stored(tmp_path, path):
    ports = ports_for(path)
    expected = tshark_queries(path, ports)
    db = tmp_path / "t.db"
    replay(db, path)
    rows = sqlite_utils.Database(db).execute(
        "select dns_id, lower(qname), qtype_num, src, sport from queries where status != 'response_only'").fetchall()
    stored = {(i, n, t, s, p) for i, n, t, s, p in rows}
    missing = expected - stored
    assert not missing, f"tshark saw queries dnswatch did not store: {sorted(missing)[:10]}"


# -- answers ---------------------------------------------------------------------------------------
# One line per frame; a frame may carry several DNS messages (TCP), whose fields tshark joins. Each
# message owns the next an+ns+ar entries of the per-record fields (dns.resp.*), and the type-specific
# fields (dns.a, dns.cname...) list the records of their type in wire order across all sections.
AGG = "\x1e"
ANSWER_FIELDS = ["frame.number", "dns.id", "dns.flags.rcode", "dns.count.answers", "dns.count.auth_rr",
                 "dns.count.add_rr", "ip.dst", "ipv6.dst", "udp.dstport", "tcp.dstport",
                 "dns.resp.name", "dns.resp.type", "dns.resp.ttl", "dns.resp.len", "dns.a", "dns.aaaa", "dns.cname",
                 "dns.ptr.domain_name", "dns.mx.preference", "dns.mx.mail_exchange", "dns.txt", "dns.txt.length"]
TYPED = {1: ("dns.a",), 28: ("dns.aaaa",), 5: ("dns.cname",), 12: ("dns.ptr.domain_name",),
         15: ("dns.mx.preference", "dns.mx.mail_exchange"), 16: ()}
TYPE_NAMES = {1: "A", 28: "AAAA", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT"}


def tshark_responses(path, ports):
    tshark = require_tool("tshark")
    cmd = [tshark, "-r", str(path), "-n", "-o", "tcp.desegment_tcp_streams:TRUE", "-Y", "dns.flags.response == 1",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", f"aggregator={AGG}"]
    for port in ports:
        if port != 53:
            cmd += ["-d", f"udp.port=={port},dns", "-d", f"tcp.port=={port},dns"]
    for f in ANSWER_FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    views, skipped = [], 0
    for line in out.split("\n"):  # not splitlines(): it splits on the aggregator (\x1e) too
        if not line:
            continue
        cols = line.split("\t")
        cols += [""] * (len(ANSWER_FIELDS) - len(cols))
        f = {name: (cols[i].split(AGG) if cols[i] else []) for i, name in enumerate(ANSWER_FIELDS)}
        client = (f["ipv6.dst"] or f["ip.dst"])[-1]
        cport = int((f["udp.dstport"] or f["tcp.dstport"])[-1])
        rr_total = sum(int(a) + int(n) + int(r) for a, n, r in
                       zip(f["dns.count.answers"], f["dns.count.auth_rr"], f["dns.count.add_rr"]))
        if len(f["dns.resp.type"]) != rr_total or len(f["dns.id"]) != len(f["dns.count.answers"]):
            skipped += 1  # tshark could not read every record it was told of (damaged on purpose)
            continue
        typed_pos = {field: 0 for fields in TYPED.values() for field in fields}
        txt_pos = 0
        rr = 0
        for m, dns_id in enumerate(f["dns.id"]):
            an = int(f["dns.count.answers"][m])
            count = an + int(f["dns.count.auth_rr"][m]) + int(f["dns.count.add_rr"][m])
            answers = []
            for i in range(rr, rr + count):
                rtype = int(f["dns.resp.type"][i])
                data = None
                if rtype in TYPED and rtype != 16:
                    values = []
                    for field in TYPED[rtype]:
                        values.append(f[field][typed_pos[field]])
                        typed_pos[field] += 1
                    data = " ".join(values)
                elif rtype == 16:
                    strings, left = [], int(f["dns.resp.len"][i])
                    while left > 0:
                        n = int(f["dns.txt.length"][txt_pos])
                        strings.append((n, f["dns.txt"][txt_pos]))
                        txt_pos += 1
                        left -= n + 1
                    data = strings
                if i < rr + an:
                    # tshark 4.0 has no dns.resp.name for SRV records: then names cannot be lined up
                    name = f["dns.resp.name"][i] if len(f["dns.resp.name"]) == rr_total else None
                    ttl = int(f["dns.resp.ttl"][i]) if len(f["dns.resp.ttl"]) == rr_total else None
                    answers.append((name, rtype, ttl, data))
            rr += count
            if any(str(x).startswith("<") and x != "<Root>" for a in answers for x in (a[0], a[3]) if x):
                skipped += 1  # tshark could not read a name: "<Name contains a pointer that loops>"
                continue
            views.append({"id": int(dns_id, 16), "client": client, "port": cport,
                          "rcode": int(f["dns.flags.rcode"][m]), "ancount": an, "answers": answers})
    return views, skipped


_UNESCAPE = re.compile(r"\\(\d{3}|.)")


def _txt_strings(data: str):
    """Our TXT presentation ("a" "b\\"c") back to the bytes of each string (the schema's format, inverted)."""
    out = []
    for quoted in re.findall(r'"((?:[^"\\]|\\.)*)"', data):
        raw = _UNESCAPE.sub(lambda m: chr(int(m.group(1))) if m.group(1).isdigit() else m.group(1), quoted)
        out.append(raw.encode("latin-1"))
    return out


def _name(n: str) -> str:
    return "." if n == "<Root>" else n.lower()


def _same_answer(ours: dict, theirs) -> bool:
    name, rtype, ttl, data = theirs
    if ours["type"] != TYPE_NAMES.get(rtype, ours["type"]) or ttl not in (None, ours["ttl"]):
        return False
    if name is not None and PLAIN_NAME.match(name) and ours["name"].lower() != name.lower():
        return False
    if data is None:
        return True
    if rtype in (1, 28):
        return ours["data"] == data
    if rtype in (5, 12):
        return not PLAIN_NAME.match(data) or ours["data"].lower() == _name(data)
    if rtype == 15:
        pref, target = data.split(" ", 1)
        return ours["data"].lower() == f"{pref} {_name(target)}" or not PLAIN_NAME.match(target)
    strings = _txt_strings(ours["data"])  # TXT: the same strings, of the same lengths
    if [len(s) for s in strings] != [n for n, _ in data]:
        return False
    # tshark writes the bytes of a string it cannot print its own way (\t, raw ESC, U+FFFD): compare the
    # strings it prints as they are, printable ASCII only
    return all(s.decode("latin-1") == text for s, (_n, text) in zip(strings, data)
               if all(0x20 <= b <= 0x7E for b in s))


@pytest.mark.parametrize("path", capture_files(), ids=lambda p: p.name)
def test_every_tshark_answer_is_stored(tmp_path, path):
    ports = ports_for(path)
    views, _skipped = tshark_responses(path, ports)
    db = tmp_path / "t.db"
    replay(db, path)
    rows = sqlite_utils.Database(db).execute(
        "select dns_id, src, sport, rcode_num, ancount, answers from queries where response_ts is not null").fetchall()
    stored = {}
    for dns_id, src, sport, rcode, ancount, answers in rows:
        stored.setdefault((dns_id, src, sport), []).append((rcode, ancount, json.loads(answers or "[]")))
    problems = []
    for v in views:
        candidates = stored.get((v["id"], v["client"], v["port"]))
        if not candidates:
            problems.append(f"response {v['id']:#06x} to {v['client']}:{v['port']} not stored")
            continue
        if not any((rcode & 0xF) == v["rcode"] and ancount == v["ancount"] and len(answers) == len(v["answers"])
                   and all(_same_answer(o, t) for o, t in zip(answers, v["answers"]))
                   for rcode, ancount, answers in candidates):
            problems.append(f"response {v['id']:#06x}: tshark {v['rcode']} {v['ancount']} {v['answers'][:3]}, "
                            f"stored {[(r, a, x[:3]) for r, a, x in candidates]}")
    assert not problems, "\n".join(problems[:10])


HOSTILE = {"dns_hostile.pcap"}  # crafted to be refused


@pytest.mark.parametrize("path", [p for p in capture_files() if p.name not in HOSTILE], ids=lambda p: p.name)
def test_no_raw_decoder_rows(tmp_path, path):
    db = tmp_path / "t.db"
    replay(db, path)
    raw = sqlite_utils.Database(db).execute(
        "select dns_id, qname, decode_note from queries where decoder != 'dnslib'").fetchall()
    assert not raw, raw[:5]
