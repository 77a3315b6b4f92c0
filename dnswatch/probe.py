"""What replay can tell about a file besides its frames.

A hint: DNS-looking UDP/TCP traffic on ports not given with ``--port`` (pktvisor's captures use 53000).

The first frames of a file are decoded again with every port accepted; a port whose payloads read as DNS
messages with a question is reported, so the summary can say which ``--port`` to add.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from itertools import islice
from typing import Dict, Optional, Sequence

from dnswatch.dns import Malformed, parse_message
from dnswatch.frames import FrameDecoder
from dnswatch.sources.pcap import CaptureFormatError, PcapReader

PROBE_FRAMES = 5000
MIN_MESSAGES = 3  # fewer DNS-looking messages than this on a port is noise


class _AnyPort:
    def __contains__(self, port: object) -> bool:
        return True


def dns_on_other_ports(path: str, ports: Sequence[int], frames: int = PROBE_FRAMES) -> Dict[int, int]:
    """{port: DNS-looking messages} among the first ``frames`` frames, for ports not in ``ports``."""
    if path == "-":
        return {}
    try:
        reader = PcapReader(path)
    except CaptureFormatError:
        return {}
    known = set(ports)
    found: Counter = Counter()
    decoder = FrameDecoder(ports)
    decoder.ports = _AnyPort()  # type: ignore[assignment]  # see every UDP/TCP payload
    try:
        for frame in islice(reader.frames(), frames):
            for seg in decoder.decode(frame):
                if seg.sport in known or seg.dport in known:
                    continue
                msg = parse_message(seg.payload)
                if msg.__class__ is Malformed or not msg.questions:
                    continue
                # the server's port: the destination of a query, the source of a response
                found[seg.sport if msg.qr else seg.dport] += 1
    except Exception:  # noqa: BLE001 - a hint must never fail a replay
        pass
    finally:
        reader.close()
    return {port: n for port, n in found.most_common() if n >= MIN_MESSAGES}


FINGERPRINT_BYTES = 1 << 16


def file_fingerprint(path: str) -> Optional[str]:
    """Size and SHA-256 of the first 64 KiB: enough to tell that a file was replayed into a log before
    (captures.options.fingerprint) without reading it twice. None for stdin or an unreadable file."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(FINGERPRINT_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    return f"{size}:{hashlib.sha256(head).hexdigest()[:32]}"
