"""The liveness probe: `dnswatch health` passes while the heartbeat is fresh, fails once stale or gone."""
from __future__ import annotations

import os
import time

from dnswatch.cli import cli
from dnswatch.health import Heartbeat, check


def test_heartbeat_fresh_stale_and_gone(tmp_path):
    path = str(tmp_path / "hb")
    hb = Heartbeat(path, interval=1.0)
    assert check(path, 30)[0]
    old = time.time() - 100
    os.utime(path, (old, old))
    hb.beat(now=0.5)  # the first beat writes
    assert check(path, 30)[0]
    os.utime(path, (old, old))
    hb.beat(now=1.0)  # 0.5 s after the last write: no write
    ok, message = check(path, 30)
    assert not ok and "capture has stopped" in message
    hb.beat(now=2.0)
    assert check(path, 30)[0]
    hb.close()
    ok, message = check(path, 30)
    assert not ok and "watch is not running" in message


def test_health_command(runner, tmp_path):
    path = tmp_path / "hb"
    assert runner.invoke(cli, ["health", "--heartbeat", str(path)]).exit_code == 1
    Heartbeat(str(path))
    result = runner.invoke(cli, ["health", "--max-age", "5"], env={"DNSWATCH_HEARTBEAT": str(path)})
    assert result.exit_code == 0, result.output
    old = time.time() - 10
    os.utime(path, (old, old))
    result = runner.invoke(cli, ["health", "--heartbeat", str(path), "--max-age", "5"])
    assert result.exit_code == 1 and "capture has stopped" in result.output


class _QuietCapture:
    """A capture with no traffic: poll() waits out its timeout, as the kernel's ring buffer does."""

    def poll(self, timeout_ms):
        time.sleep(timeout_ms / 1000)
        return []

    def stats(self):
        return {}

    def close(self):
        pass


class _Pipeline:
    extra_dropped = 0

    def feed_all(self, frames):
        pass

    def tick(self):
        pass

    def record_counters(self, status):
        pass

    def finish(self, status):
        return status


def test_the_live_loop_beats_without_traffic():
    from dnswatch.watch import run_watch

    beats = []
    assert run_watch(_QuietCapture(), _Pipeline(), duration=0.5, heartbeat=beats.append) == "complete"
    assert len(beats) >= 3 and beats == sorted(beats)  # every housekeeping round (poll timeouts of 100 ms)
