"""Rendering rows for people and pipes: JSON, newline-delimited JSON, CSV, tables, and live event lines.

Nothing that came off the wire (or names a file) reaches a terminal raw: control characters (escape codes,
newlines, C1 controls, DEL) and Unicode format characters (bidi overrides, zero-width ones, ...) are shown
as ``\\xHH`` / ``\\uHHHH``, as dig escapes them. JSON output escapes them by construction. JSON has no infinity:
an infinite value (``select 1e999``) is written as the string "Infinity" or "-Infinity".
"""
from __future__ import annotations

import base64
import csv
import json
import math
import os
import re
import time
import unicodedata
from typing import IO, Any, Dict, Iterable, List, Optional, Sequence

from tabulate import tabulate

FORMATS = ("json", "nl", "csv", "table")
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Not shown raw: controls (C0, DEL, C1), format characters (bidi overrides and isolates, zero-width ones, the
# BOM, Arabic letter mark, tag characters...), line and paragraph separators, surrogates, private-use and
# unassigned code points: they reorder, hide or forge what a terminal shows. Letters of every script stay.
_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def _escape(char: str) -> str:
    n = ord(char)
    return "\\x%02x" % n if n < 0x100 else "\\u%04x" % n if n < 0x10000 else "\\U%08x" % n


def safe_text(value: Any) -> str:
    """A value as text that cannot move the cursor, recolour, reorder or hide text, or forge a line on a
    terminal: see _UNSAFE; such characters are shown as \\xHH, \\uHHHH or \\UHHHHHHHH."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.isascii():
        return _ASCII_CONTROL.sub(lambda m: _escape(m.group()), text)
    category = unicodedata.category
    return "".join(_escape(c) if category(c) in _UNSAFE else c for c in text)


def safe_message(text: str) -> str:
    """An error or warning message for the terminal: safe_text on each line (its own line breaks stay)."""
    return "\n".join(safe_text(line) for line in str(text).split("\n"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": True, "encoded": base64.b64encode(bytes(value)).decode("ascii")}
    if value.__class__ is float and not math.isfinite(value):
        # JSON has no infinity: the strings JavaScript and Python spell them with; NaN (SQLite stores none) null
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def write_rows(rows: Iterable[Dict[str, Any]], fmt: str, out: IO[str], columns: Optional[Sequence[str]] = None) -> int:
    """Write query results in ``fmt`` (json array, nl, csv, table). Returns the row count."""
    n = 0
    if fmt == "json":
        out.write("[")
        for row in rows:
            out.write(("\n " if n == 0 else ",\n ") + json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=True, allow_nan=False))
            n += 1
        out.write("\n]\n" if n else "]\n")
    elif fmt == "nl":
        for row in rows:
            out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=True, allow_nan=False) + "\n")
            n += 1
    elif fmt == "csv":
        writer = None
        for row in rows:
            if writer is None:
                writer = csv.writer(out)
                writer.writerow(list(row.keys()))
            writer.writerow([_csv_value(v) for v in row.values()])
            n += 1
        if writer is None and columns:
            csv.writer(out).writerow(list(columns))
    elif fmt == "table":
        materialised: List[Dict[str, Any]] = list(rows)
        n = len(materialised)
        headers = list(materialised[0].keys()) if materialised else list(columns or [])
        out.write(tabulate([[_table_value(v) for v in r.values()] for r in materialised], headers=headers) + "\n")
    else:
        raise ValueError(f"unknown format {fmt}")
    return n


def _csv_value(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    return safe_text(v) if isinstance(v, str) else v


def _table_value(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    return safe_text(v) if isinstance(v, str) else v


# -- live events ---------------------------------------------------------------------------------

def _who(row: Dict[str, Any]) -> str:
    if row.get("pid") is not None:
        who = f"{row['pid']}/{safe_text(row.get('comm'))}"
    else:
        who = "-"
    if row.get("pod"):
        who += f" {safe_text(row.get('pod_namespace'))}/{safe_text(row['pod'])}"
        if row.get("container"):
            who += f":{safe_text(row['container'])}"
    elif row.get("container_id"):
        who += f" ctr:{safe_text(row['container_id'])[:12]}"
    return who


def _endpoint(addr: Any, port: Any) -> str:
    addr = safe_text(addr)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def event_line(kind: str, row: Dict[str, Any]) -> str:
    """One terminal line for a query (kind 'Q') or a response/timeout (kind 'R')."""
    ts = row["ts"] if kind == "Q" else (row.get("response_ts") or row["ts"])
    clock = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"
    parts = [clock, kind, _who(row), f"{_endpoint(row['src'], row['sport'])} > {_endpoint(row['dst'], row['dport'])}",
             safe_text(row.get("proto")), f"#{row.get('dns_id')}", safe_text(row.get("qtype") or "?"),
             safe_text(row.get("qname") or "?")]
    if kind == "R":
        status = row.get("status")
        if status == "unanswered":
            parts.append("UNANSWERED")
        else:
            parts.append(safe_text(row.get("rcode")))
            if row.get("latency_ms") is not None:
                parts.append(f"{row['latency_ms']:.2f}ms")
            answers = row.get("answers")
            if answers:
                try:
                    data = [a.get("data") for a in json.loads(answers)][:4]
                except (ValueError, AttributeError):
                    data = []
                if data:
                    parts.append("-> " + ", ".join(safe_text(d) for d in data))
    return " ".join(str(p) for p in parts)


# -- query output that never holds up the read ---------------------------------------------------------

PIPE_CHUNK = 4096  # PIPE_BUF: a write this small into a pipe that polls writable does not block
SPOOL_IN_MEMORY = 8 << 20


class NeverWaitingOutput:
    """Text output for ``query``/``search`` on a real file descriptor that never makes the query wait for
    whoever reads it: once ``fd`` cannot take more at once (a full pipe, a paused terminal), the rest goes into
    a spool (memory, then a private temporary file) and is written out by :meth:`close`, after the query ended.
    A query stalled on its output keeps its read snapshot, and a writer's WAL cannot start over meanwhile: it
    grows by everything written, for as long as the reader of the pipe takes."""

    def __init__(self, fd: int, encoding: str = "utf-8"):
        self.fd = fd
        self.encoding = encoding
        self.spooled = False
        self._pending = bytearray()
        self._spool: Optional[IO[bytes]] = None

    def write(self, text: str) -> int:
        data = text.encode(self.encoding, errors="replace")
        if self._spool is not None:
            self._spool.write(data)
        else:
            self._pending += data
            if len(self._pending) >= PIPE_CHUNK:
                self._push()
        return len(text)

    def _push(self) -> None:
        import select
        import tempfile

        while self._pending:
            try:
                ready = select.select([], [self.fd], [], 0)[1]
                written = os.write(self.fd, self._pending[:PIPE_CHUNK]) if ready else 0
            except BlockingIOError:
                written = 0
            if not written:
                self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
                self._spool.write(self._pending)
                self._pending = bytearray()
                self.spooled = True
                return
            del self._pending[:written]

    def flush(self) -> None:
        pass  # written at close: the point is not to wait before the query has ended

    def close(self) -> None:
        """The query has ended: write everything out, waiting for the reader as long as it takes."""
        chunks = [bytes(self._pending)]
        self._pending = bytearray()
        if self._spool is not None:
            self._spool.seek(0)
            chunks = iter(lambda: self._spool.read(1 << 20), b"")  # type: ignore[union-attr]
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view):]
        if self._spool is not None:
            self._spool.close()
            self._spool = None
