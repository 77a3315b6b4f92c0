"""How rows are laid out in the log file: the write path behind ``store`` (in the writer process for replay).

A row of the pipeline (a list in QUERY_COLUMNS order) becomes one ``query_log`` row whose repeated texts are ids
into ``strings``, ``names`` and ``answer_sets`` (schema.Column.store says which); the ``queries`` view turns
them back. The same transaction adds the row to the hourly rollups, the per-key hourly counts and passive DNS,
so those never need a rescan of the log. Also here: schema creation and migration of older logs, and pruning
(retention) in small transactions.
"""
from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections import Counter
from hashlib import blake2b
from itertools import chain, repeat
from functools import reduce
from operator import add, is_not, itemgetter
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from dnswatch.schema import (
    ANSWER_ITEMS, KEY_HOURS, KEY_KINDS, LOG_COLUMNS, LOG_TABLE, LOOKUP_COLUMNS, LOOKUP_TABLE, MALFORMED_COLUMNS,
    PASSIVE_DNS, Q, QUERIES, QUERY_COLUMNS, ROLLUPS, SCHEMA_VERSION, COMBOS, STORED_AS, TABLES, create_sql, physical,
    reverse_name, stored_type, view_sql,
)

ROWS_PER_INSERT = 512  # rows bound to one INSERT statement (at most)
CACHE_ENTRIES = 30_000  # texts -> ids remembered per lookup table (cleared when full): ~5 MB at most
TEMPLATE_BYTES = 8 << 20  # answers text the templates (CACHE_ENTRIES // 4 at most) hold: cleared beyond it
AGG_ROWS = 20_000  # rows whose sums are kept in memory at most before they are written (~4 MB)
AGG_SECONDS = 10.0  # ... and seconds
PRUNE_CHUNK = 2000  # rows deleted per transaction: a few ms, so a live capture never waits long
AGG_CHUNK = 5000  # rollups, key_hours (per kind) or passive DNS entries deleted per transaction
HISTORY_FACTOR = 400 / 7  # --max-size: rollups reach back this many times as far as raw rows (400d for 7d)
RAW_FLOOR_BYTES = 500  # --max-size: the raw rows keep one per this many bytes of the bound (see _size_step)
GC_SCAN = 64  # rows of a name read to tell whether an answer set is still used (LogWriter._collect)

START_CAPTURE = (
    "INSERT INTO captures (kind, source, host, started, status, frames, dns_messages, queries, responses, "
    "malformed, dropped, duplicates, options, dnswatch_version) VALUES (?, ?, ?, ?, 'running', 0, 0, 0, 0, "
    "0, 0, 0, ?, ?)"
)
_I_TS, _I_STATUS, _I_LAT, _I_ANSWERS = Q["ts"], Q["status"], Q["latency_ms"], Q["answers"]
_I_QNAME, _I_SRC = Q["qname"], Q["src"]
_I_PID, _I_COMM, _I_NS, _I_POD = Q["pid"], Q["comm"], Q["pod_namespace"], Q["pod"]


class Retention(NamedTuple):
    """What to keep: raw rows for ``retain`` seconds and within ``max_bytes`` of file, rollups for
    ``retain_rollups`` seconds (None: no bound)."""
    retain: Optional[float] = None
    max_bytes: Optional[int] = None
    retain_rollups: Optional[float] = None

    def history(self) -> float:
        """How many times as far back as the raw rows the rollups reach when the size bound decides (the ratio of
        the two retentions; 400d to 7d by default)."""
        return self.retain_rollups / (self.retain or 7 * 86400) if self.retain_rollups else HISTORY_FACTOR


def _hash(text: str) -> int:
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


def _items(answers: str) -> List[Tuple[str, str, str]]:
    try:
        return [(str(a.get("name")), str(a.get("type")), str(a.get("data"))) for a in json.loads(answers)]
    except (ValueError, AttributeError, TypeError):
        return []


class _Template(NamedTuple):
    """What the rows with the same repeated values share, for the sums (LogWriter._encode_hour)."""
    rollup: tuple  # (names id, shape id, sender id or None): the rollup key but for the hour
    unanswered: bool
    src: Optional[int]  # strings id of the client
    set_id: Optional[int]  # answer_sets id
    items: List[Tuple[str, str, str]]  # the answers' (name, type, data)
    resolver: tuple  # passive_dns.first_* of a row


class _Layout(NamedTuple):
    """How the query_log columns of a batch are chosen and inserted (LogWriter._layout)."""
    plain: Tuple[int, ...]  # positions in a row of the plain values not left out
    template: Tuple[int, ...]  # indexes of a template's ids not left out
    inserts: List[Tuple[int, str]]  # (rows per statement, INSERT)


class _Encoded(NamedTuple):
    """query_log values of a batch column by column (in the order the INSERTs name them), with those INSERTs."""
    columns: List[Sequence[Any]]
    inserts: List[Tuple[int, str]]


def _getter(positions: Sequence[int]) -> Callable[[Sequence[Any]], tuple]:
    """The values at ``positions`` as a tuple (also for one or none, unlike itemgetter)."""
    if len(positions) > 1:
        return itemgetter(*positions)
    if positions:
        p = positions[0]
        return lambda r: (r[p],)
    return lambda r: ()


def _ms(column: Sequence[Any]) -> List[Any]:
    """Milliseconds as integer microseconds where that gives back the same float (schema: store="ms")."""
    return [x if x is None or (d := round(x * 1000)) / 1000 != x else d for x in column]


def _after(column: Sequence[Any], ts: Sequence[float]) -> List[Any]:
    """Times as integer microseconds after ``ts`` where that gives back the same float (store="after_ts")."""
    return [x if x is None or t + (d := round((x - t) * 1e6)) / 1e6 != x else d for x, t in zip(column, ts)]


def _merged(groups: Dict[int, Any], rows_of: List[Any]) -> List[Tuple[Any, List[int]]]:
    """(group, its rows in row order) for each distinct group of ``groups`` (template -> group: several templates
    may share one), from ``rows_of`` (template -> its rows, in row order)."""
    found: Dict[int, list] = {}
    for t, g in groups.items():
        have = found.get(id(g))
        if have is None:
            found[id(g)] = [g, rows_of[t], False]
        else:
            have[1], have[2] = have[1] + rows_of[t], True
    return [(g, sorted(at) if mixed else at) for g, at, mixed in found.values()]


class _Ids(dict):
    """Ids by value (in a lookup table, or of templates): a dict that makes a missing one itself with ``find``, so
    that rows map to ids at C speed with ``map(ids.__getitem__, ...)``. ``none`` (no value: None, or a combination
    of Nones) maps to None. At most ``limit`` entries: cleared when full."""

    def __init__(self, find, limit: int = sys.maxsize, none: Any = None):
        super().__init__()
        self.find, self.limit, self.none = find, limit, none
        self[none] = None

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.limit:
            self.reset()
        value = self[key] = self.find(key)
        return value

    def reset(self) -> None:
        self.clear()
        self[self.none] = None


class LogWriter:
    """The writes of a Store on one connection (the Store's own, or the writer process's).

    Rows are inserted in the caller's transaction at once; their contributions to the rollups, key_hours and
    passive DNS are summed in memory and written every AGG_ROWS rows or AGG_SECONDS (and by ``flush``), in the
    transaction of a batch: many rows of one name in one hour become one upsert instead of hundreds. meta's
    'aggregated_id' says which rows are in; a writer killed before writing its sums leaves rows above it, which
    the next writer adds when it opens the log (``recover``)."""

    def __init__(self, conn: sqlite3.Connection, width: int):
        self.conn = conn
        self.width = width
        self.live = width > _I_POD
        self._row_pos = [Q[c.name] for c in LOG_COLUMNS if c.name != "id" and c.name in Q and Q[c.name] < width]
        # combination tables (shapes, senders) whose columns this writer's rows carry: (kind, positions, ids)
        self._combos: List[Tuple[str, List[int], _Ids]] = []
        for kind, table in COMBOS.items():
            positions = [Q[c.name] for c in table.columns[2:]]
            if positions[0] < width:
                names = [c.name for c in table.columns[2:]]
                find = self._combo_finder(f"SELECT id, {', '.join(names)} FROM {table.name} WHERE hash = ?",
                                          f"INSERT INTO {table.name} (hash, {', '.join(names)}) VALUES "
                                          f"(?, {', '.join('?' for _ in names)})")
                self._combos.append((kind, positions, _Ids(find, CACHE_ENTRIES // 4, (None,) * len(positions))))
        # A query_log tuple: id, the columns converted row by row (ms, after_ts), the other per-row values, then the
        # ids of the repeated values (strings, names, answer sets, combinations): those come from a row's template
        kinds = {p: kind for kind in ("str", "name", "answers", "ms", "after_ts") for p in STORED_AS[kind]}
        self._ms = [p for p in self._row_pos if kinds.get(p) == "ms"]
        self._after = [p for p in self._row_pos if kinds.get(p) == "after_ts"]
        plain = [p for p in self._row_pos if p not in kinds]
        self._ids_of = [(p, kinds[p]) for p in self._row_pos if kinds.get(p) in ("str", "name", "answers")]
        keyed = [p for p, _kind in self._ids_of] + [p for c in self._combos for p in c[1]]
        self._keyed_pos = keyed  # a template's key: every value whose id the template holds (their positions)
        self._keyed = {p: i for i, p in enumerate(keyed)}
        self._plain_pos = plain
        self._first_cols = ["id"] + [QUERY_COLUMNS[p] for p in self._ms + self._after]
        self._template_cols = [QUERY_COLUMNS[p] for p, _k in self._ids_of] + [c[0] for c in self._combos]
        if hasattr(conn, "getlimit"):  # Python 3.11+
            self._max_params = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        else:
            self._max_params = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
        self._layouts: Dict[tuple, _Layout] = {}
        self._lookup_inserts: Dict[tuple, List[Tuple[int, str]]] = {}  # by the lookups columns not left out
        self._insert_malformed = (
            f"INSERT INTO malformed ({', '.join(MALFORMED_COLUMNS)}) VALUES ({', '.join('?' for _ in MALFORMED_COLUMNS)})"
        )
        self._strings = _Ids(self._find_string, CACHE_ENTRIES)
        self._names = _Ids(self._find_name, CACHE_ENTRIES)
        self._sets = _Ids(self._find_set, CACHE_ENTRIES // 4)
        # _template's steps, worked out once (under a flood of new names every row makes a template): the index in
        # a template key of each value whose id it holds, with the cache that gives that id; the values it keeps
        at = self._keyed
        caches = {"str": self._strings, "name": self._names, "answers": self._sets}
        self._id_steps = [(at[p], caches[kind]) for p, kind in self._ids_of]
        self._combo_steps = [(_getter([at[p] for p in positions]), found) for _kind, positions, found in self._combos]
        id_index = {p: i for i, (p, _k) in enumerate(self._ids_of)}
        id_index.update((c[0], len(self._ids_of) + i) for i, c in enumerate(self._combos))
        none = len(self._ids_of) + len(self._combos)  # an index past the ids: None appended there
        self._rollup_ids = _getter([id_index.get(_I_QNAME, none), id_index.get("shape", none),
                                    id_index.get("sender", none) if self.live else none])
        self._src_answers_ids = _getter([id_index.get(_I_SRC, none), id_index.get(_I_ANSWERS, none)])
        past = len(keyed)  # an index past the key's values
        self._template_values = _getter([at.get(p, past) for p in (_I_ANSWERS, _I_STATUS, _I_QNAME, _I_SRC, _I_PID,
                                                                    _I_COMM, _I_NS, _I_POD)])
        self._templates = _Ids(self._template)  # template key -> its number: index in _template_info (never None)
        self._template_info: List[_Template] = []
        self._template_ids: List[tuple] = []  # template t's ids, as its rows' query_log tuples end
        self._template_bytes = 0  # of the answers in their keys
        self._pairs: set = set()  # (answer set, name) pairs already in answer_items
        self._shape_dims: Dict[int, tuple] = {}
        self._sender_dims: Dict[int, tuple] = {}
        self._lost_sums = False
        self._gc_epoch: Optional[int] = None  # meta 'gc_epoch' when the ids were last known good (see _collect)
        self.collected: Counter = Counter()  # what prune deleted besides rows, by table
        self.write_seconds = 0.0  # spent in write(), in all
        self._written_at_prune = 0.0  # write_seconds at the last prune
        self.prune_complete = False  # the last prune found nothing more to delete (it did not stop at its time)
        self._reset_sums()
        rk = ROLLUPS.key
        self._upsert_rollup = (
            f"INSERT INTO {ROLLUPS.name} ({rk}, count, unanswered, answered, latency_sum, latency_max) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT ({rk}) DO UPDATE SET "
            "count = count + excluded.count, unanswered = unanswered + excluded.unanswered, "
            "answered = answered + excluded.answered, latency_sum = latency_sum + excluded.latency_sum, "
            "latency_max = max(latency_max, excluded.latency_max)"
        )
        self._upsert_key = (
            f"INSERT INTO {KEY_HOURS.name} (kind, key, hour, n) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT ({KEY_HOURS.key}) DO UPDATE SET n = n + excluded.n"
        )
        first = ("first_qname", "first_src", "first_pid", "first_comm", "first_pod_namespace", "first_pod")
        self._upsert_pdns = (
            f"INSERT INTO {PASSIVE_DNS.name} (name, type, data, first_seen, last_seen, count, {', '.join(first)}) "
            f"VALUES ({', '.join('?' * 12)}) ON CONFLICT ({PASSIVE_DNS.key}) DO UPDATE SET "
            "count = count + excluded.count, last_seen = max(last_seen, excluded.last_seen), "
            + ", ".join(f"{c} = CASE WHEN excluded.first_seen < first_seen THEN excluded.{c} ELSE {c} END"
                        for c in first)
            + ", first_seen = min(first_seen, excluded.first_seen)"
        )

    def _reset_sums(self) -> None:
        self._roll: Dict[tuple, list] = {}  # (hour, name, shape, sender) -> [count, unanswered, answered, sum, max]
        self._clients: Dict[tuple, int] = {}  # (hour, src) -> count
        self._pdns: Dict[int, list] = {}  # answer set id -> [count, first ts, last ts, first resolver, items]
        self._new_pairs: List[tuple] = []
        self._pending = 0  # rows whose sums are not written yet
        self._pending_min_ts: Optional[float] = None
        self._sums_since = time.monotonic()

    # -- captures ------------------------------------------------------------------------------
    def start_capture(self, params: Sequence[Any]) -> int:
        with self.conn:
            cur = self.conn.execute(START_CAPTURE, params)
        return int(cur.lastrowid)

    def update(self, sql: str, params: Sequence[Any]) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(sql, params)

    # -- lookups -------------------------------------------------------------------------------
    def _find_string(self, text: str) -> int:
        found = self.conn.execute("SELECT id FROM strings WHERE s = ?", (text,)).fetchone()
        return found[0] if found else self.conn.execute("INSERT INTO strings (s) VALUES (?)", (text,)).lastrowid

    def _combo_finder(self, select: str, insert: str):
        """The id of a combination of values (shapes, senders), found by its hash, added if new."""
        conn = self.conn

        def find(values: tuple) -> int:
            h = _hash(repr(values))
            for found in conn.execute(select, (h,)):
                if tuple(found[1:]) == values:
                    return found[0]
            return conn.execute(insert, (h, *values)).lastrowid
        return find

    def _find_name(self, name: str) -> int:
        found = self.conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
        return found[0] if found else self.conn.execute(
            "INSERT INTO names (name, rname) VALUES (?, ?)", (name, reverse_name(name))).lastrowid

    def _find_set(self, answers: str) -> int:
        h = _hash(answers)
        for row_id, text in self.conn.execute("SELECT id, answers FROM answer_sets WHERE hash = ?", (h,)):
            if text == answers:
                return row_id
        return self.conn.execute("INSERT INTO answer_sets (hash, answers) VALUES (?, ?)", (h, answers)).lastrowid

    def forget(self) -> None:
        """After a rolled-back transaction: ids handed out in it no longer exist, nor do the sums of its rows."""
        self._forget_ids()
        self._reset_sums()

    def _forget_ids(self) -> None:
        """Drop every id remembered: some may have been deleted (a rollback, or another process's prune)."""
        self._strings.reset()
        self._names.reset()
        for _kind, _positions, ids in self._combos:
            ids.reset()
        self._sets.reset()
        self._forget_templates()
        self._pairs.clear()
        self._shape_dims.clear()
        self._sender_dims.clear()

    def _meta(self, key: str, default: int = 0) -> int:
        found = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if found is None or found[0] is None else found[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                          "value = excluded.value", (key, value))

    # -- rows ----------------------------------------------------------------------------------
    def write(self, rows: List[Sequence[Any]], malformed: List[Sequence[Any]], force: bool = False,
              lookups: Sequence[Sequence[Any]] = ()) -> None:
        """Insert ``rows`` (and malformed messages, and ``lookups`` rows in LOOKUP_COLUMNS order: dnswatch.lookups
        writes them as they end) in one transaction; write the sums when due or ``force``."""
        conn = self.conn
        if self._lost_sums:  # a failed transaction took the pending sums with it: rebuild them from the log
            self.recover()
            self._lost_sums = False
        started = time.monotonic()
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                epoch = self._meta("gc_epoch")
                if epoch != self._gc_epoch:  # another process's prune deleted entries: ids remembered may be gone
                    self._forget_ids()
                    self._gc_epoch = epoch
                if rows:
                    first = self._meta("next_id", 1)
                    self._insert(self._encode(rows, first))
                    self._set_meta("next_id", first + len(rows))
                    if self._pending_min_ts is not None:
                        self._set_meta("pending_min_ts", self._pending_min_ts)
                if malformed:
                    conn.executemany(self._insert_malformed, malformed)
                if lookups:
                    self._insert_lookups(lookups)
                if self._pending and (force or self.sums_due()):
                    self._write_sums()
        except BaseException:
            self.forget()
            self._lost_sums = True
            raise
        finally:
            self.write_seconds += time.monotonic() - started  # what prune may take to catch up (see there)

    def sums_due(self) -> bool:
        return bool(self._pending) and (self._pending >= AGG_ROWS
                                        or time.monotonic() - self._sums_since >= AGG_SECONDS)

    def flush(self) -> None:
        """Write the sums of every row inserted so far."""
        if self._pending or self._lost_sums:
            self.write([], [], force=True)

    def _statements(self, table: str, cols: Sequence[str], verb: str = "INSERT") -> List[Tuple[int, str]]:
        """(rows per statement, statement) inserting rows of ``cols``: many rows per statement, as each execution
        opens a cursor on the table and every index, which costs more than binding a row. Bounded by SQLite's limit
        on parameters (999 before 3.32). The rest of a batch goes in statements of 1/8 as many rows, and so on down
        to one."""
        values = f"({', '.join('?' for _ in cols)})"
        k = max(1, min(ROWS_PER_INSERT, self._max_params // len(cols)))
        inserts = []
        while True:
            inserts.append((k, f"{verb} INTO {table} ({', '.join(cols)}) VALUES {', '.join([values] * k)}"))
            if k == 1:
                return inserts
            k = max(1, k // 8)

    def _layout(self, plain: tuple, template: tuple) -> "_Layout":
        """The INSERTs of query_log columns with the plain columns ``plain`` and the template columns ``template``
        (indexes): columns NULL on every row of a batch are left out (binding a NULL costs more than an int)."""
        found = self._layouts.get((plain, template))
        if found is None:
            cols = (self._first_cols + [QUERY_COLUMNS[self._plain_pos[j]] for j in plain]
                    + [self._template_cols[j] for j in template])
            found = self._layouts[(plain, template)] = _Layout(
                tuple(self._plain_pos[j] for j in plain), template, self._statements(LOG_TABLE, cols))
        return found

    def _insert(self, out: "_Encoded") -> None:
        self._insert_columns(out.columns, out.inserts)

    def _insert_columns(self, columns: Sequence[Sequence[Any]], inserts: List[Tuple[int, str]]) -> None:
        """Insert the rows of ``columns`` (a sequence of values per column, in the order ``inserts`` name them).
        A statement's parameters are filled one column at a time (slice assignment): no tuple per row."""
        conn = self.conn
        width = len(columns)
        n = len(columns[0]) if columns else 0
        done = 0
        for k, sql in inserts:
            end = done + (n - done) // k * k
            if end == done:
                continue
            if k == 1:
                conn.executemany(sql, zip(*[c[done:end] for c in columns]))
            else:
                params = []
                for i in range(done, end, k):
                    flat = [None] * (k * width)
                    for j, c in enumerate(columns):
                        flat[j::width] = c[i:i + k]
                    params.append(flat)
                conn.executemany(sql, params)
            done = end

    def _insert_lookups(self, lookups: Sequence[Sequence[Any]]) -> None:
        """lookups rows (LOOKUP_COLUMNS order), many per statement as query_log's, columns NULL on all left out."""
        cols = list(zip(*lookups))
        kept = tuple(j for j, c in enumerate(cols) if any(map(is_not, c, repeat(None)))) or (0,)
        inserts = self._lookup_inserts.get(kept)
        if inserts is None:  # (a lookup_id written again replaces its row, as it did one row per statement)
            inserts = self._lookup_inserts[kept] = self._statements(
                LOOKUP_TABLE, [LOOKUP_COLUMNS[j] for j in kept], "INSERT OR REPLACE")
        self._insert_columns([cols[j] for j in kept], inserts)

    def _encode(self, rows: Sequence[Sequence[Any]], first_id: Optional[int], ids: Optional[Sequence[int]] = None
                ) -> "_Encoded":
        """Rows as query_log columns (id first), ids ``first_id``... (or ``ids``); their sums added to the
        pending ones.

        Most values of a row repeat those of many others (the question, the client, the answers...): each
        combination is a template that holds their ids, found once per row with one key at C speed, and the sums
        are added per template, except for what differs on every row (latencies, first and last times). The batch
        is turned into columns first, so that each step reads a column instead of every row."""
        n = len(rows)
        if not n:
            return _Encoded([], [])
        cols = list(zip(*rows))
        ts_col = cols[_I_TS]
        try:
            lo, hi = min(ts_col), max(ts_col)
        except TypeError:
            lo = hi = None
        if lo is None or hi is None:  # the pipeline always sets it; a row without a time goes first in a log by time
            ts_col = cols[_I_TS] = tuple(0.0 if t is None else t for t in ts_col)
            lo, hi = min(ts_col), max(ts_col)
        if ids is None:
            ids = range(first_id, first_id + n)
        if len(self._template_info) + n > CACHE_ENTRIES // 4 or self._template_bytes > TEMPLATE_BYTES:
            self._forget_templates()  # (never while the rows of a batch refer to them)
        t_col = list(map(self._templates.__getitem__, zip(*[cols[p] for p in self._keyed_pos])))
        used = dict.fromkeys(t_col)  # in the order of their first rows
        tids = self._template_ids
        layout = self._layout(
            tuple(j for j, p in enumerate(self._plain_pos) if any(map(is_not, cols[p], repeat(None)))),
            tuple(j for j in range(len(self._template_cols))
                  if any(map(is_not, map(itemgetter(j), map(tids.__getitem__, used)), repeat(None)))))
        hour = int(lo // 3600) * 3600
        if int(hi // 3600) * 3600 == hour:
            columns = self._encode_hour(cols, ids, t_col, hour, layout)
        else:  # the sums are hourly: the rows of each hour apart (passive DNS in the rows' order, as ties go)
            for t in used:
                tp = self._template_info[t]
                if tp.items and tp.set_id not in self._pdns:
                    self._pdns_entry(tp)
            by_hour: Dict[int, List[int]] = {}
            for i, t in enumerate(ts_col):
                by_hour.setdefault(int(t // 3600) * 3600, []).append(i)
            columns = []
            for h, idx in by_hour.items():
                pick = _getter(idx)
                part = self._encode_hour([pick(c) for c in cols], pick(ids), pick(t_col), h, layout)
                columns = [[*a, *b] for a, b in zip(columns, part)] if columns else part
        min_ts = self._pending_min_ts
        self._pending_min_ts = lo if min_ts is None or lo < min_ts else min_ts
        self._pending += n
        return _Encoded(columns, layout.inserts)

    def _encode_hour(self, cols: List[Sequence[Any]], ids: Sequence[int], t_col: Sequence[int], hour: int,
                     layout: "_Layout") -> List[Sequence[Any]]:
        """_encode for the rows of one hour (``cols``: their columns), of templates ``t_col``."""
        info = self._template_info
        ts_col = cols[_I_TS]
        conv: List[Sequence[Any]] = []
        last: Optional[tuple] = None
        for p in self._ms:
            if last is None or cols[p] != last[0]:  # first_attempt_latency_ms is latency_ms on most rows
                last = (cols[p], _ms(cols[p]))
            conv.append(last[1])
        for p in self._after:
            conv.append(_after(cols[p], ts_col))
        tcols = list(zip(*map(self._template_ids.__getitem__, t_col)))
        columns = [ids, *conv, *[cols[p] for p in layout.plain], *[tcols[j] for j in layout.template]]

        # the sums: per template, then the latencies and first and last times of the rows of each sum, in row order
        roll, clients, pdns, pairs = self._roll, self._clients, self._pdns, self._pairs
        aggs: Dict[int, list] = {}
        sets: Dict[int, list] = {}
        counts = Counter(t_col)
        for t, count in counts.items():
            tp = info[t]
            key = (hour, *tp.rollup)
            agg = roll.get(key)
            if agg is None:
                agg = roll[key] = [0, 0, 0, 0.0, None]
            agg[0] += count
            if tp.unanswered:
                agg[1] += count
            aggs[t] = agg
            if tp.src is not None:
                key = (hour, tp.src)
                clients[key] = clients.get(key, 0) + count
            if tp.items:
                p = pdns.get(tp.set_id) or self._pdns_entry(tp)
                p[0] += count
                sets[t] = p
                qn = tp.rollup[0]
                if qn is not None and (tp.set_id, qn) not in pairs:
                    pairs.add((tp.set_id, qn))
                    self._new_pairs.extend((d, tp.set_id, qn) for _n, _t, d in tp.items)
        rows_of: List[Any] = [None] * len(info)  # template -> its rows (indexes), bucketed at C speed
        for t in counts:
            rows_of[t] = []
        any(map(list.append, map(rows_of.__getitem__, t_col), range(len(t_col))))
        lat_col = cols[_I_LAT]
        for agg, at in _merged(aggs, rows_of):
            lats = _getter(at)(lat_col)
            try:  # added one by one in row order, as a running sum would: the same float
                total = reduce(add, lats, agg[3])
            except TypeError:  # rows without a latency
                lats = [x for x in lats if x is not None]
                total = reduce(add, lats, agg[3])
            if lats:
                agg[2] += len(lats)
                agg[3] = total
                top = max(lats)  # (the first of equal ones, as a running maximum keeps)
                if agg[4] is None or top > agg[4]:
                    agg[4] = top
        for p, at in _merged(sets, rows_of):
            times = _getter(at)(ts_col)
            first, last_ts = min(times), max(times)
            if first < p[1]:  # the first row of the earliest time names who resolved it first
                p[1], p[3] = first, info[t_col[at[times.index(first)]]].resolver
            if last_ts > p[2]:
                p[2] = last_ts
        return columns

    def _pdns_entry(self, tp: _Template) -> list:
        p = self._pdns[tp.set_id] = [0, float("inf"), float("-inf"), None, tp.items]
        return p

    def _forget_templates(self) -> None:
        self._template_bytes = 0
        self._templates.reset()
        self._template_info.clear()
        self._template_ids.clear()

    def _template(self, key: tuple) -> int:
        """A new template: the ids (and what the sums need) of the values of ``key`` (see _encode_hour)."""
        ids = [found[key[i]] for i, found in self._id_steps]
        ids += [found[pick(key)] for pick, found in self._combo_steps]
        answers, status, *resolver = self._template_values((*key, None))
        if answers is not None:
            self._template_bytes += len(answers)
        self._template_ids.append(tuple(ids))
        ids.append(None)
        src, set_id = self._src_answers_ids(ids)
        self._template_info.append(_Template(
            self._rollup_ids(ids), status == "unanswered", src, set_id,
            _items(answers) if answers is not None else [], tuple(resolver)))
        return len(self._template_ids) - 1

    def _dims(self, table: str, columns: str, cid: Optional[int], cache: Dict[int, tuple]) -> tuple:
        """strings ids of ``columns`` of combination ``cid`` (0 for none), as the rollups key them."""
        if cid is None:
            return (0,) * (columns.count(",") + 1)
        found = cache.get(cid)
        if found is None:
            values = self.conn.execute(f"SELECT {columns} FROM {table} WHERE id = ?", (cid,)).fetchone()
            found = cache[cid] = tuple(0 if x is None else self._strings[x] for x in values)
        return found

    def _write_sums(self) -> None:
        conn = self.conn
        rollups: Dict[tuple, list] = {}
        keys: Dict[tuple, int] = {}
        shapes, senders = self._shape_dims, self._sender_dims
        kinds = [KEY_KINDS[k] for k in ("qname", "qtype", "rcode", "comm", "pod_namespace", "pod")]
        for (hour, qn, shape, sender), agg in self._roll.items():
            qtype, rcode = self._dims("shapes", "qtype, rcode", shape, shapes)
            comm, ns, pod = self._dims("senders", "comm, pod_namespace, pod", sender, senders)
            key = (hour, qn or 0, qtype, rcode, comm, ns, pod)
            have = rollups.get(key)
            if have is None:
                rollups[key] = list(agg)
            else:
                have[0] += agg[0]
                have[1] += agg[1]
                have[2] += agg[2]
                have[3] += agg[3]
                if agg[4] is not None and (have[4] is None or agg[4] > have[4]):
                    have[4] = agg[4]
            for kind, k in zip(kinds, (qn, qtype, rcode, comm, ns, pod)):
                if k:
                    kk = (kind, k, hour)
                    keys[kk] = keys.get(kk, 0) + agg[0]
        k_src = KEY_KINDS["src"]
        for (hour, src), n in self._clients.items():
            keys[(k_src, src, hour)] = n
        conn.executemany(self._upsert_rollup, [(*key, *agg) for key, agg in rollups.items()])
        conn.executemany(self._upsert_key, [(*key, n) for key, n in keys.items()])
        if self._new_pairs:
            conn.executemany(f"INSERT OR IGNORE INTO {ANSWER_ITEMS.name} (data, set_id, qname) VALUES (?, ?, ?)",
                             self._new_pairs)
        if len(self._pairs) > CACHE_ENTRIES:
            self._pairs.clear()
        merged: Dict[tuple, list] = {}
        for count, first, last, who, items in self._pdns.values():
            for item in items:
                m = merged.get(item)
                if m is None:
                    merged[item] = [count, first, last, who]
                else:
                    m[0] += count
                    if first < m[1]:
                        m[1], m[3] = first, who
                    if last > m[2]:
                        m[2] = last
        conn.executemany(self._upsert_pdns, [(*item, first, last, count, *who)
                                             for item, (count, first, last, who) in merged.items()])
        self._set_meta("aggregated_id", self._meta("next_id", 1))
        self._set_meta("pending_min_ts", None)
        self._reset_sums()

    def recover(self) -> int:
        """Add to the sums the rows a killed writer inserted but did not sum (see the class). Returns how many."""
        done = self._meta("aggregated_id", 1)
        if self._meta("next_id", 1) <= done:
            return 0
        since = self.conn.execute("SELECT value FROM meta WHERE key = 'pending_min_ts'").fetchone()
        cols = ", ".join(f"[{c}]" for c in QUERY_COLUMNS)
        sql = f"SELECT id, {cols} FROM queries WHERE id >= ?"
        params: List[Any] = [done]
        if since is not None and since[0] is not None:
            sql += " AND ts >= ?"
            params.append(since[0])
        found = self.conn.execute(sql, params).fetchall()
        full = self if self.width == len(QUERY_COLUMNS) else LogWriter(self.conn, len(QUERY_COLUMNS))
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                for i in range(0, len(found), 5000):
                    full._encode([r[1:] for r in found[i:i + 5000]], 0)
                full._write_sums()
        except BaseException:
            full.forget()
            raise
        return len(found)

    # -- retention -----------------------------------------------------------------------------
    def prune(self, before: Optional[float] = None, max_bytes: Optional[int] = None,
              rollups_before: Optional[float] = None, capture_id: Optional[int] = None,
              seconds: float = 0.05, history: float = HISTORY_FACTOR) -> Tuple[int, Optional[float]]:
        """Delete the oldest data, one small transaction at a time, until no row is older than ``before``, no
        rollup hour older than ``rollups_before``, and the log's used pages fit in ``max_bytes``, or ``seconds``
        have passed (a live capture goes on meanwhile; the next call continues; above the bound, as long as the
        writes since the last call took, if longer). Each transaction also deletes
        the dictionary entries (names, answer sets and items, senders) that nothing kept refers to any more
        (``_collect``). Under ``max_bytes`` what goes first is ``_size_step``'s choice. Freed pages are reused by
        later inserts (and given back to the file system with incremental_vacuum when the file is above the
        bound). Returns (rows deleted, newest ts deleted); ``self.collected`` counts what else went."""
        conn = self.conn
        # above the bound, a step may take as long as the writes since the last one did (up to a second): what
        # a flood of unique names adds costs about as much to delete as to insert, and the log must keep up
        catch_up, self._written_at_prune = self.write_seconds - self._written_at_prune, self.write_seconds
        if max_bytes is not None and _used_bytes(conn) > max_bytes:
            seconds = max(seconds, min(catch_up, 1.0))
            if self._pending:  # rows waiting for their sums cannot go: under a flood of new names, AGG_SECONDS
                self.flush()  # of them (and their names) would pin ~10 s of the flood above the bound
        deadline = time.monotonic() + seconds
        self.prune_complete = False
        deleted, newest = 0, None
        hour_limit = None if rollups_before is None else int(rollups_before // 3600) * 3600
        while True:
            over = max_bytes is not None and _used_bytes(conn) > max_bytes
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                done = self._meta("aggregated_id", 1)  # rows above it wait for their sums: never deleted
                step = None
                if before is not None:
                    step = self._raw_step(done, before)
                if step is None and hour_limit is not None:
                    step = self._aggregate_step(hour_limit)
                if step is None and over:
                    step = self._size_step(done, max_bytes, history)
                if step is None:
                    self.prune_complete = True
                    break
                n, last = step
                if n and capture_id is not None:
                    conn.execute("UPDATE captures SET pruned_rows = coalesce(pruned_rows, 0) + ?, "
                                 "pruned_before = max(coalesce(pruned_before, 0), ?) WHERE id = ?",
                                 (n, last, capture_id))
            if n:
                deleted += n
                newest = last if newest is None or last > newest else newest
            if time.monotonic() >= deadline:
                break
        if max_bytes is not None and _file_bytes(conn) > max_bytes:
            conn.executescript("PRAGMA incremental_vacuum(2000);")  # sqlite3_exec: every step (no-op unless INCREMENTAL)
        return deleted, newest

    def give_back(self, max_bytes: int, seconds: float) -> bool:
        """Give the free pages of a file above ``max_bytes`` back to the file system (auto_vacuum INCREMENTAL logs),
        2,000 at a time for at most ``seconds``. Returns False when pages were left (the time limit)."""
        conn = self.conn
        deadline = time.monotonic() + seconds
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return True  # a log of an older round: its free pages are reused, never given back
        while _file_bytes(conn) > max_bytes and conn.execute("PRAGMA freelist_count").fetchone()[0]:
            if time.monotonic() >= deadline:
                return False
            conn.executescript("PRAGMA incremental_vacuum(2000);")
        return True

    def _raw_step(self, done: int, before: Optional[float] = None) -> Optional[Tuple[int, Optional[float]]]:
        """Delete up to PRUNE_CHUNK of the oldest rows (older than ``before`` if given) and what only they held.
        Returns (rows deleted, newest ts deleted), or None when there is none to delete."""
        conn = self.conn
        # the oldest rows are the first of the table (ordered by ts, id): one range to delete
        where, params = ("WHERE ts < ? ", (before,)) if before is not None else ("", ())
        edge = conn.execute(f"SELECT ts, id FROM {LOG_TABLE} {where}ORDER BY ts, id LIMIT 1 OFFSET ?",
                            (*params, PRUNE_CHUNK - 1)).fetchone()
        if edge is None:  # fewer than a chunk left to delete: up to the last one
            edge = conn.execute(f"SELECT ts, id FROM {LOG_TABLE} {where}ORDER BY ts DESC, id DESC LIMIT 1",
                                params).fetchone()
            if edge is None:
                return None
        victims = conn.execute(f"SELECT qname, answers, sender FROM {LOG_TABLE} WHERE (ts, id) <= (?, ?) AND id < ?",
                               (*edge, done)).fetchall()
        if not victims:
            return None
        conn.execute(f"DELETE FROM {LOG_TABLE} WHERE (ts, id) <= (?, ?) AND id < ?", (*edge, done))
        last = edge[0]
        conn.execute("DELETE FROM malformed WHERE ts <= ?", (last,))
        # a lookup ends after every query of it: once its end is pruned, so are all its rows
        conn.execute(f"DELETE FROM {LOOKUP_TABLE} WHERE ts <= ? AND end_ts <= ?", (last, last))
        self._collect(victims)
        return len(victims), last

    def _aggregate_step(self, hour_limit: int, partial: bool = False) -> Optional[Tuple[int, None]]:
        """Delete up to AGG_CHUNK entries of the oldest hour of rollups, key_hours and passive DNS if that hour
        is before ``hour_limit``: rollups first, then key_hours, so that a rollup's name and texts always have
        their key_hours entry (what ``_collect`` looks at). ``partial``: the raw rows still cover that hour (the
        size bound needs its room): readers then count that hour from them (meta 'aggregates_partial_before')."""
        conn = self.conn
        hour = _oldest_hour(conn)
        if hour is None or hour >= hour_limit:
            return None
        if partial and hour + 3600 > self._meta("aggregates_partial_before"):
            self._set_meta("aggregates_partial_before", hour + 3600)
        n = conn.execute(f"DELETE FROM {ROLLUPS.name} WHERE hour = ? AND qname <= coalesce((SELECT qname FROM "
                         f"{ROLLUPS.name} WHERE hour = ? ORDER BY qname LIMIT 1 OFFSET ?), 1 << 62)",
                         (hour, hour, AGG_CHUNK)).rowcount
        names: List[int] = []
        if not n:  # key_hours of the hour once its rollups are gone: a chunk of each kind, through (kind, hour)
            for kind in KEY_KINDS.values():
                keys = [k for (k,) in conn.execute(
                    f"SELECT key FROM {KEY_HOURS.name} INDEXED BY key_hours_top WHERE kind = ? AND hour = ? LIMIT ?",
                    (kind, hour, AGG_CHUNK))]
                conn.executemany(f"DELETE FROM {KEY_HOURS.name} WHERE kind = ? AND key = ? AND hour = ?",
                                 [(kind, k, hour) for k in keys])
                n += len(keys)
                if kind == KEY_KINDS["qname"]:
                    names = keys
        # passive DNS last seen before the end of that hour (the hour of the oldest entry when it is older)
        n += conn.execute(f"DELETE FROM {PASSIVE_DNS.name} WHERE ({PASSIVE_DNS.key}) IN (SELECT {PASSIVE_DNS.key} "
                          f"FROM {PASSIVE_DNS.name} INDEXED BY passive_dns_seen WHERE last_seen < ? LIMIT ?)",
                          (hour + 3600, AGG_CHUNK)).rowcount
        if names:
            self._collect([(k, None, None) for k in names])
        self.collected["aggregates"] += n
        return 0, None

    def _size_step(self, done: int, max_bytes: int, history: float) -> Optional[Tuple[int, Optional[float]]]:
        """One step towards ``max_bytes``. The raw rows go oldest first, as with --retain; the rollups, key_hours
        and passive DNS of hours before the oldest raw row (history) go, oldest hour first, once they reach back
        ``history`` times as far as the raw rows do. The raw rows never go below one per RAW_FLOOR_BYTES of the
        bound while there is anything else to delete: a flood of unique names, whose aggregates and dictionary
        entries cost more than its rows, then takes the aggregates of the hours the rows cover (readers count
        those hours from the rows)."""
        conn = self.conn
        first = conn.execute(f"SELECT ts, id FROM {LOG_TABLE} ORDER BY ts, id LIMIT 1").fetchone()
        hour = _oldest_hour(conn)
        if first is None:
            return None if hour is None else self._aggregate_step(1 << 62)
        raw_ok = self._meta("next_id", 1) - first[1] > max_bytes // RAW_FLOOR_BYTES  # about how many rows are kept
        if hour is not None and hour + 3600 <= first[0]:  # history
            newest = conn.execute(f"SELECT max(ts) FROM {LOG_TABLE}").fetchone()[0]
            if not raw_ok or newest - hour >= history * (newest - first[0]):
                return self._aggregate_step(1 << 62)
        if raw_ok:
            return self._raw_step(done)
        if hour is not None:
            return self._aggregate_step(1 << 62, partial=True)
        return self._raw_step(done)

    def _held(self) -> set:
        """Every id the sums not written yet hold, of any table (their rows are kept, see prune; ids of one table
        that equal ids of another are kept too: only later)."""
        held = set(chain(chain.from_iterable(k[1:] for k in self._roll), self._pdns,
                         chain.from_iterable(p[1:] for p in self._new_pairs)))
        held.discard(None)
        return held

    def _unlearn(self, names: Dict[int, str], sets: Dict[int, str], senders: set) -> None:
        """Forget the names, answer sets (id -> text) and senders just deleted: the caches and templates holding
        them, so that no row written later refers to them."""
        for ids, texts in ((self._names, names), (self._sets, sets)):
            for i, text in texts.items():
                if ids.get(text) == i:
                    del ids[text]
        if senders:  # few: the cache of each combination table
            for _kind, _positions, ids in self._combos:
                for key in [k for k, v in ids.items() if v in senders]:
                    del ids[key]
            for cid in senders.intersection(self._sender_dims):
                del self._sender_dims[cid]
        self._forget_templates()  # rebuilt from the caches for the next batch
        # (_pairs may keep pairs of deleted ids: those ids never come back)

    def _collect(self, victims: Sequence[Tuple[Optional[int], Optional[int], Optional[int]]]) -> None:
        """Delete the names, answer sets (with their answer_items) and senders of ``victims`` ((qname, answers,
        sender) ids of rows, or of aggregates, just deleted) that nothing kept refers to: no row of the log (its
        indexes on name and sender; a set through the names its answer_items list), no key_hours entry (which
        every rollup's name has too), no sums waiting in memory (``_held``), and never the largest id of a
        table (SQLite gives a new row the largest id + 1: a deleted id is never handed out again). The writer's
        caches forget what is deleted (``_unlearn``); another process's writer learns of it through meta
        'gc_epoch' (``write``). A set is told unused through the rows of the names answer_items lists for it: kept
        when one of those has more than GC_SCAN rows none of the newest GC_SCAN of which holds it (too costly to
        prove). Strings and shapes are few and not collected."""
        conn = self.conn
        held = self._held()
        top = {t: conn.execute(f"SELECT max(id) FROM {t}").fetchone()[0] or 0
               for t in ("names", "answer_sets", "senders")}

        def candidates(column: int, table: str) -> List[int]:
            return sorted({v[column] for v in victims if v[column] is not None and v[column] < top[table]} - held)

        def select(sql: str, values: Sequence[Any]) -> List[tuple]:  # one statement for a whole chunk
            return conn.execute(sql, (json.dumps(values),)).fetchall() if values else []

        dead = {q for (q,) in select(
            f"SELECT value FROM json_each(?) WHERE NOT EXISTS (SELECT 1 FROM {LOG_TABLE} WHERE qname = value) AND NOT "
            f"EXISTS (SELECT 1 FROM {KEY_HOURS.name} WHERE kind = 1 AND key = value)", candidates(0, "names"))}
        used_sql = (  # (set, name) pairs of which a row of the name holds the set (or that cannot be told cheaply)
            f"SELECT DISTINCT p.a FROM (SELECT json_extract(value, '$[0]') a, json_extract(value, '$[1]') q FROM "
            f"json_each(?)) p WHERE EXISTS (SELECT 1 FROM (SELECT answers FROM {LOG_TABLE} WHERE qname = p.q ORDER BY "
            f"ts DESC LIMIT {GC_SCAN}) WHERE answers = p.a) OR (SELECT count(*) FROM (SELECT 1 FROM {LOG_TABLE} "
            f"WHERE qname = p.q LIMIT {GC_SCAN + 1})) > {GC_SCAN}")
        sets = candidates(1, "answer_sets")
        # most sets are still used by the name of a row just deleted: told without reading their answers
        used = {a for (a,) in select(used_sql, sorted({(a, q) for q, a, _s in victims if a in sets and q is not None
                                                        and q not in dead}))}
        sets = [a for a in sets if a not in used]
        # the answers' data of those sets and of the sets of dead names (answer_items is keyed by data, set, name)
        texts = dict(select("SELECT id, answers FROM answer_sets WHERE id IN (SELECT value FROM json_each(?))",
                            sorted(set(sets).union(a for q, a, _s in victims if q in dead and a is not None))))
        data = {a: sorted({d for _n, _t, d in _items(text)}) for a, text in texts.items()}
        names_of: Dict[int, set] = {}
        for a, q in select(f"SELECT set_id, qname FROM {ANSWER_ITEMS.name} WHERE (data, set_id) IN (SELECT "
                           "json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))",
                           [(d, a) for a in sets for d in data.get(a, ())]):
            names_of.setdefault(a, set()).add(q)
        unnamed = {a for (a,) in select(f"SELECT DISTINCT answers FROM {LOG_TABLE} WHERE qname IS NULL AND answers IN "
                                        "(SELECT value FROM json_each(?))", sets)}  # rows of no name: few
        used = {a for (a,) in select(used_sql, [(a, q) for a in sets for q in names_of.get(a, ()) if q not in dead])}
        dead_sets = [a for a in sets if data.get(a) and a not in unnamed and a not in used]
        gone = set(dead_sets)
        items = [(d, a) for a in dead_sets for d in data[a]]  # answer_items of dead sets, and of dead names
        named = [(d, a, q) for q, a in {(q, a) for q, a, _s in victims if q in dead and a is not None and a not in gone}
                 for d in data.get(a, ())]
        dead_senders = [s for (s,) in select(f"SELECT value FROM json_each(?) WHERE NOT EXISTS (SELECT 1 FROM "
                                             f"{LOG_TABLE} WHERE sender = value)", candidates(2, "senders"))]
        dead_names = sorted(dead)
        name_texts = dict(select("SELECT id, name FROM names WHERE id IN (SELECT value FROM json_each(?))", dead_names))
        conn.executemany(f"DELETE FROM {ANSWER_ITEMS.name} WHERE data = ? AND set_id = ?", items)
        conn.executemany(f"DELETE FROM {ANSWER_ITEMS.name} WHERE data = ? AND set_id = ? AND qname = ?", named)
        conn.executemany("DELETE FROM answer_sets WHERE id = ?", [(a,) for a in dead_sets])
        conn.executemany("DELETE FROM names WHERE id = ?", [(q,) for q in dead_names])
        conn.executemany("DELETE FROM senders WHERE id = ?", [(s,) for s in dead_senders])
        if dead_names or dead_sets or dead_senders:
            self._unlearn(name_texts, {a: texts[a] for a in dead_sets}, set(dead_senders))
            self._gc_epoch = self._meta("gc_epoch") + 1
            self._set_meta("gc_epoch", self._gc_epoch)
            c = self.collected
            c["names"] += len(dead_names)
            c["answer_sets"] += len(dead_sets)
            c["senders"] += len(dead_senders)


def _oldest_hour(conn: sqlite3.Connection) -> Optional[int]:
    """The oldest hour of the aggregates: rollups, key_hours (each kind through its index) and passive DNS."""
    found = [conn.execute(f"SELECT min(hour) FROM {ROLLUPS.name}").fetchone()[0]]
    found += [conn.execute(f"SELECT min(hour) FROM {KEY_HOURS.name} INDEXED BY key_hours_top WHERE kind = ?",
                           (kind,)).fetchone()[0] for kind in KEY_KINDS.values()]
    seen = conn.execute(f"SELECT min(last_seen) FROM {PASSIVE_DNS.name} INDEXED BY passive_dns_seen").fetchone()[0]
    if seen is not None:
        found.append(int(seen // 3600) * 3600)
    found = [h for h in found if h is not None]
    return min(found) if found else None


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * conn.execute("PRAGMA page_size").fetchone()[0]


def _file_bytes(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]


# -- creation and migration ---------------------------------------------------------------------

def _columns(conn: sqlite3.Connection, table: str) -> List[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info([{table}])")]


def prepare(conn: sqlite3.Connection) -> None:
    """Create what is missing of the schema on a write connection, migrating a log written by an older dnswatch
    in place: round-1 logs (a plain ``queries`` table) are rewritten into the current layout, and columns added
    to schema.py since a log was written are added to it. Records SCHEMA_VERSION in PRAGMA user_version."""
    objects = dict(conn.execute("SELECT name, type FROM sqlite_master"))
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    old_table = objects.get("queries") == "table"
    if version == SCHEMA_VERSION and not old_table and LOG_TABLE in objects:
        if all({c.name for c in physical(t)[1]} <= set(_columns(conn, physical(t)[0])) for t in TABLES) and all(
                i.name in objects for t in TABLES for i in t.indexes):  # (an index added since: the slow path)
            with conn:  # the common case: nothing to do; still fail now (not at the first flush) if another writer
                conn.execute("BEGIN IMMEDIATE")  # holds the log
            return
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if old_table:
            for (index,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = "
                                         "'queries' AND sql IS NOT NULL").fetchall():
                conn.execute(f"DROP INDEX [{index}]")
            conn.execute("ALTER TABLE queries RENAME TO queries_v1")
        conn.execute("DROP VIEW IF EXISTS queries")
        conn.execute("DROP VIEW IF EXISTS rollups")
        if objects.get("lookups") == "table":  # every lookup was stored: they are lookup_groups now
            conn.execute(f"ALTER TABLE lookups RENAME TO {LOOKUP_TABLE}")
        conn.execute("DROP VIEW IF EXISTS lookups")
        for table in TABLES[1:] + (QUERIES,):
            name, columns = physical(table)
            for statement in create_sql(table):
                if not statement.startswith("CREATE VIEW"):
                    conn.execute(statement)
            have = set(_columns(conn, name))
            for c in columns:
                if c.name not in have:  # a column added since this log was written
                    conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{c.name}] "
                                 f"{stored_type(c) if table is QUERIES else c.type}")
        for statement in view_sql():
            conn.execute(statement)
        if old_table:
            _copy_round1(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _copy_round1(conn: sqlite3.Connection) -> None:
    """Rows of a round-1 ``queries`` table into query_log (ids kept), through the same write path, so the
    rollups and passive DNS cover them too."""
    have = set(_columns(conn, "queries_v1"))
    select = ", ".join(f"[{c}]" if c in have else "NULL" for c in QUERY_COLUMNS)
    writer = LogWriter(conn, len(QUERY_COLUMNS))
    cur = conn.execute(f"SELECT id, {select} FROM queries_v1 ORDER BY id")
    last = 0
    while True:
        batch = cur.fetchmany(5000)
        if not batch:
            break
        writer._insert(writer._encode([r[1:] for r in batch], None, ids=[r[0] for r in batch]))
        last = batch[-1][0]
    writer._write_sums()  # sets aggregated_id from next_id: set that first
    writer._set_meta("next_id", last + 1)
    writer._set_meta("aggregated_id", last + 1)
    conn.execute("DROP TABLE queries_v1")


def needs_migration(conn: sqlite3.Connection) -> bool:
    """For readers: True when the log was written by an older dnswatch and no writer has opened it since."""
    objects = dict(conn.execute("SELECT name, type FROM sqlite_master"))
    return LOG_TABLE not in objects or objects.get("queries") == "table"
