"""pipeline/runs.py: which run `--run` names (a path, a run id, `latest`), and re-rendering one."""

from __future__ import annotations

import os

import pytest
from sample_runs import sample_run

from pipeline.config import Settings
from pipeline.errors import ResultsError
from pipeline.results import write_results
from pipeline.runs import find_run, load_run, merged_or_loaded, rerender


@pytest.fixture
def root(tmp_path):
    """A results root with one run and `latest` pointing at it."""
    root = tmp_path / "runs"
    run = sample_run()
    (root / run.run_id).mkdir(parents=True)
    write_results(root / run.run_id, run)
    os.symlink(run.run_id, root / "latest")
    return root


def test_a_run_is_a_path_a_run_id_or_latest(root):
    settings = Settings(results_root=str(root))
    want = (root / sample_run().run_id).resolve()
    assert find_run(settings, None) == want
    assert find_run(settings, sample_run().run_id) == want
    assert find_run(settings, str(root / sample_run().run_id)) == want
    run_dir, result = load_run(settings, "latest")
    assert run_dir == want and result.run_id == sample_run().run_id


def test_not_a_run_names_where_it_looked(root, tmp_path):
    settings = Settings(results_root=str(root))
    with pytest.raises(ResultsError, match=r"^--run: empty; give a run directory or a run id$"):
        find_run(settings, " ")
    with pytest.raises(ResultsError, match=rf"^not a run: no results.json in nope or {root}/nope$"):
        find_run(settings, "nope")
    with pytest.raises(ResultsError, match=rf"^not a run: no results.json in {tmp_path}/empty/latest$"):
        find_run(Settings(results_root=str(tmp_path / "empty")), None)


def test_report_rerenders_a_run_and_merges_runs(root):
    settings = Settings(results_root=str(root))
    said: list[str] = []
    run_dir, result = merged_or_loaded(settings, None, [], False, said.append)
    rerender(settings, run_dir, result, said.append)
    assert {p.name for p in run_dir.iterdir()} >= {"junit.xml", "kcidb.json", "summary.md", "summary.html"}
    assert f"wrote {run_dir / 'summary.md'}" in said
    # what the re-render said is on the run's run.log, stamped
    log = (run_dir / "run.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in log] == said and all(line[:4].isdigit() for line in log)
    merged_dir, merged = merged_or_loaded(settings, None, [str(run_dir)], False, said.append)
    assert merged_dir != run_dir and merged.merged_from and f"merged run {merged.run_id}: {merged_dir}" in said
