"""A small lab of real network namespaces for the privileged tests: hosts joined by veth pairs
(198.18.0.0/15 and fd00::/8 only), a real unbound that never recurses, and dnswatch watch running in it.

Everything it creates (namespaces, links, /etc/netns files, cgroups, processes) is removed by ``close()``,
which the fixtures call even when a test fails.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

ZONE = """\
www.example.test. 300 IN A 198.18.0.80
www.example.test. 300 IN AAAA fd00:18::80
api.example.test. 60 IN A 198.18.0.81
mail.example.test. 300 IN MX 10 mx.example.test.
mx.example.test. 300 IN A 198.18.0.25
txt.example.test. 300 IN TXT 'v=spf1 -all'
alias.example.test. 300 IN CNAME www.example.test.
"""


def require_privileges() -> None:
    """Root and bcc: in CI these must be there (a skip would hide a broken install step)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    try:
        import bcc  # noqa: F401
    except ImportError:
        problems.append("bcc (python3-bpfcc) does not import")
    for tool in ("ip", "unbound", "dig"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not installed")
    if problems:
        message = "privileged test needs: " + ", ".join(problems)
        if IN_CI:
            pytest.fail(message + " (CI must provide this: see scripts/setup)")
        pytest.skip(message)


def sh(*cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=timeout, **kw)


class Lab:
    def __init__(self) -> None:
        self.tag = f"dw{os.getpid() % 100000}x{int(time.monotonic() * 1000) % 10000}"
        self.namespaces: List[str] = []
        self.procs: List[subprocess.Popen] = []
        self.cgroups: List[Path] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="dnswatch-lab-"))
        self._links = 0

    # -- topology --------------------------------------------------------------------------
    def netns(self, name: str) -> str:
        ns = f"{self.tag}{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def delete_netns(self, ns: str) -> None:
        """Remove a namespace now (a pod deleted mid-test), with its /etc/netns files."""
        sh("ip", "netns", "del", ns)
        self.namespaces.remove(ns)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def link(self, a: str, b: str, subnet: int) -> Dict[str, str]:
        """veth between namespaces a and b: a gets 198.18.<subnet>.1 / fd00:18:<subnet>::1, b gets .2 / ::2.
        ``a`` may be "" for the host namespace."""
        self._links += 1
        ia, ib = f"{self.tag}a{self._links}"[:15], f"{self.tag}b{self._links}"[:15]
        sh("ip", "link", "add", ia, "type", "veth", "peer", "name", ib)
        for ifname, ns, host in ((ia, a, 1), (ib, b, 2)):
            prefix = ["ip", "-n", ns] if ns else ["ip"]
            if ns:
                sh("ip", "link", "set", ifname, "netns", ns)
            sh(*prefix, "addr", "add", f"198.18.{subnet}.{host}/24", "dev", ifname)
            sh(*prefix, "addr", "add", f"fd00:18:{subnet}::{host}/64", "dev", ifname, "nodad")
            sh(*prefix, "link", "set", ifname, "up")
        return {"a_if": ia, "b_if": ib, "a4": f"198.18.{subnet}.1", "b4": f"198.18.{subnet}.2",
                "a6": f"fd00:18:{subnet}::1", "b6": f"fd00:18:{subnet}::2"}

    def resolv_conf(self, ns: str, server: str) -> None:
        d = Path("/etc/netns") / ns
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(f"nameserver {server}\noptions timeout:2 attempts:1\n")
        (d / "hosts").write_text("127.0.0.1 localhost\n")

    # -- processes -------------------------------------------------------------------------
    def spawn(self, ns: Optional[str], *cmd: str, **kw) -> subprocess.Popen:
        full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
        proc = subprocess.Popen(full, **kw)
        self.procs.append(proc)
        return proc

    def run(self, ns: Optional[str], *cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
        full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
        return sh(*full, check=check, timeout=timeout)

    def unbound(self, ns: Optional[str], addresses: List[str]) -> subprocess.Popen:
        """A real unbound answering example.test from local data; never recurses (local-zone "." static)."""
        d = self.tmp / f"unbound-{len(self.procs)}"
        d.mkdir()
        local = "".join(f'  local-data: "{line}"\n' for line in ZONE.splitlines())
        interfaces = "".join(f"  interface: {a}\n" for a in addresses)
        (d / "unbound.conf").write_text(
            "server:\n" + interfaces +
            f'  port: 53\n  do-daemonize: no\n  use-syslog: no\n  logfile: ""\n  chroot: ""\n  username: ""\n'
            f'  directory: "{d}"\n  pidfile: ""\n  module-config: "iterator"\n  do-ip4: yes\n  do-ip6: yes\n'
            '  do-udp: yes\n  do-tcp: yes\n  access-control: 0.0.0.0/0 allow\n  access-control: ::/0 allow\n'
            '  num-threads: 1\n  so-reuseport: no\n'
            '  local-zone: "." static\n  local-zone: "example.test." static\n' + local +
            "remote-control:\n  control-enable: no\n"
        )
        proc = self.spawn(ns, "unbound", "-d", "-c", str(d / "unbound.conf"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = self.run(ns, "dig", "+short", "+tries=1", "+time=1", f"@{addresses[0]}", "www.example.test", "A",
                           check=False)
            if "198.18.0.80" in out.stdout:
                return proc
            if proc.poll() is not None:
                raise RuntimeError("unbound exited: " + proc.stderr.read().decode(errors="replace"))
            time.sleep(0.1)
        raise RuntimeError("unbound did not answer within 15 s")

    # -- cleanup ---------------------------------------------------------------------------
    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for cg in reversed(self.cgroups):
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        for ns in list(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def server_and_client() -> Iterator["Lab"]:
    """A lab of two hosts joined by one veth: ``lab.server`` (198.18.1.1, fd00:18:1::1) and ``lab.client``
    (198.18.1.2, fd00:18:1::2). Everything in it is removed afterwards, on failure too."""
    lab = Lab()
    try:
        lab.server, lab.client = lab.netns("S"), lab.netns("C")
        lab.link(lab.server, lab.client, 1)
        yield lab
    finally:
        lab.close()


class Watch:
    """``dnswatch watch`` as a user runs it, in a namespace (or the host), stopped with SIGTERM."""

    command = "watch"

    def __init__(self, lab: Lab, ns: Optional[str], db: Path, *args: str, ready_timeout: float = 60,
                 narrow: bool = True, python: Optional[str] = None, root: Optional[Path] = None,
                 python_args: Sequence[str] = ()):
        """``python``, ``root``: another checkout's interpreter and tree (bench/live --against); ``python_args``
        go before ``-m dnswatch`` (a profiler)."""
        self.db = db
        if narrow and not {"--all-netns", "--netns", "--host-only"} & set(args):
            args = ("--host-only", *args)  # as root watch covers every namespace; these tests watch one
        cmd = [python or sys.executable, *python_args, "-m", "dnswatch", self.command, "--db", str(db), *args]
        self.proc = lab.spawn(ns, *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=str(root or ROOT))
        self.stdout: List[str] = []
        self.stderr: List[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True).start()
        if not self._ready.wait(ready_timeout):
            self.proc.kill()
            raise RuntimeError("dnswatch watch did not start: " + "".join(self.stderr))

    def _pump(self, stream, sink: List[str]) -> None:
        for line in stream:
            sink.append(line)
            if "Ctrl-C to end" in line:
                self._ready.set()
        if self.proc.poll() is not None:
            self._ready.set()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.1)  # let the pump threads read the last lines
        return rc
