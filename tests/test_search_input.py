"""What a user types into `search` and `query` is read the way the log stores it: names in presentation form
(UTF-8, spaces and bytes that are not UTF-8 as \\DDD), globs with \\* \\? \\[ for those characters, addresses
in any spelling; text that cannot be read is one clear error, never a traceback."""
from __future__ import annotations

import json
import struct

import pytest

from conftest import replay
from dnswatch.cli import cli
from hostile import ipv4, pcap_header, pcap_record, udp

NAMES = [b"caf\xc3\xa9", b"a b", b"x[1]", b"UPPER", b"\xff\x00z", b"star*q?", b"plain", b"a.b", (b"c\\", b"b")]


def _message(dns_id: int, labels, response: bool) -> bytes:
    labels = (labels,) if isinstance(labels, bytes) else labels
    qname = b"".join(bytes([len(x)]) + x for x in labels) + b"\x07example\x04test\x00"
    if not response:
        return struct.pack("!HHHHHH", dns_id, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x1c\x00\x01"
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + bytes.fromhex("fd000018" + "00" * 11 + "80")
    return struct.pack("!HHHHHH", dns_id, 0x8180, 1, 1, 0, 0) + qname + b"\x00\x1c\x00\x01" + answer


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = tmp_path_factory.mktemp("names")
    pcap = d / "names.pcap"
    with open(pcap, "wb") as f:
        f.write(pcap_header())
        for i, label in enumerate(NAMES):
            sport = 41000 + i
            f.write(pcap_record(1.7e9 + i, ipv4(udp(_message(i, label, False), sport=sport))))
            f.write(pcap_record(1.7e9 + i + 0.001, ipv4(udp(_message(i, label, True), sport=53, dport=sport),
                                                         src=bytes([198, 18, 0, 1]), dst=bytes([198, 18, 0, 2]))))
    path = d / "log.db"
    replay(path, pcap)
    return path


def _names(runner, db, *args):
    result = runner.invoke(cli, ["search", "--db", str(db), "--nl", "--limit", "0", *args])
    assert result.exit_code == 0, result.output
    return sorted(json.loads(line)["qname"] for line in result.stdout.splitlines())


@pytest.mark.parametrize("typed,stored", [
    ("café.example.test", "caf\\195\\169.example.test"),        # UTF-8 as typed in a terminal
    ("caf\\195\\169.example.test", "caf\\195\\169.example.test"),  # as dig shows it
    ("a b.example.test", "a\\032b.example.test"),
    ("upper.EXAMPLE.test", "UPPER.example.test"),
    ("\udcff\\000z.example.test", "\\255\\000z.example.test"),    # a byte that is not UTF-8, as argv passes it
    ("x\\[1\\].example.test", "x[1].example.test"),             # escaped glob characters: a plain name
    ("star\\*q\\?.example.test", "star*q?.example.test"),
])
def test_a_name_is_found_as_typed(runner, db, typed, stored):
    assert _names(runner, db, typed) == [stored]


def test_a_dot_inside_a_label_is_not_a_subdomain(runner, db):
    """'a\\.b.example.test' is one label 'a.b' under example.test, not a name under b.example.test;
    'c\\\\.b.example.test' (labels 'c\\' and 'b') is."""
    assert _names(runner, db, "b.example.test") == ["c\\\\.b.example.test"]
    assert _names(runner, db, "a\\.b.example.test") == ["a\\.b.example.test"]


def test_globs_still_match_and_escapes_mix_with_wildcards(runner, db):
    assert _names(runner, db, "*\\[*") == ["x[1].example.test"]
    assert _names(runner, db, "star*.example.test") == ["star*q?.example.test"]
    assert _names(runner, db, "x[1].example.test") == []  # [1] is a character class: x1
    assert len(_names(runner, db, "*.example.test")) == len(NAMES)


def test_contains_reads_the_stored_form_too(runner, db):
    assert _names(runner, db, "--contains", "café") == ["caf\\195\\169.example.test"]
    assert _names(runner, db, "--contains", " ") == ["a\\032b.example.test"]
    assert _names(runner, db, "--contains", "\udcff") == ["\\255\\000z.example.test"]


@pytest.mark.parametrize("spelling", ["fd00:18::80", "FD00:18::80", "fd00:0018:0:0:0:0:0:0080"])
def test_answer_takes_any_address_spelling(runner, db, spelling):
    assert len(_names(runner, db, "--answer", spelling)) == len(NAMES)


@pytest.mark.parametrize("option", ["--comm", "--pod", "--pod-namespace", "--container", "--answer"])
def test_bytes_that_are_not_utf8_in_a_filter_match_nothing_cleanly(runner, db, option):
    assert _names(runner, db, option, "\udcff") == []


def test_query_text_that_is_not_utf8_is_one_error(runner, db):
    for args in (["select '\udcff'"], ["select :x", "-p", "x", "\udcff"]):
        result = runner.invoke(cli, ["query", "--db", str(db), *args])
        assert result.exit_code == 1, result.output
        assert "not UTF-8 text" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("alias", ["a]", "x y", "main", "TEMP", "1a"])
def test_attach_aliases_are_identifiers(runner, db, alias):
    result = runner.invoke(cli, ["query", "--db", str(db), "select 1", "--attach", alias, str(db)])
    assert result.exit_code == 2, result.output
    assert "an alias is letters, digits and _" in result.output


def test_attach_with_a_plain_alias_reads(runner, db):
    result = runner.invoke(cli, ["query", "--db", str(db), "select count(*) n from b_2.queries", "--attach", "b_2",
                                 str(db), "--nl"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"n": len(NAMES)}


@pytest.mark.parametrize("args", [["search", "--since", "nan"], ["search", "--until", "inf"],
                                  ["search", "--since", "1e309"], ["search", "--since", "99999999999999999999d"],
                                  ["top", "--log", "--once", "--since", "nan"], ["top", "--once", "--since", "1e400"],
                                  ["search", "--lookups", "--since", "-inf"]])
def test_times_out_of_range_are_one_error(runner, db, args):
    """nan matched nothing silently; inf and nan broke top with a traceback."""
    result = runner.invoke(cli, [*args, "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert "out of range: give one between the years 1 and 9999" in result.output


def test_numbered_types_and_rcodes_are_their_mnemonics_and_bounded(runner, db):
    assert len(_names(runner, db, "--type", "type28")) == len(NAMES)  # rows store AAAA, not TYPE28
    assert len(_names(runner, db, "--rcode", "RCODE0")) == len(NAMES)
    for option, value in (("--type", "TYPE65536"), ("--rcode", "RCODE4096")):
        result = runner.invoke(cli, ["search", "--db", str(db), option, value])
        assert result.exit_code == 1 and "out of range" in result.output, result.output


def test_ctrl_c_stops_a_long_statement_at_once(db):
    """A Ctrl-C waited for the statement to end: forever, for an unbounded recursive CTE."""
    import signal
    import subprocess
    import sys
    import time

    sql = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"
    p = subprocess.Popen([sys.executable, "-m", "dnswatch", "query", "--db", str(db), sql],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        time.sleep(1.5)
        assert p.poll() is None, p.stdout.read()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1 and "Aborted" in out, out
