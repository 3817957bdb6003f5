"""Exit status of a run: defined statuses give 0, a failing row or a refused host its own code."""

from __future__ import annotations

import pytest

from pipeline.results import DeployResult, KernelResult, RunResult
from pipeline.runner import _preflight_code, exit_status


def _run(*kernels: KernelResult, status: str = "complete") -> RunResult:
    return RunResult(run_id="r", status=status, kernels=list(kernels))


def test_defined_statuses_exit_zero_whatever_the_verdict():
    assert exit_status(_run(KernelResult(name="a", verdict="needs-backport"), KernelResult(name="b"))) == (0, "")


def test_failed_row_gives_its_code_and_reason():
    code, reason = exit_status(_run(KernelResult(name="a", error="fetch: ref 'x' not found", error_code=51)))
    assert code == 51 and reason == "a: fetch: ref 'x' not found"


@pytest.mark.parametrize(
    "reason,code",
    [
        ("h is not a Xen dom0 (/proc/xen/capabilities has no control_d)", 72),
        ("h runs kernel 6.1.0-56-amd64, module built for 5.10.0-1-amd64: not loaded", 73),
        ("0000:00:02.0 on h is not SR-IOV capable (no sriov_totalvfs)", 74),
        ("PF 0000:01:00.0 on h offers 3 VFs, tests need 4", 75),
    ],
)
def test_host_refused_in_preflight_has_a_distinct_code(reason, code):
    k = KernelResult(name="k", error_code=_preflight_code(reason))
    k.deploy.append(DeployResult(status="skipped", host="h", detail=reason))
    assert exit_status(_run(k)) == (code, f"k: not deployed to h: {reason}")


def test_interrupted_run_is_not_success():
    assert exit_status(_run(KernelResult(name="a"), status="interrupted"))[0] == 1
