"""Cross-check against tshark: every DNS query tshark sees in pcaps/ is a row with the same name, type,
id, client address and port."""
from __future__ import annotations

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
