"""Issue 8, inputs and memory: damaged containers, bounded buffers, option values that used to crash.

Each regression test replays a small instance of an attack (tests/hostile.py builds them; bench/memory
runs the same builders at a million cases and prints the peak RSS). The fuzz tests at the end mutate
real captures and DNS messages: nothing may raise, and each case stays within a time and memory bound.
"""
from __future__ import annotations

import gzip
import io
import json
import sqlite3
import struct
import tempfile
import time
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
from conftest import PCAPS
from dnswatch import dns, frames as frames_mod, store as store_mod
from dnswatch.cli import cli
from dnswatch.dns import Malformed, Message, parse_message
from dnswatch.frames import FrameDecoder
from dnswatch.model import Frame
from dnswatch.pipeline import MALFORMED_MAX_DATA, Pipeline
from dnswatch.sources.pcap import MAX_INTERFACES, CaptureFormatError, PcapReader
from dnswatch.store import Store


def _replay(runner, db, *paths, args=()):
    return runner.invoke(cli, ["replay", *map(str, paths), "--db", str(db), "--no-progress", *args])


def _capture(db):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    row = dict(con.execute("select * from captures order by id desc limit 1").fetchone())
    queries = con.execute("select count(*) from queries").fetchone()[0]
    con.close()
    row["notes"] = json.loads(row["notes"])
    return row, queries


def _queries_pcap(n: int) -> bytes:
    out = io.BytesIO()
    hostile.write_pcap(out, hostile.frames_queries(n))
    return out.getvalue()


def _complete_records(data: bytes) -> int:
    """Frames wholly inside ``data`` (a little-endian pcap, maybe cut): what tshark reads of it."""
    pos, n = 24, 0
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        if pos + 16 + incl > len(data):
            break
        pos, n = pos + 16 + incl, n + 1
    return n


# -- gzip --------------------------------------------------------------------------------------------

def test_gzip_cut_at_90_percent_keeps_every_complete_frame(runner, tmp_path):
    plain = _queries_pcap(20000)
    gz = gzip.compress(plain, 6)
    cut = gz[:int(len(gz) * 0.9)]
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(cut)
    d = zlib.decompressobj(31)
    expected = _complete_records(d.decompress(cut))  # every frame whose bytes are in the cut file
    assert expected > 17000
    result = _replay(runner, tmp_path / "d.db", path)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "truncated .gz" in result.output and f"kept the {expected:,} frames before it" in result.output
    capture, queries = _capture(tmp_path / "d.db")
    assert capture["frames"] == expected and queries == expected
    assert capture["status"] == "damaged"


def test_gzip_damaged_in_the_middle_keeps_the_frames_before(runner, tmp_path):
    plain = _queries_pcap(20000)
    gz = bytearray(gzip.compress(plain, 6))
    # A stored (uncompressed) block header with a bad length check is damage zlib sees at once.
    at = len(gz) // 2
    gz[at:at + 64] = b"\xff" * 64
    path = tmp_path / "mid.pcap.gz"
    path.write_bytes(bytes(gz))
    result = _replay(runner, tmp_path / "d.db", path)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    capture, queries = _capture(tmp_path / "d.db")
    assert capture["status"] == "damaged"
    assert 8000 < capture["frames"] < 20000
    warning = capture["notes"]["warnings"][0]
    assert "byte" in warning and "kept the" in warning


def test_gzip_damaged_at_its_start_is_one_clear_error(runner, tmp_path):
    gz = bytearray(gzip.compress(_queries_pcap(100)))
    gz[12:20] = b"\xff" * 8  # the first deflate block
    path = tmp_path / "start.pcap.gz"
    path.write_bytes(bytes(gz))
    result = _replay(runner, tmp_path / "d.db", path)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "zlib.error" not in result.output
    assert "damaged gzip data at compressed byte" in result.output


def test_gzip_crc_damage_keeps_everything_but_says_damaged(tmp_path):
    gz = bytearray(gzip.compress(_queries_pcap(500)))
    gz[-6] ^= 0xFF  # CRC32 of the member
    path = tmp_path / "crc.pcap.gz"
    path.write_bytes(bytes(gz))
    reader = PcapReader(str(path))
    assert sum(1 for _ in reader.frames()) == 500
    reader.close()
    assert reader.damaged and "incorrect data check" in reader.warnings[0]


def test_gzip_concatenated_members_and_zero_padding_are_not_damage(tmp_path):
    plain = _queries_pcap(3000)
    path = tmp_path / "members.pcap.gz"
    path.write_bytes(gzip.compress(plain[:40000]) + gzip.compress(plain[40000:]) + b"\0" * 512)
    reader = PcapReader(str(path))
    assert sum(1 for _ in reader.frames()) == 3000
    reader.close()
    assert not reader.damaged and reader.warnings == []


def test_gzip_bomb_output_is_read_in_bounded_pieces(tmp_path):
    from dnswatch.sources.pcap import _GzipStream

    bomb = gzip.compress(b"\0" * (64 << 20), 9)  # 64 KB that inflate to 64 MiB
    tracemalloc.start()
    stream = _GzipStream(io.BufferedReader(io.BytesIO(bomb)))  # type: ignore[arg-type]
    total = 0
    while True:
        piece = stream.read(1 << 20)
        if not piece:
            break
        total += len(piece)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == 64 << 20 and peak < 8 << 20
    # damage at the end: the last chunk is replayed byte by byte, its output bounded by the chunk size
    damaged = bytearray(bomb)
    damaged[-6] ^= 0xFF
    tracemalloc.start()
    stream = _GzipStream(io.BufferedReader(io.BytesIO(bytes(damaged))))  # type: ignore[arg-type]
    total = 0
    with pytest.raises(Exception, match="incorrect data check"):
        while True:
            piece = stream.read(1 << 20)
            assert piece
            total += len(piece)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == 64 << 20 and peak < 40 << 20


def test_zero_filled_records_are_empty_records_not_lost_frames(runner, tmp_path):
    """16 zero bytes are an empty record (no time, no bytes): a zero-filled stretch of a file (here 3 MiB, past
    the reader's 1 MiB windows, in a .gz as a bomb would be) is skipped by the reader as empty records in one
    warning, the file is damaged, nothing is lost in decoding, and the frames on either side (their payloads
    holding zeros too: EDNS padding) are all read."""
    def queries(first: int) -> bytes:
        return b"".join(hostile.pcap_record(1_800_000_000 + i, hostile.ipv4(hostile.udp(
            hostile.dns_query(i, b"q%d.example.test" % i, padding=40), sport=1024 + i)))
            for i in range(first, first + 500))

    path = tmp_path / "zeros.pcap.gz"
    path.write_bytes(gzip.compress(hostile.pcap_header() + queries(0) + bytes(3 << 20) + queries(500), 6))
    with PcapReader(str(path)) as reader:
        assert sum(1 for _ in reader.frames()) == 1000
        assert reader.stats == {"empty_records": 3 << 16} and reader.damaged
    db = tmp_path / "zeros.db"
    result = _replay(runner, db, path)
    assert result.exit_code == 0, result.output
    assert "196,608 empty records (16 zero bytes each" in result.output and " lost" not in result.output
    capture, queries_stored = _capture(db)
    assert queries_stored == 1000 and capture["frames"] == 1000 and capture["status"] == "damaged"
    assert capture["dropped"] == 0 and capture["notes"]["losses"]["decode"] == 0
    assert any("196,608 empty records" in w for w in capture["notes"]["warnings"])


# -- pcapng ------------------------------------------------------------------------------------------

def test_pcapng_ending_in_a_short_obsolete_packet_block(runner, tmp_path):
    query = hostile.ipv4(hostile.udp(hostile.dns_query(7, b"before.short.block")))
    data = hostile.pcapng_shb() + hostile.pcapng_idb() + hostile.pcapng_epb(0, query)
    data += struct.pack("<III", 2, 12, 12)  # a Packet Block of 12 bytes: none of its 20 bytes of fields
    path = tmp_path / "short_pb.pcapng"
    path.write_bytes(data)
    result = _replay(runner, tmp_path / "d.db", path)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "struct.error" not in result.output
    capture, queries = _capture(tmp_path / "d.db")
    assert queries == 1 and capture["status"] == "damaged"
    assert "too short" in result.output


@pytest.mark.parametrize("block_type", [2, 3, 6, 1])
def test_pcapng_short_blocks_of_every_kind(tmp_path, block_type):
    data = hostile.pcapng_shb() + hostile.pcapng_idb() + struct.pack("<III", block_type, 12, 12)
    path = tmp_path / "short.pcapng"
    path.write_bytes(data)
    reader = PcapReader(str(path))
    assert list(reader.frames()) == []
    reader.close()


def test_pcapng_interface_table_is_bounded_and_counted(runner, tmp_path):
    path = tmp_path / "ifs.pcapng.gz"
    with gzip.open(path, "wb") as out:
        hostile.write_pcapng_interfaces(out, MAX_INTERFACES + 500)
    tracemalloc.start()
    reader = PcapReader(str(path))
    got = list(reader.frames())
    reader.close()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(got) == 1  # the packet on interface 0; the one on the last interface is beyond the bound
    assert reader.dropped == 1 and reader.stats["interfaces_beyond_limit"] == 500
    assert peak < 8 << 20
    result = _replay(runner, tmp_path / "d.db", path)
    assert result.exit_code == 0, result.output
    capture, _ = _capture(tmp_path / "d.db")
    assert capture["dropped"] == 1 and capture["status"] == "complete"
    assert capture["notes"]["losses"]["memory_bounds"] == 1
    assert any("interface blocks beyond" in w for w in capture["notes"]["warnings"])


def test_warnings_per_file_are_bounded(tmp_path):
    data = hostile.pcapng_shb() + b"".join(hostile.pcapng_epb(5, b"x") for _ in range(5000))
    path = tmp_path / "noif.pcapng"
    path.write_bytes(data)
    reader = PcapReader(str(path))
    assert list(reader.frames()) == []
    reader.close()
    assert len(reader.warnings) <= 21 and "more warnings" in reader.warnings[-1]


# -- memory bounds -------------------------------------------------------------------------------------

def test_large_malformed_messages_are_truncated_and_flushed_early(tmp_path):
    db = tmp_path / "m.db"
    store = Store(str(db), live_columns=False)
    pipeline = Pipeline(store, "pcap", "malformed")
    payload = hostile.malformed_payload(1 << 20)
    for i in range(2500):
        frame = hostile.ipv4(hostile.udp(payload if i < 8 else payload[:8192], sport=2000 + i))
        pipeline.feed(Frame(1.0 + i, 101, frame))
        assert store._batch_bytes < store_mod.BATCH_BYTES
    summary = pipeline.finish()
    store.close()
    assert summary.malformed == 2500
    assert summary.skipped["malformed_data_truncated"] == 2500
    assert store.early_flushes >= 2  # 2500 x 4 KiB is more than twice BATCH_BYTES
    con = sqlite3.connect(db)
    sizes = con.execute("select min(length(data)), max(length(data)), max(size) from malformed").fetchone()
    notes = json.loads(con.execute("select notes from captures").fetchone()[0])
    assert sizes == (MALFORMED_MAX_DATA, MALFORMED_MAX_DATA, len(payload))
    assert notes["frames"]["malformed_data_truncated"] == 2500


def test_large_answers_flush_the_batch_by_bytes(tmp_path):
    store = Store(str(tmp_path / "a.db"))
    row = [None] * len(store_mod.QUERY_COLUMNS)
    row[store_mod._I_ANSWERS] = "x" * 300_000
    for _ in range(40):
        store.add(list(row))
        assert store._batch_bytes < store_mod.BATCH_BYTES
    assert store.early_flushes >= 2
    store.close()


def test_decode_cache_is_bounded_in_bytes():
    dns._cache.clear()
    dns._cache_bytes = 0
    for i in range(3000):  # distinct 60 KB queries: decoded, never kept
        msg = parse_message(hostile.dns_query(i, b"c%d.example" % i, padding=60000))
        assert isinstance(msg, Message) and msg.questions[0].qname == "c%d.example" % i
    assert len(dns._cache) == 0 and dns.cache_stats["uncached_large"] >= 3000
    for i in range(80000):
        parse_message(hostile.dns_query(i, b"%d.small-%d.example" % (i, i)))
        assert dns._cache_bytes <= dns.CACHE_BYTES
    assert len(dns._cache) < dns.CACHE_SIZE


def test_tiny_fragments_are_bounded_per_datagram_and_in_total(monkeypatch):
    dec = FrameDecoder()
    for k in range(1, 400):  # one datagram in 1-byte pieces
        dec.decode(Frame(1.0, 101, hostile.ipv4(b"\xaa", ident=1, frag=0x2000 | k)))
    assert dec.stats["fragment_sets_too_many_pieces"] >= 2
    assert dec._frag_pieces <= frames_mod.MAX_FRAGMENTS_PER_DATAGRAM
    monkeypatch.setattr(frames_mod, "MAX_FRAGMENT_PIECES", 5000)
    monkeypatch.setattr(frames_mod, "MAX_FRAGMENT_BYTES", 5000 * 200)
    dec = FrameDecoder()
    for i in range(40000):  # many datagrams of 100 pieces: the total bound gives the oldest up
        ident, k = divmod(i, 100)
        dec.decode(Frame(1.0, 101, hostile.ipv4(b"\xaa" * 8, ident=ident, frag=0x2000 | (k + 1))))
        assert dec._frag_pieces <= 5000 and dec._frag_bytes <= 5000 * 200
    assert dec.stats["fragment_sets_evicted_memory"] > 300
    assert dec.dropped() >= dec.stats["fragment_sets_evicted_memory"]
    # and a datagram that fits still reassembles afterwards
    body = hostile.udp(hostile.dns_query(9, b"whole.after.flood"))
    dec.decode(Frame(2.0, 101, hostile.ipv4(body[:16], ident=60000, frag=0x2000)))
    segs = dec.decode(Frame(2.0, 101, hostile.ipv4(body[16:], ident=60000, frag=2)))
    assert len(segs) == 1 and parse_message(segs[0].payload).questions[0].qname == "whole.after.flood"


def test_fragment_bounds_keep_their_own_reasons_in_the_summary(runner, tmp_path):
    path = tmp_path / "frags.pcap.gz"
    hostile._gz(str(path), hostile.frames_tiny_fragments(200_000, datagrams=1000))
    result = _replay(runner, tmp_path / "d.db", path)
    assert result.exit_code == 0, result.output
    capture, _ = _capture(tmp_path / "d.db")
    skipped = capture["notes"]["frames"]
    assert skipped["fragment_sets_too_many_pieces"] > 0 and skipped["fragment_sets_evicted_memory"] > 0
    bounded = skipped["fragment_sets_too_many_pieces"] + skipped["fragment_sets_evicted_memory"]
    assert capture["dropped"] >= bounded
    assert capture["notes"]["losses"]["memory_bounds"] == bounded


# -- option values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, text", [
    (["search", "--pid", "99999999999999999999"], "--pid 99999999999999999999: out of range"),
    (["search", "--pid", "-1"], "--pid -1: out of range"),
    (["search", "--limit", "99999999999999999999"], "--limit 99999999999999999999: out of range"),
    (["search", "--limit", "ten"], "--limit ten: not an integer"),
    (["replay", "--timeout", "nan", "x.pcap"], "--timeout nan: out of range"),
    (["replay", "--timeout", "inf", "x.pcap"], "--timeout inf: out of range"),
    (["watch", "--duration", "-3"], "--duration -3: out of range"),
    (["watch", "--count", "0"], "--count 0: out of range"),
    (["watch", "--pid", "4294967296"], "--pid 4294967296: out of range"),
    (["replay", "--port", "65536", "x.pcap"], "--port 65536: out of range"),
    (["watch", "--port", "0"], "--port 0: out of range"),
    (["watch", *[a for p in range(1000, 1017) for a in ("--port", str(p))]],
     "17 --port options: live capture filters at most 16 DNS ports"),
])
def test_option_values_give_one_line_and_exit_1(runner, tmp_path, args, text):
    result = runner.invoke(cli, [*args, "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], result.output
    assert ";" in lines[0]  # ...and says how to fix it


def test_repeated_ports_count_once(runner, tmp_path):
    # 17 copies of one port are one port: not refused for the port count (fails later: not root, no bcc...)
    result = runner.invoke(cli, ["watch", *["--port", "53"] * 17, "--no-db", "--duration", "0.01"])
    assert "--port options" not in result.output


# -- fuzzing -----------------------------------------------------------------------------------------

SEEDS = [p.read_bytes() for p in sorted(PCAPS.iterdir())
         if p.suffix in (".pcap", ".pcapng") and p.stat().st_size < 20000]
CASE_SECONDS = 2.0
CASE_BYTES = 64 << 20


@st.composite
def damaged_captures(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if draw(st.booleans()):  # a block or record as short as its header allows, at the end
        block_type = draw(st.sampled_from([1, 2, 3, 6, 5]))
        data += struct.pack("<III", block_type, 12, 12) if data[:4] == b"\x0a\x0d\x0d\x0a" else b"\0" * 16
    if draw(st.booleans()):
        data = bytearray(gzip.compress(bytes(data), 6))
    for _ in range(draw(st.integers(0, 8))):
        if not data:  # deleted to nothing: no position left to damage
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x0c\0\0\0", b"\x02\0\0\0"]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40))
        else:
            del data[at:at + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def _bounded(run):
    tracemalloc.start()
    start = time.monotonic()
    try:
        run()
    finally:
        seconds = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert seconds < CASE_SECONDS and peak < CASE_BYTES, (seconds, peak)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(damaged_captures())
def test_fuzz_damaged_captures_never_raise(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "case"
    path.write_bytes(data)

    def run():
        try:
            reader = PcapReader(str(path))
        except CaptureFormatError:
            return
        pipeline = Pipeline(None, "pcap", str(path))
        try:
            pipeline.feed_all(reader.frames())
        except CaptureFormatError:  # a header cut before its end: refused as a whole, with a message
            pass
        finally:
            reader.close()
        pipeline.finish()
        assert len(reader.warnings) <= 22

    _bounded(run)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_after_each_magic(data):
    for magic in (b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a", b"\x1f\x8b"):
        _bounded(lambda: _read_bytes(magic + data))


def _read_bytes(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".cap") as f:
        f.write(data)
        f.flush()
        try:
            reader = PcapReader(f.name)
        except CaptureFormatError:
            return
        pipeline = Pipeline(None, "pcap", f.name)
        try:
            pipeline.feed_all(reader.frames())
        except CaptureFormatError:
            pass
        finally:
            reader.close()
        pipeline.finish()


def _dns_seeds():
    out = [hostile.dns_query(1, b"www.example.test"), hostile.dns_query(2, b"pad.example", padding=40)]
    from dnslib import A, QTYPE, RR, TXT, DNSRecord
    r = DNSRecord.question("a.example.test").reply()
    r.add_answer(RR("a.example.test", QTYPE.A, rdata=A("198.18.0.80"), ttl=60))
    r.add_answer(RR("a.example.test", QTYPE.TXT, rdata=TXT([b"v=spf1 -all"]), ttl=60))
    out.append(bytes(r.pack()))
    return out


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_dns_seeds()), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 200))
def test_fuzz_mutated_dns_messages_never_raise(seed, edits, cut):
    data = bytearray(seed)
    for at, value in edits:
        if at < len(data):
            data[at] = value
    payload = bytes(data[:max(cut, 12)] if cut < len(data) else data)

    def run():
        result = parse_message(payload)
        assert isinstance(result, (Malformed, Message))
        pipeline = Pipeline(None, "pcap", "fuzz")
        pipeline.feed(Frame(1.0, 101, hostile.ipv4(hostile.udp(payload))))
        pipeline.feed(Frame(1.0, 101, hostile.ipv4(hostile.udp(payload, sport=53, dport=40000), src=hostile.SERVER,
                                                   dst=hostile.CLIENT)))
        pipeline.finish()

    _bounded(run)
