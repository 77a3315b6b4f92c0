"""``dnswatch top`` on a terminal: rendering a ``top.Snapshot`` with rich, and the keys of the full-screen view.

``render`` is the whole screen (also what ``--once`` prints, footer aside); ``TopScreen`` holds what the
keys change (grouping, sort, filter, pause) and reads them from a terminal in cbreak mode.
"""
from __future__ import annotations

import os
import select
import sys
import time
from datetime import datetime, timezone
from typing import Callable, List, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dnswatch.output import safe_text
from dnswatch.top import GROUPS, SORTS, Snapshot

BARS = "▁▂▃▄▅▆▇█"
RCODE_STYLE = {"NOERROR": "green", "NXDOMAIN": "yellow", "SERVFAIL": "red", "REFUSED": "magenta",
               "unanswered": "bold red"}
HEADER_LINES = 7  # title, rate, totals, latency, rcodes, window, blank: above the table


def sparkline(counts: List[int], width: int) -> str:
    if not counts:
        return ""
    counts = counts[-width:]
    top = max(counts)
    if top == 0:
        return BARS[0] * len(counts)
    return "".join(BARS[min(len(BARS) - 1, (c * (len(BARS) - 1) + top - 1) // top)] if c else " " for c in counts)


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _utc(ts: Optional[float]) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def render(snap: Snapshot, width: int, height: Optional[int] = None, footer: Optional[Text] = None,
           paused: bool = False):
    """The screen for ``snap`` at ``width`` columns (``height``: rows of keys that fit; None: every row)."""
    title = Text()
    title.append("dnswatch top", style="bold")
    title.append(f"  by {snap.by}  sort {snap.sort}")
    if snap.filter:
        title.append(f"  filter {safe_text(snap.filter)!r}")
    if snap.source:
        title.append(f"  {safe_text(snap.source)}")
    if paused:
        title.append("  PAUSED", style="reverse")

    rate = Text()
    rate.append(f"rate {snap.rate:,.1f} q/s" if snap.rate >= 10 else f"rate {snap.rate:.2f} q/s", style="bold")
    spark = sparkline(snap.spark, max(0, width - len(rate) - 2))
    if spark:
        rate.append("  ")
        rate.append(spark, style="cyan")

    if snap.by == "lookup":  # what the search paths cost first: a narrow screen cuts the end of the line
        wasted = 100.0 * snap.wasted / snap.lookup_queries if snap.lookup_queries else 0.0
        totals = Text(f"lookups {snap.lookups:,}  wasted {snap.wasted:,} of {snap.lookup_queries:,} queries "
                      f"({wasted:.1f}%)  clients {snap.distinct_keys:,}  total {snap.total:,}  "
                      f"unanswered {snap.unanswered:,}  losses {snap.losses:,}")
    else:
        totals = Text(f"total {snap.total:,}  unanswered {snap.unanswered:,}  losses {snap.losses:,}  "
                      f"{snap.by} keys {snap.distinct_keys:,}")
    if snap.rollup_hours:  # the rollups keep no latency distribution: no percentiles, the maximum instead
        latency = Text(f"latency ms  p50 -  p95 -  p99 -  max {_ms(snap.max_ms)}  (whole hours "
                       f"{_utc(snap.rollup_hours[0])} .. {_utc(snap.rollup_hours[1])} from hourly rollups)")
    else:
        latency = Text(f"latency ms  p50 {_ms(snap.p50_ms)}  p95 {_ms(snap.p95_ms)}  p99 {_ms(snap.p99_ms)}")

    mix = Text("rcodes ")
    total = snap.total or 1
    for i, (rcode, n) in enumerate(snap.rcodes.items()):
        if i:
            mix.append("  ")
        mix.append(f"{safe_text(rcode)} {100.0 * n / total:.1f}%", style=RCODE_STYLE.get(rcode, ""))

    if snap.first_ts is not None:
        window = Text(f"{_utc(snap.first_ts)} .. {_utc(snap.last_ts)} UTC", style="dim")
    else:
        window = Text("no queries yet", style="dim")
    lines = [title, rate, totals, latency, mix, window]
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
        line.truncate(width, overflow="ellipsis")

    table = Table(box=None, pad_edge=False, expand=False, show_edge=False, header_style="bold reverse",
                  width=width)
    lookups = snap.by == "lookup"
    table.add_column("client (lookups)" if lookups else snap.by, no_wrap=True, overflow="ellipsis", ratio=1,
                     min_width=12)
    if lookups:  # what each client's search path cost: its lookups' queries and the expansions wasted
        columns = ("lookups", "share%", "queries", "wasted", "wasted%", "unresolved", "p95 ms")
    else:
        columns = ("count", "share%", "NXDOMAIN", "SERVFAIL", "unanswered", "max ms" if snap.rollup_hours else "p95 ms")
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    rows = snap.keys if height is None else snap.keys[:max(0, height)]
    if not rows:
        table.add_row(Text("(no keys" + (" match the filter)" if snap.filter else ")"), style="dim"),
                      "", "", "", "", "", "")
    for k in rows:
        if lookups:
            cells = (f"{k.queries:,}", Text(f"{k.wasted:,}", style="yellow" if k.wasted else ""),
                     f"{k.wasted_pct:.1f}", Text(f"{k.unresolved:,}", style="red" if k.unresolved else ""),
                     _ms(k.p95_ms))
        else:
            cells = (Text(f"{k.nxdomain:,}", style="yellow" if k.nxdomain else ""),
                     Text(f"{k.servfail:,}", style="red" if k.servfail else ""),
                     Text(f"{k.unanswered:,}", style="bold red" if k.unanswered else ""),
                     _ms(k.max_ms if snap.rollup_hours else k.p95_ms))
        table.add_row(Text(safe_text(k.key)), f"{k.count:,}", f"{k.share:.1f}", *cells)
    parts = lines + [Text(""), table]
    if footer is not None:
        footer.no_wrap = True
        footer.truncate(width, overflow="ellipsis")
        parts.append(footer)
    return Group(*parts)


FOOTER_KEYS = [("b", "group"), ("s", "sort"), ("r", "reverse"), ("/", "filter"), ("p", "pause"), ("q", "quit")]


class TopScreen:
    """The full-screen view's state and keys. ``snapshot(by, sort, filter, reverse)`` gives the numbers."""

    def __init__(self, snapshot: Callable[..., Snapshot], by: str = "name", sort: str = "count",
                 filter: str = "", reverse: bool = False, interval: float = 1.0):
        self.snapshot = snapshot
        self.by, self.sort, self.filter, self.reverse = by, sort, filter, reverse
        self.paused = False
        self.typing: Optional[str] = None  # the filter being typed after '/'
        self.interval = interval
        self.quit = False
        self._frozen: Optional[Snapshot] = None

    def footer(self) -> Text:
        if self.typing is not None:
            return Text(f"filter: {self.typing}_   Enter apply  Esc cancel  (empty: no filter)", style="reverse")
        text = Text()
        for key, what in FOOTER_KEYS:
            text.append(key, style="reverse")
            text.append(f" {'resume' if key == 'p' and self.paused else what}  ")
        text.append(f"1-{len(GROUPS)} group", style="dim")
        return text

    def key(self, ch: str) -> None:
        """One key press."""
        if self.typing is not None:
            if ch in ("\r", "\n"):
                self.filter, self.typing = self.typing, None
            elif ch == "\x1b":
                self.typing = None
            elif ch in ("\x7f", "\b"):
                self.typing = self.typing[:-1]
            elif ch.isprintable():
                self.typing += ch
            return
        if ch in ("q", "Q", "\x03"):
            self.quit = True
        elif ch in ("b", "\t"):
            self.by = GROUPS[(GROUPS.index(self.by) + 1) % len(GROUPS)]
        elif ch == "B":
            self.by = GROUPS[(GROUPS.index(self.by) - 1) % len(GROUPS)]
        elif ch == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif ch == "r":
            self.reverse = not self.reverse
        elif ch == "/":
            self.typing = self.filter
        elif ch in ("p", " "):
            self.paused = not self.paused
            self._frozen = None
        elif ch in GROUPS_BY_KEY:
            self.by = GROUPS_BY_KEY[ch]

    def current(self, rows: Optional[int]) -> Snapshot:
        if self.paused and self._frozen is not None:
            snap = self._frozen
        else:
            snap = self.snapshot(by=self.by, sort=self.sort, filter=self.filter, reverse=self.reverse, limit=0)
            if self.paused:
                self._frozen = snap
        return snap

    def screen(self, console: Console):
        rows = max(1, console.size.height - HEADER_LINES - 3)
        snap = self.current(rows)
        return render(snap, console.size.width, rows, self.footer(), self.paused)


# digits pick a grouping directly: 1 name, 2 domain, ...
GROUPS_BY_KEY = {str(i + 1): g for i, g in enumerate(GROUPS)}


class Keyboard:
    """Single key presses from a terminal (cbreak mode, restored on exit)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.fd = self.stream.fileno()
        self._old = None

    def __enter__(self) -> "Keyboard":
        import termios
        import tty

        self._old = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc) -> None:
        import termios

        if self._old is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._old)

    def read(self, timeout: float) -> List[str]:
        keys = []
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        while ready:
            data = os.read(self.fd, 64)
            if not data:
                break
            keys.extend(data.decode("utf-8", "replace"))
            ready, _, _ = select.select([self.fd], [], [], 0)
        return keys


class Interactive:
    """Drives a ``TopScreen`` on the terminal: ``step(timeout)`` reads keys for up to ``timeout`` seconds and
    redraws when one came or the refresh interval passed. Returns False once the user quit."""

    def __init__(self, screen: TopScreen, console: Optional[Console] = None):
        self.screen = screen
        self.console = console or Console()
        self._live: Optional[Live] = None
        self._keyboard: Optional[Keyboard] = None
        self._next = 0.0

    def __enter__(self) -> "Interactive":
        self._keyboard = Keyboard().__enter__()
        self._live = Live(console=self.console, screen=True, auto_refresh=False, transient=True)
        self._live.__enter__()
        self.redraw()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
        if self._keyboard is not None:
            self._keyboard.__exit__(*exc)

    def redraw(self) -> None:
        assert self._live is not None
        self._live.update(self.screen.screen(self.console), refresh=True)
        self._next = time.monotonic() + self.screen.interval

    def step(self, timeout: float = 0.0) -> bool:
        assert self._keyboard is not None
        keys = self._keyboard.read(timeout)
        for ch in keys:
            self.screen.key(ch)
        if self.screen.quit:
            return False
        if keys or time.monotonic() >= self._next:
            self.redraw()
        return True
