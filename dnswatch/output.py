"""Rendering rows for people and pipes: JSON, newline-delimited JSON, CSV, tables, and live event lines.

Nothing that came off the wire (or names a file) reaches a terminal raw: control characters (escape codes,
newlines, C1 controls, DEL) and Unicode format characters (bidi overrides, zero-width ones, ...) are shown
as ``\\xHH`` / ``\\uHHHH``, as dig escapes them. JSON output escapes them by construction. JSON has no infinity:
an infinite value (``select 1e999``) is written as the string "Infinity" or "-Infinity".
"""
from __future__ import annotations

import base64
import csv
import errno
import json
import math
import os
import re
import time
import unicodedata
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Sequence


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


# Columns holding JSON text in the log: JSON outputs carry them as JSON values, not as strings inside JSON.
JSON_COLUMNS = frozenset(("answers",))
# Columns holding Unix seconds: --table shows them as UTC times.
TIME_COLUMNS = frozenset(("ts", "response_ts", "first_ts", "last_ts", "started", "ended"))
TABLE_ANSWERS = 40  # characters of answers a --table cell shows


def _json_row(row: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in row.items():
        if k in JSON_COLUMNS and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = _jsonable(v)
    return out


def write_rows(rows: Iterable[Dict[str, Any]], fmt: str, out: IO[str], columns: Optional[Sequence[str]] = None) -> int:
    """Write query results in ``fmt`` (json array, nl, csv, table). Returns the row count."""
    n = 0
    if fmt == "json":
        out.write("[")
        for row in rows:
            out.write(("\n " if n == 0 else ",\n ") + json.dumps(_json_row(row), ensure_ascii=True, allow_nan=False))
            n += 1
        out.write("\n]\n" if n else "]\n")
    elif fmt == "nl":
        for row in rows:
            out.write(json.dumps(_json_row(row), ensure_ascii=True, allow_nan=False) + "\n")
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
        from tabulate import tabulate  # imported when used: 18 ms of every start (replay, watch) otherwise

        materialised: List[Dict[str, Any]] = list(rows)
        n = len(materialised)
        headers = list(materialised[0].keys()) if materialised else list(columns or [])
        out.write(tabulate([[_table_cell(k, v) for k, v in r.items()] for r in materialised], headers=headers,
                           disable_numparse=True) + "\n")
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


def utc_text(ts: float) -> str:
    """Unix seconds as ``2026-11-01 14:30:05.123`` (UTC, milliseconds)."""
    ms = int(round(ts * 1000))
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"


def short_answers(text: str, width: int = TABLE_ANSWERS) -> str:
    """The answers' data, comma-separated, cut to ``width`` with a marker."""
    try:
        data = [str(a.get("data")) for a in json.loads(text)]
    except (ValueError, AttributeError, TypeError):
        data = [text]
    joined = ", ".join(data)
    return joined if len(joined) <= width else joined[:width - 1] + "…"


def _table_cell(key: str, v: Any) -> Any:
    if v is None:
        return ""
    if key in TIME_COLUMNS and isinstance(v, (int, float)) and not isinstance(v, bool):
        return utc_text(v)
    if key in JSON_COLUMNS and isinstance(v, str):
        return safe_text(short_answers(v))
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e15 else repr(v)
    return _table_value(v)


# -- live events ---------------------------------------------------------------------------------

def _who(row: Dict[str, Any], with_pod: bool = True) -> str:
    if row.get("pid") is not None:
        who = f"{row['pid']}/{safe_text(row.get('comm'))}"
    else:
        who = "-"
    if not with_pod:
        return who
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


MARK = "…"  # a truncated name or answer list ends with this
# ANSI colours by outcome (only on a terminal, and not with NO_COLOR)
COLOURS = {"NXDOMAIN": "33", "SERVFAIL": "31", "REFUSED": "35", "unanswered": "1;31", "NOERROR": "32"}
# column: (minimum width, widest it grows to as values appear); widths only grow, so lines stay aligned
COLUMNS = {"where": (6, 28), "who": (8, 28), "client": (10, 47), "server": (10, 47), "type": (4, 10)}
NAME_MIN = 10
COMPACT_BELOW = 120  # narrower terminals get the compact layout


def colour_enabled(stream) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org) or TERM is dumb."""
    if os.environ.get("NO_COLOR", "") != "":
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else (text[:width - 1] + MARK if width > 0 else "")


class EventFormatter:
    """``watch`` lines in aligned columns that fit ``width`` (None: no limit, as ``--wide`` and pipes get).

    time, Q/R/T, [where,] pid/command [pod], client > server, proto, #id, type, name, outcome. The name is
    truncated with a marker rather than wrapping; the outcome's answer list is cut last."""

    def __init__(self, width: Optional[int] = None, colour: bool = False, where: Optional[Any] = None,
                 timeout: float = 5.0):
        self.width = width
        self.colour = colour
        self.where = where  # callable(row) -> label of the namespace/pod, with --all-netns
        self.timeout = timeout
        self.widths = {k: v[0] for k, v in COLUMNS.items()}

    def _pad(self, column: str, text: str) -> str:
        low, high = COLUMNS[column]
        if len(text) > self.widths[column]:
            self.widths[column] = min(high, len(text))
        return _cut(text, self.widths[column]).ljust(self.widths[column])

    def _paint(self, code: Optional[str], text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def line(self, kind: str, row: Dict[str, Any]) -> str:
        compact = self.width is not None and self.width < COMPACT_BELOW
        ts = row["ts"] if kind == "Q" else (row.get("response_ts") or row["ts"])
        if kind == "T":
            ts = row["ts"] + self.timeout
        clock = time.strftime("%H:%M:%S", time.localtime(ts))
        if not compact:
            clock += f".{int((ts % 1) * 1000):03d}"
        fields = [clock, kind]
        if self.where is not None:
            fields.append(self._pad("where", safe_text(self.where(row))))
        fields.append(self._pad("who", _who(row, with_pod=self.where is None)))
        if compact:  # 80 columns: no client port, no server port 53, no DNS id
            server = safe_text(row["dst"]) if row.get("dport") == 53 else _endpoint(row["dst"], row["dport"])
            fields.append(self._pad("client", safe_text(row["src"])) + " > " + self._pad("server", server))
            if row.get("proto") != "udp":
                fields.append(safe_text(row.get("proto")))
        else:
            fields.append(self._pad("client", _endpoint(row["src"], row["sport"])) + " > "
                          + self._pad("server", _endpoint(row["dst"], row["dport"])))
            fields.append(f"{safe_text(row.get('proto')):<3} {'#' + str(row.get('dns_id')):<6}")
        fields.append(self._pad("type", safe_text(row.get("qtype") or "?")))
        head = " ".join(fields)
        name = safe_text(row.get("qname") or "?")
        outcome, code, answers = self._outcome(kind, row)
        if self.width is None:
            return " ".join(x for x in (head, name, self._paint(code, outcome), answers) if x)
        room = self.width - len(head) - 1
        keep = len(outcome) + 1 if outcome else 0
        answers_out = answers
        if len(name) + keep + (1 + len(answers) if answers else 0) > room:
            # the answers shrink first, then the name: truncated with a marker, never wrapped
            space = room - len(name) - keep - 1
            answers_out = _cut(answers, space) if answers and space >= 8 else ""
            if not answers_out:
                name = _cut(name, max(NAME_MIN, room - keep))
        plain = " ".join(x for x in (head, name, outcome, answers_out) if x)
        if len(plain) > self.width:  # a very narrow terminal: cut the line itself
            return _cut(plain, self.width)
        return " ".join(x for x in (head, name, self._paint(code, outcome), answers_out) if x)

    def _outcome(self, kind: str, row: Dict[str, Any]):
        if kind == "Q":
            return "", None, ""
        if kind == "T" or row.get("status") == "unanswered":
            compact = self.width is not None and self.width < COMPACT_BELOW
            return f"unanswered {'' if compact else 'after '}{self.timeout:.1f}s", COLOURS["unanswered"], ""
        rcode = safe_text(row.get("rcode"))
        text = rcode
        if row.get("latency_ms") is not None:
            text += f" {row['latency_ms']:.2f}ms"
        data: List[Any] = []
        answers = row.get("answers")
        if answers:
            try:
                data = [a.get("data") for a in json.loads(answers)]
            except (ValueError, AttributeError):
                data = []
        return text, COLOURS.get(rcode), ("-> " + ", ".join(safe_text(d) for d in data)) if data else ""


def event_line(kind: str, row: Dict[str, Any]) -> str:
    """One full line (no width limit, no colour) for a query 'Q', response 'R' or timeout 'T'."""
    return EventFormatter().line(kind, row)


# -- query output that never holds up the read ---------------------------------------------------------

PIPE_CHUNK = 4096  # PIPE_BUF: a write this small into a pipe that polls writable does not block
SPOOL_IN_MEMORY = 8 << 20
POLL_EVERY = 64 << 10  # bytes spooled between looks at whether the reader is still there


class ClosableOutput:
    """A stream whose reader may go away (``watch | head``): the first write or flush that finds the pipe closed
    calls ``on_closed`` (the caller stops as at the end of its input) and every later one is dropped. The file
    descriptor then points at /dev/null, so the interpreter's own flush at exit cannot fail either."""

    def __init__(self, stream: IO[str], on_closed: Callable[[], None]):
        self.stream = stream
        self.on_closed = on_closed
        self.closed_by_reader = False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.closed_by_reader = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (AttributeError, OSError, ValueError):  # not a file descriptor (tests): nothing buffered there
            pass
        self.on_closed()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


class NeverWaitingOutput:
    """Text output for ``query``/``search`` on a real file descriptor that never makes the query wait for
    whoever reads it: once ``fd`` cannot take more at once (a full pipe, a paused terminal), the rest goes into
    a spool (memory, then a private temporary file) and is written out by :meth:`close`, after the query ended.
    A query stalled on its output keeps its read snapshot, and a writer's WAL cannot start over meanwhile: it
    grows by everything written, for as long as the reader of the pipe takes. A reader that goes away (``| head``)
    raises BrokenPipeError from the next write, spooled or not, so that the query stops there."""

    def __init__(self, fd: int, encoding: str = "utf-8"):
        self.fd = fd
        self.encoding = encoding
        self.spooled = False
        self._pending = bytearray()
        self._spool: Optional[IO[bytes]] = None
        self._unpolled = 0  # bytes spooled since the last look at the reader

    def write(self, text: str) -> int:
        data = text.encode(self.encoding, errors="replace")
        if self._spool is not None:
            self._spool.write(data)
            self._unpolled += len(data)
            if self._unpolled >= POLL_EVERY:
                self._unpolled = 0
                if _reader_gone(self.fd):
                    raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
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
        self.discard()

    def discard(self) -> None:
        """Drop what is not written yet (the reader went away)."""
        self._pending = bytearray()
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def _reader_gone(fd: int) -> bool:
    """Whether the reading end of ``fd`` (a pipe, a socket) is closed, without writing: poll says POLLERR for a
    pipe without readers, POLLHUP for a socket whose peer closed."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))


def exit_on_broken_pipe(fd: int) -> None:
    """End the process as a command does whose output pipe broke (``seq 1e9 | head -1``): quietly, killed by
    SIGPIPE (status 141 in a shell), which Python ignores; fd points at /dev/null first, so nothing at exit can
    write to the broken pipe."""
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
