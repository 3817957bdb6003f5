"""xen-pciback modules for the lab tests and the soak bench: fixed (as shipped) and control (fix reverted).

Built from Debian's linux-source-6.1 tarball against /usr/src/linux-headers-<release>, the way
headers mode builds it, without needing the git import or the build stage. The control applies
the project's revert patch (patches/controls/). The real pipeline builds through pipeline.build.

CONFIG_MODULE_SRCVERSION_ALL=y on the make command line: Debian's config leaves it unset and
xen-pciback has no MODULE_VERSION, so without it the module has no srcversion at all and
/sys/module/xen_pciback/srcversion cannot tell which module is loaded.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from . import PROJECT_ROOT
from .errors import BuildSetupError
from .results import BuildResult

SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
MEMBER = "linux-source-6.1/drivers/xen/xen-pciback"
REVERT_PATCH = PROJECT_ROOT / "patches/controls/revert-c81d3d246025.patch"


def _modinfo(ko: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(ko)], capture_output=True, text=True, check=True).stdout.strip()


def ensure_headers(release: str) -> Path:
    headers = Path(f"/usr/src/linux-headers-{release}")
    if not (headers / "Makefile").is_file():
        proc = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", f"linux-headers-{release}"],
            capture_output=True,
            text=True,
            check=False,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        if proc.returncode != 0 or not (headers / "Makefile").is_file():
            raise BuildSetupError(f"linux-headers-{release} not installable: {proc.stderr.strip()[-200:]}")
    return headers


def _extract(workdir: Path) -> Path:
    src = workdir / "src"
    if not (src / MEMBER / "xenbus.c").is_file():
        if not SOURCE_TARBALL.is_file():
            raise BuildSetupError(f"{SOURCE_TARBALL} missing: apt-get install linux-source-6.1")
        shutil.rmtree(src, ignore_errors=True)
        with tarfile.open(SOURCE_TARBALL) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(MEMBER + "/") or m.name == MEMBER]
            tf.extractall(src, members=members, filter="data")
    return src / MEMBER


def build_module(release: str, workdir: Path, label: str, revert: bool) -> BuildResult:
    """Build xen-pciback.ko for `release` in workdir/<label>; revert=True applies the control revert patch."""
    t0 = time.monotonic()
    headers = ensure_headers(release)
    pristine = _extract(workdir)
    mdir = workdir / label
    shutil.rmtree(mdir, ignore_errors=True)
    shutil.copytree(pristine, mdir)
    if revert:
        # the patch is relative to the kernel tree: strip a/drivers/xen/xen-pciback/
        subprocess.run(
            ["patch", "-s", "-p4", "-d", str(mdir), "-i", str(REVERT_PATCH)], check=True, capture_output=True
        )
    proc = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(headers),
            f"M={mdir}",
            "CONFIG_XEN_PCIDEV_BACKEND=m",
            "CONFIG_MODULE_SRCVERSION_ALL=y",
            "-j2",
            "modules",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    ko = mdir / "xen-pciback.ko"
    if proc.returncode != 0 or not ko.is_file():
        return BuildResult(status="build-failed", mode="headers", log=proc.stderr[-2000:], kernel_release=release)
    return BuildResult(
        status="ok",
        mode="headers",
        module=str(ko),
        vermagic=_modinfo(ko, "vermagic"),
        srcversion=_modinfo(ko, "srcversion"),
        kernel_release=release,
        duration_s=round(time.monotonic() - t0, 1),
    )


def build_pair(release: str, workdir: Path, progress: Callable[[str], None] = lambda m: None) -> dict[str, BuildResult]:
    """{"series": fixed module, "control": module with the fix reverted}."""
    out = {}
    for label, revert in (("series", False), ("control", True)):
        progress(f"building xen-pciback.ko ({label}) for {release}")
        out[label] = build_module(release, workdir, label, revert)
    return out
