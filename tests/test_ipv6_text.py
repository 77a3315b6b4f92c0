"""One form for every IPv6 address the log stores (answers, ECS, src/dst): inet_ntop's, as dig and tshark print
them. dnslib compresses the first run of zero groups rather than the longest, and Python's ipaddress writes an
IPv4-mapped address in hex, so a search by one spelling missed rows stored in another."""
import socket
import struct

import pytest
from click.testing import CliRunner

from dnswatch import dns
from dnswatch.cli import cli
from dnswatch.model import ipv6_text
from dnswatch.search import address_text

CASES = {  # address -> how dig prints it
    "1:0:0:2:0:0:0:3": "1:0:0:2::3",  # dnslib: 1::2:0:0:0:3
    "0:0:1:0:0:0:0:0": "0:0:1::",  # dnslib: ::1:0:0:0:0:0
    "::ffff:198.18.0.1": "::ffff:198.18.0.1",  # ipaddress (3.11): ::ffff:c612:1
    "fd00:18::80": "fd00:18::80",
    "2001:db8:0:0:1:0:0:1": "2001:db8::1:0:0:1",
}


def _response(addresses, ident=0x1234):
    name = b"\x03www\x07example\x04test\x00"
    out = struct.pack("!HHHHHH", ident, 0x8180, 1, len(addresses), 0, 0) + name + struct.pack("!HH", 28, 1)
    for a in addresses:
        out += b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + socket.inet_pton(socket.AF_INET6, a)
    return out


@pytest.mark.parametrize("address", sorted(CASES))
def test_every_path_writes_an_aaaa_as_dig_does(address):
    want = CASES[address]
    assert ipv6_text(socket.inet_pton(socket.AF_INET6, address)) == want
    assert address_text(address.upper()) == want  # search reads any spelling
    payload = _response([address])
    fast = dns._decode_fast(payload)
    slow = dns._decode_dnslib(payload)
    assert slow.answers == '[{"name": "www.example.test", "type": "AAAA", "ttl": 60, "data": "%s"}]' % want
    assert fast is None or fast == slow
    assert dns.wire_rdata_text(payload, len(payload) - 16, 16, 28) == want


def ipv6(payload: bytes, src: bytes, dst: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), 17, 64, src, dst) + payload


def test_search_finds_a_replayed_answer_and_sender_by_digs_spelling(tmp_path):
    from conftest import replay
    from hostile import pcap_header, pcap_record, udp

    pcap = tmp_path / "aaaa.pcap"
    client, server = "1:0:0:2:0:0:0:3", "fd00:0:0:1::53"
    with open(pcap, "wb") as f:
        f.write(pcap_header())
        query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03www\x07example\x04test\x00\x00\x1c\x00\x01"
        pin = socket.inet_pton
        f.write(pcap_record(1.7e9, ipv6(udp(query, sport=41000), src=pin(socket.AF_INET6, client),
                                        dst=pin(socket.AF_INET6, server))))
        f.write(pcap_record(1.7e9 + 0.001, ipv6(udp(_response(sorted(CASES), 7), sport=53, dport=41000),
                                                src=pin(socket.AF_INET6, server), dst=pin(socket.AF_INET6, client))))
    db = tmp_path / "log.db"
    replay(db, pcap)
    runner = CliRunner()
    for address, want in CASES.items():
        result = runner.invoke(cli, ["search", "--db", str(db), "--nl", "--answer", address])
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == 1, (address, result.output)
        assert want in result.stdout
    result = runner.invoke(cli, ["search", "--db", str(db), "--nl", "--src", client])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and '"1:0:0:2::3"' in result.stdout
