"""The SQLite log: creation from ``schema``, batched writes, read-only access for queries.

Crash safety: the database is in WAL mode and every batch is one transaction, so a ``kill -9`` loses at
most the batch in flight and leaves a file that passes ``PRAGMA integrity_check``. Readers open the file
read-only and wait (busy timeout) instead of failing while a writer commits.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from typing import Any, Dict, List, Sequence

import sqlite_utils

from dnswatch import __version__
from dnswatch.schema import LIVE_ONLY_FROM, MALFORMED_COLUMNS, QUERY_COLUMNS, TABLES, create_sql

DEFAULT_DB = "dnswatch.db"
BATCH_ROWS = 5000
BATCH_SECONDS = 1.0
BUSY_TIMEOUT_MS = 30_000

# CPython's sqlite3 sends None through the adapter protocol (a failing __conform__ lookup per NULL), which
# doubles the cost of inserting our mostly-NULL rows. A C-level adapter that returns None is 2x faster.
sqlite3.register_adapter(type(None), {}.get)


class StoreError(Exception):
    """A problem with the log file that the user can fix (path, permissions, not a database, locked)."""


def default_db_path() -> str:
    return os.environ.get("DNSWATCH_DB") or DEFAULT_DB


def _friendly(path: str, exc: Exception) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreError(f"{path}: database is locked by another writer; wait for it or use another --db")
    if "not a database" in text or "malformed" in text:
        return StoreError(f"{path}: not a dnswatch/SQLite database ({text}); pass another --db")
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return StoreError(f"{path}: cannot open ({text}); check the path and its permissions")
    return StoreError(f"{path}: {text}")


def _create_private(path: str) -> None:
    """Create an empty file readable by its owner only: DNS logs say a lot about the users of a host."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(f"{path}: folder {directory} does not exist")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"{path}: cannot create ({exc.strerror})")


class Store:
    """Writes one capture's rows. Use as a context manager, or call ``close()``."""

    def __init__(self, path: str, live_columns: bool = True):
        """``live_columns=False``: rows carry no process/pod data (pcap replay), so those NULLs are not bound."""
        self.path = path
        if path != ":memory:" and not os.path.exists(path):
            _create_private(path)
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self.db = sqlite_utils.Database(conn)
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for table in TABLES:
                    for statement in create_sql(table):
                        conn.execute(statement)
        except sqlite3.Error as exc:
            raise _friendly(path, exc)
        self.conn = conn
        self._rows: List[Sequence[Any]] = []
        self._malformed: List[Sequence[Any]] = []
        self._last_flush = time.monotonic()
        self._width = len(QUERY_COLUMNS) if live_columns else LIVE_ONLY_FROM
        columns = QUERY_COLUMNS[:self._width]
        self._insert_query = f"INSERT INTO queries ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        self._insert_malformed = (
            f"INSERT INTO malformed ({', '.join(MALFORMED_COLUMNS)}) VALUES ({', '.join('?' for _ in MALFORMED_COLUMNS)})"
        )
        self.rows_written = 0

    # -- captures ------------------------------------------------------------------------------
    def start_capture(self, kind: str, source: str, options: Dict[str, Any]) -> int:
        try:
            with self.conn:
                cur = self.conn.execute(
                    "INSERT INTO captures (kind, source, host, started, status, frames, dns_messages, queries, responses, "
                    "malformed, dropped, duplicates, options, dnswatch_version) VALUES (?, ?, ?, ?, 'running', 0, 0, 0, 0, "
                    "0, 0, 0, ?, ?)",
                    (kind, source, socket.gethostname(), time.time(), json.dumps(options, sort_keys=True), __version__),
                )
        except sqlite3.Error as exc:
            raise _friendly(self.path, exc)
        return int(cur.lastrowid)

    def update_capture(self, capture_id: int, counters: Dict[str, Any]) -> None:
        """Write counters (and status/ended when given) to the capture's row, in a transaction of its own."""
        cols = ", ".join(f"[{k}] = ?" for k in counters)
        values = [json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in counters.values()]
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(f"UPDATE captures SET {cols} WHERE id = ?", (*values, capture_id))
        except sqlite3.Error as exc:
            raise _friendly(self.path, exc)

    # -- rows ----------------------------------------------------------------------------------
    def add(self, row: Sequence[Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= BATCH_ROWS:
            self.flush()

    def add_malformed(self, row: Sequence[Any]) -> None:
        self._malformed.append(row)

    def maybe_flush(self) -> None:
        """Flush when the batch is old enough (for live capture, where rows trickle in)."""
        if (self._rows or self._malformed) and time.monotonic() - self._last_flush >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        malformed, self._malformed = self._malformed, []
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                if rows:
                    width = self._width
                    self.conn.executemany(self._insert_query, rows if width == len(QUERY_COLUMNS) else
                                          (row[:width] for row in rows))
                if malformed:
                    self.conn.executemany(self._insert_malformed, malformed)
        except sqlite3.Error as exc:
            raise _friendly(self.path, exc)
        self.rows_written += len(rows)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_readonly(path: str) -> sqlite_utils.Database:
    """Open the log for reading only (``query``, ``search``): never takes a write lock, waits on a busy writer."""
    if path != ":memory:" and not os.path.exists(path):
        raise StoreError(f"{path}: no such database; record one with 'dnswatch replay FILE --db {path}' or 'dnswatch watch'")
    try:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise _friendly(path, exc)
    return sqlite_utils.Database(conn)
