"""`invoke report --merge`: one run from per-kernel runs of one series revision.

The merged run must equal one run of all its kernels in verdicts and tests (and in what the reports
say), whatever order the sources come in; runs of another revision are refused; the CI report
job's selection (`--tested-only`) leaves out build-only runs. The `build`-marked test does it with
real `invoke verify --until build` runs (two one-kernel runs against one two-kernel run).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from sample_runs import sample_run

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError
from pipeline.merge import merge_runs, run_dirs
from pipeline.report import write_reports
from pipeline.results import load_results, write_results


def _write(root, run):
    d = root / run.run_id
    d.mkdir(parents=True)
    for k in run.kernels:
        (d / "build" / k.name).mkdir(parents=True)
        (d / "build" / k.name / "xen-pciback.ko").write_bytes(b"\x7fELF " + k.name.encode())
        k.build.module = str(d / "build" / k.name / "xen-pciback.ko") if k.build.status == "ok" else ""
    write_reports(run, d)
    write_results(d, run)
    return d


def _split(run, names, run_id):
    part = copy.deepcopy(run)
    part.run_id = run_id
    part.kernels = [k for k in part.kernels if k.name in names]
    part.hosts = ["lab"]
    return part


def _facts(run):
    """What must be the same: per kernel its verdict, detail, stage statuses and every test."""
    return {
        k.name: (
            k.verdict,
            k.verdict_detail,
            k.apply.status,
            k.build.status,
            [(t.name, t.module, t.host, t.expected, t.seen, t.passed, t.reason) for t in k.tests],
        )
        for k in run.kernels
    }


def _junit(d):
    root = ET.parse(d / "junit.xml").getroot()
    return sorted((c.get("classname"), c.get("name"), [x.tag for x in c]) for c in root.iter("testcase"))


def test_merged_run_equals_one_run_of_both(tmp_path):
    whole = sample_run(run_id="20250101T000000-1")
    whole_dir = _write(tmp_path / "whole", whole)
    a = _split(whole, {"debian-6.1", "5.4.y"}, "20250101T000100-2")
    b = _split(whole, {"debian-6.1-prefix", "5.10.y"}, "20250101T000200-3")
    root = tmp_path / "ci"
    da, db = _write(root, a), _write(root, b)
    (da / "run.log").write_text("2025-01-01T00:01:00.000+00:00 series: xen-pciback-reconfigure v1\n")

    said: list[str] = []
    merged_dir, merged = merge_runs([db, da], root, progress=said.append)
    assert merged_dir.parent == root and merged_dir not in (da, db)
    assert merged.merged_from == ["20250101T000200-3", "20250101T000100-2"]
    again = load_results(merged_dir)
    assert sorted(_facts(again).items()) == sorted(_facts(load_results(whole_dir)).items())
    assert _junit(merged_dir) == _junit(whole_dir)
    kc = json.loads((merged_dir / "kcidb.json").read_text())
    assert len(kc["checkouts"]) == 4 and len(kc["tests"]) == sum(len(k.tests) for k in whole.kernels)
    md = (merged_dir / "summary.md").read_text()
    for k in whole.kernels:
        assert f"### {k.name}: {k.verdict}" in md
    # build files come along: the merged run stands on its own
    for k in again.kernels:
        if k.build.module:
            assert k.build.module.startswith(str(merged_dir)) and os.path.isfile(k.build.module)
    assert (root / "latest").resolve() == merged_dir.resolve()
    # its run.log: each source's run.log under a header, then every line the merge said, all stamped
    log = (merged_dir / "run.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 "
    assert all(re.match(stamp, line) for line in log), log
    assert [line.split(" ", 1)[1] for line in log] == [
        "==== run 20250101T000200-3 (debian-6.1-prefix, 5.10.y): its run.log",
        "==== run 20250101T000100-2 (debian-6.1, 5.4.y): its run.log",
        "series: xen-pciback-reconfigure v1",
        *said,
    ]
    assert said[-1] == f"merged run {merged.run_id}: {merged_dir}"


def test_merge_refuses_another_revision_and_selects_tested_runs(tmp_path):
    root = tmp_path / "runs"
    v1 = _split(sample_run(1), {"debian-6.1"}, "20250101T000100-2")
    v2 = _split(sample_run(2), {"debian-6.1-prefix"}, "20250101T000200-3")
    d1, d2 = _write(root, v1), _write(root, v2)
    with pytest.raises(ConfigError, match="different series revisions"):
        merge_runs([d1, d2], root, progress=lambda m: None)

    built = _split(sample_run(1), {"debian-6.1-prefix"}, "20250101T000300-4")
    built.until = "build"
    db = _write(root, built)
    tested = run_dirs([root], tested_only=True)
    assert d1 in tested and db not in tested
    with pytest.raises(ConfigError, match="no run to merge that ran the tests"):
        run_dirs([db], tested_only=True)


def _invoke(*args, env):
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.kernel
@pytest.mark.build
def test_merge_of_real_per_kernel_build_runs(tmp_path):
    """Real runs: `--until build` per kernel (as CI's build jobs), merged, against one run of both."""
    both_root, per_root = tmp_path / "both", tmp_path / "per"
    env = {**os.environ, "INVOKE_PV_RESULTS_ROOT": str(both_root)}
    whole = json.loads(_invoke("verify", "--until", "build", "--json", env=env).stdout)
    env["INVOKE_PV_RESULTS_ROOT"] = str(per_root)
    for name in ("debian-6.1", "debian-6.1-prefix"):
        _invoke("verify", "--until", "build", "--kernel", name, env=env)
    merged = json.loads(_invoke("report", "--merge", str(per_root), "--json", env=env).stdout)
    assert len(merged["merged_from"]) == 2

    def facts(data):
        return {
            k["name"]: (k["verdict"], k["apply"]["status"], k["build"]["status"], k["build"]["srcversion"], k["tests"])
            for k in data["kernels"]
        }

    assert facts(merged) == facts(whole)
    assert {k["verdict"] for k in merged["kernels"]} == {"already-upstream", "ready-untested"}


@pytest.mark.kernel
@pytest.mark.build
def test_verify_builds_takes_an_earlier_runs_module(tmp_path):
    """`verify --builds`: CI's test job gets the build job's run as an artifact (here: moved to another
    folder, as the artifact lands in another job's directory) and uses its module; nothing is rebuilt."""
    built_root, moved, test_root = tmp_path / "build-job", tmp_path / "artifact", tmp_path / "test-job"
    env = {**os.environ, "INVOKE_PV_RESULTS_ROOT": str(built_root)}
    built = json.loads(_invoke("verify", "--until", "build", "--kernel", "debian-6.1-prefix", "--json", env=env).stdout)
    shutil.copytree(built_root, moved, symlinks=True)
    shutil.rmtree(built_root)  # the build job's directory is gone; only the artifact is left
    env["INVOKE_PV_RESULTS_ROOT"] = str(test_root)
    proc = _invoke(
        "verify", "--until", "build", "--kernel", "debian-6.1-prefix", "--builds", str(moved), "--json", env=env
    )
    again = json.loads(proc.stdout)
    (b,), (k,) = built["kernels"], again["kernels"]
    assert k["build"]["reused_from"] == built["run_id"] and k["build"]["srcversion"] == b["build"]["srcversion"]
    run_dir = test_root / again["run_id"]
    assert k["build"]["module"] == str(run_dir / "build/debian-6.1-prefix/xen-pciback.ko")
    assert (run_dir / "build/debian-6.1-prefix/xen-pciback.ko").read_bytes() == (
        moved / built["run_id"] / "build/debian-6.1-prefix/xen-pciback.ko"
    ).read_bytes()
    assert "not rebuilt" in proc.stderr and "build: xen-pciback.ko (series)" not in proc.stderr
    assert (k["verdict"], k["apply"]["status"]) == (b["verdict"], b["apply"]["status"])
