"""TCP streams with lost segments: reading resumes at the next plausible message, the gap and the bytes
passed over are counted under their own names (not as memory bounds), and the out-of-order buffer is
bounded in segments and bytes per stream and in bytes over all streams."""
from __future__ import annotations

import struct

import pytest
from dnslib import QTYPE, RR, TXT, DNSRecord

from dnswatch import frames
from dnswatch.frames import FrameDecoder
from dnswatch.model import LINKTYPE_RAW, Frame

SYN, ACK, FIN = 0x02, 0x10, 0x01


def _frame(ts, seq, payload=b"", flags=ACK, sport=53, dport=40000, client=b"\xc6\x12\0\2"):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 0x50, flags, 65535, 0, 0) + payload
    src, dst = (b"\xc6\x12\0\1", client) if sport == 53 else (client, b"\xc6\x12\0\1")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
    return Frame(ts, LINKTYPE_RAW, ip + tcp)


def _responses(n, size=300):
    out = []
    for i in range(n):
        rec = DNSRecord.question(f"r{i}.example.test", "TXT")
        rec.header.id = 0x5000 + i
        rec.header.qr = 1
        rec.add_answer(RR(f"r{i}.example.test", QTYPE.TXT, rdata=TXT([b"x" * (size - 60)])))
        wire = bytes(rec.pack())
        out.append(struct.pack("!H", len(wire)) + wire)
    return out


def _stream(messages, mss):
    data = b"".join(messages)
    return [(off, data[off:off + mss]) for off in range(0, len(data), mss)]


def _feed(dec, segments, isn=1000, fin=True, sport=53, dport=40000, client=b"\xc6\x12\0\2", t0=1.0, end=None):
    out = list(dec.decode(_frame(t0, isn, flags=SYN | ACK, sport=sport, dport=dport, client=client)))
    ts = t0
    for off, chunk in segments:
        ts += 0.001
        out += dec.decode(_frame(ts, isn + 1 + off, chunk, sport=sport, dport=dport, client=client))
    if fin:
        if end is None:
            end = max(off + len(c) for off, c in segments) if segments else 0
        out += dec.decode(_frame(ts + 0.001, isn + 1 + end, flags=FIN | ACK, sport=sport, dport=dport, client=client))
    return out


def _ids(segs):
    return [(s.payload[0] << 8) | s.payload[1] for s in segs]


@pytest.mark.parametrize("lost", range(0, 9))
def test_gap_resynchronises_on_the_next_message(lost):
    messages = _responses(6)  # 6 x ~302 bytes, in 200-byte segments: segment `lost` never arrives
    segments = _stream(messages, 200)
    kept = [s for i, s in enumerate(segments) if i != lost]
    dec = FrameDecoder()
    got = _ids(_feed(dec, kept, end=sum(len(m) for m in messages)))  # the FIN says where the stream ends
    hole = (segments[lost][0], segments[lost][0] + len(segments[lost][1]))
    starts, pos = [], 0
    for m in messages:
        starts.append((pos, pos + len(m)))
        pos += len(m)
    intact = [0x5000 + i for i, (a, b) in enumerate(starts) if b <= hole[0] or a >= hole[1]]
    assert got == intact
    assert dec.stats["tcp_gaps"] == 1
    assert dec.stats["tcp_gap_bytes"] == len(segments[lost][1])
    lost_bytes = sum(b - a for (a, b) in starts) - sum(b - a for (a, b), i in zip(starts, range(6))
                                                        if 0x5000 + i in intact)
    # every byte of the stream is read, lost in the gap, or counted as skipped
    assert dec.stats["tcp_gap_bytes"] + dec.stats.get("tcp_resync_skipped_bytes", 0) == lost_bytes
    assert dec.dropped() == 0  # a gap is not a memory bound


def test_gap_in_a_stream_that_never_ends_is_resolved_by_the_bound():
    messages = _responses(120)
    segments = _stream(messages, 300)
    kept = segments[:3] + segments[4:]
    dec = FrameDecoder()
    got = _ids(_feed(dec, kept, fin=False))
    assert len(got) > 100  # read on before the stream ends
    assert dec.stats["tcp_gaps"] == 1
    assert dec.stats["tcp_out_of_order_bound"] == 1  # the bound decided it was a gap
    assert dec.dropped() == 1


def test_out_of_order_bytes_bounded_per_stream(monkeypatch):
    monkeypatch.setattr(frames, "MAX_OUT_OF_ORDER_BYTES", 1000)
    messages = _responses(10)
    segments = _stream(messages, 200)
    dec = FrameDecoder()
    got = _ids(_feed(dec, segments[:1] + segments[2:], fin=False))
    st = next(iter(dec._streams.values()))
    assert st.ooo_bytes <= 1000
    assert dec.stats["tcp_out_of_order_bound"] == 1
    assert len(got) >= 7


def test_out_of_order_bytes_bounded_over_all_streams(monkeypatch):
    monkeypatch.setattr(frames, "MAX_OUT_OF_ORDER_TOTAL", 3000)
    dec = FrameDecoder()
    got = []
    for n in range(5):  # five streams, each missing its second segment, none ends
        segments = _stream(_responses(6), 200)
        got += _ids(_feed(dec, segments[:1] + segments[2:], fin=False, dport=41000 + n, t0=1.0 + n))
        assert dec._ooo_total <= 3000
    assert dec.stats["tcp_out_of_order_bound"] >= 1
    assert dec.stats["tcp_gaps"] == dec.stats["tcp_out_of_order_bound"]
    got += _ids(dec.finish())
    assert dec.stats["tcp_gaps"] == 5
    assert len(got) == 5 * 4  # each stream loses only the two messages the hole cut


def test_stream_without_syn_starts_at_the_first_plausible_message():
    messages = _responses(3)
    data = b"".join(messages)
    dec = FrameDecoder()
    out = dec.decode(_frame(1.0, 5000, data[150:]))  # starts inside the first message
    assert _ids(out) == [0x5001, 0x5002]
    assert dec.stats["tcp_resync_skipped_bytes"] == len(messages[0]) - 150


def test_a_hole_open_longer_than_the_gap_timeout_is_a_gap():
    messages = _responses(4)
    segments = _stream(messages, 200)
    dec = FrameDecoder()
    got = _ids(_feed(dec, segments[:1] + segments[2:4], fin=False))
    assert got == [] and dec.stats["tcp_gaps"] == 0  # waiting: the hole may still be filled
    off, chunk = segments[4]
    got = _ids(dec.decode(_frame(1.0 + frames.GAP_TIMEOUT + 0.5, 1001 + off, chunk)))
    assert got == [0x5002]  # message 2 lies after the hole; 0 and 1 were cut by it
    assert dec.stats["tcp_gaps"] == 1 and dec.stats.get("tcp_out_of_order_bound", 0) == 0


def test_real_capture_with_a_segment_removed():
    """pcaps/tcp_segment_lost.pcap: kdig +keepopen, 6 queries on one connection; the 3rd of the 5
    segments of the big.example.test answer deleted. The 4 answers after it are read, as tshark reads them."""
    from conftest import PCAPS
    from dnswatch.sources.pcap import read_frames

    dec = FrameDecoder()
    segs = []
    for frame in read_frames(str(PCAPS / "tcp_segment_lost.pcap")):
        segs += dec.decode(frame)
    segs += dec.finish()
    responses = [s for s in segs if s.sport == 53]
    assert len(responses) == 5
    assert dec.stats["tcp_gaps"] == 1
    assert dec.stats["tcp_gap_bytes"] == 1448
    assert dec.stats["tcp_resync_skipped_bytes"] == 6516 - 1448  # the rest of the big answer (6516 bytes on the wire)
    assert dec.dropped() == 0
