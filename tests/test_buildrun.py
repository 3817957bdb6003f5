"""The build stage's step runner (pipeline/buildrun.py), unconfined (--no-sandbox): what it logs and how
a step ends the build. Confined steps are exercised by the build tests and tests/test_sandbox.py."""

from __future__ import annotations

import time

import pytest

from pipeline import sandbox
from pipeline.buildrun import BuildTimeout, LimitHit, Runner, StepFailed, check
from pipeline.config import SandboxConfig, Settings


def _runner(tmp_path, timeout_s: int = 30, log_mb: int = 32) -> Runner:
    settings = Settings(sandbox=SandboxConfig(enabled=False, log_mb=log_mb))
    return Runner(tmp_path / "build.log", time.monotonic() + timeout_s, {"PV_X": "1"}, timeout_s, settings)


def test_a_step_is_logged_with_its_command_and_exit_status(tmp_path):
    run = _runner(tmp_path)
    run.note("k: headers build")
    rc, out = run(["sh", "-c", 'echo "x=$PV_X y=$PV_Y"; exit 3'], tmp_path, "config: step", env={"PV_Y": "2"})
    assert (rc, out) == (3, "x=1 y=2\n")
    log = run.log.read_text()
    assert log.startswith("### k: headers build\n")
    assert f"\n### config: step\n$ (cd {tmp_path} && sh -c " in log
    assert "x=1 y=2\n### exit status 3 after" in log
    with pytest.raises(StepFailed) as info:
        check((rc, out), "olddefconfig")
    assert (info.value.step, info.value.output) == ("olddefconfig", out)
    assert check((0, "fine"), "olddefconfig") == "fine"
    info = run.info()
    assert not info.confined and "unconfined" in info.detail


def test_the_deadline_and_the_log_limit_end_the_build(tmp_path):
    with pytest.raises(BuildTimeout, match="module: series"):
        _runner(tmp_path, timeout_s=0)(["true"], tmp_path, "module: series")
    with pytest.raises(LimitHit) as info:
        _runner(tmp_path, log_mb=1)(["head", "-c", "2000000", "/dev/zero"], tmp_path, "module: series")
    assert info.value.limit is sandbox.Limit.LOG and str(info.value).startswith("module: series: ")


def test_a_child_runner_logs_apart_on_the_hosts_perl(tmp_path):
    run = _runner(tmp_path)
    run.usr = tmp_path / "root" / "usr"
    child = run.child(tmp_path / "checkpatch.log")
    child(["true"], tmp_path, "checkpatch: p", ro=[tmp_path / "tree"])
    assert child.usr is None and run.usr is not None
    assert "checkpatch: p" in child.log.read_text() and not run.log.exists()
    assert child.ro == run.ro == {tmp_path / "tree"}  # recorded with the parent's sandbox info
