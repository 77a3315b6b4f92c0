"""watch's terminal lines (columns that fit, truncation marker, colour by outcome, timeouts, namespaces) and
`watch -w` pcapng files whose packet comments restore the sender on replay (no privileges needed here; the
live round trip is in test_top_live.py)."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import pytest

from dnswatch.cli import cli
from dnswatch.correlate import I_COMM, I_CONTAINER, I_CONTAINER_ID, I_POD, I_POD_NS, I_POD_UID
from dnswatch.model import PACKET_OUTGOING, Frame, PacketMeta
from dnswatch.output import MARK, EventFormatter, colour_enabled, event_line
from dnswatch.pcapng import PcapngWriter, parse_comment
from dnswatch.sources.pcap import PcapReader, read_frames
from conftest import PCAPS

ROW = dict(ts=1796150000.123, response_ts=1796150000.125, src="198.18.1.2", sport=48875, dst="198.18.1.1",
           dport=53, proto="udp", dns_id=4193, qtype="A", qname="www.example.test", pid=11624, comm="dig",
           rcode="NOERROR", latency_ms=0.41, status="answered",
           answers=json.dumps([{"data": "198.18.0.80"}, {"data": "198.18.0.81"}]))
LONG = dict(ROW, qname="a-very-long-label-that-goes-on." * 3 + "example.test", rcode="NXDOMAIN", answers=None)
V6 = dict(ROW, src="fd00:18:1::2", dst="fd00:18:1::1")


@pytest.mark.parametrize("width", [80, 160])
def test_lines_fit_and_align(width):
    f = EventFormatter(width)
    lines = [f.line(kind, row) for row in (ROW, LONG) for kind in "QRT"]
    for line in lines:
        assert len(line) <= width, line
    assert any(MARK in line for line in lines)  # the long name is cut with a marker, not wrapped
    # the name starts in the same column on every line
    starts = {line.index(name) for line in lines for name in ("www.example.test", "a-very-long") if name in line}
    assert len(starts) == 1
    assert "unanswered" in f.line("T", ROW) and f.line("T", ROW).split()[1] == "T"


def test_wide_and_pipes_get_whole_lines():
    line = EventFormatter(None).line("R", LONG)
    assert LONG["qname"] in line and MARK not in line
    assert event_line("R", ROW).endswith("NOERROR 0.41ms -> 198.18.0.80, 198.18.0.81")
    t = event_line("T", ROW)
    assert " T " in t and t.endswith("unanswered after 5.0s")
    assert "[fd00:18:1::2]:48875 > [fd00:18:1::1]:53" in event_line("Q", V6)


def test_colour_by_outcome_and_no_color(monkeypatch):
    f = EventFormatter(160, colour=True)
    assert "\x1b[33mNXDOMAIN" in f.line("R", LONG)
    assert "\x1b[1;31munanswered" in f.line("T", ROW)
    assert "\x1b[" not in f.line("Q", ROW)
    assert "\x1b[" not in EventFormatter(160, colour=False).line("R", LONG)

    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour_enabled(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_enabled(Tty())
    monkeypatch.delenv("NO_COLOR")
    with open("/dev/null", "w") as devnull:
        assert not colour_enabled(devnull)  # not a terminal


def test_all_netns_lines_name_their_namespace():
    names = {4026532000: "client-ns"}

    def where(row):
        return f"{row['pod_namespace']}/{row['pod']}" if row.get("pod") else names.get(row.get("netns"), "-")

    f = EventFormatter(160, where=where)
    assert "client-ns" in f.line("Q", dict(ROW, netns=4026532000))
    assert "shop/web-1" in f.line("Q", dict(ROW, netns=1, pod="web-1", pod_namespace="shop"))


def enrich_like_a_node(row, _seg):
    """Stands in for enrich.Enricher: the pod of cgroup 77."""
    from dnswatch.correlate import I_CGROUP

    if row[I_CGROUP] == 77:
        row[I_CONTAINER_ID], row[I_CONTAINER] = "c0ffee" * 10, "nginx"
        row[I_POD], row[I_POD_NS], row[I_POD_UID] = "web-7d9c5", "shop", "uid-1"
        row[I_COMM] = "dig-process"


def test_pcapng_comments_restore_the_sender(tmp_path, runner):
    out = tmp_path / "kept.pcapng"
    writer = PcapngWriter(str(out), enrich_like_a_node)
    frames = list(read_frames(str(PCAPS / "udp_v4_dig.pcap")))
    for i, fr in enumerate(frames):
        meta = PacketMeta(0, 2, PACKET_OUTGOING, 4026532000, "veth0", 4242, 4243, "isc-net-0000", 0, 77) \
            if i % 2 == 0 else PacketMeta(0, 2, 0, 4026532000, "veth0")
        writer.write(Frame(fr.ts, fr.linktype, fr.data, "veth0", meta))
    writer.close()
    with PcapReader(str(out)) as reader:
        back = list(reader.frames())
    assert [(f.ts, f.data) for f in back] == [(pytest.approx(f.ts, abs=1e-6), f.data) for f in frames]
    assert back[0].meta.pid == 4242 and back[0].meta.attribution["pod"] == "web-7d9c5"
    db = tmp_path / "r.db"
    result = runner.invoke(cli, ["replay", str(out), "--db", str(db), "--no-progress"])
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from queries")]
    assert rows and all(
        (r["pid"], r["tid"], r["comm"], r["thread_name"], r["container_id"], r["container"], r["pod"],
         r["pod_namespace"], r["pod_uid"], r["netns"], r["ifname"]) ==
        (4242, 4243, "dig-process", "isc-net-0000", "c0ffee" * 10, "nginx", "web-7d9c5", "shop", "uid-1",
         4026532000, "veth0") for r in rows)
    tshark = shutil.which("tshark")
    if tshark:  # Wireshark shows the comment
        shown = subprocess.run([tshark, "-r", str(out), "-T", "fields", "-e", "frame.comment"],
                               capture_output=True, text=True).stdout.splitlines()
        assert shown and parse_comment(shown[0].encode())["pod"] == "web-7d9c5"


class _NodeCapture:
    """watch's live capture, faked: two polls of a pod's queries seen on the node side of its veth (a namespace,
    no process), then what the kernel still had at stop."""

    def __init__(self):
        from test_stop import _query_frame

        meta = lambda i: PacketMeta(i, 7, 0, 4026532000, "veth7")  # noqa: E731 - a new meta per frame
        frames = [_query_frame(i, 1.7e9 + i * 0.01) for i in range(9)]
        self.frames = [Frame(f.ts, f.linktype, f.data, "veth7", meta(i)) for i, f in enumerate(frames)]
        self.polls = 0

    def poll(self, _timeout_ms):
        self.polls += 1
        if self.polls > 2:
            return []  # the rest is the kernel's at stop
        batch, self.frames = self.frames[:3], self.frames[3:]
        return batch

    def stop(self):
        backlog, self.frames = self.frames, []
        return backlog

    def detach(self):
        pass

    def stats(self):
        return {}

    def close(self):
        pass


def test_pcapng_comment_says_what_the_row_got(tmp_path):
    """The comment of a query is what its stored row got, even when a second lookup would find something else (a
    pod namespace learnt a moment later: the comment once lacked the pod its row had, test_pods' veth test), and
    the frames the capture still had at stop are written too."""
    from dnswatch.correlate import I_NETNS
    from dnswatch.pcapng import TeeCapture
    from dnswatch.pipeline import Pipeline
    from dnswatch.store import Store
    from dnswatch.watch import run_watch

    calls = []

    def learns_late(row, _seg):  # the pod of the namespace is found from the second lookup on
        calls.append(row[I_NETNS])
        if len(calls) % 2 == 0:
            row[I_POD], row[I_POD_NS], row[I_POD_UID] = "fresh-6c4d", "shop", "uid-2"

    out, db = tmp_path / "kept.pcapng", tmp_path / "w.db"
    writer = PcapngWriter(str(out), learns_late)
    capture = TeeCapture(_NodeCapture(), writer)
    with Store(str(db)) as store:
        pipeline = Pipeline(store, "live", "fake", expect_responses=False, enrich=writer.enrich_row)
        run_watch(capture, pipeline, duration=0.5)
    with PcapReader(str(out)) as reader:
        comments = [(f.meta.attribution or {}).get("pod") for f in reader.frames()]
    con = sqlite3.connect(db)
    stored = [p for (p,) in con.execute("select pod from queries order by ts")]
    assert len(comments) == len(stored) == 9 == writer.packets
    assert comments == stored and "fresh-6c4d" in stored and None in stored
    assert len(calls) == 9  # one lookup a query
