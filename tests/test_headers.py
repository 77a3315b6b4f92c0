"""Which kernel headers bcc compiles against: the node's when /lib/modules/$(uname -r)/build has them,
else the image's own (DNSWATCH_KERNEL_HEADERS); BCC_KERNEL_SOURCE set by the user wins. doctor says which."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnswatch import doctor
from dnswatch.sources import live


def tree(root: Path, release: str = "6.1.0-57-amd64") -> Path:
    (root / "include/linux").mkdir(parents=True)
    (root / "include/linux/kconfig.h").write_text("")
    (root / "include/generated").mkdir()
    (root / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    return root


@pytest.fixture
def node(tmp_path, monkeypatch):
    build = tmp_path / "lib/modules/9.9.9/build"
    monkeypatch.setattr(live, "node_headers_dir", lambda: build)
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.setenv(live.BUNDLED_HEADERS_ENV, str(tree(tmp_path / "image-headers")))
    return build


def test_image_headers_when_the_node_has_none(node, tmp_path):
    assert live.headers_choice() == (tmp_path / "image-headers", "image")
    check = doctor.check_headers()
    assert check.ok and check.detail.startswith(f"the image's own, {tmp_path / 'image-headers'}")
    assert "6.1.0-57-amd64" in check.detail


def test_node_headers_win(node):
    tree(node, release=os.uname().release)
    assert live.headers_choice() == (node, "node")
    check = doctor.check_headers()
    assert check.ok and check.detail.startswith("the node's") and "fine, the filter" not in check.detail


def test_debian_split_node_headers(node, tmp_path):
    """build/ has only the generated files, source/ the rest (Debian's -amd64 / -common pair)."""
    common = tree(tmp_path / "usr/src/linux-headers-common")
    node.parent.mkdir(parents=True)
    (tmp_path / "usr/src/linux-headers-amd64/include/generated").mkdir(parents=True)
    node.symlink_to(tmp_path / "usr/src/linux-headers-amd64")
    (node.parent / "source").symlink_to(common)
    assert live.headers_choice() == (node, "node")


def test_a_dangling_node_link_falls_back(node, tmp_path):
    node.parent.mkdir(parents=True)
    node.symlink_to(tmp_path / "gone")
    assert live.headers_choice()[1] == "image"


def test_user_choice_wins(node, tmp_path, monkeypatch):
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path / "mine"))
    assert live.headers_choice() == (tmp_path / "mine", "BCC_KERNEL_SOURCE")


def test_no_headers_anywhere(node, monkeypatch):
    monkeypatch.delenv(live.BUNDLED_HEADERS_ENV)
    check = doctor.check_headers()
    assert not check.ok and "missing" in check.detail and "linux-headers" in check.fix


def test_use_headers_sets_bcc_kernel_source_only_for_the_image(node, tmp_path, monkeypatch):
    live._use_headers()
    assert os.environ["BCC_KERNEL_SOURCE"] == str(tmp_path / "image-headers")
    assert live.headers_choice()[1] == "image" and doctor.check_headers().detail.startswith("the image's own")
    tree(node)  # the node's headers appear (mounted later): they win, and bcc is no longer pointed at ours
    live._use_headers()
    assert "BCC_KERNEL_SOURCE" not in os.environ
