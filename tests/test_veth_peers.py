"""Attribution through a veth's peer, without privileges: rtnetlink answers parsed from bytes and from a real
socket in our own namespace, and the peer logic against a fake /proc and a fake link socket."""
from __future__ import annotations

import os
import socket
import struct
import time

from dnswatch.correlate import I_CONTAINER_ID, I_POD, I_SRC
from dnswatch.enrich import LINK_TTL, Enricher, Rescans
from dnswatch.model import PacketMeta, Segment
from dnswatch.netns import Link, LinkSocket, parse_link
from dnswatch.schema import Q, QUERY_COLUMNS

CID = "0123456789abcdef" * 4
UID = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9"
NODE_NS = 4026531840  # the capture namespace (the node's)
VETH = 7  # the pod's veth in the node namespace
I_POD_VIA = Q["pod_via"]


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def test_parse_link_of_a_veth():
    info = _attr(1, b"veth\0") + _attr(2, b"\0" * 8)  # IFLA_INFO_KIND, IFLA_INFO_DATA
    body = (struct.pack("=BxHiII", 0, 1, VETH, 0, 0) + _attr(3, b"vethab12\0") + _attr(5, struct.pack("=I", 2))
            + _attr(18 | 0x8000, info) + _attr(37, struct.pack("=i", 3)))  # IFLA_LINKINFO (nested), IFLA_LINK_NETNSID
    assert parse_link(body) == Link("veth", 2, 3)
    assert parse_link(struct.pack("=BxHiII", 0, 772, 1, 0, 0) + _attr(3, b"lo\0")) == Link(None, None, None)
    assert parse_link(b"\0" * 16 + b"\xff\xff") == Link(None, None, None)  # a truncated attribute is ignored


def test_link_socket_in_our_namespace():
    links = LinkSocket()
    try:
        lo = links.link(socket.if_nametoindex("lo"))
        assert lo is not None and lo.peer_nsid is None
        assert links.link(2**31 - 1) is None  # no such link: the kernel's error, not an exception
        assert links.nsid_of_pid(os.getpid()) is None  # our own namespace has no id in itself
    finally:
        links.close()


class FakeLinks:
    def __init__(self) -> None:
        self.links = {VETH: Link("veth", 2, 3), 1: Link(None, None, None), 9: Link("veth", 2, 5)}
        self.nsids = {}  # pid -> nsid
        self.asked = 0

    def link(self, ifindex):
        self.asked += 1
        return self.links.get(ifindex)

    def nsid_of_pid(self, pid):
        return self.nsids.get(pid)


class Node:
    """A fake /proc with pod processes (ns/net files stand in for namespaces), kubelet logs, and a clock."""

    def __init__(self, tmp_path):
        self.proc = tmp_path / "proc"
        self.logs = tmp_path / "log"
        self.now = [100.0]
        self.links = FakeLinks()
        self.enrich = Enricher(k8s_log_dir=str(self.logs), cgroup_root_dir=str(tmp_path / "nocg"), proc=str(self.proc),
                               clock=lambda: self.now[0])
        self.enrich.veth_peers.link_socket = lambda inode: self.links if inode == NODE_NS else None

    def pod(self, pid: int, name: str, address: str = "") -> int:
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "ns" / "net").write_text("")
        (d / "net").mkdir()
        (d / "net" / "fib_trie").write_text(f"  |-- {address}\n     /32 host LOCAL\n" if address else "")
        cid = CID[:-len(str(pid))] + str(pid)
        uid = UID[:-len(str(pid))] + str(pid)
        (d / "cgroup").write_text(f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/"
                                  f"cri-containerd-{cid}.scope\n")
        pod_dir = self.logs / "pods" / f"shop_{name}_{uid}" / "web"
        pod_dir.mkdir(parents=True)
        (self.logs / "containers").mkdir(exist_ok=True)
        (self.logs / "containers" / f"{name}_shop_web-{cid}.log").symlink_to(pod_dir / "0.log")
        return os.stat(d / "ns" / "net").st_ino

    def query(self, ifindex: int = VETH, pkt_type: int = 0, src: str = "198.18.11.2", ktime_ns: int = 0) -> list:
        row = [None] * len(QUERY_COLUMNS)
        row[I_SRC] = src
        meta = PacketMeta(ktime_ns, ifindex, pkt_type, NODE_NS)
        self.enrich(row, Segment(0.0, src, 40000, "198.18.9.53", 53, "udp", b"", None, meta))
        return row


def test_query_on_a_node_side_veth_belongs_to_the_pod_at_the_other_end(tmp_path):
    node = Node(tmp_path)
    node.pod(100, "web-1")
    node.links.nsids[100] = 3
    row = node.query()
    assert (row[I_POD], row[I_POD_VIA]) == ("web-1", "veth")
    asked = node.links.asked
    node.query()
    assert node.links.asked == asked  # the link is cached...
    node.now[0] += LINK_TTL + 0.1
    node.query()
    assert node.links.asked == asked + 1  # ...for a while (a link moved to another namespace is seen again)
    # the node's own query to the pod leaves on that veth: the pod is its server, not its client
    assert node.query(pkt_type=4)[I_POD] is None


def test_a_veth_from_a_namespace_without_a_pod_gives_no_pod(tmp_path):
    node = Node(tmp_path)
    node.pod(100, "web-1", address="198.18.11.2")
    node.links.nsids[100] = 3
    # ifindex 9's peer (id 5) holds no pod: not the pod holding the address it sends from either
    row = node.query(ifindex=9)
    assert (row[I_POD], row[I_CONTAINER_ID], row[I_POD_VIA]) == (None, None, None)
    # no veth (lo, a bridge): the address still names the pod
    node.now[0] += 2
    assert (node.query(ifindex=1)[I_POD], node.query(ifindex=1)[I_POD_VIA]) == ("web-1", "address")


def test_a_pod_created_just_after_a_walk_is_found_at_once(tmp_path):
    node = Node(tmp_path)
    assert node.query(ifindex=9)[I_POD] is None  # a walk: /proc, the log folders
    node.now[0] += 0.2  # well within the 1 s between walks
    node.pod(100, "web-1")
    node.links.nsids[100] = 3
    assert node.query()[I_POD] == "web-1"  # its namespace id was never missed by a walk: walked again at once
    # an id a walk missed waits for the next one (a flood from one namespace walks /proc once a second)
    node.now[0] += 0.2
    node.pod(200, "late-1")
    node.links.nsids[200] = 5
    assert node.query(ifindex=9)[I_POD] is None
    node.now[0] += 1.0
    assert node.query(ifindex=9)[I_POD] == "late-1"


def test_a_pod_whose_packet_was_sent_after_the_last_walk_is_found_even_within_its_interval(tmp_path):
    """The walk a moment ago (another namespace's miss) cannot have seen a pod created since: the packet was
    sent after it, so its namespace id walks again at once, however soon (test_pods' veth flake: a new pod's
    first query within 0.1 s of the router's miss got no pod)."""
    node = Node(tmp_path)
    assert node.query(ifindex=9)[I_POD] is None  # a walk
    node.now[0] += 0.01  # well within FIRST_MISS_INTERVAL
    node.pod(100, "web-1")
    node.links.nsids[100] = 3
    assert node.query(ktime_ns=time.monotonic_ns())[I_POD] == "web-1"
    # an id a walk missed waits for the next interval, whenever its packet was sent (a flood walks once a second)
    node.pod(200, "late-1")
    node.links.nsids[200] = 5
    node.now[0] += 0.01
    assert node.query(ifindex=9, ktime_ns=time.monotonic_ns())[I_POD] is None


def test_a_reused_namespace_id_is_checked_against_its_process(tmp_path):
    node = Node(tmp_path)
    node.pod(100, "old-1")
    node.links.nsids[100] = 3
    assert node.query()[I_POD] == "old-1"
    # the old pod's namespace is gone and its id now names a new pod's namespace (a new veth, same id)
    del node.links.nsids[100]
    node.pod(200, "new-1")
    node.links.nsids[200] = 3
    node.now[0] += 1.1
    assert node.query(ifindex=VETH)[I_POD] == "new-1"


def test_rescans():
    now = [10.0]
    r = Rescans(clock=lambda: now[0])
    assert r.due("a")
    r.scanned()
    r.missed("a")
    now[0] += 0.05
    assert not r.due("a") and not r.due("b")  # never more than ten walks a second
    now[0] += 0.1
    assert not r.due("a") and r.due("b")  # a key no walk missed yet: at once
    now[0] += 1.0
    assert r.due("a")
    r.scanned()
    after = time.monotonic() + 1e-3  # sent after that walk began
    assert not r.due("c") and r.due("c", sent=after) and not r.due("c", sent=after - 10)
    r.missed("c")
    assert not r.due("c", sent=after)  # once per key: then the interval again
