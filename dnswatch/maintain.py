"""The log over time and at rest: retention options, ``prune`` and ``export`` (a consistent copy while
``watch`` writes)."""
from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from typing import Dict, Optional, Tuple

from dnswatch import __version__
from dnswatch.layout import Retention
from dnswatch.schema import LOG_TABLE
from dnswatch.store import BUSY_TIMEOUT_MS, Store, StoreError, _friendly, _readonly_uri

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.I)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.I)


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``90m``, ``2w``; a bare number is seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"cannot read duration {text!r}: use a number with s, m, h, d or w, e.g. 7d or 12h")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]


def parse_size(text: str) -> int:
    """``20GB``, ``500MB``, ``1.5GiB``, ``4096`` (bytes). GB is 10^9, GiB 2^30."""
    m = _SIZE.match(text or "")
    if not m:
        raise ValueError(f"cannot read size {text!r}: use a number with KB, MB, GB or TB (or KiB...), e.g. 20GB")
    power = " kmgt".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * ((1024 if m.group(3) else 1000) ** power))


def prune(path: str, retention: Retention) -> Tuple[int, Optional[float], Dict[str, int]]:
    """Prune a log at rest (or one a watch writes: the same small transactions, and the writer learns which
    dictionary entries went). Records a captures row of kind 'prune' with what it deleted (notes.collected: the
    dictionary entries and aggregates). Returns (rows deleted, the newest deleted row's time, collected)."""
    if not os.path.exists(path):
        raise StoreError(f"{path}: no such database")
    store = Store(path, retention=retention)
    try:
        capture = store.start_capture("prune", path, {k: v for k, v in retention._asdict().items() if v})
        deleted = 0
        while True:  # until a step deletes nothing (rows, aggregates or dictionary entries)
            done = sum(store._log.collected.values())
            n = store.prune(seconds=1.0)
            deleted += n
            if not n and sum(store._log.collected.values()) == done:
                break
        conn = store.conn
        newest = conn.execute("SELECT pruned_before FROM captures WHERE id = ?", (capture,)).fetchone()[0]
        collected = dict(store._log.collected)
        with conn:
            conn.execute("UPDATE captures SET status = 'complete', ended = ?, pruned_rows = ?, notes = ? WHERE id = ?",
                         (time.time(), deleted, json.dumps({"collected": collected}, sort_keys=True), capture))
        conn.executescript("PRAGMA incremental_vacuum;")  # at rest: give every free page back (auto_vacuum logs)
        return deleted, newest, collected
    except sqlite3.Error as exc:
        raise _friendly(path, exc)
    finally:
        store.close()


def export(path: str, out: str, since: Optional[float] = None) -> int:
    """Copy the log to ``out`` (mode 0600, one self-contained file): a snapshot of every row committed when the
    copy started, even while ``watch`` writes (SQLite's backup API in one step is one read transaction).
    ``since``: leave out query rows (and malformed messages) older than that. Returns the rows copied."""
    if os.path.lexists(out):
        raise StoreError(f"{out}: exists already; remove it or pick another name")
    directory = os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(directory, f".{os.path.basename(out)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
    except OSError as exc:
        raise StoreError(f"{out}: cannot create ({exc.strerror})")
    try:
        try:
            src = sqlite3.connect(_readonly_uri(path), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise _friendly(path, exc)
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst)  # pages=-1: every page in one step, under one read transaction
                dst.execute("PRAGMA journal_mode = DELETE")  # no -wal beside the copy
                if since is not None:
                    dst.execute("BEGIN")
                    dst.execute(f"DELETE FROM {LOG_TABLE} WHERE ts < ?", (since,))
                    dst.execute("DELETE FROM malformed WHERE ts < ?", (since,))
                    dst.execute("COMMIT")
                    dst.execute("VACUUM")  # our own copy, not the live log
                rows = dst.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()[0]
                dst.execute("INSERT INTO captures (kind, source, host, started, ended, status, options, "
                            "dnswatch_version) VALUES ('export', ?, ?, ?, ?, 'complete', ?, ?)",
                            (os.path.abspath(path), socket.gethostname(), time.time(), time.time(),
                             '{"since": %s}' % ("null" if since is None else repr(since)), __version__))
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise _friendly(out, exc)
        finally:
            src.close()
        os.chmod(tmp, 0o600)
        os.rename(tmp, out)
        return rows
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
