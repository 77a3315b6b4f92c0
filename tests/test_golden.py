"""Replay every capture in pcaps/ and compare the log with tests/golden/NAME.json.

After an intended change of output, regenerate with:  DNSWATCH_UPDATE_GOLDEN=1 pytest tests/test_golden.py
and review the diff of tests/golden/ like code.
"""
from __future__ import annotations

import json
import os

import pytest
import sqlite_utils

from conftest import ROOT, capture_files, replay

GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("DNSWATCH_UPDATE_GOLDEN") == "1"


def snapshot(db_path) -> dict:
    db = sqlite_utils.Database(db_path)
    queries = [
        {k: v for k, v in row.items() if k not in ("id", "capture_id", "lookup_id") and v is not None}
        for row in db.query("select * from queries order by ts, src, sport, dns_id, qname, id")
    ]
    for row in queries:
        if "answers" in row:
            row["answers"] = json.loads(row["answers"])
    malformed = [
        {"ts": r["ts"], "src": r["src"], "sport": r["sport"], "dst": r["dst"], "dport": r["dport"], "proto": r["proto"],
         "reason": r["reason"], "size": r["size"], "data": r["data"].hex()}
        for r in db.query("select * from malformed order by ts, id")
    ]
    capture = next(db.query(
        "select frames, dns_messages, queries, responses, malformed, dropped, duplicates, first_ts, last_ts, notes "
        "from captures"))
    capture["notes"] = json.loads(capture["notes"])
    capture["notes"]["warnings"] = [w.replace(str(ROOT) + "/", "") for w in capture["notes"]["warnings"]]
    return {"capture": capture, "queries": queries, "malformed": malformed}


@pytest.mark.parametrize("path", capture_files(), ids=lambda p: p.name)
def test_golden(tmp_path, path):
    db = tmp_path / "g.db"
    replay(db, path)
    got = snapshot(db)
    golden = GOLDEN / (path.name + ".json")
    if UPDATE or not golden.exists():
        if not UPDATE:
            pytest.fail(f"no golden file {golden.name}; create it with DNSWATCH_UPDATE_GOLDEN=1")
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(golden.read_text())
    assert got == expected
