"""The log's files are the writer's own, mode 0600 (root, with a second user: nobody). Names someone else
prepared are refused (symbolic links, dangling ones included; files of another user; hard links; not regular
files); an existing log, -wal or -shm that others may read is tightened, with a warning."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import IN_CI, PCAPS
from dnswatch.store import Store, StoreError

NOBODY = 65534
DIG = PCAPS / "udp_v4_dig.pcap"


@pytest.fixture
def shared():
    """A folder like /tmp (sticky, everyone may create names in it)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if IN_CI:
            pytest.fail("CI runs as root, with setpriv")
        pytest.skip("needs root and setpriv (a second user)")
    d = Path(tempfile.mkdtemp(prefix="dnswatch-shared-"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=30)


def nobody_creates(path: Path, mode: int = 0o666, data: bytes = b"") -> None:
    code = f"import os; fd = os.open({str(path)!r}, os.O_CREAT | os.O_WRONLY, 0); os.write(fd, {data!r}); " \
           f"os.fchmod(fd, {mode}); os.close(fd)"
    out = as_nobody(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert path.stat().st_uid == NOBODY


def replay(db: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnswatch", "replay", str(DIG), "--db", str(db), *extra],
                          capture_output=True, text=True, timeout=60, cwd=str(Path(__file__).parent.parent))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_log_and_its_wal_and_shm_are_private(shared):
    db = shared / "new.db"
    proc = subprocess.Popen([sys.executable, "-m", "dnswatch", "replay", "-", "--db", str(db), "--no-progress"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(DIG.read_bytes())  # a pcap, and then nothing yet: replay waits with its files open
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while not (Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            st = path.lstat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid()), path
            out = as_nobody("cat", str(path))
            assert out.returncode != 0 and "Permission denied" in out.stderr, path
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()


def test_the_live_store_makes_private_files_too(shared):
    db = shared / "live.db"
    with Store(str(db)) as store:
        store.start_capture("live", "test", {})
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            st = path.lstat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid()), path


def test_an_existing_log_readable_by_others_is_tightened(shared):
    db = shared / "old.db"
    assert replay(db).returncode == 0
    db.chmod(0o644)
    for suffix in ("-wal", "-shm"):  # as a run of an older dnswatch would have left them
        Path(f"{db}{suffix}").touch(0o666)
        os.chmod(f"{db}{suffix}", 0o666)
    out = replay(db)
    assert out.returncode == 0, out.stderr
    for path, was in ((db, "0644"), (f"{db}-wal", "0666"), (f"{db}-shm", "0666")):
        assert f"Warning: {path}: mode was {was}, which let others read the log; changed to 0600" in out.stderr
    assert _mode(db) == 0o600
    assert "24 frames" in out.stdout


@pytest.mark.parametrize("dangling", [True, False])
def test_a_symbolic_link_is_not_followed(shared, dangling):
    target = shared / "target.db"
    if not dangling:
        target.write_bytes(b"")
        target.chmod(0o600)
    db = shared / "link.db"
    db.symlink_to(target)
    out = replay(db)
    assert out.returncode == 1 and "is a symbolic link" in out.stderr and "Traceback" not in out.stderr
    assert target.exists() is not dangling and (dangling or target.stat().st_size == 0)
    assert sorted(p.name for p in shared.iterdir()) == sorted(["link.db"] + ([] if dangling else ["target.db"]))


def test_a_file_of_another_user_is_refused(shared):
    db = shared / "trap.db"
    nobody_creates(db, 0o666)  # the attack: root's log into a file nobody can read
    out = replay(db)
    assert out.returncode == 1, out.stdout
    assert f"{db}: belongs to nobody (uid {NOBODY}), not to root (uid 0)" in out.stderr
    assert db.stat().st_size == 0 and sorted(p.name for p in shared.iterdir()) == ["trap.db"]
    with pytest.raises(StoreError, match="belongs to nobody"):
        Store(str(db))  # watch's store


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_wal_or_shm_of_another_user_is_refused(shared, suffix):
    db = shared / "log.db"
    assert replay(db).returncode == 0
    rows_before = db.stat().st_size
    nobody_creates(Path(f"{db}{suffix}"), 0o666)
    out = replay(db)
    assert out.returncode == 1 and f"{db}{suffix}: belongs to nobody" in out.stderr, out.stderr
    assert Path(f"{db}{suffix}").stat().st_size == 0 and db.stat().st_size == rows_before


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_wal_or_shm_symbolic_link_is_refused(shared, suffix):
    db = shared / "log.db"
    assert replay(db).returncode == 0
    Path(f"{db}{suffix}").symlink_to(shared / "elsewhere")
    out = replay(db)
    assert out.returncode == 1 and f"{db}{suffix}: is a symbolic link" in out.stderr
    assert not (shared / "elsewhere").exists()


def test_a_second_hard_link_is_refused(shared):
    db = shared / "log.db"
    assert replay(db).returncode == 0
    os.link(db, shared / "other-name.db")
    out = replay(db)
    assert out.returncode == 1 and "has 2 names (hard links)" in out.stderr


def test_not_a_regular_file_is_refused(shared):
    db = shared / "fifo.db"
    os.mkfifo(db)
    out = replay(db)  # and does not hang opening it
    assert out.returncode == 1 and "is not a regular file" in out.stderr


@pytest.mark.privileged
def test_replay_onto_a_full_disk_counts_what_was_stored_and_ends_its_capture(tmp_path, runner):
    """A log on a 3 MB tmpfs: replay ends with the disk-full error, its summary counts the rows the log holds (not
    the rows sent to the writer process) and the capture is 'failed', not left 'running'."""
    import re
    import sqlite3

    import hostile
    from dnswatch.cli import cli

    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("privileged tests run as root in CI")
        pytest.skip("mounting a tmpfs needs root")
    pcap = tmp_path / "many.pcap"
    with open(pcap, "wb") as f:
        hostile.write_pcap(f, hostile.frames_queries(60000))
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(full)], check=True)
    try:
        db = full / "f.db"
        result = runner.invoke(cli, ["replay", str(pcap), "--db", str(db), "--no-progress"])
        assert result.exit_code == 1, result.output
        assert "database or disk is full" in result.output
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        stored = conn.execute("select count(*) from queries").fetchone()[0]
        statuses = [r[0] for r in conn.execute("select status from captures")]
        conn.close()
        assert 0 < stored and f" {stored:,} rows," in result.output, (stored, result.output)
        assert re.search(r"[\d,]+ rows", result.output).group(0) == f"{stored:,} rows"
        assert statuses == ["failed"]
    finally:
        subprocess.run(["umount", str(full)], check=True)
