"""pcaps/udp_retry.pcap (real clients, first answer dropped by nftables, see pcaps/capture_retry.sh) against
tshark: a retransmission from the same socket is one row with attempts 2, timed from the retry in latency_ms and
from the first attempt in first_attempt_latency_ms (tshark's dns.time); a retry from a new port is another
transaction for both."""
from __future__ import annotations

import sqlite3

from conftest import PCAPS, replay, require_tool, run

CAPTURE = PCAPS / "udp_retry.pcap"


def tshark_view():
    tshark = require_tool("tshark")
    out = run([tshark, "-n", "-r", str(CAPTURE), "-Y", "dns", "-T", "fields", "-E", "separator=|",
               "-e", "frame.number", "-e", "frame.time_epoch", "-e", "udp.srcport", "-e", "udp.dstport",
               "-e", "dns.id", "-e", "dns.qry.name", "-e", "dns.flags.response", "-e", "dns.retransmission",
               "-e", "dns.time", "-e", "dns.response_to"]).stdout
    return [line.split("|") for line in out.splitlines()]


def test_retries_agree_with_tshark(tmp_path):
    db = tmp_path / "r.db"
    replay(db, CAPTURE)
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from queries order by ts")]
    frames = tshark_view()
    queries = [f for f in frames if f[6] in ("0", "False")]
    responses = [f for f in frames if f[6] in ("1", "True")]
    retransmitted = [f for f in queries if f[7] in ("1", "True")]
    retries = sum(r["attempts"] - 1 for r in rows if r["attempts"])
    assert retries == len(retransmitted) >= 1
    # every query tshark does not call a retransmission is a row of its own
    assert len([r for r in rows if r["status"] != "response_only"]) == len(queries) - len(retransmitted)
    by_frame = {f[0]: f for f in frames}
    for resp in responses:
        first = by_frame[resp[9]]  # the request tshark links it to: the first attempt
        (row,) = [r for r in rows if r["sport"] == int(resp[3]) and r["dns_id"] == int(resp[4], 16)
                  and r["status"] == "answered"]
        assert abs(row["ts"] - float(first[1])) < 1e-6
        assert abs(row["first_attempt_latency_ms"] - float(resp[8]) * 1000) < 0.002
        retry = [f for f in retransmitted if f[2] == first[2] and f[4] == first[4]]
        if retry:  # timed from the retry that was answered
            assert row["attempts"] == 1 + len(retry)
            assert abs(row["latency_ms"] - (float(resp[1]) - float(retry[-1][1])) * 1000) < 0.002
            assert row["latency_ms"] < 10 < row["first_attempt_latency_ms"]
        else:
            assert row["attempts"] == 1 and row["latency_ms"] == row["first_attempt_latency_ms"]
