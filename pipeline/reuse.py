"""Builds taken from an earlier run instead of made again (`invoke verify --builds RUN`).

GitLab's test job gets the build job's run directory as an artifact and deploys the modules
built there: the same series (patchset hash), the same kernel, a build that succeeded. The
modules and logs are copied into the new run, so that run stands on its own; the build record
says where it came from (`build.reused_from`).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from .errors import ConfigError
from .results import KernelResult, RunResult, load_results
from .statuses import BuildStatus


def _runs_under(path: Path) -> list[Path]:
    if (path / "results.json").is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"--builds {path}: no such run or results directory")
    # newest first; `latest` is a symlink to one of them
    return sorted(
        (p for p in path.iterdir() if not p.is_symlink() and (p / "results.json").is_file()),
        key=lambda p: p.name,
        reverse=True,
    )


def find_builds(path: Path, kernels: list[str], patchset: str) -> dict[str, tuple[Path, RunResult, KernelResult]]:
    """For each kernel, the newest run under `path` (or the run `path`) with a good build of this series."""
    found: dict[str, tuple[Path, RunResult, KernelResult]] = {}
    runs = _runs_under(Path(path))
    for run_dir in runs:
        try:
            run = load_results(run_dir)
        except (ValueError, OSError):
            continue
        if patchset and run.series.patchset_hash and run.series.patchset_hash != patchset:
            continue
        for k in run.kernels:
            if k.name in kernels and k.name not in found and k.build.status is BuildStatus.OK and k.build.module:
                found[k.name] = (run_dir, run, k)
    missing = [k for k in kernels if k not in found]
    if missing:
        raise ConfigError(
            f"--builds {path}: no successful build of this series for {', '.join(missing)} "
            f"(looked at {len(runs)} run(s))"
        )
    return found


def _moved(value: str, old_run: RunResult, old_dir: Path, new_dir: Path) -> str:
    """A path recorded inside the old run (absolute, as written on the build job's machine) in the new run."""
    if not value or "\n" in value:  # build.log may hold the log text itself
        return value
    marker = f"/{old_run.run_id}/"
    rel = value.split(marker, 1)[1] if marker in value else None
    if rel is None:
        p = Path(value)
        try:
            rel = str(p.relative_to(old_dir))
        except ValueError:
            return value
    return str(new_dir / rel)


def adopt(old_dir: Path, old_run: RunResult, k: KernelResult, new_dir: Path) -> KernelResult:
    """The earlier row's fetch, apply and build records, its build files copied into `new_dir`."""
    src = Path(old_dir) / "build" / k.name
    if src.is_dir():
        shutil.copytree(src, Path(new_dir) / "build" / k.name, dirs_exist_ok=True)
    out = KernelResult(name=k.name, ref=k.ref, remote=k.remote)
    out.fetch = copy.deepcopy(k.fetch)
    out.fetch.worktree = ""  # that job's worktree is gone; nothing to remove here
    out.apply = copy.deepcopy(k.apply)
    out.apply.branch = ""
    out.build = copy.deepcopy(k.build)
    for attr in ("module", "control_module", "log"):
        setattr(out.build, attr, _moved(getattr(out.build, attr), old_run, Path(old_dir), Path(new_dir)))
    missing = [p for p in (out.build.module, out.build.control_module) if p and not Path(p).is_file()]
    if missing:
        raise ConfigError(f"--builds {old_dir}: {k.name}: module missing from the run: {', '.join(missing)}")
    out.build.reused_from = old_run.run_id
    out.build.detail = (f"built in run {old_run.run_id}; " + out.build.detail).rstrip("; ")
    return out
