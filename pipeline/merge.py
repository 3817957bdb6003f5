"""One run from several runs of one series revision: `invoke report --merge RUN...`.

GitLab runs one job per kernel (and per host), each writing its own run directory; the readiness
summary, JUnit, KCIDB and what gets posted must be across all kernels. A merged run is a new run
directory (never one of its sources) with the rows of every source, their build files copied in,
`merged_from` naming the sources, and every report written as for a run of all kernels at once.

Sources must be of the same series revision (patchset hash, or name and revision when a run has
no hash). A kernel found in several sources (e.g. its build job's run and its test job's run)
is taken from the run that got furthest with it: tests ran, then deployed, then built; on a tie
the later run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import report, verdict
from .errors import ConfigError
from .redact import redact_tree
from .results import KernelResult, Outcome, RunDir, RunResult, load_results, now_iso, write_results
from .reuse import _moved
from .runlog import RunLog, stamp
from .statuses import BuildStatus, RunStatus

_ORDER = ["series", "fetch", "apply", "build", "deploy", "test", "report"]


def run_dirs(paths: list[str | Path], tested_only: bool = False) -> list[Path]:
    """Each path is a run directory or a results root (all its runs); `tested_only` keeps runs that
    went as far as the VF tests (`--until test` or further), as the CI report job posts."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if not d.is_symlink() and (d / "results.json").is_file())
        else:
            raise ConfigError(f"--merge {p}: no such run or results directory")
        for d in found:
            if tested_only:
                run = load_results(d)
                if _ORDER.index(run.until or "report") < _ORDER.index("test") or run.merged_from:
                    continue
            if d.resolve() not in [o.resolve() for o in out]:
                out.append(d)
    if not out:
        raise ConfigError(
            f"--merge {' '.join(map(str, paths))}: no run to merge" + (" that ran the tests" if tested_only else "")
        )
    return out


def _progress_of(k: KernelResult) -> tuple[int, int, int]:
    tested = [t for t in k.tests if t.outcome not in (Outcome.INTERRUPTED, Outcome.SKIPPED)]
    # a module that built beats a build that failed (a result of the series), which beats the rest
    build_rank = {BuildStatus.OK: 2, BuildStatus.BUILD_FAILED: 1}.get(k.build.status, 0)
    return (len(tested), len(k.deploy), build_rank)


def _series_key(run: RunResult) -> str:
    return run.series.patchset_hash or f"{run.series.name} v{run.series.revision}"


def merge_runs(sources: list[Path], results_root: Path, progress=print) -> tuple[Path, RunResult]:
    runs = [(Path(d), load_results(d)) for d in sources]
    keys = {_series_key(r) for _, r in runs}
    if len(keys) > 1:
        names = ", ".join(f"{r.run_id} ({r.series.name} v{r.series.revision})" for _, r in runs)
        raise ConfigError(f"--merge: runs of different series revisions: {names}")
    chosen: dict[str, tuple[Path, RunResult, KernelResult]] = {}
    order: list[str] = []
    for d, r in sorted(runs, key=lambda x: (x[1].finished or x[1].started, x[1].run_id)):
        for k in r.kernels:
            if k.name not in chosen:
                order.append(k.name)
                chosen[k.name] = (d, r, k)
            elif _progress_of(k) >= _progress_of(chosen[k.name][2]):
                chosen[k.name] = (d, r, k)

    rd = RunDir(results_root)
    log = RunLog(progress)  # the merge's own lines, stamped, after the sources' logs in its run.log
    first = runs[0][1]
    merged = RunResult(run_id=rd.run_id, series=first.series)
    merged.merged_from = [r.run_id for _, r in runs]
    statuses = {r.status for _, r in runs}
    merged.status = (
        RunStatus.INTERRUPTED
        if RunStatus.INTERRUPTED in statuses
        else RunStatus.COMPLETE
        if statuses == {RunStatus.COMPLETE}
        else RunStatus.INCOMPLETE
    )
    merged.started = min((r.started for _, r in runs if r.started), default=now_iso())
    merged.finished = max((r.finished for _, r in runs if r.finished), default=now_iso())
    merged.until = min((r.until or "report" for _, r in runs), key=_ORDER.index)
    merged.hosts = sorted({h for _, r in runs for h in r.hosts})
    merged.faults_absorbed = [f for _, r in runs for f in r.faults_absorbed]  # every one happened
    merged.host_visits = [v for _, r in runs for v in r.host_visits]
    for name in order:
        d, r, k = chosen[name]
        for sub in (f"build/{name}", f"repro/{name}", f"logs/{name}", name):
            if (d / sub).is_dir():
                shutil.copytree(d / sub, rd.path / sub, dirs_exist_ok=True)
        for attr in ("module", "control_module", "log"):
            setattr(k.build, attr, _moved(getattr(k.build, attr), r, d, rd.path))
        merged.kernels.append(k)
        log(f"{name}: from run {r.run_id}")
    with open(rd.path / "run.log", "w", encoding="utf-8") as fh:
        for d, r in runs:
            fh.write(f"{stamp()} ==== run {r.run_id} ({', '.join(k.name for k in r.kernels)}): its run.log\n")
            if (d / "run.log").is_file():
                fh.write((d / "run.log").read_text(encoding="utf-8", errors="replace"))
    log.open(rd.path / "run.log")
    verdict.apply_verdicts(merged.kernels)
    report.write_reports(merged, rd.path)
    write_results(rd.path, merged)
    rd.point_latest()
    log(f"merged run {merged.run_id}: {rd.path}")
    redact_tree(rd.path)  # the sources' logs and build files, against this job's secret variables too
    return rd.path, merged
