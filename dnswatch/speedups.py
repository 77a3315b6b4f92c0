"""The optional compiled path: Cython builds of the hot modules, used only when they match the source.

``scripts/build-speedups`` (run by scripts/setup) compiles MODULES into dnswatch/_compiled/ and writes a
manifest there: per module, its extension file and the sha256 of every source it was built from (its .py,
its .pxd and the .pxd files that one cimports). ``install()`` (from dnswatch/__init__.py) puts a finder in front of Python's
own for MODULES: a module loads from its extension only if the manifest lists it, the extension is the one
the manifest names (same size and mtime), and every source still hashes as it did. Otherwise it loads from
its .py, so an edited source never runs as stale compiled code. DNSWATCH_PURE_PYTHON=1 loads every module
from its .py. ``describe()`` says which path each module took (``dnswatch doctor`` prints it).

The extensions live apart from the sources (not beside them), so that no other import path can pick one up.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

# the modules that pay for compiling: replay's decode process (and watch's), live capture's ring reading, and dns
# for its fast reader (a message that misses the cache: 4.4 us pure, 2.4 us compiled). Not built, as they were no
# faster compiled: the writer's (layout, store: sqlite3, marshal and map() take its time; bench/writer --pure),
# enrich (bench/live-inproc: 1.00x), sources.pcap (bytes operations).
MODULES = (
    "dnswatch.frames",
    "dnswatch.correlate",
    "dnswatch.lookups",
    "dnswatch.pipeline",
    "dnswatch.sources.ring",
    "dnswatch.dns",
)
PURE_ENV = "DNSWATCH_PURE_PYTHON"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(PACKAGE_DIR, "_compiled")
MANIFEST = os.path.join(BUILD_DIR, "manifest.json")
EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # this interpreter's (.cpython-311-x86_64-linux-gnu.so)

# module -> ("compiled", extension path) or ("pure", why), for each module of MODULES imported so far
status: Dict[str, Tuple[str, str]] = {}


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def source_path(name: str) -> str:
    return os.path.join(PACKAGE_DIR, *name.split(".")[1:]) + ".py"


def extension_name(name: str) -> str:
    return name + EXT_SUFFIX


def _pxd_cimports(name: str) -> List[str]:
    """The dnswatch modules the module's .pxd cimports (``from dnswatch.x cimport ...``, ``cimport dnswatch.x``)."""
    try:
        with open(source_path(name)[:-3] + ".pxd") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return sorted({w[1] for w in map(str.split, lines) if len(w) >= 2 and w[1].startswith("dnswatch.") and (
        w[0] == "cimport" or len(w) >= 3 and w[0] == "from" and w[2] == "cimport")})


def cimports_of(name: str) -> List[str]:
    """The modules of MODULES whose .pxd the module's .pxd cimports: its build uses their C types, so it loads
    compiled only when they do too."""
    return [dep for dep in _pxd_cimports(name) if dep in MODULES]


def sources_of(name: str) -> List[str]:
    """What a module's extension is built from (paths relative to the package): its .py, its .pxd if it has
    one, and the .pxd files that one cimports (model.pxd's C helpers too, whose module is not compiled)."""
    py = source_path(name)
    out = [os.path.relpath(py, PACKAGE_DIR)]
    if os.path.exists(py[:-3] + ".pxd"):
        out.append(os.path.relpath(py[:-3] + ".pxd", PACKAGE_DIR))
    out += sorted(os.path.relpath(source_path(dep)[:-3] + ".pxd", PACKAGE_DIR) for dep in _pxd_cimports(name)
                  if os.path.exists(source_path(dep)[:-3] + ".pxd"))
    return out


def file_sha256(path: str) -> Optional[str]:
    import hashlib

    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def read_manifest() -> Optional[dict]:
    try:
        with open(MANIFEST) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("modules"), dict) else None


class _Build:
    """The build as it is now: which of MODULES may load compiled, and why not for the others."""

    def __init__(self) -> None:
        self._manifest: Optional[dict] = None
        self._read = False
        self._hashes: Dict[str, Optional[str]] = {}

    def _hash(self, rel: str) -> Optional[str]:
        if rel not in self._hashes:
            self._hashes[rel] = file_sha256(os.path.join(PACKAGE_DIR, rel))
        return self._hashes[rel]

    def choose(self, name: str) -> Tuple[str, str]:
        """("compiled", extension path) or ("pure", why)."""
        if pure_requested():
            return "pure", f"{PURE_ENV}={os.environ[PURE_ENV]}"
        if not self._read:
            self._manifest, self._read = read_manifest(), True
        if self._manifest is None:
            return "pure", "not built"
        entry = self._manifest["modules"].get(name)
        if not isinstance(entry, dict):
            return "pure", "not in the build (it failed to compile or import)"
        ext = os.path.join(BUILD_DIR, extension_name(name))
        if entry.get("extension") != os.path.basename(ext):
            return "pure", f"built for another Python ({entry.get('extension')})"
        try:
            st = os.stat(ext)
        except OSError:
            return "pure", f"{os.path.basename(ext)} is missing"
        if [st.st_size, st.st_mtime_ns] != entry.get("stat"):
            return "pure", f"{os.path.basename(ext)} is not the one the build made"
        built = entry.get("sources") or {}
        now = sources_of(name)
        if sorted(built) != sorted(now):
            return "pure", "stale: its .pxd files changed since the build"
        for rel in now:
            if self._hash(rel) != built[rel]:
                return "pure", f"stale: {rel} changed since the build"
        for dep in cimports_of(name):
            if self.choose(dep)[0] != "compiled":
                return "pure", f"it uses {dep.replace('dnswatch.', '')}'s C types, which is not compiled"
        return "compiled", ext


class _Finder:
    """A meta path finder for MODULES only: the extension when the build is current, else the .py."""

    def __init__(self) -> None:
        self.build = _Build()

    def find_spec(self, name, path=None, target=None):
        if name not in MODULES:
            return None
        source = source_path(name)
        if not os.path.exists(source):
            return None  # not this tree (an odd install): the ordinary import decides
        how, where = self.build.choose(name)
        status[name] = (how, where)
        if how == "compiled":
            loader = importlib.machinery.ExtensionFileLoader(name, where)
            return importlib.util.spec_from_file_location(name, where, loader=loader)
        return importlib.util.spec_from_file_location(name, source)

    def invalidate_caches(self) -> None:
        self.build = _Build()


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def describe() -> Tuple[bool, str]:
    """(compiled path complete?, one line saying which path each module takes). Asks the finder about every
    module of MODULES, imported or not."""
    finder = next((f for f in sys.meta_path if isinstance(f, _Finder)), None) or _Finder()
    choices = {name: status.get(name) or finder.build.choose(name) for name in MODULES}
    short = {name: name.replace("dnswatch.", "") for name in MODULES}
    compiled = [short[n] for n, (how, _) in choices.items() if how == "compiled"]
    pure = {n: why for n, (how, why) in choices.items() if how == "pure"}
    if not pure:
        return True, f"compiled: {', '.join(compiled)}"
    reasons: Dict[str, List[str]] = {}
    for n, why in pure.items():
        reasons.setdefault(why, []).append(short[n])
    if not compiled:
        if len(reasons) == 1:
            return False, f"pure Python ({next(iter(reasons))})"
    why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in reasons.items())
    return False, (f"compiled: {', '.join(compiled)}; " if compiled else "") + f"pure Python: {why}"
