"""The optional compiled path (dnswatch/speedups.py, scripts/build-speedups): the pure-Python switch, the
stale-build guard, what doctor says, and the core correctness tests run once more as pure Python."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_CI, ROOT
from dnswatch import speedups

# the correctness tests that also run as pure Python when this run uses the compiled path
CORE_TESTS = ["test_golden.py", "test_tshark_oracle.py", "test_lookups.py", "test_correlate.py",
              "test_replay_fast_path.py", "test_writer.py", "test_compiled.py", "test_ring.py", "test_reorder.py",
              "test_live_batch.py", "test_dns_fast.py"]
PROBE = ("import importlib, json, sys\nfrom dnswatch import speedups\nfrom dnswatch.doctor import check_compiled\n"
         "files = {n: importlib.import_module(n).__file__ for n in speedups.MODULES}\n"
         "print(json.dumps({'files': files, 'status': speedups.status, 'doctor': check_compiled().__dict__}))\n")


def _probe(package_root: Path, **env) -> dict:
    """Import every module of MODULES from the tree at ``package_root`` in a fresh interpreter: their files,
    speedups.status and doctor's check."""
    e = {k: v for k, v in os.environ.items() if k != speedups.PURE_ENV}
    e.update(env, PYTHONPATH=str(package_root))
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=package_root, env=e, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _copy_tree(tmp_path: Path) -> Path:
    """A copy of the package (with its build, if any), mtimes kept: the build is as current there as here."""
    shutil.copytree(ROOT / "dnswatch", tmp_path / "dnswatch", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _fake_build(root: Path, name: str = "dnswatch.frames") -> Path:
    """A manifest that lists ``name`` as built from its sources as they are, and an "extension" that is not
    one: loading it would fail, so a test passing shows it was not loaded."""
    build = root / "dnswatch" / "_compiled"
    build.mkdir(exist_ok=True)
    ext = build / speedups.extension_name(name)
    ext.write_bytes(b"not an ELF file")
    st = ext.stat()
    manifest = {"modules": {}}
    if (build / "manifest.json").exists():
        manifest = json.loads((build / "manifest.json").read_text())
    manifest["modules"][name] = {
        "extension": ext.name, "stat": [st.st_size, st.st_mtime_ns], "cython": "test",
        "sources": {rel: speedups.file_sha256(str(root / "dnswatch" / rel)) for rel in speedups.sources_of(name)},
    }
    (build / "manifest.json").write_text(json.dumps(manifest))
    return ext


def _compiled_here() -> bool:
    return speedups.describe()[0]


def test_the_build_is_in_use():
    """This run uses the compiled build of every module (CI installs the toolchain: a build missing there is a
    broken setup, not a reason to skip)."""
    complete, detail = speedups.describe()
    if speedups.pure_requested():
        pytest.skip(f"{speedups.PURE_ENV} is set")
    if not complete:
        if IN_CI:
            pytest.fail(f"CI must build the compiled path (scripts/setup runs scripts/build-speedups): {detail}")
        pytest.skip(f"no compiled build ({detail}): scripts/build-speedups")
    for name in speedups.MODULES:
        __import__(name)
        assert speedups.status[name][0] == "compiled", name
        assert sys.modules[name].__file__.endswith(speedups.EXT_SUFFIX)


def test_pure_python_switch_loads_every_module_from_its_py(tmp_path):
    root = _copy_tree(tmp_path)
    _fake_build(root)  # a build that the switch must not even look at
    out = _probe(root, **{speedups.PURE_ENV: "1"})
    for name in speedups.MODULES:
        assert out["files"][name] == str(root / "dnswatch" / os.path.relpath(speedups.source_path(name),
                                                                               speedups.PACKAGE_DIR))
        assert out["status"][name] == ["pure", f"{speedups.PURE_ENV}=1"]
    assert out["doctor"]["ok"] and out["doctor"]["detail"] == f"pure Python ({speedups.PURE_ENV}=1)"


def test_no_build_is_pure_python_and_doctor_says_so(tmp_path):
    root = _copy_tree(tmp_path)
    shutil.rmtree(root / "dnswatch" / "_compiled", ignore_errors=True)
    out = _probe(root)
    assert all(f.endswith(".py") for f in out["files"].values())
    assert out["doctor"]["detail"].startswith("pure Python (not built)")
    assert not out["doctor"]["ok"] and "scripts/build-speedups" in out["doctor"]["fix"]


def test_current_build_loads_and_an_edited_source_does_not(tmp_path):
    """A build matching its sources loads; once a .py or a .pxd changes, its module loads from the .py."""
    root = _copy_tree(tmp_path)
    if not _compiled_here():
        _fake_build(root)  # stands for a current build: it would be loaded, so only the stale half is tested
    else:
        out = _probe(root)
        assert out["status"]["dnswatch.frames"][0] == "compiled"
        assert out["files"]["dnswatch.frames"].endswith(speedups.EXT_SUFFIX)
        assert out["doctor"]["ok"] and out["doctor"]["detail"].startswith("compiled: frames")
    frames = root / "dnswatch" / "frames.py"
    frames.write_text(frames.read_text() + "\n# edited after the build\n")
    out = _probe(root)
    assert out["files"]["dnswatch.frames"] == str(frames)
    assert out["status"]["dnswatch.frames"] == ["pure", "stale: frames.py changed since the build"]
    assert not out["doctor"]["ok"] and "frames: stale: frames.py changed since the build" in out["doctor"]["detail"]
    if not _compiled_here():
        return
    # pipeline's build uses correlate's C types (it cimports them): correlate loading from its .py, so does it
    correlate = root / "dnswatch" / "correlate.py"
    correlate.write_text(correlate.read_text() + "\n# edited after the build\n")
    out = _probe(root)
    assert out["status"]["dnswatch.correlate"] == ["pure", "stale: correlate.py changed since the build"]
    assert out["status"]["dnswatch.pipeline"] == ["pure", "it uses correlate's C types, which is not compiled"]
    assert out["status"]["dnswatch.lookups"][0] == "compiled"  # the others stay as they were
    # a module given a .pxd, or whose .pxd changes, is stale too
    pxd = root / "dnswatch" / "lookups.pxd"
    pxd.write_text((pxd.read_text() if pxd.exists() else "") + "# edited after the build\n")
    how, why = _probe(root)["status"]["dnswatch.lookups"]
    assert how == "pure" and why in ("stale: its .pxd files changed since the build",
                                     "stale: lookups.pxd changed since the build")


def test_an_extension_other_than_the_built_one_is_not_loaded(tmp_path):
    root = _copy_tree(tmp_path)
    ext = _fake_build(root)
    ext.write_bytes(b"not the one the build made")
    out = _probe(root)
    assert out["files"]["dnswatch.frames"].endswith("frames.py")
    assert out["status"]["dnswatch.frames"] == ["pure", f"{ext.name} is not the one the build made"]


def test_built_files_are_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["dnswatch/_compiled/manifest.json", "dnswatch/_compiled/" + speedups.extension_name("dnswatch.frames"),
             "build/speedups/dnswatch.frames.c", "dnswatch/sources/pcap.c.so"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == paths


def test_core_tests_pass_as_pure_python():
    """The golden files, the tshark oracle, lookups, correlate, replay's fast path, the writer and live capture's ring
    reading, reorder window and batches once more with
    DNSWATCH_PURE_PYTHON=1, when this run is compiled (a pure run covers that path itself)."""
    if speedups.pure_requested() or not speedups.describe()[1].startswith("compiled"):
        pytest.skip("this run is pure Python already")
    env = dict(os.environ, **{speedups.PURE_ENV: "1"})
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not privileged", "-p", "no:cacheprovider",
                           *("tests/" + t for t in CORE_TESTS)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
