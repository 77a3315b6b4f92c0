"""Nothing from the wire or from a file name reaches the terminal raw: controls and Unicode format/bidi characters
(every one of category Cc and Cf, line separators, surrogates, private use, unassigned) are escaped in watch
lines, tables, CSV and every error message."""
from __future__ import annotations

import json
import sys
import unicodedata

import pytest

from dnswatch.cli import cli
from dnswatch.output import event_line, safe_message, safe_text

UNSAFE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _raw_unsafe(text: str):
    return [hex(ord(c)) for c in text if unicodedata.category(c) in UNSAFE]


def test_every_control_and_format_character_is_escaped():
    unsafe = [chr(n) for n in range(sys.maxunicode + 1)
              if unicodedata.category(chr(n)) in ("Cc", "Cf", "Zl", "Zp")]
    assert len(unsafe) > 200 and "\u202e" in unsafe and "\U000e0001" in unsafe
    shown = safe_text("".join(unsafe))
    assert shown.isascii() and shown.isprintable()
    assert shown.count("\\") == len(unsafe)  # one escape each, nothing dropped


@pytest.mark.parametrize("char,escaped", [
    ("\x1b", "\\x1b"), ("\r", "\\x0d"), ("\n", "\\x0a"), ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\xad", "\\xad"),
    ("\u200b", "\\u200b"), ("\ufeff", "\\ufeff"), ("\u061c", "\\u061c"), ("\u202e", "\\u202e"),
    ("\u2066", "\\u2066"), ("\u2028", "\\u2028"), ("\U000e0041", "\\U000e0041"), ("\ue000", "\\ue000"),
])
def test_examples(char, escaped):
    assert safe_text(f"a{char}b") == f"a{escaped}b"


def test_letters_of_every_script_stay():
    text = "müller.example, пример, 例え, مثال, דוגמה, 😀"
    assert safe_text(text) == text


def test_watch_lines_escape_answers_and_names():
    evil = "198.18.0.80\u202e\u200b\ufeff\u061c\x1b[2J"
    row = {"ts": 1.7e9, "response_ts": 1.7e9 + 0.01, "src": "198.18.0.2", "sport": 5353, "dst": "198.18.0.1",
           "dport": 53, "proto": "udp", "dns_id": 7, "qtype": "TXT", "qname": "a\u2066b.example.test",
           "status": "answered", "rcode": "NOERROR", "latency_ms": 1.0, "pid": 1, "comm": "x\u200fy",
           "answers": json.dumps([{"name": "a.example.test", "type": "TXT", "ttl": 1, "data": evil}])}
    for kind in ("Q", "R"):
        line = event_line(kind, row)
        assert not _raw_unsafe(line), line
    line = event_line("R", row)
    assert "198.18.0.80\\u202e\\u200b\\ufeff\\u061c\\x1b[2J" in line and "a\\u2066b.example.test" in line


def test_messages_keep_their_line_breaks():
    assert safe_message("one \x1b[1m\ntwo\r") == "one \\x1b[1m\ntwo\\x0d"


EVIL = "evil\x1b[2J\x1b]0;owned\x07\rname\u202e"


def test_file_names_in_errors_are_escaped(runner, tmp_path):
    cases = [
        ["replay", str(tmp_path / f"{EVIL}.pcap"), "--db", str(tmp_path / "x.db")],
        ["query", "select 1", "--db", str(tmp_path / f"{EVIL}.db")],
        ["search", "x", "--db", str(tmp_path / f"{EVIL}.db")],
        ["query", "select 1", "--db", str(tmp_path / "x.db"), "--attach", "a", str(tmp_path / f"{EVIL}.db")],
    ]
    (tmp_path / f"{EVIL}.dir").mkdir()
    cases.append(["query", "select 1", "--attach", "a", str(tmp_path / f"{EVIL}.dir")])
    (tmp_path / f"{EVIL}.link").symlink_to(tmp_path / "nowhere")
    cases.append(["replay", "-", "--db", str(tmp_path / f"{EVIL}.link")])
    for args in cases:
        result = runner.invoke(cli, args, input=b"")
        assert result.exit_code in (1, 2), (args, result.output)
        assert "evil\\x1b[2J\\x1b]0;owned\\x07\\" in result.output, (args, result.output)  # click's own use repr()
        assert not _raw_unsafe(result.output.replace("\n", "")), (args, result.output)


def test_a_capture_named_with_escapes_is_summarised_escaped(runner, tmp_path):
    from conftest import PCAPS

    src = tmp_path / f"{EVIL}.pcap"
    src.write_bytes((PCAPS / "udp_v4_dig.pcap").read_bytes())
    result = runner.invoke(cli, ["replay", str(src), "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 0, result.output
    assert "evil\\x1b[2J" in result.output and not _raw_unsafe(result.output.replace("\n", ""))
