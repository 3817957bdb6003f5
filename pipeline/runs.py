"""Runs already made, as `invoke report` and `invoke post` name them: a run directory, a run id under
the results root, or (default) the results root's `latest`; re-rendering one, or merging several."""

from __future__ import annotations

from pathlib import Path

from .config import Settings
from .errors import ResultsError
from .mails import git_dirs, write_mails
from .merge import merge_runs, run_dirs
from .report import write_reports
from .results import RunResult, load_results
from .runlog import RunLog
from .util import Progress


def find_run(settings: Settings, run: str | None) -> Path:
    """The run directory `run` names (see the module's docstring), resolved."""
    root = settings.path(settings.results_root)
    if run is not None and not str(run).strip():
        raise ResultsError("--run: empty; give a run directory or a run id")
    candidates = [root / "latest"] if not run else [Path(run), root / run]
    candidates = list(dict.fromkeys(candidates))  # an absolute --run is both
    for p in candidates:
        if (p / "results.json").exists():
            return p.resolve()  # load_results says what is wrong with it, if anything
    raise ResultsError(f"not a run: no results.json in {' or '.join(str(p) for p in candidates)}")


def load_run(settings: Settings, run: str | None) -> tuple[Path, RunResult]:
    """(run directory, its RunResult) for --run/--compare: see `find_run`."""
    run_dir = find_run(settings, run)
    return run_dir, load_results(run_dir)


def merged_or_loaded(
    settings: Settings, run: str | None, merge: list[str], tested_only: bool, progress: Progress
) -> tuple[Path, RunResult]:
    """`invoke report`'s run: one new run merged from `merge` (runs or results roots; `tested_only`: those
    that ran the VF tests), else the run `run` names."""
    if not merge:
        return load_run(settings, run)
    root = settings.path(settings.results_root)
    return merge_runs(run_dirs([settings.path(m) for m in merge], tested_only), root, progress)


def rerender(settings: Settings, run_dir: Path, result: RunResult, progress: Progress, reports: bool = True) -> None:
    """Write the run's reports again (unless `reports` is false: a merged run has fresh ones) and its mails;
    what it says goes on the run's run.log too, stamped."""
    progress = RunLog(progress)
    progress.open(run_dir / "run.log")
    if reports:
        for p in write_reports(result, run_dir):
            progress(f"wrote {p}")
    for p in write_mails(result, run_dir, git_dirs(settings, result)):
        progress(f"wrote {p}")
