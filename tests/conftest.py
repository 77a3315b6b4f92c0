"""Shared test helpers: the captures in pcaps/, their DNS ports, and replaying them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest
from click.testing import CliRunner

from dnswatch.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "pcaps"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def capture_files() -> List[Path]:
    return sorted(p for p in PCAPS.iterdir() if p.name.endswith(CAPTURE_SUFFIXES))


def ports_for(path: Path) -> Tuple[int, ...]:
    """DNS ports a capture uses: 53, plus the port named in the file name (udp_port5353.pcap)."""
    ports = [53]
    stem = path.name.split(".")[0]
    if "port" in stem:
        digits = stem.split("port", 1)[1].split("_")[0]
        if digits.isdigit():
            ports.append(int(digits))
    return tuple(ports)


def replay(db: Path, *files: Path, extra: Tuple[str, ...] = ()) -> None:
    ports = sorted({p for f in files for p in ports_for(f)})
    args = ["replay", *map(str, files), "--db", str(db), "--no-progress", *extra]
    for p in ports:
        args += ["--port", str(p)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def require_tool(name: str) -> str:
    """A tool CI installs: missing in CI is a failure (a broken install step), elsewhere a skip."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed, but CI must install it (.ci/run)")
        pytest.skip(f"{name} not installed")
    return path


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
