"""`invoke dashboard`: a static site over every run under the results root, as maintainers read
results: by series and revision (v1 -> v2 -> v3), not one run at a time.

Per series, a kernels x revisions grid of verdicts; each cell links into the summary.html of
the run it comes from, and says what changed from the previous revision (better / worse /
same / new). Per revision the newest run that has the kernel counts (a merged run of a CI
pipeline is newer than the per-kernel runs it joins). Template: templates/report/dashboard.html.j2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .report import _env
from .results import RunResult, atomic_write_text, load_results
from .verdict import STATE, Change, change, verdict_of


@dataclass
class Cell:
    verdict: str
    detail: str
    state: str  # success | warning | fail (colour)
    run_id: str
    link: str  # relative to the dashboard's folder
    change: Change | str = ""  # better | worse | same | new ("" in the first revision)
    before: str = ""  # the previous revision's verdict


@dataclass
class SeriesGrid:
    name: str
    revisions: list[int] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    runs: dict[int, list[str]] = field(default_factory=dict)  # revision -> run ids
    changes: dict[int, list[str]] = field(default_factory=dict)  # revision -> lines "BETTER 5.10.y: a -> b"


def load_runs(root: Path) -> list[tuple[Path, RunResult]]:
    out = []
    for d in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if d.is_symlink() or not (d / "results.json").is_file():
            continue
        try:
            out.append((d, load_results(d)))
        except (ValueError, OSError):
            continue  # another schema, or half a file: not this dashboard's to show
    return out


def grids(runs: list[tuple[Path, RunResult]], out_dir: Path) -> list[SeriesGrid]:
    by_series: dict[str, SeriesGrid] = {}
    ordered = sorted(runs, key=lambda x: (x[1].finished or x[1].started, x[1].run_id))
    for d, run in ordered:
        g = by_series.setdefault(run.series.name, SeriesGrid(run.series.name))
        rev = run.series.revision
        if rev not in g.revisions:
            g.revisions.append(rev)
        g.runs.setdefault(rev, []).append(run.run_id)
        rel = os.path.relpath(d / "summary.html", out_dir)
        for k in run.kernels:
            if k.name not in g.kernels:
                g.kernels.append(k.name)
            v, detail = verdict_of(k)
            g.cells[(k.name, rev)] = Cell(v, detail, STATE.get(v, "fail"), run.run_id, f"{rel}#kernel-{k.name}")
    for g in by_series.values():
        g.revisions.sort()
        for prev, rev in zip(g.revisions, g.revisions[1:], strict=False):
            lines = []
            for name in g.kernels:
                cell, old = g.cells.get((name, rev)), g.cells.get((name, prev))
                if cell is None and old is None:
                    continue
                ch = change(old and old.verdict, cell and cell.verdict)
                if ch is Change.GONE:
                    lines.append(f"GONE {name}: {old.verdict}")
                    continue
                cell.change, cell.before = ch, old.verdict if old else ""
                if ch is Change.NEW:
                    lines.append(f"NEW {name}: {cell.verdict}")
                elif ch is not Change.SAME:
                    lines.append(f"{ch.upper()} {name}: {old.verdict} -> {cell.verdict}")
            g.changes[rev] = lines or ["no verdict changed"]
    return sorted(by_series.values(), key=lambda g: g.name)


def write_dashboard(root: Path, out_dir: Path | None = None) -> Path:
    """index.html over every run under `root` (written into `out_dir`, default the root itself)."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root)
    html = _env().get_template("dashboard.html.j2").render(grids=grids(runs, out_dir), root=str(root), nruns=len(runs))
    path = out_dir / "index.html"
    atomic_write_text(path, html)
    return path
