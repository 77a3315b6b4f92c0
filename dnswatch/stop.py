"""Ctrl-C, SIGTERM and SIGHUP as a request to stop cleanly, for ``watch`` and ``replay``.

The signals set a flag that the loops check; they never raise. A ``KeyboardInterrupt`` raised while bcc runs
our perf callback is printed and dropped by ctypes (the callback's event with it), and one raised between
two statements of the shutdown skips the flush or the summary: with a flag, every way of stopping takes the
same path as the end of the input.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Dict, List, Optional

OUTPUT_CLOSED = "output closed"  # StopSignals.request's reason when the reader of our output went away
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignals:
    """While entered, the stop signals only record themselves (``requested``, ``signum``).

    A signal the process inherited as ignored (``nohup``, a background job's SIGINT) stays ignored. Repeated
    signals during the shutdown change nothing: the rows already captured are flushed and the summary printed
    (SIGKILL remains for a stuck shutdown)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.reason: Optional[str] = None  # a stop asked for without a signal (request)
        self._old: Dict[int, object] = {}
        self._on_stop: List[Callable[[], None]] = []

    def on_stop(self, action: Callable[[], None]) -> None:
        """Run ``action`` in the handler of the first signal (at once if one came already): for work that
        cannot wait for the loop to look at the flag, like closing the tap while a perf read is running."""
        self._on_stop.append(action)
        if self.requested:
            action()

    def request(self, reason: str) -> None:
        """Stop as a signal would, for a reason of the program's own (the reader of our output went away)."""
        if not self.requested:
            self.reason = reason
            for action in self._on_stop:
                action()

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.reason is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else (self.reason or "")

    def _handle(self, signum: int, _frame) -> None:
        if not self.requested:
            self.signum = signum
            for action in self._on_stop:
                action()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; the caller's own stay in force
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) == signal.SIG_IGN:
                continue
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
