"""The SQLite log: creation from ``schema``, batched writes, read-only access for queries.

Crash safety: the database is in WAL mode and every batch is one transaction, so a ``kill -9`` loses at
most the batch in flight and leaves a file that passes ``PRAGMA integrity_check``. Readers open the file
read-only and wait (busy timeout) instead of failing while a writer commits.

Bulk loads (``Store(..., bulk=True)``, used by replay) write from a child process: binding and inserting
rows costs about as much CPU as decoding them, so SQLite gets the second core. The parent sends batches down
a pipe and goes on decoding; the child owns the only write connection. The child ends when the pipe closes,
so it does not outlive its parent: after a ``kill -9`` of the parent it commits the batches already sent
(the batch the parent was still filling is the one lost), then exits. Its errors come back as
``StoreError`` from the parent's next call.
"""
from __future__ import annotations

import gc
import json
from urllib.parse import quote
import marshal
import os
import queue
import signal
import socket
import sqlite3
import threading
import time
import weakref
from itertools import chain
from multiprocessing.connection import Connection
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import sqlite_utils

try:
    import fcntl
except ImportError:  # not on Windows, which has no fork either: no writer process there
    fcntl = None  # type: ignore[assignment]

from dnswatch import __version__
from dnswatch.schema import LIVE_ONLY_FROM, LOOKUP_COLUMNS, MALFORMED_COLUMNS, QUERY_COLUMNS, TABLES, create_sql

DEFAULT_DB = "dnswatch.db"
BATCH_ROWS = 5000
BATCH_SECONDS = 1.0
BUSY_TIMEOUT_MS = 30_000
ROWS_PER_INSERT = 64  # rows bound to one INSERT statement (see _Log)
PIPE_BYTES = 1 << 20  # a batch of replay rows is ~0.8 MB marshalled
WRITER_QUEUE = 1  # batches the writer process holds besides the one it inserts (and one in the pipe)
CHECKPOINT_EVERY = 4  # batches between checkpoints (~5 MiB of WAL; SQLite's default is 4 MiB)
MAX_WAL_FRAMES = 4096  # pages (16 MiB at 4 KiB); past this the writer lets the checkpointer catch up

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

    def __init__(self, path: str, live_columns: bool = True, bulk: bool = False):
        """``live_columns=False``: rows carry no process/pod data (pcap replay), so those NULLs are not bound.
        ``bulk=True``: rows come in fast and nothing reads them back meanwhile (replay): a writer process
        inserts them while this one goes on (see the module's docstring). ``flush()`` still waits until they
        are committed."""
        self.path = path
        if path != ":memory:" and not os.path.exists(path):
            _create_private(path)
        self._width = len(QUERY_COLUMNS) if live_columns else LIVE_ONLY_FROM
        self._rows: List[Sequence[Any]] = []
        self._malformed: List[Sequence[Any]] = []
        self._lookups: List[Sequence[Any]] = []  # lookups rows (LOOKUP_COLUMNS order), written after the rows
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self._writer: Optional[_Writer] = None
        self.conn: Optional[sqlite3.Connection] = None  # None in bulk mode: the writer process has the connection
        self.db: Optional[sqlite_utils.Database] = None
        if bulk and path != ":memory:" and hasattr(os, "fork"):
            self._writer = _Writer(path, self._width)
            return
        try:
            conn = _open(path)
        except sqlite3.Error as exc:
            raise _friendly(path, exc)
        self.conn = conn
        self.db = _database(conn)
        self._log = _Log(conn, self._width)

    # -- captures ------------------------------------------------------------------------------
    def start_capture(self, kind: str, source: str, options: Dict[str, Any]) -> int:
        params = (kind, source, socket.gethostname(), time.time(), json.dumps(options, sort_keys=True), __version__)
        if self._writer is not None:
            return int(self._writer.request(("start", params)))
        try:
            return self._log.start_capture(params)
        except sqlite3.Error as exc:
            raise _friendly(self.path, exc)

    def update_capture(self, capture_id: int, counters: Dict[str, Any]) -> None:
        """Write counters (and status/ended when given) to the capture's row, in a transaction of its own."""
        cols = ", ".join(f"[{k}] = ?" for k in counters)
        values = [json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in counters.values()]
        sql = f"UPDATE captures SET {cols} WHERE id = ?"
        if self._writer is not None:
            self._writer.send(("update", sql, (*values, capture_id)))  # in order with the rows sent before
            return
        try:
            self._log.update(sql, (*values, capture_id))
        except sqlite3.Error as exc:
            raise _friendly(self.path, exc)

    # -- rows ----------------------------------------------------------------------------------
    @property
    def rows_added(self) -> int:
        """Rows added since the store was opened (written or waiting in the batch)."""
        return self.rows_written + len(self._rows)

    def add(self, row: Sequence[Any]) -> None:
        rows = self._rows
        rows.append(row)
        if len(rows) >= BATCH_ROWS:
            self._write_batch()

    def add_malformed(self, row: Sequence[Any]) -> None:
        self._malformed.append(row)

    def add_lookup(self, row: Sequence[Any]) -> None:
        self._lookups.append(row)

    def maybe_flush(self) -> None:
        """Flush when the batch is old enough (for live capture, where rows trickle in)."""
        if (self._rows or self._malformed or self._lookups) and time.monotonic() - self._last_flush >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Commit every row added so far (in bulk mode: and wait until the writer process has)."""
        self._write_batch()
        if self._writer is not None:
            self._writer.request(("sync",))

    def _write_batch(self) -> None:
        rows, self._rows = self._rows, []
        malformed, self._malformed = self._malformed, []
        lookups, self._lookups = self._lookups, []
        if self._writer is not None:
            if rows or malformed:
                self._writer.send(("rows", rows, malformed))
            if lookups:
                self._writer.send(("lookups", lookups))
        else:
            try:
                self._log.write(rows, malformed)
                self._log.write_lookups(lookups)
            except sqlite3.Error as exc:
                raise _friendly(self.path, exc)
        self.rows_written += len(rows)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.close()
            else:
                self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_START_CAPTURE = (
    "INSERT INTO captures (kind, source, host, started, status, frames, dns_messages, queries, responses, "
    "malformed, dropped, duplicates, options, dnswatch_version) VALUES (?, ?, ?, ?, 'running', 0, 0, 0, 0, "
    "0, 0, 0, ?, ?)"
)


_INSERT_LOOKUP = (f"INSERT OR REPLACE INTO lookups ({', '.join(LOOKUP_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in LOOKUP_COLUMNS)})")


def _open(path: str) -> sqlite3.Connection:
    """Open ``path`` for writing and create what is missing of the schema."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for table in TABLES:
                for statement in create_sql(table):
                    conn.execute(statement)
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class _Log:
    """The writes of a Store on one connection: the Store's own, or the writer process's."""

    def __init__(self, conn: sqlite3.Connection, width: int):
        self.conn = conn
        columns = QUERY_COLUMNS[:width]
        values = f"({', '.join('?' for _ in columns)})"
        self._insert_query = f"INSERT INTO queries ({', '.join(columns)}) VALUES {values}"
        # Several rows per INSERT: each execution of the statement opens a cursor on the table and on every index,
        # which costs more than binding a row. Bounded by SQLite's limit on parameters (999 before 3.32).
        if hasattr(conn, "getlimit"):  # Python 3.11+
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        else:
            limit = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
        self._per_insert = max(1, min(ROWS_PER_INSERT, limit // width))
        self._insert_many = (
            f"INSERT INTO queries ({', '.join(columns)}) VALUES {', '.join([values] * self._per_insert)}"
        )
        self._insert_malformed = (
            f"INSERT INTO malformed ({', '.join(MALFORMED_COLUMNS)}) VALUES ({', '.join('?' for _ in MALFORMED_COLUMNS)})"
        )
        # rows are lists of every QUERY_COLUMNS value; binding the first ``width`` as tuples is the cheapest way
        self._columns = None if width == len(QUERY_COLUMNS) else itemgetter(*range(width))

    def start_capture(self, params: Sequence[Any]) -> int:
        with self.conn:
            cur = self.conn.execute(_START_CAPTURE, params)
        return int(cur.lastrowid)

    def update(self, sql: str, params: Sequence[Any]) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(sql, params)

    def write(self, rows: List[Sequence[Any]], malformed: List[Sequence[Any]]) -> None:
        if not rows and not malformed:
            return
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            if rows:
                columns = self._columns
                values = rows if columns is None else [columns(r) for r in rows]
                k = self._per_insert
                whole = len(values) // k * k
                if whole:
                    self.conn.executemany(self._insert_many, [tuple(chain.from_iterable(values[i:i + k]))
                                                              for i in range(0, whole, k)])
                if whole < len(values):
                    self.conn.executemany(self._insert_query, values[whole:])
            if malformed:
                self.conn.executemany(self._insert_malformed, malformed)

    def write_lookups(self, lookups: List[Sequence[Any]]) -> None:
        if lookups:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(_INSERT_LOOKUP, lookups)


# -- the writer process of a bulk load ------------------------------------------------------------
#
# Messages are marshal'd tuples (rows are plain lists of str/int/float/None/bytes, and marshal writes a string
# shared by many rows once). Parent to child: ("rows", rows, malformed), ("update", sql, params), and requests
# that get an answer, tagged with a sequence number: ("start", params, seq), ("sync", seq), ("close", seq).
# Child to parent: ("ok", seq, value) or ("error", message); after an error the child exits.

class _Writer:
    """The parent's end of the writer process."""

    def __init__(self, path: str, width: int):
        self.path = path
        self._seq = 0
        self._error: Optional[str] = None
        self._closed = False
        rows_r, rows_w = os.pipe()
        replies_r, replies_w = os.pipe()
        if fcntl is not None and hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: room for a batch, so sends rarely wait
            try:
                fcntl.fcntl(rows_w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size for this user: the default size works too
        # fork, not spawn: the child starts in a millisecond with everything imported. It opens its own SQLite
        # connection; this process opens none in bulk mode, so no SQLite state is shared across the fork.
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                os.close(rows_w)  # the parent's copy must be the only one, or its exit would not close the pipe
                os.close(replies_r)
                code = _writer_main(path, width, Connection(rows_r, writable=False),
                                    Connection(replies_w, readable=False))
            finally:
                os._exit(code)  # no atexit handlers, no flushing of the parent's buffered output
        os.close(rows_r)
        os.close(replies_w)
        self.pid: Optional[int] = pid
        self._out = Connection(rows_w, readable=False)
        self._in = Connection(replies_r, writable=False)
        _WRITERS.add(self)
        if self._read_reply() is None:  # the child could not open the database: it said why, and exited
            self.close()
            raise StoreError(self._error)

    def send(self, message: Tuple) -> None:
        if self._error is None and self._in.poll():  # the writer failed since the last call
            self._read_reply()
        if self._error is not None:
            raise StoreError(self._error)
        blob = marshal.dumps(message)
        # A Ctrl-C in the middle of a message would garble the stream; it is delivered right after instead.
        masked = hasattr(signal, "pthread_sigmask")
        if masked:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._out.send_bytes(blob)
        except OSError:  # the writer is gone: read its last words, if any
            while self._error is None:
                self._read_reply()
            raise StoreError(self._error)
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def request(self, message: Tuple) -> Any:
        """Send ``message`` tagged with a new sequence number; wait for its answer."""
        self._seq += 1
        self.send((*message, self._seq))
        while True:
            reply = self._read_reply()
            if reply is None:
                raise StoreError(self._error)
            if reply[1] == self._seq:  # older answers belong to requests abandoned by a Ctrl-C
                return reply[2]

    def _read_reply(self) -> Optional[Tuple]:
        """The writer's next answer; None when it failed or is gone (``_error`` says why)."""
        try:
            reply = marshal.loads(self._in.recv_bytes())
        except (EOFError, OSError):
            if self._error is None:
                self._error = (f"{self.path}: the writer process ended unexpectedly ({_exit_text(self._reap())}); "
                               "the rows it had committed are kept")
            return None
        if reply[0] == "error":
            self._error = reply[1]
            return None
        return reply

    def _reap(self) -> Optional[int]:
        """Wait for the child to exit; its wait status (None if unknown)."""
        if self.pid is None:
            return None
        pid, self.pid = self.pid, None
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:  # reaped already (SIGCHLD ignored)
            return None

    def close(self) -> None:
        """Finish: the child commits what is left, checkpoints and exits. Raises StoreError if it failed."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._error is None:
                self.request(("close",))
        finally:
            self._out.close()  # EOF: the child exits even if it was not told to
            self._in.close()
            _WRITERS.discard(self)
            self._reap()


# The live writers' pipes, closed in any process forked later (another writer, or anything else): a writer
# sees the end of its pipe only when no process holds the other end any more.
_WRITERS: "weakref.WeakSet[_Writer]" = weakref.WeakSet()


def _close_inherited_pipes() -> None:
    for writer in list(_WRITERS):
        writer._out.close()
        writer._in.close()
    _WRITERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_pipes)


def _exit_text(status: Optional[int]) -> str:
    if status is None:
        return "status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _writer_main(path: str, width: int, inbox: Connection, outbox: Connection) -> int:
    """The writer process: apply the parent's messages in order until "close" or the end of the pipe."""
    # Ctrl-C and a SIGTERM to the process group are the parent's to handle: it then closes us cleanly, or dies
    # and we commit what it sent before we exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.disable()  # never collect (and so never finalise) objects inherited from the parent; we make no cycles

    def reply(*message: Any) -> None:
        outbox.send_bytes(marshal.dumps(message))

    # A thread drains the pipe while the main thread is inside SQLite, so the parent never waits for a batch
    # to be inserted before it can hand over the next one (the queue bounds how far ahead it gets).
    inbox_queue: "queue.Queue[Optional[bytes]]" = queue.Queue(WRITER_QUEUE)

    def pump() -> None:
        try:
            while True:
                inbox_queue.put(inbox.recv_bytes())
        except (EOFError, OSError):
            inbox_queue.put(None)

    try:
        conn = _open(path)
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
        checkpointer = _Checkpointer(path)
        log = _Log(conn, width)
        reply("ok", 0, None)
        threading.Thread(target=pump, name="dnswatch-writer-pump", daemon=True).start()
        while True:
            blob = inbox_queue.get()
            message = None if blob is None else marshal.loads(blob)
            if message is None or message[0] == "close":  # without "close", the parent is gone: all it sent is in
                checkpointer.close()
                conn.close()  # the last connection: checkpoints what is left and removes the WAL
                if message is not None:
                    reply("ok", message[1], None)
                return 0
            kind = message[0]
            checkpointer.check()
            if kind == "rows":
                log.write(message[1], message[2])
            elif kind == "lookups":
                log.write_lookups(message[1])
            elif kind == "update":
                log.update(message[1], message[2])
            elif kind == "start":
                reply("ok", message[2], log.start_capture(message[1]))
            elif kind == "sync":
                reply("ok", message[1], None)
            checkpointer.committed()
    except sqlite3.Error as exc:
        reply("error", str(_friendly(path, exc)))
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug must still reach the user as an error, not a hang
        reply("error", f"{path}: writer process failed: {type(exc).__name__}: {exc}")
        return 1


class _Checkpointer:
    """Checkpoints the WAL from a thread of the writer process, on a connection of its own.

    A checkpoint ends with fsync, which on a busy disk takes longer than inserting the next batch; SQLite's
    automatic checkpoint runs inside COMMIT and would make the writer wait for it. Durability is unchanged:
    the same checkpoints happen (synchronous=NORMAL), only in parallel with the inserts.
    """

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._cond = threading.Condition()
        self._pending = False  # commits since the current or last checkpoint started
        self._busy = False
        self._running = True
        self._wal_frames = 0  # the WAL's length at the last checkpoint
        self._commits = 0
        self._error: Optional[sqlite3.Error] = None
        self._thread = threading.Thread(target=self._run, name="dnswatch-checkpointer", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            with self._cond:
                self._pending = True
                self._cond.notify_all()

    def check(self) -> None:
        """Before a write: raise the checkpointer's error, if any. If checkpoints fell behind and the WAL is long,
        wait for one that covers every commit: the write then starts the WAL over instead of growing it."""
        with self._cond:
            if self._wal_frames > MAX_WAL_FRAMES:
                while self._error is None and (self._pending or self._busy):
                    self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join()
        self.conn.close()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._pending:
                    self._cond.wait()
                if not self._running:
                    return
                self._pending, self._busy = False, True
            try:
                _blocked, frames, _done = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                with self._cond:
                    self._error, self._busy = exc, False
                    self._cond.notify_all()
                return
            with self._cond:
                self._wal_frames, self._busy = frames, False
                self._cond.notify_all()


def _readonly_uri(path: str) -> str:
    if path != ":memory:" and not os.path.exists(path):
        raise StoreError(f"{path}: no such database; record one with 'dnswatch replay FILE --db {path}' or 'dnswatch watch'")
    return f"file:{quote(os.path.abspath(path))}?mode=ro"


def open_readonly(path: str, attach: Sequence[Tuple[str, str]] = ()) -> sqlite_utils.Database:
    """Open the log for reading only (``query``, ``search``): never takes a write lock, waits on a busy writer.
    ``attach``: (alias, path) of more logs, read-only too (other nodes' logs: ``alias.queries``)."""
    try:
        conn = sqlite3.connect(_readonly_uri(path), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise _friendly(path, exc)
    for alias, other in attach:
        try:
            conn.execute("ATTACH DATABASE ? AS [%s]" % alias.replace("]", "]]"), (_readonly_uri(other),))
            conn.execute("SELECT count(*) FROM [%s].sqlite_master" % alias.replace("]", "]]")).fetchone()
        except sqlite3.Error as exc:
            raise _friendly(other, exc)
    return _database(conn)


def _database(conn: sqlite3.Connection) -> "sqlite_utils.Database":
    import sqlite_utils  # imported when used: it takes 25 ms, a tenth of a short replay

    return sqlite_utils.Database(conn)
