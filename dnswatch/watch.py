"""The live loop: kernel frames into the shared pipeline until Ctrl-C, SIGTERM, SIGHUP, --duration or --count.

A clean stop (any of those) detaches from the sockets, stores every row the kernel had already captured and
records the counters, losses included. An error records status 'failed' with its reason.
"""
from __future__ import annotations

import fnmatch
import gc
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from dnswatch import netns
from dnswatch.correlate import I_COMM, I_CONTAINER, I_CONTAINER_ID, I_PID, I_POD, I_POD_NS, I_QNAME, I_QTYPE, Row
from dnswatch.pipeline import Pipeline, Summary
from dnswatch.schema import QUERY_COLUMNS
from dnswatch.stop import OUTPUT_CLOSED, StopSignals

POLL_MS = 100
HELD_POLL_MS = 20
HOUSEKEEPING_INTERVAL = 0.1
# The cyclic collector. The capture loop makes no reference cycles (see pipeline._pause_gc), but what it keeps
# (waiting queries, held lookups, row templates: hundreds of thousands of objects at 40k queries/s) would be
# scanned again by the collections each poll's allocations set off (~15% of the loop's CPU). So the collector is
# paused from a poll's ring read to the end of its feed, what survives the poll is then frozen (gc.freeze: no longer
# scanned, still freed by reference counting as usual; the allocation count starts again from 0), and every
# GC_FULL_EVERY seconds all of it is unfrozen and collected once, which frees any cycle a library made.
GC_FULL_EVERY = 60.0


@dataclass
class RowFilter:
    """``watch`` filters: a row passes when it matches every option given (any value within one option)."""

    pids: Sequence[int] = ()
    comms: Sequence[str] = ()
    names: Sequence[str] = ()
    types: Sequence[str] = ()
    pods: Sequence[str] = ()
    pod_namespaces: Sequence[str] = ()
    containers: Sequence[str] = ()  # name or id prefix
    extra: List[Callable[[Row], bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pids = frozenset(self.pids)
        self.comms = frozenset(self.comms)
        self.types = frozenset(t.upper() for t in self.types)
        self.names = [n.lower() for n in self.names]
        self.pods = frozenset(self.pods)
        self.pod_namespaces = frozenset(self.pod_namespaces)
        self.containers = tuple(self.containers)

    @property
    def active(self) -> bool:
        return bool(self.pids or self.comms or self.names or self.types or self.pods or self.pod_namespaces
                    or self.containers or self.extra)

    def __call__(self, row: Row) -> bool:
        if self.pids and row[I_PID] not in self.pids:
            return False
        if self.comms and row[I_COMM] not in self.comms:
            return False
        if self.pods and row[I_POD] not in self.pods:
            return False
        if self.pod_namespaces and row[I_POD_NS] not in self.pod_namespaces:
            return False
        if self.containers and not any(
                c == row[I_CONTAINER] or (row[I_CONTAINER_ID] or "").startswith(c) for c in self.containers):
            return False
        if self.types and (row[I_QTYPE] or "") not in self.types:
            return False
        if self.names:
            name = (row[I_QNAME] or "").lower()
            if not any(fnmatch.fnmatchcase(name, n) if any(c in n for c in "*?[") else n in name for n in self.names):
                return False
        return all(f(row) for f in self.extra)


def row_dict(row: Row) -> Dict[str, object]:
    return dict(zip(QUERY_COLUMNS, row))


class NetnsTracker:
    """``--all-netns``: rescan the host's network namespaces, capture in new ones, release vanished ones
    (our sockets would otherwise keep a deleted pod's namespace alive). Others keep capturing throughout."""

    def __init__(self, capture, interval: float = 2.0, discover: Callable[[], Dict[int, str]] = netns.discover,
                 on_change: Optional[Callable[[str, int, Optional[str]], None]] = None):
        self.capture = capture
        self.on_change = on_change  # ("added" | "removed", inode, path): watch notes it on stderr
        self.interval = interval
        self.discover = discover
        self.added = 0
        self.removed = 0
        self._next = time.monotonic() + interval

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        found = self.discover()
        watched = set(self.capture.netns_inodes())
        for inode, path in found.items():
            if inode not in watched:
                try:
                    if self.capture.add_netns(path) is not None:
                        self.added += 1
                        if self.on_change is not None:
                            self.on_change("added", inode, path)
                except Exception:  # noqa: BLE001 - the process left, taking its namespace: try again next scan
                    continue
        for inode in watched - set(found):
            self.capture.remove_netns(inode)
            self.removed += 1
            if self.on_change is not None:
                self.on_change("removed", inode, None)


def run_watch(
    capture,
    pipeline: Pipeline,
    duration: Optional[float] = None,
    count: Optional[int] = None,
    shown: Callable[[], int] = lambda: 0,
    tracker: Optional[NetnsTracker] = None,
    stop: Optional[StopSignals] = None,
    on_tick: Optional[Callable[[], bool]] = None,
    heartbeat: Optional[Callable[[float], None]] = None,
) -> Summary:
    """Poll ``capture`` (a ``sources.live.LiveCapture``) into ``pipeline``. Returns the final counters.
    ``on_tick`` (top's screen) is called with the housekeeping; returning False stops.

    Ctrl-C, SIGTERM and SIGHUP end it like ``--duration`` does (``stop``: the caller's, entered around its own
    shutdown too; by default one for this call). Any other way out records status 'failed' before raising."""
    own_stop = stop is None
    if stop is None:
        stop = StopSignals().__enter__()
    if hasattr(capture, "detach"):
        stop.on_stop(capture.detach)  # a perf read under a flood ends only once nothing new comes in
    deadline = time.monotonic() + duration if duration else None
    # a poll's frames in one batch (Pipeline.feed_live); a stand-in pipeline may only have feed_all
    feed = getattr(pipeline, "feed_live", None) or pipeline.feed_all
    status = "complete"
    last_record = 0.0
    next_housekeeping = 0.0
    next_full_gc = time.monotonic() + GC_FULL_EVERY
    try:
        try:
            while not stop.requested:
                # rows held for their NAT copy (lookups) go on within HOLD_LIVE even when no packet comes
                lookups = getattr(pipeline, "lookups", None)
                held = lookups is not None and lookups.holding
                collecting = gc.isenabled()
                gc.disable()  # from the ring read to the freeze: no collection scans the poll's young objects
                try:
                    feed(list(capture.poll(HELD_POLL_MS if held else POLL_MS)))
                    gc.freeze()
                finally:
                    if collecting:
                        gc.enable()
                now = time.monotonic()
                # kernel counters, timeouts, flushes and rescans: every 100 ms, not after every wakeup
                if now >= next_housekeeping:
                    next_housekeeping = now + HOUSEKEEPING_INTERVAL
                    _kernel_counts(capture, pipeline)
                    pipeline.tick()
                    if tracker is not None:
                        tracker.tick()
                    if on_tick is not None and not on_tick():
                        break
                    if heartbeat is not None:  # after a poll returned: the liveness probe reads this
                        heartbeat(now)
                    if now - last_record >= 1.0:  # counters stay current in the log, even if we are killed
                        pipeline.record_counters("running")
                        last_record = now
                    if now >= next_full_gc:
                        next_full_gc = now + GC_FULL_EVERY
                        gc.unfreeze()
                        gc.collect()
                if deadline is not None and now >= deadline:
                    break
                if count is not None and shown() >= count:
                    break
            if stop.requested:  # by a signal; the reader of our output going away ends it like --count
                status = "complete" if stop.reason == OUTPUT_CLOSED else "interrupted"
        except KeyboardInterrupt:  # from a SIGINT handler of the caller's (outside the main thread)
            status = "interrupted"
        except BaseException as exc:
            _record_failure(capture, pipeline, exc)
            raise
        # detach, then everything the kernel had already kept (and the reorder window holds): stored and counted
        feed(list(_last_frames(capture)))
        _kernel_counts(capture, pipeline)
        capture.close()
        return pipeline.finish(status)
    finally:
        gc.unfreeze()  # what the loop froze is the collector's again
        capture.close()
        if own_stop:
            stop.__exit__(None, None, None)


def _record_failure(capture, pipeline: Pipeline, exc: BaseException) -> None:
    """An error ends the capture: keep what can be kept, mark it 'failed' with the reason (best effort: the
    error may be the log itself)."""
    pipeline.summary.error = f"{type(exc).__name__}: {exc}"
    try:
        pipeline.feed_all(_last_frames(capture))
        _kernel_counts(capture, pipeline)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
    try:
        pipeline.finish("failed")
    except Exception:  # noqa: BLE001
        pass


def _last_frames(capture) -> List:
    """What the capture still has once it stops taking packets (``LiveCapture.stop``; a simpler source: its
    last poll, and its reorder window)."""
    if hasattr(capture, "stop"):
        return capture.stop()
    frames = list(capture.poll(0))
    if hasattr(capture, "drain"):
        frames += capture.drain()
    return frames


def _kernel_counts(capture, pipeline: Pipeline) -> None:
    """The kernel's counters into the pipeline's summary: its losses, and the copies it dropped (keep contract
    rule 6: a packet seen in several namespaces goes up once), which count as duplicates, as user space's do."""
    stats = capture.stats()
    pipeline.source_losses, pipeline.source_lost_responses = _losses(capture, stats)
    pipeline.source_duplicates = int(stats.get("kernel_copies", 0))


def _losses(capture, stats: Optional[Dict[str, int]] = None) -> Tuple[Dict[str, int], Dict[str, int]]:
    """The kernel's losses by stage, and how many of them were responses. A full perf buffer is counted by the
    filter (emit_failures) and again by the buffer's lost records (lost_samples): the same events, so only the
    first is used."""
    if stats is None:
        stats = capture.stats()
    return ({"kernel_perf_buffer": int(stats.get("emit_failures", 0)),
             "kernel_short_payload": int(stats.get("kernel_skip_short", 0)),
             "kernel_too_many_questions": int(stats.get("kernel_skip_qdcount", 0))},
            {"kernel_perf_buffer": int(stats.get("emit_failures_responses", 0))})
