"""Golden files: summary.md, junit.xml and the terminal table (`invoke verify`'s closing lines) of the
sample runs in tests/sample_runs.py, compared byte for byte with tests/golden/<sample>/.

A change to a renderer or a template shows here as a diff of the whole output. When the change is
meant, regenerate the files with one command and review them in the commit:

    PV_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py

Nothing is normalised: the sample runs are fixed (ids, times, commits), and the run directory is the
relative `runs/<run id>` of a temporary working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sample_runs import build_only_run, lines_run, sample_run

from pipeline.report import write_reports
from pipeline.runner import Verified

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("PV_REGEN_GOLDEN") == "1"
SAMPLES = {"matrix": sample_run, "build-only": build_only_run, "lines": lines_run}
FILES = ["summary.md", "junit.xml", "table.txt"]


def _rendered(sample: str) -> dict[str, bytes]:
    run = SAMPLES[sample]()
    run_dir = Path("runs") / run.run_id
    run_dir.mkdir(parents=True)
    write_reports(run, run_dir)  # what `invoke verify` and `invoke report` write
    out = {name: (run_dir / name).read_bytes() for name in ("summary.md", "junit.xml")}
    # what tasks.py prints at the end of `invoke verify`: print(done.closing())
    out["table.txt"] = (Verified(run, run_dir).closing() + "\n").encode()
    return out


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_rendered_output_matches_its_golden_files(sample, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rendered = _rendered(sample)
    folder = GOLDEN / sample
    if REGEN:
        folder.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            (folder / name).write_bytes(rendered[name])
    for name in FILES:
        want = folder / name
        assert want.is_file(), f"no {want}: PV_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py"
        assert rendered[name].decode() == want.read_bytes().decode(), (
            f"{sample}/{name} differs from its golden file; if the change is meant: "
            "PV_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py"
        )


def test_every_golden_file_belongs_to_a_sample():
    """A sample dropped or renamed leaves no stale folder behind."""
    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.glob("*/*")}
    assert on_disk == {f"{s}/{n}" for s in SAMPLES for n in FILES}
