"""Build stage: xen-pciback.ko for one kernel, with the warning delta, checkpatch and the negative control.

Two modes (KernelConfig.build.mode):
- headers: the tree's drivers/xen/xen-pciback built as an external module
  against a prepared headers directory (Debian's linux-headers-<release>;
  pipeline/buildheaders.py);
- full: base config + kconfig fragments, olddefconfig, modules_prepare into an
  output directory cached by (base commit, config inputs), then the module
  (pipeline/buildfull.py).

The module is always built from a copy of its sources in a stable directory of
the build cache (pipeline/buildmodule.py): the series, the baseline (base commit,
for the warnings the series adds: pipeline/buildlog.py) and the control (the
module without the fix).

Everything that executes code of the tree (make, merge_config.sh,
checkpatch.pl) runs in the bubblewrap sandbox of pipeline/sandbox.py through
the step runner of pipeline/buildrun.py: it sees the tree and headers read-only
and writes only its own build directory, with an empty environment, no network
and limits on time, memory, processes and log size. Files the sandbox wrote are
read back only as regular files inside it.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from . import kernelsrc, sandbox
from .buildfull import full_target
from .buildheaders import headers_target
from .buildlog import first_errors, new_warnings, parse_diagnostics
from .buildmodule import (
    MODULE_DIR,
    MODULE_NAME,
    MODULE_SYMBOL,
    build_module,
    cached_build,
    commit_sources,
    control_sources,
    hash_key,
    worktree_sources,
)
from .buildrun import BuildTimeout, LimitHit, Runner, StepFailed
from .checkpatch import run_checkpatch
from .config import KernelConfig, Settings
from .errors import BuildSetupError
from .results import BuildResult, PatchInfo, timed
from .statuses import BuildStatus
from .util import Progress


def _module_changed(worktree: Path, base_commit: str) -> bool:
    """Does the tree's module source (working tree, series included) differ from base_commit's?"""
    proc = subprocess.run(
        ["git", "-C", str(worktree), "diff", "--quiet", base_commit, "--", MODULE_DIR], capture_output=True, check=False
    )
    if proc.returncode not in (0, 1):
        raise BuildSetupError(
            f"git diff {base_commit[:12]} in {worktree} failed: {proc.stderr.decode().strip()[-200:]}"
        )
    return proc.returncode == 1


def _build_env(settings: Settings) -> dict[str, str]:
    """What a build step gets on top of the sandbox's fixed environment (nothing of ours passes)."""
    cache = settings.path(settings.cache_dir)
    # CCACHE_DIR is per work directory (build_module); relative paths keep hits across revisions
    return {"CCACHE_BASEDIR": str(cache), "CCACHE_NOHASHDIR": "1", "CCACHE_DIR": "/tmp/ccache"}


def build_kernel(
    settings: Settings,
    kcfg: KernelConfig,
    worktree: Path,
    base_commit: str,
    patches: list[PatchInfo],
    run_dir: Path,
    progress: Progress,
) -> BuildResult:
    """Build xen-pciback.ko of `worktree` for one kernel; see the module docstring.

    Results go under run_dir/build/<kernel>/ (log, module, control module).
    Missing tools or headers raise BuildSetupError; a failing build is a
    status (`build-failed`, or `error` when the config cannot build the module).
    """
    start = time.monotonic()
    worktree = Path(worktree).resolve()
    out_dir = Path(run_dir) / "build" / kcfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "build.log"
    res = BuildResult(mode=kcfg.build.mode, log=str(log))
    run = Runner(log, start + kcfg.build.timeout_s, _build_env(settings), kcfg.build.timeout_s, settings)
    if run.confined and (reason := sandbox.probe()):
        raise BuildSetupError(f"{kcfg.name}: build refused: {reason}")
    res.network_isolated = run.confined
    notes = [] if run.confined else ["unconfined build (--no-sandbox): the series' code ran with this machine's view"]
    run.note(f"{kcfg.name}: {kcfg.build.mode} build of {worktree} (base {base_commit})")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"checkpatch-{kcfg.name}")
    checkpatch: Future | None = None
    try:
        if kcfg.build.mode == "headers":
            with timed(res.steps, "prepare"):
                target = headers_target(settings, kcfg, run, progress)
        else:
            with timed(res.steps, "prepare"):
                prep = full_target(settings, kcfg, worktree, base_commit, run, progress)
            target = prep.target
            res.config_warnings = prep.config_warnings
            res.prepared_reused = prep.reused
            if prep.module_symbol != "m":
                res.status = BuildStatus.ERROR
                res.detail = (
                    f"{MODULE_SYMBOL} is {prep.module_symbol} after olddefconfig, not m: the module cannot be built"
                )
                return res
        res.kernel_release = target.release

        if patches:
            progress(f"{kcfg.name}: build: checkpatch on {len(patches)} patch(es), beside the build")
            # independent of the build and mostly one core: run it alongside, logged on its own
            cp_run = run.child(out_dir / "checkpatch.log")
            checkpatch = pool.submit(run_checkpatch, worktree, patches, cp_run)
            run.note(f"checkpatch: running beside the build, log {cp_run.log}")

        progress(f"{kcfg.name}: build: xen-pciback.ko (series)")
        # one work directory per kernel: kernels sharing headers build side by side
        role = "series-" + re.sub(r"[^A-Za-z0-9._-]", "_", kcfg.name)
        with timed(res.steps, "series"):
            series = build_module(target, run, worktree_sources(worktree), role, "module: series")
        res.warnings = series.warnings
        if not series.ok:
            res.status = BuildStatus.BUILD_FAILED
            res.errors = series.errors
        else:
            res.status = BuildStatus.OK
            res.module = str(out_dir / MODULE_NAME)
            shutil.copy2(series.ko, res.module)
            res.srcversion, res.vermagic = series.srcversion, series.vermagic

        changed = _module_changed(worktree, base_commit)
        # read lazily: a warm rebuild finds baseline and control in the cache and never needs them
        base_files = functools.cache(lambda: commit_sources(worktree, base_commit))
        if changed:
            progress(f"{kcfg.name}: build: baseline without the series ({base_commit[:12]})")
            with timed(res.steps, "baseline"):
                baseline, _, _ = cached_build(
                    target, run, f"baseline/{base_commit}", lambda: (base_files(), "base commit"), "module: baseline"
                )
            if baseline is not None and baseline.ok:
                res.new_warnings = new_warnings(res.warnings, baseline.warnings)
            else:
                res.new_warnings = list(res.warnings)
                notes.append("baseline (base commit) does not build: every warning counts as new")
        # unchanged: the series build is the baseline, nothing is new

        progress(f"{kcfg.name}: build: negative control (module without the fix)")
        revert = kernelsrc.control_revert(settings, kcfg)

        def control_files() -> tuple[dict[str, bytes] | None, str]:
            # one staging folder per control entry: two rows never patch the same files
            return control_sources(
                base_files(), revert, target.key_dir / "work" / f"stage-{control_entry.replace('/', '-')}"
            )

        control_entry = f"control/{base_commit}-{hash_key(revert.read_bytes() if revert.exists() else b'')}"
        with timed(res.steps, "control"):
            control, cdetail, _ = cached_build(target, run, control_entry, control_files, "module: control")
        res.control_detail = cdetail
        if control is not None and control.ok:
            (out_dir / "control").mkdir(exist_ok=True)
            res.control_module = str(out_dir / "control" / MODULE_NAME)
            shutil.copy2(control.ko, res.control_module)
            res.control_srcversion = control.srcversion
        elif control is not None:
            res.control_detail = f"control does not build ({cdetail}): {'; '.join(control.errors[:2])}"

        if checkpatch is not None:
            with timed(res.steps, "checkpatch_wait"):  # beyond the build: what checkpatch added
                res.checkpatch, note = checkpatch.result()
            if note:
                notes.append(note)
    except BuildTimeout as e:
        res.status = BuildStatus.BUILD_FAILED
        res.errors = [f"{e}: killed after the time limit of {kcfg.build.timeout_s} s"]
        res.limit = sandbox.Limit.TIME.value
    except LimitHit as e:
        res.status = BuildStatus.BUILD_FAILED
        res.errors = [str(e)]
        res.limit = e.limit.value
    except StepFailed as e:
        res.status = BuildStatus.BUILD_FAILED if res.status in (BuildStatus.NOT_RUN, BuildStatus.OK) else res.status
        _, errors = parse_diagnostics(e.output, [(worktree, "")])
        first = first_errors(e.output, errors)  # the real error first, with the step it stopped
        res.errors = [f"{e.step} failed: {first[0]}", *first[1:]] if first else [f"{e.step} failed"]
    finally:
        pool.shutdown(wait=True)
        res.duration_s = round(time.monotonic() - start, 2)
        res.sandbox = run.info()
    if res.status is BuildStatus.BUILD_FAILED and not res.detail:
        notes.insert(0, f"build failed: {res.errors[0] if res.errors else 'see ' + str(log)}")
    if res.new_warnings:
        notes.append(f"{len(res.new_warnings)} new warning(s)")
    res.detail = "; ".join(n for n in [res.detail, *notes] if n)
    run.note(f"result: {res.status} in {res.duration_s} s")
    return res
