"""The tools and compilers a module build needs (pipeline/toolchain.py)."""

from __future__ import annotations

import re

import pytest

from pipeline import toolchain
from pipeline.errors import BuildSetupError
from pipeline.toolchain import check_toolchain, headers_cc


def test_missing_tools_name_the_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without any build tool
    with pytest.raises(BuildSetupError) as info:
        check_toolchain("full")
    msg = info.value.message
    for pkg in ("make", "gcc", "flex", "bison", "bc", "kmod"):
        assert re.search(rf"apt-get install -y .*\b{pkg}\b", msg), msg


def _headers(tmp_path, cc_text: str | None):
    kdir = tmp_path / "linux-headers-x"
    (kdir / "include" / "config").mkdir(parents=True)
    if cc_text is not None:
        (kdir / "include" / "config" / "auto.conf").write_text(f'CONFIG_CC_VERSION_TEXT="{cc_text}"\n')
    return kdir


def test_headers_cc_is_the_kernels_gcc_or_the_oldest_newer_one(tmp_path, monkeypatch):
    monkeypatch.setattr(toolchain, "_host_gcc_majors", lambda: [12, 14])
    assert headers_cc(_headers(tmp_path / "a", "gcc-12 (Debian 12.2.0-14) 12.2.0")) == "gcc-12"
    # bullseye's 5.10 is built with gcc-10, which this host lacks: gcc-12 builds its modules
    assert headers_cc(_headers(tmp_path / "b", "x86_64-linux-gnu-gcc-10 (Debian 10.2.1-6) 10.2.1")) == "gcc-12"
    # none as new: the kernel's own, which check_toolchain then names as missing
    assert headers_cc(_headers(tmp_path / "c", "gcc-16 (Debian 16.1.0-1) 16.1.0")) == "gcc-16"
    assert headers_cc(_headers(tmp_path / "d", None)) == "gcc"
