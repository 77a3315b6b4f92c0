"""The SQLite log: creation from ``schema``, batched writes, read-only access for queries.

Crash safety: the database is in WAL mode and every batch is one transaction (the batches waiting for a bulk
load's writer process, when it falls behind, are one), so a ``kill -9`` loses at most the batch in flight and
leaves a file that passes ``PRAGMA integrity_check``. Readers open the file
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
import stat
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
WRITER_QUEUE = 3  # batches the writer process holds besides the one it inserts (and one in the pipe)
GROUP_ROWS = 4 * BATCH_ROWS  # rows of waiting batches the writer process inserts in one transaction, at most
CHECKPOINT_EVERY = 4  # batches between checkpoints (~5 MiB of WAL; SQLite's default is 4 MiB)
CACHE_KIB = 8 * 1024  # SQLite page cache of a writer: the hot end of the log and its indexes (issue 8: 150 MB in all)
PRUNE_EVERY = 1.0  # seconds between retention steps of a live capture
PRUNE_SECONDS = 0.05  # longest retention step: the capture loop goes on after it
SETTLE_SECONDS = 1.0  # longest retention at close: the log within its bounds when watch ends, without a slow exit
MAX_WAL_FRAMES = 4096  # pages (16 MiB at 4 KiB); past this the writer lets the checkpointer catch up
WAL_LIMIT = 16 << 20  # journal_size_limit: when the WAL starts over, its file is cut back to this
TRUNCATE_EVERY = 1.0  # seconds between attempts to empty a WAL left longer than WAL_LIMIT (by a reader)
TRUNCATE_BUSY_MS = 50  # how long such an attempt may hold up the writer, waiting for readers to leave

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
    if "malformed" in text:  # a SQLite file whose pages are damaged: what can be read is still there
        return StoreError(f"{path}: the log is damaged ({text}); keep the file, and copy what can be read into a new "
                          f"log with `sqlite3 {path} .recover | sqlite3 recovered.db`, or pass another --db")
    if "not a database" in text:
        return StoreError(f"{path}: not a dnswatch/SQLite database ({text}); pass another --db")
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return StoreError(f"{path}: cannot open ({text}); check the path and its permissions")
    return StoreError(f"{path}: {text}")


# -- the log's files -----------------------------------------------------------------------------------
#
# dnswatch usually runs as root and the log says a lot about the users of a host: its files are the writer's
# own, mode 0600. A name that someone else prepared is refused rather than written through: a symbolic link
# (its owner chooses where root writes, and a dangling one would be created 0644), a file of another user (it
# would receive the log, and SQLite, as root, gives the -wal/-shm it creates beside it to the database's
# owner), a second hard link, anything but a regular file. An existing log, -wal or -shm that others may read
# is tightened to 0600, with a notice. The -wal/-shm are checked again once SQLite has opened them.

SIDECARS = ("-wal", "-shm")


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _check_private(path: str, notices: List[str], create: bool = False) -> None:
    """Refuse ``path`` unless it is a regular file of ours with one name (or absent); tighten its mode to the
    owner's bits. ``create``: make it (empty, 0600) when absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # created meanwhile, by someone: look at what it is
            return _check_private(path, notices, create=False)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create ({exc.strerror})")
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
        finally:
            os.close(fd)
        return
    fix = "remove it or pass another --db"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise StoreError(f"{path}: is a symbolic link (to {target}); the log is never written through a link, "
                         f"whose owner would choose where it goes: pass the real path as --db, or {fix}")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: is not a regular file; {fix}")
    # The checks on an O_PATH descriptor, so that what is checked is what is changed. Not a readable one: closing
    # that would drop the fcntl locks SQLite holds on the file in this process (then a reader, believing itself
    # first, truncates the -shm under the writer's mapping: SIGBUS). Closing an O_PATH one drops nothing.
    o_path = getattr(os, "O_PATH", 0)
    if not o_path or not os.path.isdir("/proc/self/fd"):
        return _check_by_name(path, st, notices, fix)
    try:
        fd = os.open(path, o_path | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open ({exc.strerror}); check the path and its permissions")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path}: is not a regular file (or was replaced meanwhile); {fix}")
        _own_and_tighten(path, st, f"/proc/self/fd/{fd}", notices, fix)
    finally:
        os.close(fd)


def _check_by_name(path: str, st: os.stat_result, notices: List[str], fix: str) -> None:
    """``_check_private`` without O_PATH (not Linux): the same checks on the lstat of the name."""
    _own_and_tighten(path, st, path, notices, fix)


def _own_and_tighten(path: str, st: os.stat_result, target: str, notices: List[str], fix: str) -> None:
    if st.st_uid != os.geteuid():
        raise StoreError(f"{path}: belongs to {_owner(st.st_uid)}, not to {_owner(os.geteuid())}: dnswatch "
                         f"writes its log only into its own files (the owner could read or change it); {fix}")
    if st.st_nlink > 1:
        raise StoreError(f"{path}: has {st.st_nlink} names (hard links): the log would be reachable under "
                         f"another; {fix}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        os.chmod(target, mode & 0o700)
        notices.append(f"{path}: mode was {mode:04o}, which let others read the log; changed to {mode & 0o700:04o}")


def prepare_private(path: str) -> List[str]:
    """Before SQLite opens ``path`` for writing: the log, and the -wal/-shm it may already have, pass
    ``_check_private`` (the log is created if absent). Returns the notices (modes tightened). Raises StoreError."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(f"{path}: folder {directory} does not exist")
    notices: List[str] = []
    _check_private(path, notices, create=True)
    for suffix in SIDECARS:
        _check_private(path + suffix, notices)
    return notices


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
        self.notices: List[str] = []  # what was changed about the files (modes tightened), for the user
        if path != ":memory:":
            self.notices = prepare_private(path)
        self.retention = retention
        self.on_warning = on_warning or (lambda text: None)
        self.unstored = 0  # rows and malformed messages lost to a full disk
        self.disk_full = False
        self.pruned = 0
        self.settled: Optional[bool] = None  # retention at close: True within the bounds, False stopped at its time
        self._capture_id: Optional[int] = None
        self._next_prune = 0.0
        self._width = len(QUERY_COLUMNS) if live_columns else LIVE_ONLY_FROM
        self._rows: List[Sequence[Any]] = []
        self._malformed: List[Sequence[Any]] = []
        self._lookups: List[Sequence[Any]] = []  # lookups rows (LOOKUP_COLUMNS order), written after the rows
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
        # Checkpoints in a thread, every CHECKPOINT_EVERY batches and BATCH_SECONDS after a batch not checkpointed
        # yet (maybe_flush): never inside a commit of the capture loop, and a WAL a reader made long is emptied once
        # it goes (see _Checkpointer). At 40k queries/s (8 batches a second) that is 2 checkpoints a second, not 8:
        # each copies the pages its batches changed (the indexes' mostly the same) and ends with fsync.
        self._checkpointer: Optional[_Checkpointer] = None
        if path != ":memory:":
            try:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
                self._checkpointer = _Checkpointer(path, catch_up=False)
            except sqlite3.Error as exc:
                conn.close()
                raise _friendly(path, exc)
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

    def add_lookup(self, row: Sequence[Any]) -> None:
        self._lookups.append(row)

    def maybe_flush(self) -> None:
        """Flush when the batch is old enough (for live capture, where rows trickle in)."""
        now = time.monotonic()
        if (self._rows or self._malformed or self._lookups) and now - self._last_flush >= BATCH_SECONDS:
            self._write_batch()  # the rollups' sums follow within layout.AGG_SECONDS
        elif self._writer is None and self._log.sums_due():  # rows stopped coming: still write their sums
            try:
                self._log.flush()
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise _friendly(self.path, exc)
                self._full()
        if self._writer is None and self._checkpointer is not None:
            self._checkpointer.tick(BATCH_SECONDS)
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
                capture_id=self._capture_id, seconds=seconds, history=r.history())
        except sqlite3.Error as exc:
            if _is_full(exc):  # deleting needs a little WAL space too: try again later
                self._full()
                return 0
            raise _friendly(self.path, exc)
        self.pruned += deleted
        return deleted

    def settle(self, seconds: float = SETTLE_SECONDS) -> bool:
        """At close, with retention: prune (the sums written first, so every row may go) until nothing more is due,
        then give the file's free pages back above --max-size, for at most ``seconds`` in all. Returns False when
        it stopped at that limit (the next prune goes on)."""
        deadline = time.monotonic() + seconds
        self.flush()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.disk_full:
                return False
            self.prune(seconds=left)
            if self._log.prune_complete:
                break
        r = self.retention
        if r.max_bytes is None:
            return True
        try:
            return self._log.give_back(r.max_bytes, max(0.0, deadline - time.monotonic()))
        except sqlite3.Error as exc:
            if _is_full(exc):
                return False
            raise _friendly(self.path, exc)

    def flush(self, wait: bool = True) -> None:
        """Commit every row added so far and its sums (in bulk mode: and wait until the writer process has, unless
        not ``wait``: then they are on their way, ahead of anything sent later)."""
        self._write_batch(force=True)
        if self._writer is not None and wait:
            self._writer.request(("sync",))

    def _write_batch(self, force: bool = False) -> None:
        rows, self._rows = self._rows, []
        malformed, self._malformed = self._malformed, []
        lookups, self._lookups = self._lookups, []
        self._batch_bytes = 0
        if self._writer is not None:
            if rows or malformed or lookups:
                self._writer.send(("rows", rows, malformed, lookups))
        else:
            try:
                if self._checkpointer is not None:
                    self._checkpointer.check()
                self._log.write(rows, malformed, force, lookups)
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise _friendly(self.path, exc)
                self.unstored += len(rows) + len(malformed)  # rolled back: the log is as before this batch
                self._full()
            else:
                if self._checkpointer is not None and (rows or malformed):
                    self._checkpointer.committed()
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
            if self.retention is not None and self._writer is None and not self.disk_full:
                self.settled = self.settle(SETTLE_SECONDS)
        finally:
            if self._writer is not None:
                self._writer.close()
            else:
                try:
                    if self._checkpointer is not None:
                        self._checkpointer.close()
                        _truncate_wal(self.conn, self.path, always=True)  # for when a reader stays connected
                except sqlite3.Error as exc:
                    raise _friendly(self.path, exc)
                finally:
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
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        if path != ":memory:":
            _truncate_wal(conn, path)  # one that a stalled reader left long after an earlier run
        # the indexes (name, sender) and rollups take inserts all over their pages: keep those pages in memory
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        prepare(conn)
        if path != ":memory:":  # the -wal/-shm SQLite opened: ours, 0600 (a name taken meanwhile is refused)
            for suffix in SIDECARS:
                _check_private(path + suffix, [])
    except BaseException:
        conn.close()
        raise
    return conn


# -- the writer process of a bulk load ------------------------------------------------------------
#
# Messages are marshal'd tuples (rows are plain lists of str/int/float/None/bytes, and marshal writes a string
# shared by many rows once). Parent to child: ("rows", rows, malformed, lookups rows), ("update", sql, params),
# and requests that get an answer, tagged with a sequence number: ("start", params, seq), ("sync", seq),
# ("close", seq).
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
    # Ctrl-C, SIGHUP and a SIGTERM to the process group are the parent's to handle: it then closes us cleanly, or dies
    # and we commit what it sent before we exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal hangs up the whole group
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

    started: List[int] = []  # captures started here: 'failed' if a full disk ends us (see below)
    try:
        conn = _open(path)
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
        checkpointer = _Checkpointer(path)
        log = _Log(conn, width)
        log.recover()
        reply("ok", 0, None)
        threading.Thread(target=pump, name="dnswatch-writer-pump", daemon=True).start()
        ahead: List[Optional[Tuple]] = []  # a message taken from the queue early (see "rows")
        while True:
            if ahead:
                message = ahead.pop()
            else:
                blob = inbox_queue.get()
                message = None if blob is None else marshal.loads(blob)
            if message is None or message[0] == "close":  # without "close", the parent is gone: all it sent is in
                log.flush()
                checkpointer.close()
                _truncate_wal(conn, path, always=True)  # for when a reader stays connected
                conn.close()  # the last connection: checkpoints what is left and removes the WAL
                if message is not None:
                    reply("ok", message[1], None)
                return 0
            kind = message[0]
            checkpointer.check()
            if kind == "rows":
                # Batches waiting (this process is the slower one): one transaction for several, as each commit
                # writes every page it changed and consecutive batches change many of the same (the indexes').
                rows, malformed, lookups = message[1], message[2], message[3]
                while len(rows) < GROUP_ROWS and not ahead:
                    try:
                        blob = inbox_queue.get_nowait()
                    except queue.Empty:
                        break
                    message = None if blob is None else marshal.loads(blob)
                    if message is None or message[0] != "rows":
                        ahead.append(message)
                        break
                    rows.extend(message[1])
                    malformed.extend(message[2])
                    lookups.extend(message[3])
                log.write(rows, malformed, lookups=lookups)
            elif kind == "update":
                log.update(message[1], message[2])
            elif kind == "start":
                started.append(log.start_capture(message[1]))
                reply("ok", message[2], started[-1])
            elif kind == "sync":
                log.flush()
                reply("ok", message[1], None)
            checkpointer.committed()
    except sqlite3.Error as exc:
        if _is_full(exc) and started:  # the parent can no longer say so: a small update fits the WAL space the
            try:  # rolled-back batch took, so its capture does not stay 'running'
                log.update(f"UPDATE captures SET status = 'failed', ended = ? WHERE status = 'running' AND id IN "
                           f"({', '.join('?' for _ in started)})", (time.time(), *started))
            except sqlite3.Error:
                pass
        reply("error", str(_friendly(path, exc)))
        return 1
    except StoreError as exc:
        reply("error", str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug must still reach the user as an error, not a hang
        reply("error", f"{path}: writer process failed: {type(exc).__name__}: {exc}")
        return 1


def _wal_bytes(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def _truncate_wal(conn: sqlite3.Connection, path: str, always: bool = False) -> bool:
    """If the WAL is longer than WAL_LIMIT (or ``always``): checkpoint it whole and empty it (TRUNCATE), unless
    readers still use it after TRUNCATE_BUSY_MS (then it is tried again later). True when it was emptied."""
    if not (always and os.path.exists(path + "-wal")) and _wal_bytes(path) <= WAL_LIMIT:
        return False
    conn.execute(f"PRAGMA busy_timeout = {TRUNCATE_BUSY_MS}")
    try:
        blocked, _frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError as exc:  # the writer's lock is taken: another time
        if "locked" in str(exc) or "busy" in str(exc):
            return False
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return not blocked


class _Checkpointer:
    """Checkpoints the WAL from a thread of the writer process, on a connection of its own.

    A checkpoint ends with fsync, which on a busy disk takes longer than inserting the next batch; SQLite's
    automatic checkpoint runs inside COMMIT and would make the writer wait for it. Durability is unchanged:
    the same checkpoints happen (synchronous=NORMAL), only in parallel with the inserts.
    """

    def __init__(self, path: str, every: int = CHECKPOINT_EVERY, catch_up: bool = True):
        """``every``: commits between checkpoints. ``catch_up``: a write waits for the checkpoint when the WAL is
        long (a bulk load); live capture never waits (its kernel buffers would overflow meanwhile)."""
        self.path = path
        self.every = every
        self.catch_up = catch_up
        self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        self._cond = threading.Condition()
        self._pending = False  # commits since the current or last checkpoint started
        self._busy = False
        self._running = True
        self._wal_frames = 0  # the WAL's length at the last checkpoint
        self._owed = 0  # commits since the last checkpoint was asked for
        self._asked = time.monotonic()
        self._error: Optional[sqlite3.Error] = None
        self._thread = threading.Thread(target=self._run, name="dnswatch-checkpointer", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        self._owed += 1
        if self._owed >= self.every:
            self._ask()

    def tick(self, seconds: float) -> None:
        """Live capture, now and then: a checkpoint for the commits not checkpointed for ``seconds`` (rows slowed
        down or stopped: they still reach the database file soon)."""
        if self._owed and time.monotonic() - self._asked >= seconds:
            self._ask()

    def _ask(self) -> None:
        self._owed = 0
        self._asked = time.monotonic()
        with self._cond:
            self._pending = True
            self._cond.notify_all()

    def check(self) -> None:
        """Before a write: raise the checkpointer's error, if any. If checkpoints fell behind and the WAL is long,
        wait for one that covers every commit: the write then starts the WAL over instead of growing it."""
        with self._cond:
            if self.catch_up and self._wal_frames > MAX_WAL_FRAMES:
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
        # PASSIVE checkpoints after commits never wait for anyone. A reader that keeps an old snapshot (a query
        # stalled on a full pipe) stops the WAL from starting over: it grows meanwhile, and its file stays that
        # long. journal_size_limit cuts it back at the next start-over; while it is longer than that, a TRUNCATE
        # is tried every TRUNCATE_EVERY seconds, commits or not, so it also shrinks when nothing is written.
        truncate_at = 0.0
        while True:
            with self._cond:
                while self._running and not self._pending:
                    if _wal_bytes(self.path) <= WAL_LIMIT:
                        self._cond.wait()
                        continue
                    left = truncate_at - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._running:
                    return
                self._pending, self._busy = False, True
            try:
                if time.monotonic() >= truncate_at and _wal_bytes(self.path) > WAL_LIMIT:
                    truncate_at = time.monotonic() + TRUNCATE_EVERY
                    frames = 0 if _truncate_wal(self.conn, self.path) else self._wal_frames
                else:
                    _blocked, frames, _done = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                    if _is_full(exc):  # a full disk is the writer's to report; checkpoints resume with space
                        self._pending = True
                        self._cond.wait(TRUNCATE_EVERY)
                        continue
                    self._error = exc
                return
            with self._cond:
                self._wal_frames, self._busy = frames, False
                self._cond.notify_all()


# -- reading: query, search ---------------------------------------------------------------------------
#
# The SQL of ``query`` is the user's, and dnswatch often runs as root: the connection must only ever read. The
# file is opened read-only (mode=ro), writes are off (query_only), and SQLite's authorizer refuses what would
# still write or reach outside the logs: ATTACH (VACUUM INTO attaches its copy, and VACUUM itself), pragmas
# that set something, extension loading, and CREATE/DROP/ALTER even of temporary objects.

# pragmas that only read, alone (PRAGMA x) or with an argument naming what to read (PRAGMA x(y))
_READ_PRAGMAS = frozenset((
    "application_id", "auto_vacuum", "collation_list", "compile_options", "data_version", "database_list",
    "encoding", "foreign_key_check", "foreign_key_list", "foreign_keys", "freelist_count", "function_list",
    "index_info", "index_list", "index_xinfo", "integrity_check", "journal_mode", "module_list", "page_count",
    "page_size", "pragma_list", "quick_check", "schema_version", "table_info", "table_list", "table_xinfo",
    "user_version",
))
_PRAGMAS_WITH_ARGUMENT = frozenset((
    "foreign_key_check", "foreign_key_list", "index_info", "index_list", "index_xinfo", "integrity_check",
    "quick_check", "table_info", "table_list", "table_xinfo",
))
_REFUSED_FUNCTIONS = frozenset(("load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"))
_DDL = {getattr(sqlite3, name) for name in dir(sqlite3)
        if name.startswith(("SQLITE_CREATE_", "SQLITE_DROP_")) or name in ("SQLITE_ALTER_TABLE", "SQLITE_REINDEX",
                                                                          "SQLITE_ANALYZE")}


class ReadOnlyConnection(sqlite3.Connection):
    """A connection for ``query``/``search``. ``refused``: what the authorizer last refused (for the message)."""

    refused: Optional[str] = None
    notices: List[str]  # how the files were opened, when it is worth saying (read-only media)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.notices = []


def _authorize(conn: ReadOnlyConnection):
    def check(action: int, arg1: Optional[str], arg2: Optional[str], _db: Optional[str], _trigger: Optional[str]) -> int:
        why = None
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            why = "ATTACH, DETACH and VACUUM (it writes a copy); --attach ALIAS PATH reads another log"
        elif action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name not in _READ_PRAGMAS:
                why = f"PRAGMA {name} (only pragmas that read, like table_info or user_version)"
            elif arg2 is not None and name not in _PRAGMAS_WITH_ARGUMENT:
                why = f"setting PRAGMA {name} (PRAGMA {name} alone reads it)"
        elif action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _REFUSED_FUNCTIONS:
            why = f"{arg2}()"
        elif action in _DDL:
            why = "CREATE, DROP, ALTER, REINDEX and ANALYZE, of temporary objects too (a WITH clause names a result)"
        if why is None:
            return sqlite3.SQLITE_OK
        conn.refused = why
        return sqlite3.SQLITE_DENY

    return check


def _readonly_uri(path: str, how: str = "") -> str:
    if path != ":memory:" and not os.path.exists(path):
        raise StoreError(f"{path}: no such database; record one with 'dnswatch replay FILE --db {path}' or 'dnswatch watch'")
    return f"file:{quote(os.path.abspath(path))}?mode=ro{how}"


def _readonly_media(path: str) -> Optional[Tuple[str, Optional[str]]]:
    """When ``path`` cannot be read the usual way because its -shm cannot be created (read-only media, a folder
    we may not write): (URI parameters, pragma to run before the first read) that read it without one. A log
    with a non-empty -wal is read through it, with the WAL index in memory (exclusive mode, no locks: nothing
    can write there); one without is read as immutable. None: the usual way has no excuse to fail."""
    if path == ":memory:" or os.path.exists(path + "-shm"):
        return None
    if os.access(os.path.dirname(os.path.abspath(path)) or ".", os.W_OK):
        return None
    try:
        wal = os.path.getsize(path + "-wal")
    except OSError:
        wal = 0
    if wal:
        return "&vfs=unix-none", "locking_mode = EXCLUSIVE"
    return "&immutable=1", None


def _open_ro(conn: Optional[ReadOnlyConnection], path: str, alias: Optional[str] = None) -> ReadOnlyConnection:
    """Open ``path`` read-only as the main database (conn None: a new connection) or ATTACH it as ``alias``."""
    schema = "main" if alias is None else "[%s]" % alias.replace("]", "]]")
    attempts: List[Tuple[str, Optional[str]]] = [("", None)]
    while True:
        how, pragma = attempts[-1]
        uri = _readonly_uri(path, how)
        try:
            if alias is None:
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, factory=ReadOnlyConnection)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                if pragma:
                    conn.execute(f"PRAGMA {pragma}")
            else:
                if pragma:  # ATTACH opens the file at once: only the default for new schemas is early enough
                    conn.execute(f"PRAGMA {pragma}")
                try:
                    conn.execute(f"ATTACH DATABASE ? AS {schema}", (uri,))
                    conn.execute(f"SELECT count(*) FROM {schema}.sqlite_master").fetchone()
                finally:
                    if pragma:  # the others back to normal (this one keeps the mode it entered WAL with)
                        conn.execute("PRAGMA locking_mode = NORMAL")
            conn.execute(f"SELECT count(*) FROM {schema}.sqlite_master").fetchone()
            if how:
                conn.notices.append(f"{path}: on read-only media (its -shm cannot be created): read "
                                    + ("with its -wal, without locks" if "unix-none" in how else "as immutable"))
            return conn
        except sqlite3.Error as exc:
            if alias is None and conn is not None:
                conn.close()
                conn = None
            elif alias is not None:
                try:
                    conn.execute(f"DETACH DATABASE {schema}")
                except sqlite3.Error:
                    pass
            fallback = _readonly_media(path) if len(attempts) == 1 else None
            if fallback is None:
                raise _friendly(path, exc)
            attempts.append(fallback)


# `query`'s view of queries with readable UTC times first (documented in `dnswatch schema`)
QUERIES_UTC_VIEW = ("CREATE TEMP VIEW IF NOT EXISTS queries_utc AS SELECT "
                    "strftime('%Y-%m-%dT%H:%M:%fZ', ts, 'unixepoch') AS ts_utc, "
                    "strftime('%Y-%m-%dT%H:%M:%fZ', response_ts, 'unixepoch') AS response_ts_utc, * FROM main.queries")


def open_readonly(path: str, attach: Sequence[Tuple[str, str]] = ()) -> sqlite_utils.Database:
    """Open the log for reading only (``query``, ``search``): never takes a write lock, waits on a busy writer,
    refuses any statement that would write (see above). ``attach``: (alias, path) of more logs, read-only too
    (other nodes' logs: ``alias.queries``). Logs on read-only media are read too (see _readonly_media)."""
    conn = _open_ro(None, path)
    try:
        for alias, other in attach:
            _open_ro(conn, other, alias)
        db = _database(conn)  # sets its pragmas first
        try:  # readable times for SQL users: a temporary view (before query_only, which refuses creating it)
            conn.execute(QUERIES_UTC_VIEW)
        except sqlite3.Error:
            pass
        conn.execute("PRAGMA query_only = ON")
        if hasattr(conn, "setlimit"):  # Python 3.11+: no attaching beyond ours, authorizer or not
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, len(attach))
        conn.set_authorizer(_authorize(conn))
    except BaseException:
        conn.close()
        raise
    return db


def read_only_connection(path: str) -> sqlite3.Connection:
    """The log opened read-only as open_readonly opens it, without sqlite_utils (importing it takes 25-70 ms, a tenth
    of a short replay) and without the guards users' SQL needs: for dnswatch's own queries."""
    return _open_ro(None, path)


def _database(conn: sqlite3.Connection) -> "sqlite_utils.Database":
    import sqlite_utils  # imported when used: it takes 25 ms, a tenth of a short replay

    return sqlite_utils.Database(conn)
