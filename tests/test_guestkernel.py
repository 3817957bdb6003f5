"""The tiny PV guest kernel (pipeline/guestkernel.py): its steps on a fake kernel tree (a tarball
whose Makefile answers the targets the builder calls, built in the real sandbox), and once for
real (marked `build`: the lab tests boot the same cached kernel)."""

from __future__ import annotations

import pytest
from fake_guestkernel import fake_tarball

from pipeline import guestkernel
from pipeline.config import Settings, project_settings
from pipeline.errors import BuildSetupError


def test_fragment_options_skip_comments_and_blanks():
    text = "# a comment\n\nCONFIG_XEN=y\n  CONFIG_PCI=y  \n# CONFIG_FOO is not set\nCONFIG_SMP=n\n"
    assert guestkernel.fragment_options(text) == {"CONFIG_XEN": "y", "CONFIG_PCI": "y", "CONFIG_SMP": "n"}


def test_missing_options_names_what_kconfig_dropped():
    frag = {"CONFIG_XEN": "y", "CONFIG_XEN_PCIDEV_FRONTEND": "y", "CONFIG_SMP": "n"}
    config = "CONFIG_XEN=y\n# CONFIG_XEN_PCIDEV_FRONTEND is not set\n"
    assert guestkernel.missing_options(frag, config) == ["CONFIG_XEN_PCIDEV_FRONTEND=y"]


def test_the_shipped_fragment_asks_for_pcifront_and_the_console_built_in():
    opts = guestkernel.fragment_options(guestkernel.FRAGMENT.read_text())
    for name in ("CONFIG_XEN_PV", "CONFIG_XEN_PCIDEV_FRONTEND", "CONFIG_HVC_XEN", "CONFIG_BLK_DEV_INITRD"):
        assert opts[name] == "y"


def test_the_source_is_the_kernel_line_deps_install():
    from pipeline.kernelsrc import LINES

    assert guestkernel.TARBALL == LINES["6.1"].system_tarball


def test_key_follows_every_input(tmp_path):
    tarball = fake_tarball(tmp_path)
    base = guestkernel.inputs(tarball)
    assert guestkernel.key_of(base) == guestkernel.key_of(guestkernel.inputs(tarball))
    for change in ({"recipe": base["recipe"] + 1}, {"compiler": "gcc 99"}, {"fragment_sha256": "0" * 64}):
        assert guestkernel.key_of({**base, **change}) != guestkernel.key_of(base)


def test_no_tarball_is_a_one_line_error(tmp_path):
    with pytest.raises(BuildSetupError, match="install linux-source-6.1"):
        guestkernel.ensure(Settings(cache_dir=str(tmp_path / "cache")), tarball=tmp_path / "nope.tar.xz")


def test_built_once_then_a_cache_hit(tmp_path):
    tarball = fake_tarball(tmp_path)
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    said: list[str] = []
    first = guestkernel.ensure(settings, said.append, tarball=tarball)
    assert first.cache == "built" and first.release == "6.1.0-fake"
    assert "CONFIG_XEN_PCIDEV_FRONTEND=y" in first.path.read_text()  # the fragment reached .config
    assert any("built in" in m for m in said)
    root = tmp_path / "cache" / "guest-kernel"
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [first.key]  # no tree left
    said.clear()
    second = guestkernel.ensure(settings, said.append, tarball=tarball)
    assert (second.cache, second.sha256, second.path) == ("hit", first.sha256, first.path) and said == []


def test_a_damaged_cache_entry_is_built_again(tmp_path):
    tarball = fake_tarball(tmp_path)
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    first = guestkernel.ensure(settings, tarball=tarball)
    first.path.write_text("truncated")
    again = guestkernel.ensure(settings, tarball=tarball)
    assert again.cache == "built" and again.sha256 == first.sha256


def test_an_option_kconfig_drops_fails_the_build_and_caches_nothing(tmp_path):
    tarball = fake_tarball(tmp_path, merge='grep -v PCIDEV_FRONTEND "$3" >> "$2"')
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(BuildSetupError, match="lacks CONFIG_XEN_PCIDEV_FRONTEND=y"):
        guestkernel.ensure(settings, tarball=tarball)
    root = tmp_path / "cache" / "guest-kernel"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.build
def test_the_real_guest_kernel_is_a_bzimage_with_pcifront_built_in():
    settings = project_settings()  # the project's cache: the lab tests boot this same kernel
    gk = guestkernel.ensure(settings, print)
    data = gk.path.read_bytes()
    assert data[0x202:0x206] == b"HdrS"  # the x86 boot protocol header of a bzImage
    config = (gk.path.parent / "config").read_text()
    assert guestkernel.missing_options(guestkernel.fragment_options(guestkernel.FRAGMENT.read_text()), config) == []
    assert "# CONFIG_MODULES is not set" in config  # nothing to load: pcifront is in the image
    assert len(data) < 4 * 1024 * 1024
