"""Full-tree mode's config inputs (pipeline/buildfull.py); configuring and preparing a tree are the
`build` tests of tests/test_build.py."""

from __future__ import annotations

import pytest

from pipeline.buildfull import _base_config, _fragments
from pipeline.config import BuildConfig, KernelConfig, Settings
from pipeline.errors import BuildSetupError


def _kernel(base_config: str, fragments: list[str]) -> KernelConfig:
    build = BuildConfig(mode="full", base_config=base_config, fragments=fragments)
    return KernelConfig(name="k", remote="r", ref="x", build=build)


def test_base_config_is_a_make_target_or_a_file(tmp_path):
    assert _base_config(Settings(), _kernel("tinyconfig", [])) == ("target", None)
    assert _base_config(Settings(), _kernel("x86_64_defconfig", [])) == ("target", None)
    config = tmp_path / "dom0.config"
    config.write_text("CONFIG_XEN=y\n")
    assert _base_config(Settings(), _kernel(str(config), [])) == ("file", config)
    with pytest.raises(BuildSetupError, match="neither a make \\*config target nor a file"):
        _base_config(Settings(), _kernel(str(tmp_path / "no.config"), []))


def test_fragments_are_read_and_a_missing_one_named(tmp_path):
    frag = tmp_path / "a.config"
    frag.write_text("CONFIG_XEN_PCIDEV_BACKEND=m\n")
    assert _fragments(Settings(), _kernel("tinyconfig", [str(frag)])) == [
        (str(frag), frag, "CONFIG_XEN_PCIDEV_BACKEND=m\n")
    ]
    with pytest.raises(BuildSetupError, match="kconfig fragment .*b.config not found"):
        _fragments(Settings(), _kernel("tinyconfig", [str(frag), str(tmp_path / "b.config")]))
