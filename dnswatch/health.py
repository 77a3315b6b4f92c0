"""Liveness for the DaemonSet: the live loop touches a heartbeat file; ``dnswatch health`` fails when it goes stale.

The loop beats only after a poll of the kernel's buffers returns, so a file older than a few poll intervals
means capture has stopped: the loop is stuck, or watch has exited.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Tuple

BEAT_INTERVAL = 1.0  # seconds between writes: cheap (one utime), and far finer than a probe's period


class Heartbeat:
    def __init__(self, path: str, interval: float = BEAT_INTERVAL):
        self.path = path
        self.interval = interval
        self._next = 0.0
        with open(path, "a"):  # exists from the start: a probe before the first beat sees a fresh file
            pass
        os.utime(path)

    def beat(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            os.utime(self.path)
        except FileNotFoundError:  # removed under us: recreate, the probe reads only the time
            with open(self.path, "a"):
                pass

    def close(self) -> None:
        """watch ended: a stale heartbeat must not read as alive."""
        try:
            os.unlink(self.path)
        except OSError:
            pass


def check(path: str, max_age: float) -> Tuple[bool, str]:
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return False, f"no heartbeat at {path}: watch is not running (or runs without --heartbeat {path})"
    if age > max_age:
        return False, f"heartbeat {path} is {age:.0f} s old (limit {max_age:g} s): capture has stopped"
    return True, f"heartbeat {age:.1f} s old"
