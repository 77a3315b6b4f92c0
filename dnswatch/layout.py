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
from operator import itemgetter
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from dnswatch.schema import (
    ANSWER_ITEMS, KEY_HOURS, KEY_KINDS, LOG_COLUMNS, LOG_TABLE, LOOKUP_COLUMNS, LOOKUP_TABLE, MALFORMED_COLUMNS,
    PASSIVE_DNS, Q, QUERIES, QUERY_COLUMNS, ROLLUPS, SCHEMA_VERSION, COMBOS, STORED_AS, TABLES, create_sql, physical,
    reverse_name, stored_type, view_sql,
)

ROWS_PER_INSERT = 64  # rows bound to one INSERT statement
CACHE_ENTRIES = 100_000  # texts -> ids remembered per lookup table (cleared when full): ~15 MB at most
AGG_ROWS = 50_000  # rows whose sums are kept in memory at most before they are written (~10 MB)
AGG_SECONDS = 10.0  # ... and seconds
PRUNE_CHUNK = 2000  # rows deleted per transaction: a few ms, so a live capture never waits long

START_CAPTURE = (
    "INSERT INTO captures (kind, source, host, started, status, frames, dns_messages, queries, responses, "
    "malformed, dropped, duplicates, options, dnswatch_version) VALUES (?, ?, ?, ?, 'running', 0, 0, 0, 0, "
    "0, 0, 0, ?, ?)"
)
_I_STATUS, _I_LAT = Q["status"], Q["latency_ms"]
_I_QNAME, _I_SRC = Q["qname"], Q["src"]
_I_PID, _I_COMM, _I_NS, _I_POD = Q["pid"], Q["comm"], Q["pod_namespace"], Q["pod"]


class Retention(NamedTuple):
    """What to keep: raw rows for ``retain`` seconds and within ``max_bytes`` of file, rollups for
    ``retain_rollups`` seconds (None: no bound)."""
    retain: Optional[float] = None
    max_bytes: Optional[int] = None
    retain_rollups: Optional[float] = None


def _hash(text: str) -> int:
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


def _resolver(r: Sequence[Any], live: bool) -> tuple:
    """passive_dns.first_*: who got an answer first."""
    if live:
        return (r[_I_QNAME], r[_I_SRC], r[_I_PID], r[_I_COMM], r[_I_NS], r[_I_POD])
    return (r[_I_QNAME], r[_I_SRC], None, None, None, None)


def _items(answers: str) -> List[Tuple[str, str, str]]:
    try:
        return [(str(a.get("name")), str(a.get("type")), str(a.get("data"))) for a in json.loads(answers)]
    except (ValueError, AttributeError, TypeError):
        return []


_INSERT_LOOKUP = (f"INSERT OR REPLACE INTO {LOOKUP_TABLE} ({', '.join(LOOKUP_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in LOOKUP_COLUMNS)})")


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
        # combination tables (shapes, senders) whose columns this writer's rows carry
        self._combos = []
        for kind, table in COMBOS.items():
            positions = [Q[c.name] for c in table.columns[2:]]
            if positions[0] < width:
                names = [c.name for c in table.columns[2:]]
                self._combos.append((kind, table.name, itemgetter(*positions), {},
                                     f"SELECT id, {', '.join(names)} FROM {table.name} WHERE hash = ?",
                                     f"INSERT INTO {table.name} (hash, {', '.join(names)}) VALUES "
                                     f"(?, {', '.join('?' for _ in names)})"))
        cols = ["id"] + [QUERY_COLUMNS[i] for i in self._row_pos] + [c[0] for c in self._combos]
        self._ncols = len(cols)
        values = f"({', '.join('?' for _ in cols)})"
        self._insert_one = f"INSERT INTO {LOG_TABLE} ({', '.join(cols)}) VALUES {values}"
        # Several rows per INSERT: each execution opens a cursor on the table and every index, which costs more
        # than binding a row. Bounded by SQLite's limit on parameters (999 before 3.32).
        if hasattr(conn, "getlimit"):  # Python 3.11+
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        else:
            limit = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
        self._per_insert = max(1, min(ROWS_PER_INSERT, limit // len(cols)))
        self._insert_many = f"INSERT INTO {LOG_TABLE} ({', '.join(cols)}) VALUES {', '.join([values] * self._per_insert)}"
        self._insert_malformed = (
            f"INSERT INTO malformed ({', '.join(MALFORMED_COLUMNS)}) VALUES ({', '.join('?' for _ in MALFORMED_COLUMNS)})"
        )
        where = {QUERY_COLUMNS[p]: j + 1 for j, p in enumerate(self._row_pos)}  # position in an encoded row
        self._j_str = [where[QUERY_COLUMNS[p]] for p in STORED_AS["str"] if p < width]
        self._j_name, self._j_answers = where["qname"], where["answers"]
        self._j_ms = [where[QUERY_COLUMNS[p]] for p in STORED_AS["ms"]]
        self._j_after = [where[QUERY_COLUMNS[p]] for p in STORED_AS["after_ts"]]
        self._j = where
        self._get = itemgetter(*self._row_pos)
        self._strings: Dict[str, int] = {}
        self._names: Dict[str, int] = {}
        self._sets: Dict[str, Tuple[int, List[Tuple[str, str, str]]]] = {}
        self._pairs: set = set()  # (answer set, name) pairs already in answer_items
        self._shape_dims: Dict[int, tuple] = {}
        self._sender_dims: Dict[int, tuple] = {}
        self._lost_sums = False
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

    def _combo(self, combo: tuple, values: tuple) -> int:
        """The id of ``values`` in a combination table (shapes, senders), added if new."""
        _kind, _table, _get, cache, select, insert = combo
        conn = self.conn
        h = _hash(repr(values))
        cid = None
        for found in conn.execute(select, (h,)):
            if tuple(found[1:]) == values:
                cid = found[0]
                break
        if cid is None:
            cid = conn.execute(insert, (h, *values)).lastrowid
        if len(cache) >= CACHE_ENTRIES // 4:
            cache.clear()
        cache[values] = cid
        return cid

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
        """After a rolled-back transaction: ids handed out in it no longer exist, nor do the sums of its rows."""
        self._strings.clear()
        self._names.clear()
        for combo in self._combos:
            combo[3].clear()
        self._sets.clear()
        self._pairs.clear()
        self._shape_dims.clear()
        self._sender_dims.clear()
        self._reset_sums()

    def _meta(self, key: str, default: int = 0) -> int:
        found = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if found is None or found[0] is None else found[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                          "value = excluded.value", (key, value))

    # -- rows ----------------------------------------------------------------------------------
    def write_lookups(self, lookups: List[Sequence[Any]]) -> None:
        """Insert (or complete) ``lookups`` rows, in LOOKUP_COLUMNS order (dnswatch.lookups writes them as they end)."""
        if lookups:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(_INSERT_LOOKUP, lookups)

    def write(self, rows: List[Sequence[Any]], malformed: List[Sequence[Any]], force: bool = False) -> None:
        """Insert ``rows`` (and malformed messages) in one transaction; write the sums when due or ``force``."""
        conn = self.conn
        if self._lost_sums:  # a failed transaction took the pending sums with it: rebuild them from the log
            self.recover()
            self._lost_sums = False
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if rows:
                    first = self._meta("next_id", 1)
                    self._insert(self._encode(rows, first))
                    self._set_meta("next_id", first + len(rows))
                    if self._pending_min_ts is not None:
                        self._set_meta("pending_min_ts", self._pending_min_ts)
                if malformed:
                    conn.executemany(self._insert_malformed, malformed)
                if self._pending and (force or self.sums_due()):
                    self._write_sums()
        except BaseException:
            self.forget()
            self._lost_sums = True
            raise

    def sums_due(self) -> bool:
        return bool(self._pending) and (self._pending >= AGG_ROWS
                                        or time.monotonic() - self._sums_since >= AGG_SECONDS)

    def flush(self) -> None:
        """Write the sums of every row inserted so far."""
        if self._pending or self._lost_sums:
            self.write([], [], force=True)

    def _insert(self, out: List[tuple]) -> None:
        conn = self.conn
        k = self._per_insert
        whole = len(out) // k * k
        if whole:
            conn.executemany(self._insert_many, [tuple(chain.from_iterable(out[i:i + k]))
                                                 for i in range(0, whole, k)])
        if whole < len(out):
            conn.executemany(self._insert_one, out[whole:])

    def _encode(self, rows: List[Sequence[Any]], first_id: Optional[int], ids: Optional[List[int]] = None
                ) -> List[tuple]:
        """Rows as query_log tuples (id first), ids ``first_id``... (or ``ids``); their sums added to the
        pending ones."""
        strings, string = self._strings, self._string
        names, name_id = self._names, self._name
        sets, answer_set = self._sets, self._answer_set
        combos, combo_id = self._combos, self._combo
        get = self._get
        j_str, j_name, j_answers, j_ms, j_after = self._j_str, self._j_name, self._j_answers, self._j_ms, self._j_after
        pairs, new_pairs = self._pairs, self._new_pairs
        rollups, pdns = self._roll, self._pdns
        live = self.live
        j_src = self._j["src"]
        j_shape = 1 + len(self._row_pos)
        j_sender = j_shape + 1
        clients = self._clients
        out = []
        min_ts = self._pending_min_ts
        for n, r in enumerate(rows):
            v = [first_id + n if ids is None else ids[n], *get(r)]
            for combo in combos:
                cv = combo[2](r)
                if cv.count(None) == len(cv):
                    v.append(None)
                else:
                    v.append(combo[3].get(cv) or combo_id(combo, cv))
            for j in j_str:
                x = v[j]
                if x is not None:
                    v[j] = strings.get(x) or string(x)
            qn = v[j_name]
            if qn is not None:
                qn = v[j_name] = names.get(qn) or name_id(qn)
            ans = v[j_answers]
            aset = None
            if ans is not None:
                aset = sets.get(ans) or answer_set(ans)
                v[j_answers] = aset[0]
            ts = v[1]
            if ts is None:  # the pipeline always sets it; a row without a time goes first in a log ordered by time
                ts = v[1] = 0.0
            for j in j_ms:
                x = v[j]
                if x is not None:
                    d = round(x * 1000)
                    if d / 1000 == x:
                        v[j] = d
            for j in j_after:
                x = v[j]
                if x is not None:
                    d = round((x - ts) * 1e6)
                    if ts + d / 1e6 == x:
                        v[j] = d
            out.append(v)
            # the sums, with texts as ids
            if min_ts is None or ts < min_ts:
                min_ts = ts
            hour = int(ts // 3600) * 3600
            status = r[_I_STATUS]
            lat = r[_I_LAT]
            # keyed by shape and sender ids here; _write_sums turns them into type, rcode, process and pod
            key = (hour, qn, v[j_shape], v[j_sender] if live else None)
            agg = rollups.get(key)
            if agg is None:
                rollups[key] = [1, int(status == "unanswered"), int(lat is not None), lat or 0.0, lat]
            else:
                agg[0] += 1
                if status == "unanswered":
                    agg[1] += 1
                if lat is not None:
                    agg[2] += 1
                    agg[3] += lat
                    if agg[4] is None or lat > agg[4]:
                        agg[4] = lat
            src = v[j_src]
            if src is not None:
                kk = (hour, src)
                clients[kk] = clients.get(kk, 0) + 1
            if aset is not None and aset[1]:
                sid = aset[0]
                p = pdns.get(sid)
                if p is None:
                    pdns[sid] = [1, ts, ts, _resolver(r, live), aset[1]]
                else:
                    p[0] += 1
                    if ts < p[1]:
                        p[1], p[3] = ts, _resolver(r, live)
                    elif ts > p[2]:
                        p[2] = ts
                if qn is not None and (sid, qn) not in pairs:
                    pairs.add((sid, qn))
                    new_pairs.extend((d, sid, qn) for _n, _t, d in aset[1])
        self._pending += len(rows)
        self._pending_min_ts = min_ts
        return out

    def _dims(self, table: str, columns: str, cid: Optional[int], cache: Dict[int, tuple]) -> tuple:
        """strings ids of ``columns`` of combination ``cid`` (0 for none), as the rollups key them."""
        if cid is None:
            return (0,) * (columns.count(",") + 1)
        found = cache.get(cid)
        if found is None:
            values = self.conn.execute(f"SELECT {columns} FROM {table} WHERE id = ?", (cid,)).fetchone()
            found = cache[cid] = tuple(0 if x is None else self._strings.get(x) or self._string(x) for x in values)
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
                # the oldest rows are the first of the table (ordered by ts, id): one range to delete
                if over:
                    sql, params = (f"SELECT ts, id FROM {LOG_TABLE} ORDER BY ts, id LIMIT 1 OFFSET ?",
                                   (PRUNE_CHUNK - 1,))
                elif before is not None:
                    sql, params = (f"SELECT ts, id FROM {LOG_TABLE} WHERE ts < ? ORDER BY ts, id LIMIT 1 OFFSET ?",
                                   (before, PRUNE_CHUNK - 1))
                else:
                    break
                edge = conn.execute(sql, params).fetchone()
                if edge is None:  # fewer than a chunk left to delete: up to the last one
                    edge = conn.execute(
                        f"SELECT ts, id FROM {LOG_TABLE}" + ("" if over else " WHERE ts < ?")
                        + " ORDER BY ts DESC, id DESC LIMIT 1", () if over else (before,)).fetchone()
                    if edge is None:
                        break
                n = conn.execute(f"DELETE FROM {LOG_TABLE} WHERE (ts, id) <= (?, ?)", edge).rowcount
                if not n:
                    break
                victims = range(n)
                last = edge[0]
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
            conn.executescript("PRAGMA incremental_vacuum(2000);")  # sqlite3_exec: every step (no-op unless INCREMENTAL)
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
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    old_table = objects.get("queries") == "table"
    if version == SCHEMA_VERSION and not old_table and LOG_TABLE in objects:
        if all({c.name for c in physical(t)[1]} <= set(_columns(conn, physical(t)[0])) for t in TABLES):
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
