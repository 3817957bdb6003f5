"""xen-pciback built for the dom0 kernels of the other Debian lines (marked `build`, `kernel`, `download`).

5.10 (bullseye, built with gcc-10) against its extracted headers with the host's
gcc-12 and 6.12 (bookworm-security) with gcc-12, the series applied on -prefix;
7.2 (sid, gcc-16) with sid's compiler: a debootstrap root whose /usr the build
sandbox uses. The vermagic of every module (series and
control) is the release of the kernel it is built for.
Cost on a fresh clone: headers ~12-16 MiB per line, the sid root (debootstrap,
a few minutes), then 3 modules per row; on a warm cache the builds only.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import PROJECT_ROOT
from pipeline.build import build_kernel
from pipeline.config import load_settings
from pipeline.fetch import fetch_kernel, remove_worktree
from pipeline.runner import verify

pytestmark = [pytest.mark.build, pytest.mark.kernel, pytest.mark.download]
ROWS = {
    "debian-5.10-prefix": ("5.10.0-46-amd64", "gcc-12"),
    "debian-6.12-prefix": ("6.12.117+deb12-amd64", "gcc-12"),
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    s = load_settings(data=yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())["pv"])
    return dataclasses.replace(s, matrix="debian", results_root=str(tmp_path_factory.mktemp("runs")))


def _check(name: str, build, release: str) -> None:
    assert build.status == "ok", (name, build.errors)
    assert build.kernel_release == release and build.vermagic.split()[0] == release
    for ko in (build.module, build.control_module):
        vermagic = subprocess.run(["modinfo", "-F", "vermagic", ko], capture_output=True, text=True).stdout
        assert vermagic.split()[0] == release, (name, ko)


def test_series_modules_for_5_10_and_6_12_carry_their_release(settings):
    said: list[str] = []
    done = verify(settings, kernels=list(ROWS), until="build", progress=said.append)
    done.raise_if_stopped()
    run = done.run
    print("\n".join(said), file=sys.stderr)
    for k in run.kernels:
        release, cc = ROWS[k.name]
        assert k.apply.status == "applied"
        _check(k.name, k.build, release)
        assert f"{k.name}: build: against headers linux-headers-{release} ({release}) with {cc}" in said


def test_7_2_builds_with_sids_compiler_in_its_build_root(settings, tmp_path):
    """The series cannot apply on 7.2 (see test_debian_matrix): its shipped module and the control are built."""
    kcfg = next(k for k in settings.kernels if k.name == "debian-7.2")
    fetch = fetch_kernel(settings, kcfg, "t-debian-build", progress=print, sparse=["drivers/xen/xen-pciback"])
    said: list[str] = []
    try:
        res = build_kernel(settings, kcfg, Path(fetch.worktree), fetch.commit, [], tmp_path, said.append)
    finally:
        remove_worktree(settings, fetch.worktree)
    release = "7.2.13+deb14-amd64"
    _check(kcfg.name, res, release)
    assert f"debian-7.2: build: against headers linux-headers-{release} ({release}) with gcc-16" in said
    # the control is 7.2 with its adapted revert: the watch handler no longer reconfigures
    assert "revert-c81d3d246025-7.2.patch" in res.control_detail
    log = (tmp_path / "build" / "debian-7.2" / "build.log").read_text()
    assert "compiler gcc-16 16." in log and "sid-gcc-16-" in log
