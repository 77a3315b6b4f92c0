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
import time
from hashlib import blake2b
from itertools import chain
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from dnswatch.schema import (
    ANSWER_ITEMS, KEY_HOURS, KEY_KINDS, LOG_TABLE, MALFORMED_COLUMNS, PASSIVE_DNS, Q, QUERIES, QUERY_COLUMNS,
    ROLLUPS, SCHEMA_VERSION, STORED_AS, TABLES, create_sql, reverse_name, stored_type, view_sql,
)

ROWS_PER_INSERT = 64  # rows bound to one INSERT statement
CACHE_ENTRIES = 500_000  # texts -> ids remembered per lookup table (cleared when full)
PRUNE_CHUNK = 2000  # rows deleted per transaction: a few ms, so a live capture never waits long

START_CAPTURE = (
    "INSERT INTO captures (kind, source, host, started, status, frames, dns_messages, queries, responses, "
    "malformed, dropped, duplicates, options, dnswatch_version) VALUES (?, ?, ?, ?, 'running', 0, 0, 0, 0, "
    "0, 0, 0, ?, ?)"
)
_I_TS, _I_STATUS, _I_LAT = Q["ts"], Q["status"], Q["latency_ms"]
_I_QNAME, _I_QTYPE, _I_RCODE, _I_SRC = Q["qname"], Q["qtype"], Q["rcode"], Q["src"]
_I_ANSWERS = Q["answers"]
_I_PID, _I_COMM, _I_NS, _I_POD = Q["pid"], Q["comm"], Q["pod_namespace"], Q["pod"]
_KEY_POS = [(KEY_KINDS[k], Q[k]) for k in KEY_KINDS]


class Retention(NamedTuple):
    """What to keep: raw rows for ``retain`` seconds and within ``max_bytes`` of file, rollups for
    ``retain_rollups`` seconds (None: no bound)."""
    retain: Optional[float] = None
    max_bytes: Optional[int] = None
    retain_rollups: Optional[float] = None


def _hash(text: str) -> int:
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


def _items(answers: str) -> List[Tuple[str, str, str]]:
    try:
        return [(str(a.get("name")), str(a.get("type")), str(a.get("data"))) for a in json.loads(answers)]
    except (ValueError, AttributeError, TypeError):
        return []


class LogWriter:
    """The writes of a Store on one connection (the Store's own, or the writer process's)."""

    def __init__(self, conn: sqlite3.Connection, width: int):
        self.conn = conn
        self.width = width
        columns = QUERY_COLUMNS[:width]
        values = f"({', '.join('?' for _ in columns)})"
        self._insert_query = f"INSERT INTO {LOG_TABLE} ({', '.join(columns)}) VALUES {values}"
        self._insert_with_id = f"INSERT INTO {LOG_TABLE} (id, {', '.join(columns)}) VALUES (?, {values[1:]}"
        # Several rows per INSERT: each execution opens a cursor on the table and every index, which costs more
        # than binding a row. Bounded by SQLite's limit on parameters (999 before 3.32).
        if hasattr(conn, "getlimit"):  # Python 3.11+
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        else:
            limit = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
        self._per_insert = max(1, min(ROWS_PER_INSERT, limit // width))
        self._insert_many = f"INSERT INTO {LOG_TABLE} ({', '.join(columns)}) VALUES {', '.join([values] * self._per_insert)}"
        self._insert_malformed = (
            f"INSERT INTO malformed ({', '.join(MALFORMED_COLUMNS)}) VALUES ({', '.join('?' for _ in MALFORMED_COLUMNS)})"
        )
        self._str_pos = [i for i in STORED_AS["str"] if i < width]
        self._strings: Dict[str, int] = {}
        self._names: Dict[str, int] = {}
        self._sets: Dict[str, Tuple[int, List[Tuple[str, str, str]]]] = {}
        self._pairs: set = set()  # (answer set, name) pairs already in answer_items
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
    def _string(self, text: str) -> int:
        conn = self.conn
        found = conn.execute("SELECT id FROM strings WHERE s = ?", (text,)).fetchone()
        sid = found[0] if found else conn.execute("INSERT INTO strings (s) VALUES (?)", (text,)).lastrowid
        if len(self._strings) >= CACHE_ENTRIES:
            self._strings.clear()
        self._strings[text] = sid
        return sid

    def _name(self, name: str) -> int:
        conn = self.conn
        found = conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
        nid = found[0] if found else conn.execute(
            "INSERT INTO names (name, rname) VALUES (?, ?)", (name, reverse_name(name))).lastrowid
        if len(self._names) >= CACHE_ENTRIES:
            self._names.clear()
        self._names[name] = nid
        return nid

    def _answer_set(self, answers: str) -> Tuple[int, List[Tuple[str, str, str]]]:
        conn = self.conn
        h = _hash(answers)
        sid = None
        for row_id, text in conn.execute("SELECT id, answers FROM answer_sets WHERE hash = ?", (h,)):
            if text == answers:
                sid = row_id
                break
        if sid is None:
            sid = conn.execute("INSERT INTO answer_sets (hash, answers) VALUES (?, ?)", (h, answers)).lastrowid
        if len(self._sets) >= CACHE_ENTRIES // 4:
            self._sets.clear()
        entry = self._sets[answers] = (sid, _items(answers))
        return entry

    def forget(self) -> None:
        """After a rolled-back transaction: ids handed out in it no longer exist."""
        self._strings.clear()
        self._names.clear()
        self._sets.clear()
        self._pairs.clear()

    # -- rows ----------------------------------------------------------------------------------
    def write(self, rows: List[Sequence[Any]], malformed: List[Sequence[Any]], with_ids: bool = False) -> None:
        if not rows and not malformed:
            return
        conn = self.conn
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if rows:
                    self._write_rows(rows, with_ids)
                if malformed:
                    conn.executemany(self._insert_malformed, malformed)
        except BaseException:
            self.forget()
            raise

    def _write_rows(self, rows: List[Sequence[Any]], with_ids: bool) -> None:
        width = self.width
        strings, string = self._strings, self._string
        names, name_id = self._names, self._name
        sets, answer_set = self._sets, self._answer_set
        pairs = self._pairs
        str_pos = self._str_pos
        rollups: Dict[tuple, list] = {}
        keys: Dict[tuple, int] = {}
        pdns: Dict[int, list] = {}  # answer set id -> [count, first ts, last ts, first row, items]
        new_pairs = []
        out = []
        live = width > _I_POD
        for r in rows:
            v = list(r[:width]) if with_ids is False else list(r[1:width + 1])
            for i in str_pos:
                x = v[i]
                if x is not None:
                    v[i] = strings.get(x) or string(x)
            qn = v[_I_QNAME]
            if qn is not None:
                qn = v[_I_QNAME] = names.get(qn) or name_id(qn)
            ans = v[_I_ANSWERS]
            aset = None
            if ans is not None:
                aset = sets.get(ans) or answer_set(ans)
                v[_I_ANSWERS] = aset[0]
            out.append(v)
            # aggregates, with the texts turned into ids
            ts = v[_I_TS]
            hour = int(ts // 3600) * 3600
            status = r[_I_STATUS + with_ids]
            lat = v[_I_LAT]
            if live:
                key = (hour, qn or 0, v[_I_QTYPE] or 0, v[_I_RCODE] or 0, v[_I_COMM] or 0, v[_I_NS] or 0,
                       v[_I_POD] or 0)
            else:
                key = (hour, qn or 0, v[_I_QTYPE] or 0, v[_I_RCODE] or 0, 0, 0, 0)
            agg = rollups.get(key)
            if agg is None:
                rollups[key] = [1, status == "unanswered", lat is not None, lat or 0.0, lat]
            else:
                agg[0] += 1
                if status == "unanswered":
                    agg[1] += 1
                if lat is not None:
                    agg[2] += 1
                    agg[3] += lat
                    if agg[4] is None or lat > agg[4]:
                        agg[4] = lat
            for kind, pos in _KEY_POS:
                if pos < width:
                    k = v[pos]
                    if k is not None:
                        kk = (kind, k, hour)
                        keys[kk] = keys.get(kk, 0) + 1
            if aset is not None and aset[1]:
                sid = aset[0]
                p = pdns.get(sid)
                if p is None:
                    pdns[sid] = [1, ts, ts, r, aset[1]]
                else:
                    p[0] += 1
                    if ts < p[1]:
                        p[1], p[3] = ts, r
                    elif ts > p[2]:
                        p[2] = ts
                if qn is not None and (sid, qn) not in pairs:
                    pairs.add((sid, qn))
                    new_pairs.extend((d, sid, qn) for _n, _t, d in aset[1])
        conn = self.conn
        if with_ids:
            conn.executemany(self._insert_with_id, [(r[0], *v) for r, v in zip(rows, out)])
        else:
            k = self._per_insert
            whole = len(out) // k * k
            if whole:
                conn.executemany(self._insert_many, [tuple(chain.from_iterable(out[i:i + k]))
                                                     for i in range(0, whole, k)])
            if whole < len(out):
                conn.executemany(self._insert_query, out[whole:])
        conn.executemany(self._upsert_rollup, [(*key, *agg) for key, agg in rollups.items()])
        conn.executemany(self._upsert_key, [(*key, n) for key, n in keys.items()])
        if new_pairs:
            conn.executemany(f"INSERT OR IGNORE INTO {ANSWER_ITEMS.name} (data, set_id, qname) VALUES (?, ?, ?)",
                             new_pairs)
        if len(pairs) > CACHE_ENTRIES:
            pairs.clear()
        if pdns:
            merged: Dict[tuple, list] = {}
            off = 1 if with_ids else 0
            for count, first, last, r, items in pdns.values():
                for item in items:
                    m = merged.get(item)
                    if m is None:
                        merged[item] = [count, first, last, r]
                    else:
                        m[0] += count
                        if first < m[1]:
                            m[1], m[3] = first, r
                        if last > m[2]:
                            m[2] = last
            conn.executemany(self._upsert_pdns, [
                (*item, first, last, count, r[_I_QNAME + off], r[_I_SRC + off],
                 *((r[_I_PID + off], r[_I_COMM + off], r[_I_NS + off], r[_I_POD + off]) if live
                   else (None, None, None, None)))
                for item, (count, first, last, r) in merged.items()])

    # -- retention -----------------------------------------------------------------------------
    def prune(self, before: Optional[float] = None, max_bytes: Optional[int] = None,
              rollups_before: Optional[float] = None, capture_id: Optional[int] = None,
              seconds: float = 0.05) -> Tuple[int, Optional[float]]:
        """Delete the oldest rows, PRUNE_CHUNK per transaction, until none is older than ``before`` and the log's
        used pages fit in ``max_bytes``, or ``seconds`` have passed (a live capture goes on meanwhile; the next call
        continues). Freed pages are reused by later inserts (and given back to the file system with
        incremental_vacuum when the file is above the bound). Returns (rows deleted, newest ts deleted)."""
        conn = self.conn
        deadline = time.monotonic() + seconds
        deleted, newest = 0, None
        while True:
            over = max_bytes is not None and _used_bytes(conn) > max_bytes
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if over:
                    sql, params = (f"SELECT id, ts FROM {LOG_TABLE} INDEXED BY log_ts ORDER BY ts LIMIT ?",
                                   (PRUNE_CHUNK,))
                elif before is not None:
                    sql, params = (f"SELECT id, ts FROM {LOG_TABLE} INDEXED BY log_ts WHERE ts < ? ORDER BY ts "
                                   "LIMIT ?", (before, PRUNE_CHUNK))
                else:
                    break
                victims = conn.execute(sql, params).fetchall()
                if not victims:
                    break
                conn.executemany(f"DELETE FROM {LOG_TABLE} WHERE id = ?", [(i,) for i, _ in victims])
                last = victims[-1][1]
                conn.execute("DELETE FROM malformed WHERE ts <= ?", (last,))
                if capture_id is not None:
                    conn.execute("UPDATE captures SET pruned_rows = coalesce(pruned_rows, 0) + ?, "
                                 "pruned_before = max(coalesce(pruned_before, 0), ?) WHERE id = ?",
                                 (len(victims), last, capture_id))
            deleted += len(victims)
            newest = last if newest is None or last > newest else newest
            if time.monotonic() >= deadline:
                break
        if rollups_before is not None:
            hour = int(rollups_before // 3600) * 3600
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"DELETE FROM {ROLLUPS.name} WHERE hour < ?", (hour,))
                conn.executemany(f"DELETE FROM {KEY_HOURS.name} WHERE kind = ? AND hour < ?",
                                 [(k, hour) for k in KEY_KINDS.values()])
        if max_bytes is not None and _file_bytes(conn) > max_bytes:
            conn.execute("PRAGMA incremental_vacuum(2000)")  # no-op unless auto_vacuum = INCREMENTAL
        return deleted, newest


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
    if not objects:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: pruning can give pages back
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    old_table = objects.get("queries") == "table"
    if version == SCHEMA_VERSION and not old_table and LOG_TABLE in objects:
        if all(set(c.name for c in t.columns) <= set(_columns(conn, LOG_TABLE if t is QUERIES else t.name))
               for t in TABLES):
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
        for table in TABLES[1:] + (QUERIES,):
            name = LOG_TABLE if table is QUERIES else table.name
            for statement in create_sql(table):
                if not statement.startswith("CREATE VIEW"):
                    conn.execute(statement)
            have = set(_columns(conn, name))
            for c in table.columns:
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
    while True:
        batch = cur.fetchmany(5000)
        if not batch:
            break
        writer._write_rows([list(r) for r in batch], with_ids=True)
    conn.execute("DROP TABLE queries_v1")


def needs_migration(conn: sqlite3.Connection) -> bool:
    """For readers: True when the log was written by an older dnswatch and no writer has opened it since."""
    objects = dict(conn.execute("SELECT name, type FROM sqlite_master"))
    return LOG_TABLE not in objects or objects.get("queries") == "table"
