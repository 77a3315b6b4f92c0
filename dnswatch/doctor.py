"""Can live capture work here? ``run_checks()`` answers item by item; the CLI formats the result."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

# capability numbers (linux/capability.h)
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: Optional[str] = None


def _cap_eff() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def check_privileges() -> Check:
    caps = _cap_eff()
    if caps is None:
        return Check("privileges", os.geteuid() == 0, "cannot read CapEff from /proc/self/status",
                     None if os.geteuid() == 0 else "run as root")

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    sys_admin = has(CAP_SYS_ADMIN)
    need = {
        "CAP_BPF": has(CAP_BPF) or sys_admin,
        "CAP_NET_RAW": has(CAP_NET_RAW),
        "CAP_PERFMON": has(CAP_PERFMON) or sys_admin,
    }
    missing = [k for k, v in need.items() if not v]
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if not missing:
        return Check("privileges", True, f"{who}; CAP_BPF, CAP_NET_RAW, CAP_PERFMON effective")
    return Check("privileges", False, f"{who}; missing {', '.join(missing)}",
                 "run as root, or grant " + ", ".join(missing) + " (setcap / container securityContext)")


def check_bcc() -> Check:
    from dnswatch.sources.live import LiveCaptureError, import_bcc

    try:
        bcc = import_bcc()
    except LiveCaptureError as e:
        return Check("bcc", False, e.problem, e.fix)
    version = getattr(bcc, "__version__", "?")
    return Check("bcc", True, f"bcc {version} ({os.path.dirname(bcc.__file__)})")


def _uts_release(tree: Path) -> Optional[str]:
    """The kernel release a header tree was generated for (include/generated/utsrelease.h)."""
    try:
        text = (tree / "include/generated/utsrelease.h").read_text()
    except OSError:
        return None
    parts = text.split('"')
    return parts[1] if len(parts) > 2 else None


def check_headers() -> Check:
    from dnswatch.sources.live import BUNDLED_HEADERS_ENV, headers_choice

    d, whose = headers_choice()
    fix = ("apt-get install linux-headers-$(uname -r) (Debian: linux-headers-amd64, then "
           "ln -sfn /usr/src/linux-headers-<version>-amd64 /lib/modules/$(uname -r)/build)")
    if os.environ.get(BUNDLED_HEADERS_ENV):
        fix = f"the image's own headers ({os.environ[BUNDLED_HEADERS_ENV]}) are missing or damaged: rebuild the image"
    if d.is_symlink() and not d.exists():
        return Check("kernel headers", False, f"{d} is a dangling link to {os.readlink(d)}", fix)
    if not d.exists():
        return Check("kernel headers", False, f"{d} is missing", fix)
    target = os.path.realpath(d)
    ver = os.uname().release
    built_for = _uts_release(Path(target)) or os.path.basename(target).replace("linux-headers-", "")
    note = ""
    if built_for != ver:
        note = f" (headers {built_for} for kernel {ver}: fine, the filter needs only stable uapi headers)"
    if not (Path(target) / "include").is_dir() and not (Path(target) / "Makefile").exists():
        return Check("kernel headers", False, f"{d} -> {target} has no headers", fix)
    if whose == "image":
        return Check("kernel headers", True, f"the image's own, {target}: the node has none at "
                                             f"/lib/modules/{ver}/build{note}")
    if whose == "BCC_KERNEL_SOURCE":
        return Check("kernel headers", True, f"BCC_KERNEL_SOURCE={d}{note}")
    return Check("kernel headers", True, f"the node's, {d} -> {target}{note}")


def check_btf() -> Check:
    p = Path("/sys/kernel/btf/vmlinux")
    if p.exists():
        return Check("BTF", True, f"{p} present")
    return Check("BTF", False, f"{p} missing (not needed by the filter; needed for future CO-RE features)",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def check_filter() -> Check:
    """Compile and load the real filter; report which task helpers it got."""
    from dnswatch.sources.bpf_testrun import TASK_HELPERS
    from dnswatch.sources.live import LiveCaptureError, load_filter

    try:
        f = load_filter((53,), False)
    except LiveCaptureError as e:
        return Check("eBPF filter", False, e.problem, e.fix)
    except Exception as e:  # anything unexpected still belongs in the report
        return Check("eBPF filter", False, f"{e.__class__.__name__}: {e}", None)
    try:
        have = [name for bit, (name, _) in TASK_HELPERS.items() if f.task_meta & bit]
        if f.task_meta == sum(TASK_HELPERS):
            return Check("eBPF filter", True, "compiles and loads; task helpers: " + ", ".join(have))
        detail = "compiles and loads; " + (f.fallback or "some task helpers unavailable")
        detail += "; task helpers: " + (", ".join(have) if have else "none (no pid/comm/uid/cgroup in records)")
        return Check("eBPF filter", True, detail, "a kernel >= 6.10 lets socket filters read the current task")
    finally:
        f.close()


def check_rings() -> Check:
    """The kernel ring buffers watch reads, sized as the loader sizes them (sources/live.py)."""
    from dnswatch.sources.live import MAX_RINGS, default_page_cnt, ring_count, ring_pages

    rings, pages = ring_count(), ring_pages(default_page_cnt())
    each = pages * 4096
    detail = (f"{rings} per-CPU ring{'s' if rings != 1 else ''} of {pages:,} pages ({each / (1 << 20):g} MiB each, "
              f"{rings * each / (1 << 20):g} MiB in all)")
    if (os.cpu_count() or 1) > rings:
        detail += f"; CPUs past the first {MAX_RINGS} share one by modulo"
    return Check("ring buffers", True, detail)


def check_tracefs() -> Check:
    for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(os.path.join(p, "trace")) or os.path.exists(os.path.join(p, "available_events")):
            return Check("tracefs", True, f"mounted at {p}")
    return Check("tracefs", False, "not mounted (not needed for capture; bcc tracing tools need it)",
                 "mount -t tracefs nodev /sys/kernel/tracing")


def _mounts() -> List[tuple]:
    try:
        with open("/proc/self/mounts") as f:
            return [tuple(line.split()[:3]) for line in f]
    except OSError:
        return []


def check_cgroup2() -> Check:
    for _dev, mnt, fstype in _mounts():
        if fstype == "cgroup2" and mnt in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            return Check("cgroup v2", True, f"mounted at {mnt} (cgroup ids in records resolve there)")
    return Check("cgroup v2", False, "no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified",
                 "mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)")


def check_compiled() -> Check:
    """Which path the hot modules take: their Cython build, or their .py (see speedups.py)."""
    from dnswatch import speedups

    complete, detail = speedups.describe()
    if complete or speedups.pure_requested():
        return Check("compiled path", True, detail)
    if "stale" in detail or "compiled:" in detail:
        fix = "scripts/build-speedups (rebuilds it from the sources as they are now)"
    else:
        fix = "scripts/build-speedups (needs gcc, python3-dev and Cython: scripts/setup installs them)"
    return Check("compiled path", False, detail + " (works the same, slower)", fix)


CHECKS: List[Callable[[], Check]] = [
    check_privileges,
    check_bcc,
    check_headers,
    check_btf,
    check_filter,
    check_rings,
    check_tracefs,
    check_cgroup2,
    check_compiled,
]


def run_checks() -> List[Check]:
    out = []
    for fn in CHECKS:
        try:
            out.append(fn())
        except Exception as e:  # a broken check must not hide the others
            out.append(Check(fn.__name__.replace("check_", ""), False, f"check failed: {e}", None))
    return out


REQUIRED = frozenset({"privileges", "bcc", "kernel headers", "eBPF filter"})  # what live capture needs


def ready(checks: List[Check]) -> bool:
    """Live capture possible? (the other checks explain degraded features)"""
    return all(c.ok for c in checks if c.name in REQUIRED)
