"""Checks of a log's derived tables against its rows, shared by the tests of the write path."""
from __future__ import annotations

import multiprocessing
import sqlite3
from contextlib import contextmanager
from typing import Callable, Iterator, List, Tuple


def rollups_and_rows(conn: sqlite3.Connection) -> Tuple[List[tuple], List[tuple]]:
    """(the hourly rollups, the same sums recomputed from the queries), each sorted: equal when the write
    path summed every row once."""
    raw = conn.execute(
        "select cast(ts / 3600 as int) * 3600, qname collate binary, qtype, rcode, comm, pod_namespace, pod, count(*), "
        "sum(status = 'unanswered'), count(latency_ms), round(coalesce(sum(latency_ms), 0), 6), max(latency_ms) "
        "from queries group by 1, 2, 3, 4, 5, 6, 7 order by 1, 2, 3, 4, 5, 6, 7").fetchall()
    rolled = conn.execute(
        "select hour, qname, qtype, rcode, comm, pod_namespace, pod, count, unanswered, answered, "
        "round(latency_sum, 6), latency_max from rollups order by 1, 2, 3, 4, 5, 6, 7").fetchall()
    return sorted(rolled, key=repr), sorted(raw, key=repr)


@contextmanager
def writer_running(target: Callable, db: str) -> Iterator[multiprocessing.Process]:
    """``target(db, started, stop)`` in a forked process (a watch writing ``db``) from its first commit until the
    block ends."""
    ctx = multiprocessing.get_context("fork")
    started, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=target, args=(db, started, stop))
    proc.start()
    try:
        assert started.wait(20)
        yield proc
    finally:
        stop.set()
        proc.join(30)
