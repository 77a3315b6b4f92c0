"""Replay's fast path (PcapReader.windows + FrameDecoder.decode_records) gives what the frame path gives.

The frame path (PcapReader.frames + FrameDecoder.decode, one Frame at a time) is the reference: for every capture
in pcaps/, for mutated frames of every kind the fast path reads in place, and across window edges and damage, both
must yield the same segments, the same decoder counters and the same reader warnings.
"""
from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest

from dnswatch.frames import EXPIRE_EVERY, FrameDecoder
from dnswatch.model import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW
from dnswatch.pipeline import Pipeline
from dnswatch.sources import pcap
from dnswatch.sources.pcap import PcapReader

from hostile import dns_query, ipv4, pcap_header, pcap_record, udp

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"
CLASSIC = sorted(p for p in PCAPS.iterdir() if p.name.endswith((".pcap", ".pcap.gz")))


def _by_frames(path, ports=(53,)):
    reader = PcapReader(str(path))
    dec = FrameDecoder(ports)
    segs = [s for frame in reader.frames() for s in dec.decode(frame)] + dec.finish()
    reader.close()
    return segs, dict(dec.stats), reader.frames_read, reader.warnings, reader.damaged


def _by_records(path, ports=(53,), seed=0):
    """The fast path, asking for a random number of records each time (as the pipeline's chunks do)."""
    rnd = random.Random(seed)
    reader = PcapReader(str(path))
    dec = FrameDecoder(ports)
    segs = []
    for buf in reader.windows():
        while True:
            want = rnd.choice((1, 2, 3, 7, 50, 2048))
            got, buf.pos, n, _first, _last = dec.decode_records(buf.data, buf.pos, want, reader.layout)
            segs += got
            reader.frames_read += n
            if n < want:
                break
    segs += dec.finish()
    reader.close()
    return segs, dict(dec.stats), reader.frames_read, reader.warnings, reader.damaged


@pytest.mark.parametrize("path", CLASSIC, ids=lambda p: p.name)
def test_every_capture_decodes_the_same(path):
    assert _by_records(path) == _by_frames(path)


@pytest.mark.parametrize("path", [p for p in CLASSIC if p.name in ("dnsperf_small.pcap", "fmt_truncated_last.pcap",
                                                                    "fmt_gzip.pcap.gz", "ipv6_fragments.pcap")],
                         ids=lambda p: p.name)
def test_window_edges_anywhere(path, monkeypatch):
    """Tiny reads put a window's edge inside record headers and frames alike."""
    want = _by_frames(path)
    for chunk in (17, 64, 301):
        monkeypatch.setattr(pcap, "CHUNK", chunk)
        assert _by_records(path, seed=chunk) == want


def _ether(etype: int, l3: bytes) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + l3


def _ipv6_udp(payload: bytes, nh: int = 17, plen=None) -> bytes:
    body = udp(payload)
    return struct.pack("!IHBB16s16s", 0x60000000, len(body) if plen is None else plen, nh, 64,
                       b"\xfd" + b"\0" * 14 + b"\x02", b"\xfd" + b"\0" * 14 + b"\x01") + body


def _l2(linktype: int, etype: int, l3: bytes) -> bytes:
    if linktype == LINKTYPE_ETHERNET:
        return _ether(etype, l3)
    if linktype == LINKTYPE_RAW:  # (never on the fast path)
        return l3
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 4, 1, 6, b"\x02" * 8, etype) + l3
    return struct.pack("!HHIHBB8s", etype, 0, 2, 1, 4, 6, b"\x02" * 8) + l3  # SLL2


def _mutants(linktype: int, rnd: random.Random):
    """Frames near the fast path's conditions: good ones, each header field bent, cuts at every length."""
    query = dns_query(7, b"fast.path.test")
    good = [_l2(linktype, 0x0800, ipv4(udp(query))), _l2(linktype, 0x86DD, _ipv6_udp(query)),
            _l2(linktype, 0x0800, ipv4(udp(query), frag=0x4000)),  # DF only: still unfragmented
            _l2(linktype, 0x0800, ipv4(udp(query))) + b"\0" * 20]  # Ethernet padding
    bent = [_l2(linktype, 0x0800, ipv4(udp(query), frag=0x2000)), _l2(linktype, 0x0800, ipv4(udp(query), frag=3)),
            _l2(linktype, 0x0800, ipv4(udp(query), proto=6)), _l2(linktype, 0x8100, ipv4(udp(query))),
            _l2(linktype, 0x86DD, _ipv6_udp(query, nh=0)), _l2(linktype, 0x86DD, _ipv6_udp(query, plen=0)),
            _l2(linktype, 0x86DD, _ipv6_udp(query, plen=3)), _l2(linktype, 0x86DD, _ipv6_udp(query, plen=5000))]
    for frame in good + bent:
        yield frame
        for cut in range(0, len(frame), 3):
            yield frame[:cut]
    for _ in range(5000):  # random bytes in the headers (and sometimes a cut)
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(1, 3)):
            frame[rnd.randrange(0, min(len(frame), 70))] = rnd.randrange(256)
        if rnd.random() < 0.2:
            frame = frame[:rnd.randrange(len(frame))]
        yield bytes(frame)


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW])
def test_bent_frames_decode_the_same(linktype, tmp_path):
    rnd = random.Random(linktype)
    out = io.BytesIO()
    out.write(pcap_header(linktype))
    frames = list(_mutants(linktype, rnd))
    for i, frame in enumerate(frames):
        out.write(pcap_record(1_700_000_000 + i * 0.01, frame))  # 50+ s: fragment sets expire in sweeps
    path = tmp_path / "bent.pcap"
    path.write_bytes(out.getvalue())
    fast = _by_records(path, seed=1)
    assert fast == _by_frames(path)
    assert fast[2] == len(frames) > EXPIRE_EVERY  # the decoder's sweep ran in the middle of the fast path too
    assert fast[1].get("fragment_sets_expired")
    if linktype != LINKTYPE_RAW:
        assert len(fast[0]) > 100


def test_replay_stores_the_same_counters(tmp_path):
    """The pipeline fed by windows counts frames, messages and times as the pipeline fed by frames."""
    path = PCAPS / "dnsperf_small.pcap"
    a = Pipeline(None, "pcap", str(path))
    a.feed_file(PcapReader(str(path)).frames())
    b = Pipeline(None, "pcap", str(path))
    assert b.feed_reader(PcapReader(str(path)))
    sa, sb = a.finish(), b.finish()
    for name in ("frames", "dns_messages", "queries", "responses", "rows", "first_ts", "last_ts", "unanswered",
                 "malformed", "duplicates", "skipped"):
        assert getattr(sa, name) == getattr(sb, name), name
