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
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import sqlite_utils

try:
    import fcntl
except ImportError:  # not on Windows, which has no fork either: no writer process there
    fcntl = None  # type: ignore[assignment]

from dnswatch import __version__
from dnswatch.layout import LogWriter as _Log, Retention, prepare
from dnswatch.schema import LIVE_ONLY_FROM, QUERY_COLUMNS, Q

DEFAULT_DB = "dnswatch.db"
BATCH_ROWS = 5000
# A batch is also written early when it holds this many bytes of malformed payloads or of large answers
# (a 64 KiB response renders as up to ~350 KB of JSON: 5,000 of them would be gigabytes).
BATCH_BYTES = 4 << 20
LARGE_ANSWERS = 1024  # answers JSON longer than this counts towards BATCH_BYTES (shorter: BATCH_ROWS bounds it)
_I_ANSWERS = Q["answers"]
BATCH_SECONDS = 1.0
BUSY_TIMEOUT_MS = 30_000
PIPE_BYTES = 1 << 20  # a batch of replay rows is ~0.8 MB marshalled
WRITER_QUEUE = 1  # batches the writer process holds besides the one it inserts (and one in the pipe)
CHECKPOINT_EVERY = 4  # batches between checkpoints (~5 MiB of WAL; SQLite's default is 4 MiB)
CACHE_KIB = 64 * 1024  # SQLite page cache of a writer
PRUNE_EVERY = 1.0  # seconds between retention steps of a live capture
PRUNE_SECONDS = 0.05  # longest retention step: the capture loop goes on after it
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

    def __init__(self, path: str, live_columns: bool = True, bulk: bool = False,
                 retention: Optional[Retention] = None, on_warning: Optional[Callable[[str], None]] = None):
        """``live_columns=False``: rows carry no process/pod data (pcap replay), so those NULLs are not bound.
        ``bulk=True``: rows come in fast and nothing reads them back meanwhile (replay): a writer process
        inserts them while this one goes on (see the module's docstring). ``flush()`` still waits until they
        are committed.
        ``retention``: prune the oldest rows as rows are written (watch --retain/--max-size/--retain-rollups).
        ``on_warning``: told once when the disk is full (rows are then counted in ``unstored``, not stored) and once
        when storing resumes."""
        self.path = path
        self.retention = retention
        self.on_warning = on_warning or (lambda text: None)
        self.unstored = 0  # rows and malformed messages lost to a full disk
        self.disk_full = False
        self.pruned = 0
        self._capture_id: Optional[int] = None
        self._next_prune = 0.0
        if path != ":memory:" and not os.path.exists(path):
            _create_private(path)
        self._width = len(QUERY_COLUMNS) if live_columns else LIVE_ONLY_FROM
        self._rows: List[Sequence[Any]] = []
        self._malformed: List[Sequence[Any]] = []
        self._batch_bytes = 0  # malformed payloads and large answers in the batch
        self.early_flushes = 0  # batches written before BATCH_ROWS because of BATCH_BYTES
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
        try:
            self._log.recover()
        except sqlite3.Error as exc:
            raise _friendly(path, exc)

    # -- captures ------------------------------------------------------------------------------
    def start_capture(self, kind: str, source: str, options: Dict[str, Any]) -> int:
        params = (kind, source, socket.gethostname(), time.time(), json.dumps(options, sort_keys=True), __version__)
        if self._writer is not None:
            self._capture_id = int(self._writer.request(("start", params)))
            return self._capture_id
        try:
            self._capture_id = self._log.start_capture(params)
        except sqlite3.Error as exc:
            raise _friendly(self.path, exc)
        return self._capture_id

    def update_capture(self, capture_id: int, counters: Dict[str, Any]) -> None:
        """Write counters (and status/ended when given) to the capture's row, in a transaction of its own."""
        if self.unstored:
            counters = {**counters, "unstored": self.unstored}
        cols = ", ".join(f"[{k}] = ?" for k in counters)
        values = [json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in counters.values()]
        sql = f"UPDATE captures SET {cols} WHERE id = ?"
        if self._writer is not None:
            self._writer.send(("update", sql, (*values, capture_id)))  # in order with the rows sent before
            return
        try:
            self._log.update(sql, (*values, capture_id))
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise _friendly(self.path, exc)
            self._full()  # the counters are written again at the next update

    # -- rows ----------------------------------------------------------------------------------
    @property
    def rows_added(self) -> int:
        """Rows added since the store was opened (written or waiting in the batch)."""
        return self.rows_written + len(self._rows)

    def add(self, row: Sequence[Any]) -> None:
        rows = self._rows
        rows.append(row)
        answers = row[_I_ANSWERS]
        if answers is not None and len(answers) > LARGE_ANSWERS:
            self._batch_bytes += len(answers)
            if self._batch_bytes >= BATCH_BYTES:
                self.early_flushes += 1
                self._write_batch()
                return
        if len(rows) >= BATCH_ROWS:
            self._write_batch()

    def add_malformed(self, row: Sequence[Any], size: int = 0) -> None:
        """Buffer a malformed row; ``size`` (its payload bytes) bounds what the batch holds in bytes."""
        self._malformed.append(row)
        self._batch_bytes += size
        if self._batch_bytes >= BATCH_BYTES:
            self.early_flushes += 1
            self._write_batch()

    def maybe_flush(self) -> None:
        """Flush when the batch is old enough (for live capture, where rows trickle in)."""
        now = time.monotonic()
        if (self._rows or self._malformed) and now - self._last_flush >= BATCH_SECONDS:
            self._write_batch()  # the rollups' sums follow within layout.AGG_SECONDS
        elif self._writer is None and self._log.sums_due():  # rows stopped coming: still write their sums
            try:
                self._log.flush()
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise _friendly(self.path, exc)
                self._full()
        if self.retention is not None and now >= self._next_prune and self._writer is None:
            self._next_prune = now + PRUNE_EVERY
            self.prune()

    def prune(self, seconds: float = PRUNE_SECONDS) -> int:
        """One retention step: at most ``seconds`` of small transactions. Returns the rows deleted."""
        r = self.retention
        now = time.time()
        try:
            deleted, _newest = self._log.prune(
                before=now - r.retain if r.retain else None, max_bytes=r.max_bytes,
                rollups_before=now - r.retain_rollups if r.retain_rollups else None,
                capture_id=self._capture_id, seconds=seconds)
        except sqlite3.Error as exc:
            if _is_full(exc):  # deleting needs a little WAL space too: try again later
                self._full()
                return 0
            raise _friendly(self.path, exc)
        self.pruned += deleted
        return deleted

    def flush(self) -> None:
        """Commit every row added so far and its sums (in bulk mode: and wait until the writer process has)."""
        self._write_batch(force=True)
        if self._writer is not None:
            self._writer.request(("sync",))

    def _write_batch(self, force: bool = False) -> None:
        rows, self._rows = self._rows, []
        malformed, self._malformed = self._malformed, []
        self._batch_bytes = 0
        if self._writer is not None:
            if rows or malformed:
                self._writer.send(("rows", rows, malformed))
        else:
            try:
                self._log.write(rows, malformed, force)
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise _friendly(self.path, exc)
                self.unstored += len(rows) + len(malformed)  # rolled back: the log is as before this batch
                self._full()
            else:
                if self.disk_full and (rows or malformed):
                    self.disk_full = False
                    self.on_warning(f"{self.path}: space again, storing resumed ({self.unstored:,} rows could not "
                                    "be stored meanwhile)")
        self.rows_written += len(rows)
        self._last_flush = time.monotonic()

    def _full(self) -> None:
        if not self.disk_full:
            self.disk_full = True
            self.on_warning(f"{self.path}: disk full; rows are counted and shown but not stored until space returns")

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


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == 13 or "full" in str(exc)  # SQLITE_FULL


def _open(path: str) -> sqlite3.Connection:
    """Open ``path`` for writing; create what is missing of the schema, migrating an older log in place."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: pruning can give pages back
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # the indexes (name, sender) and rollups take inserts all over their pages: keep those pages in memory
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        prepare(conn)
    except sqlite3.Error:
        conn.close()
        raise
    return conn


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
        log.recover()
        reply("ok", 0, None)
        threading.Thread(target=pump, name="dnswatch-writer-pump", daemon=True).start()
        while True:
            blob = inbox_queue.get()
            message = None if blob is None else marshal.loads(blob)
            if message is None or message[0] == "close":  # without "close", the parent is gone: all it sent is in
                log.flush()
                checkpointer.close()
                conn.close()  # the last connection: checkpoints what is left and removes the WAL
                if message is not None:
                    reply("ok", message[1], None)
                return 0
            kind = message[0]
            checkpointer.check()
            if kind == "rows":
                log.write(message[1], message[2])
            elif kind == "update":
                log.update(message[1], message[2])
            elif kind == "start":
                reply("ok", message[2], log.start_capture(message[1]))
            elif kind == "sync":
                log.flush()
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
