"""The kernel and the Python path agree: the loaded filter, run with BPF_PROG_TEST_RUN over every frame in
pcaps/, keeps exactly the frames the user-space decoder's keep verdict keeps (docs/keep-contract.md)."""
from __future__ import annotations

import pytest

from conftest import capture_files, ports_for
from dnswatch.frames import FrameDecoder
from dnswatch.sources.pcap import read_frames
from netlab import require_privileges

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("responses", [False, True], ids=["queries", "responses"])
@pytest.mark.parametrize("path", capture_files(), ids=lambda p: p.name)
def test_kernel_and_user_space_agree(path, responses):
    require_privileges()
    from dnswatch.sources.bpf_testrun import FilterRunner

    ports = ports_for(path)
    frames = list(read_frames(str(path)))
    decoder = FrameDecoder(ports, responses=responses, track_verdict=True)
    user = []
    for frame in frames:
        decoder.decode(frame)
        user.append(decoder.keep)
    with FilterRunner(ports, responses) as runner:
        kernel = [keep for frame in frames for keep in runner.run([frame.data], frame.linktype)]
    assert len(kernel) == len(frames)
    differ = [(i, user[i], kernel[i]) for i in range(len(frames)) if user[i] != kernel[i]]
    assert not differ, f"frame index, user space, kernel: {differ[:10]}"
    if path.name == "dnsperf_small.pcap":
        assert sum(kernel) == (720 if responses else 360)
