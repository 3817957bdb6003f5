"""The headers directory a headers-mode build uses (pipeline/buildheaders.py)."""

from __future__ import annotations

import pytest

from pipeline.buildheaders import resolve_headers
from pipeline.config import BuildConfig, KernelConfig, Settings
from pipeline.errors import BuildSetupError


def _kernel(headers: str) -> KernelConfig:
    return KernelConfig(name="k", remote="r", ref="x", build=BuildConfig(mode="headers", headers=headers))


def test_missing_headers_name_the_package():
    with pytest.raises(BuildSetupError, match=r"apt-get install -y linux-headers-6\.1\.0-99-amd64"):
        resolve_headers(Settings(), _kernel("6.1.0-99-amd64"))


def test_a_headers_path_is_used_when_prepared(tmp_path):
    kdir = tmp_path / "linux-headers-6.1.0-99-amd64"
    kdir.mkdir()
    with pytest.raises(BuildSetupError, match="missing or not prepared"):
        resolve_headers(Settings(), _kernel(str(kdir)))
    (kdir / "Makefile").write_text("include /usr/src/linux-headers-6.1.0-99-common/Makefile\n")
    assert resolve_headers(Settings(), _kernel(str(kdir))) == kdir
