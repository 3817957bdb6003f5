"""The project's own .gitlab-ci.yml, run by gitlab-ci-local (npm, pinned in .ci/package-lock.json,
installed by ./pv) with its shell executor: lint, unit, series, build for one kernel, test against
the lab, report, with variables set as a GitLab project and a shell runner on a Xen host would.

What it shows: the job list and each job's outcome; the test job deploys the module the build job
made (handed over as the build job's `runs/` artifact: same file, same srcversion, `reused_from`
the build job's run, nothing rebuilt); the report job's merged run joins the test job's run only
(the build-only run is left out) and is what `invoke post` would send.

Kept short for CI: one kernel (debian-6.1-prefix), vf-boot-1 and the control, no hot-plug (a runner
config file via INVOKE_RUNTIME_CONFIG), the unit job on one test file (PYTEST_ADDOPTS). The runner's
persistent cache (PV_RUNNER_CACHE) is this checkout's .cache: the Debian source import and the lab.

Two tests: the pipeline up to the build job (no host; marked kernel, build), and the whole pipeline
with the test job on the lab (marked lab; run it under `flock /work/lab.lock` while others share
the lab). The lab one is opt-in (PV_GCL_LAB=1) until it has been run: it was written in a session
whose lab lock was held throughout by another process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import host_state

from pipeline import PROJECT_ROOT

pytestmark = [pytest.mark.kernel, pytest.mark.build]

GCL = PROJECT_ROOT / ".ci" / "node_modules" / ".bin" / "gitlab-ci-local"
KERNEL = "debian-6.1-prefix"
JOBS = ["lint", "unit", "series", f"build: [{KERNEL}]", f"test: [{KERNEL}]", "report"]
LISTED = [
    "lint",
    "unit",
    "series",
    "build: [debian-6.1]",
    "build: [debian-6.1-prefix]",
    "test: [debian-6.1]",
    "test: [debian-6.1-prefix]",
    "report",
]  # the scheduled-only poll job is not in a push pipeline


def _copy_project(dest):
    """The checkout as a GitLab runner clones it: the tracked (and new, not ignored) files, one commit."""
    files = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = PROJECT_ROOT / f.decode()
        if src.is_file() or src.is_symlink():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode(), follow_symlinks=False)
    git = ["git", "-C", str(dest), "-c", "user.email=ci@example.org", "-c", "user.name=CI"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(dest)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline under test"], check=True)
    # gitlab-ci-local derives CI_PROJECT_PATH etc. from it; nothing is fetched
    subprocess.run([*git, "remote", "add", "origin", "https://gitlab.example.org/xen/pciback-verify.git"], check=True)


def _pipeline(tmp_path, jobs):
    """Run `jobs` of the project's pipeline in a copy of the checkout; (project copy, job -> outcome, output)."""
    assert GCL.is_file(), "gitlab-ci-local missing: ./pv installs it (npm ci --prefix .ci)"
    proj = tmp_path / "project"
    proj.mkdir()
    _copy_project(proj)
    runner_cfg = tmp_path / "runner-pv.yaml"
    runner_cfg.write_text("pv:\n  vf_counts: [1]\n  hotplug: false\n")
    variables = {
        "PV_RUNNER_CACHE": str((PROJECT_ROOT / ".cache").resolve()),
        "INVOKE_RUNTIME_CONFIG": str(runner_cfg),
        "PYTEST_ADDOPTS": "tests/test_verdict.py",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "INVOKE_"))}
    cmd = [
        str(GCL),
        "--force-shell-executor",
        "--shell-isolation",
        "--no-color",
    ]  # run in proj (--cwd wants a relative path)
    for k, v in variables.items():
        cmd += ["--variable", f"{k}={v}"]
    listing = subprocess.run([*cmd, "--list"], cwd=proj, capture_output=True, text=True, env=env, check=True).stdout
    listed = [line.split("  ")[0].strip() for line in listing.splitlines()[1:] if line.strip()]
    listed = [n for n in listed if n and not n.startswith(("parsing", "json schema", "name"))]
    assert listed == LISTED
    proc = subprocess.run([*cmd, *jobs], cwd=proj, capture_output=True, text=True, env=env, timeout=1800, check=False)
    (tmp_path / "gitlab-ci-local.log").write_text(proc.stdout + proc.stderr)
    outcome = {job: state for state, job in re.findall(r"^\s*(PASS|FAIL|WARN)\s+(.+?)\s*$", proc.stdout, re.M)}
    assert proc.returncode == 0 and outcome == dict.fromkeys(jobs, "PASS"), proc.stdout[-6000:] + proc.stderr[-2000:]
    return proj, proc.stdout


def _runs(proj):
    runs = {}
    for d in (proj / "runs").iterdir():
        if not d.is_symlink() and (d / "results.json").is_file():
            runs[d.name] = json.loads((d / "results.json").read_text())
    return runs


def test_gitlab_pipeline_to_the_build_job(tmp_path):
    """lint, unit, series and the build job of one kernel; the build job's run is its artifact."""
    proj, _ = _pipeline(tmp_path, JOBS[:4])
    (built,) = _runs(proj).values()
    assert built["until"] == "build"
    (k,) = built["kernels"]
    assert (k["name"], k["verdict"], k["build"]["status"]) == (KERNEL, "ready-untested", "ok")
    # the artifact holds the module the test job deploys, and the series the series job fetched
    assert (proj / "runs" / built["run_id"] / "build" / KERNEL / "xen-pciback.ko").is_file()
    assert (proj / "series-path").read_text().strip() == "patches/xen-pciback-reconfigure"
    assert (proj / "runs" / built["run_id"] / "run.log").is_file()


@pytest.mark.lab
@pytest.mark.skipif(os.environ.get("PV_GCL_LAB") != "1", reason="opt-in until run against the lab (PV_GCL_LAB=1)")
def test_gitlab_pipeline_runs_locally(lab_host, tiny_guest, tmp_path):
    from pipeline.host import Host

    with Host(lab_host) as h:
        before = host_state(h, ("module", "domids", "numvfs", "assignable"))
    proj, _ = _pipeline(tmp_path, JOBS)
    runs = _runs(proj)
    built = [r for r in runs.values() if r["until"] == "build"]
    tested = [r for r in runs.values() if r["until"] == "report" and not r.get("merged_from")]
    merged = [r for r in runs.values() if r.get("merged_from")]
    assert len(built) == len(tested) == len(merged) == 1, sorted(runs)
    (b,), (t,), (m,) = built[0]["kernels"], tested[0]["kernels"], merged[0]["kernels"]
    # build -> test: the build job's module, not a new one
    assert t["build"]["reused_from"] == built[0]["run_id"]
    assert t["build"]["srcversion"] == b["build"]["srcversion"]
    tmod = proj / "runs" / tested[0]["run_id"] / "build" / KERNEL / "xen-pciback.ko"
    bmod = proj / "runs" / built[0]["run_id"] / "build" / KERNEL / "xen-pciback.ko"
    assert tmod.read_bytes() == bmod.read_bytes()
    test_log = (proj / ".gitlab-ci-local" / "output" / f"test: [{KERNEL}].log").read_text()
    assert "not rebuilt" in test_log and "build: xen-pciback.ko (series)" not in test_log
    # the lab ran the build job's module: the guest saw its VF, the control failed as it must
    assert t["verdict"] == "ready", t["verdict_detail"]
    assert [(x["name"], x["module"], x["passed"]) for x in t["tests"]] == [
        ("vf-boot-1", "series", True),
        ("vf-boot-3", "control", False),
    ]
    assert t["deploy"][0]["srcversion"] == b["build"]["srcversion"]
    # report: one merged run of the test job's run only, the run `invoke post --run latest` sends
    assert merged[0]["merged_from"] == [tested[0]["run_id"]]
    assert (m["verdict"], m["tests"]) == (t["verdict"], t["tests"])
    assert os.path.realpath(proj / "runs" / "latest") == str(proj / "runs" / merged[0]["run_id"])
    assert (proj / "runs" / "index.html").is_file()  # the dashboard
    with Host(lab_host) as h:
        assert host_state(h, ("module", "domids", "numvfs", "assignable")) == before
