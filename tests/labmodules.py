"""xen-pciback.ko for the built-in lab's dom0 with the fix ("series") and without it ("control"),
built the way `invoke verify` builds the lab's own line (debian-6.1, headers `auto`).

The pipeline's path, nothing of its own: the line imported (kernelsrc, at the version of the lab's
dom0 kernel), its tree fetched into a worktree as a headers-mode row checks it out
(fetch.fetch_kernel), then build.build_kernel against the headers of the release the lab's provider
reports. The fix is in 6.1 as shipped: the series module is the tree as it is, the control is
build_kernel's negative control (the tree with the line's revert patch).

Used by the lab tests (conftest `lab_modules`) and the lab benches (bench/soak_vf.py,
bench/lab_health.py put tests/ on sys.path for it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from pipeline import kernelsrc
from pipeline.build import build_kernel
from pipeline.config import BuildConfig, KernelConfig, Settings
from pipeline.fetch import HEADERS_MODE_PATHS, fetch_kernel, remove_worktree
from pipeline.results import BuildResult
from pipeline.statuses import BuildStatus
from pipeline.util import Progress, noprogress

NAME = "lab-modules"  # the row's name: its build directory, its ref in the fetch cache


def lab_kernel(settings: Settings) -> KernelConfig:
    """The row `invoke verify` builds for the lab's kernel: the 6.1 line as shipped, headers `auto`."""
    return KernelConfig(
        name=NAME,
        remote=str(kernelsrc.repo_path(settings)),
        ref=kernelsrc.LINES[kernelsrc.DEFAULT_LINE].alias,
        build=BuildConfig(mode="headers", headers="auto"),
    )


def build_pair(settings: Settings, run_dir: Path, progress: Progress = noprogress) -> dict[str, BuildResult]:
    """{"series": the module with the fix, "control": without it}, each a BuildResult whose
    module/srcversion are that module's; the files live under run_dir/build/lab-modules/."""
    kernelsrc.import_debian_source(settings, progress=progress)
    kcfg = lab_kernel(settings)
    fetched = fetch_kernel(
        settings, kcfg, f"lab-modules-{os.getpid()}-{time.time_ns()}", progress, sparse=list(HEADERS_MODE_PATHS)
    )
    try:
        built = build_kernel(settings, kcfg, Path(fetched.worktree), fetched.commit, [], run_dir, progress)
    finally:
        remove_worktree(settings, fetched.worktree, progress=progress)
    control = dataclasses.replace(
        built,
        status=BuildStatus.OK if built.control_module else BuildStatus.BUILD_FAILED,
        module=built.control_module,
        srcversion=built.control_srcversion,
        detail=built.control_detail,
        control_module="",
        control_srcversion="",
    )
    return {"series": built, "control": control}
