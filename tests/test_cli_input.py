"""Every CLI input of issue 11 item 5 through the real CLI: one line, its documented exit code, no traceback
anywhere in the output; `--fail-on` (and pv.fail_on) gating the exit code on verdicts (item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sample_runs import sample_run, vf_tests

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError, InternalError, ResultsError, VerdictGate
from pipeline.results import write_results
from pipeline.verdict import apply_verdicts


def _invoke(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(
        INVOKE_PV_RESULTS_ROOT=str(tmp_path / "runs"), INVOKE_PV_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path)
    )
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=300
    )


def _one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == code, (proc.returncode, out[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _run_dir(tmp_path: Path, run) -> Path:
    d = tmp_path / "runs" / run.run_id
    d.mkdir(parents=True)
    write_results(d, run)
    return d


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["verify", "--jobs", "two", "--until", "apply"], ConfigError.exit_code, "--jobs 'two': expected an integer"),
        (["verify", "--jobs", "0", "--until", "apply"], ConfigError.exit_code, "--jobs '0': expected an integer >= 1"),
        (["verify", "--jobs", "-3", "--until", "apply"], ConfigError.exit_code, "--jobs '-3'"),
        (["verify", "--kernel", "", "--until", "series"], ConfigError.exit_code, "--kernel: empty kernel name"),
        (["verify", "--fail-on", "green", "--until", "series"], ConfigError.exit_code, "--fail-on 'green'"),
        (["post", "--patchwork", "http://127.0.0.1:9", "--patch", "12a"], ConfigError.exit_code, "--patch '12a'"),
        (["post", "--patchwork", "http://127.0.0.1:9", "--series-id", "x"], ConfigError.exit_code, "--series-id 'x'"),
        (["intake.fetch", "--patchwork", "http://127.0.0.1:9", "--series-id", "1e3"], ConfigError.exit_code, "'1e3'"),
        (["lab.console", "--lines", "many"], ConfigError.exit_code, "--lines 'many'"),
    ],
)
def test_bad_option_values(tmp_path, args, code, needle):
    if args[0] == "post":  # post reads the run first: give it one
        _run_dir(tmp_path, sample_run())
        args = [*args, "--run", str(tmp_path / "runs" / sample_run().run_id)]
    _one_line(_invoke(tmp_path, *args), code, needle)
    assert not (tmp_path / "runs").exists() or args[0] == "post"  # refused before a run directory


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"schema": 1, "run_id"', "truncated or not JSON (line 1, column 23"),
        ("", "truncated or not JSON"),
        ('{"schema": 7, "run_id": "x"}', "results schema 7, this version reads schema 1"),
        ('{"run_id": "x"}', "results schema None"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"schema": 1}', "not a valid results.json"),
        (
            '{"schema": 1, "run_id": "x", "kernels": [{"name": "k", "tests": [{"name": "t", "host": "h", '
            '"module": "series", "seen": "three"}]}]}',
            "expected int, got str 'three'",
        ),
        ('{"schema": 1, "run_id": "x", "kernels": 5}', "expected a list, got int"),
        (b"\xff\xfe\x00".decode("latin-1"), "not UTF-8"),
    ],
)
def test_report_of_a_bad_results_json(tmp_path, content, needle):
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.json").write_bytes(content.encode("latin-1"))
    line = _one_line(_invoke(tmp_path, "report", "--run", str(d)), ResultsError.exit_code, needle)
    assert line.startswith(f"error: {d}")
    assert sorted(p.name for p in d.iterdir()) == ["results.json"]  # nothing rendered from it


@pytest.mark.parametrize("run", ["{tmp}", "{tmp}/nope", "no-such-run-id", " "])
def test_report_of_a_folder_that_is_no_run(tmp_path, run):
    line = _one_line(_invoke(tmp_path, "report", "--run", run.format(tmp=tmp_path)), ResultsError.exit_code)
    assert "no results.json" in line or "--run: empty" in line


def test_compare_with_a_bad_run(tmp_path):
    good = _run_dir(tmp_path, sample_run())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text('{"schema": 1, ')
    _one_line(_invoke(tmp_path, "report", "--run", str(good), "--compare", str(bad)), ResultsError.exit_code, str(bad))


def test_internal_error_is_one_line_and_non_zero(tmp_path):
    """A bug reaching tasks.cli: one line naming the saved traceback, the InternalError code, never 0."""
    code = (
        "import tasks, sys\n"
        "from invoke import Context, Exit\n"
        "@tasks.cli\n"
        "def broken(c):\n"
        "    return sorted([1, 'a'])\n"
        "try:\n"
        "    broken(Context())\n"
        "except Exit as e:\n"
        "    print(e.message, file=sys.stderr); sys.exit(e.code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    line = _one_line(proc, InternalError.exit_code, "internal error: TypeError:", "traceback in ")
    saved = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "Traceback" in saved.read_text() and "in broken" in saved.read_text()
    saved.unlink()


# ------------------------------------------------------------------ --fail-on


def _failing_run():
    """A complete run whose debian-6.1-prefix row has a failing VF test case (verdict test-fails)."""
    run = sample_run()
    run.kernels = run.kernels[:2]
    k = run.kernels[1]
    k.tests = vf_tests("lab", "series", 1) + vf_tests("lab", "control", 1)
    apply_verdicts(run.kernels)
    assert [x.verdict for x in run.kernels] == ["already-upstream", "test-fails"]
    return run


def test_fail_on_gates_a_failing_test_case(tmp_path):
    d = _run_dir(tmp_path, _failing_run())
    assert _invoke(tmp_path, "report", "--run", str(d)).returncode == 0  # the default: local use
    proc = _invoke(tmp_path, "report", "--run", str(d), "--fail-on", "test-fails,build-fails,error")
    assert proc.returncode == VerdictGate.exit_code and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("debian-6.1-prefix: verdict test-fails (--fail-on): ")
    assert _invoke(tmp_path, "report", "--run", str(d), "--fail-on", "build-fails,error").returncode == 0
    # pv.fail_on from a config file, and --fail-on "" overriding it
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(yaml.safe_dump({"pv": {"fail_on": ["test-fails"]}}))
    assert _invoke(tmp_path, "-f", str(cfg), "report", "--run", str(d)).returncode == VerdictGate.exit_code
    assert _invoke(tmp_path, "-f", str(cfg), "report", "--run", str(d), "--fail-on", "").returncode == 0
    cfg.write_text(yaml.safe_dump({"pv": {"fail_on": ["tests-fail"]}}))
    _one_line(_invoke(tmp_path, "-f", str(cfg), "report", "--run", str(d)), ConfigError.exit_code, "pv.fail_on")


def test_verify_fail_on(tmp_path):
    """`invoke verify` itself: --until series leaves every row untested; gated only when asked."""
    proc = _invoke(tmp_path, "verify", "--until", "series")
    assert proc.returncode == 0, proc.stderr
    proc = _invoke(tmp_path, "verify", "--until", "series", "--fail-on", "untested,error")
    assert proc.returncode == VerdictGate.exit_code and "Traceback" not in proc.stdout + proc.stderr
    assert "debian-6.1: verdict untested (--fail-on)" in proc.stderr.strip().splitlines()[-1]
    run = json.loads((tmp_path / "runs" / "latest" / "results.json").read_text())
    assert run["status"] == "complete"
