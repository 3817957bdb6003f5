"""Exit status of a run: defined statuses give 0, a failing row or a refused host its own code."""

from __future__ import annotations

import pytest

from pipeline import deploy
from pipeline.results import KernelResult, Refusal, RunResult, Stage
from pipeline.runner import _Run, exit_status


def _run(*kernels: KernelResult, status: str = "complete") -> RunResult:
    return RunResult(run_id="r", status=status, kernels=list(kernels))


def test_defined_statuses_exit_zero_whatever_the_verdict():
    assert exit_status(_run(KernelResult(name="a", verdict="needs-backport"), KernelResult(name="b"))) == (0, "")


def test_failed_row_gives_its_code_and_reason():
    code, reason = exit_status(_run(KernelResult(name="a", error="fetch: ref 'x' not found", error_code=51)))
    assert code == 51 and reason == "a: fetch: ref 'x' not found"


def test_failed_row_without_a_code_gets_its_stage_code():
    """The stage is a field of the row (failed_stage), not the word before ':' in the message."""
    for stage, code in ((Stage.FETCH, 5), (Stage.BUILD, 6), (Stage.TEST, 7)):
        k = KernelResult(name="a", error="internal error: KeyError: 'x'", failed_stage=stage)
        assert exit_status(_run(k))[0] == code
    assert exit_status(_run(KernelResult(name="a", error="something: else")))[0] == 1


@pytest.mark.parametrize(
    "reason,code",
    [
        ("h is not a Xen dom0 (/proc/xen/capabilities has no control_d)", deploy.NOT_DOM0),
        ("h runs kernel 6.1.0-56-amd64, module built for 5.10.0-1-amd64: not loaded", deploy.KERNEL_MISMATCH),
        ("0000:00:02.0 on h is not SR-IOV capable (no sriov_totalvfs)", deploy.NO_SRIOV),
        ("PF 0000:01:00.0 on h offers 3 VFs, tests need 4", deploy.TOO_FEW_VFS),
        ("domain(s) 5 on h use pciback; refusing to swap the module", deploy.PCIBACK_BUSY),
    ],
)
def test_host_refused_in_preflight_has_its_own_code(reason, code, tmp_path):
    """The code travels with the refusal (deploy.preflight's Refusal), whatever its words."""
    from pipeline.config import HostConfig, KernelConfig
    from pipeline.host import Host

    run = _run(KernelResult(name="k"))
    ctx = _Run(None, run, tmp_path, None, "report", lambda msg: None)
    ctx.refuse_host(
        Host(HostConfig(name="h")),
        [(KernelConfig(name="k", remote="r", ref="x"), run.kernels[0])],
        Refusal(reason, code),
    )
    assert exit_status(run) == (code, f"k: not deployed to h: {reason}")
    assert run.kernels[0].failed_stage is Stage.DEPLOY
    # same words, another code: the words decide nothing
    run2 = _run(KernelResult(name="k"))
    ctx2 = _Run(None, run2, tmp_path, None, "report", lambda msg: None)
    ctx2.refuse_host(
        Host(HostConfig(name="h")), [(KernelConfig(name="k", remote="r", ref="x"), run2.kernels[0])], Refusal(reason, 7)
    )
    assert exit_status(run2)[0] == 7
    assert len({deploy.NOT_DOM0, deploy.KERNEL_MISMATCH, deploy.NO_SRIOV, deploy.TOO_FEW_VFS, deploy.PCIBACK_BUSY}) == 5


def test_interrupted_run_is_not_success():
    assert exit_status(_run(KernelResult(name="a"), status="interrupted"))[0] == 1


def test_verified_closing_is_the_table_then_where_the_results_are(tmp_path):
    from sample_runs import sample_run

    from pipeline.report import format_table
    from pipeline.runner import Verified

    run = sample_run()
    done = Verified(run, tmp_path)
    assert done.closing() == format_table(run) + f"\nresults: {tmp_path / 'results.json'}"
    (tmp_path / "summary.html").write_text("<html></html>")
    assert done.closing().splitlines()[-2:] == [
        f"summary: {tmp_path / 'summary.html'}",
        f"results: {tmp_path / 'results.json'}",
    ]
    done.raise_if_stopped()  # a run that ended by itself


def test_verified_raises_what_stopped_the_run_as_it_came(tmp_path):
    from pipeline.errors import Interrupted
    from pipeline.runner import Verified

    stopped = Interrupted(f"interrupted; partial results in {tmp_path}")
    with pytest.raises(Interrupted) as e:
        Verified(RunResult(run_id="r", status="interrupted"), tmp_path, stopped).raise_if_stopped()
    assert e.value is stopped


def test_verify_refuses_an_empty_kernel_name_before_a_run_directory(tmp_path):
    from pipeline.config import KernelConfig, Settings
    from pipeline.errors import ConfigError
    from pipeline.runner import verify

    settings = Settings(results_root=str(tmp_path / "runs"), matrices={"default": [KernelConfig("a", "r", "a")]})
    with pytest.raises(ConfigError, match=r"^--kernel: empty kernel name; have a$"):
        verify(settings, kernels=[" "])
    assert not (tmp_path / "runs").exists()


def test_a_host_that_cannot_be_reached_is_named_once_on_its_rows(tmp_path, monkeypatch):
    """The row's error says `deploy: host X: <reason>`, the HostError's own `host X: ` not repeated."""
    from pipeline import providers
    from pipeline.config import HostConfig, KernelConfig, Settings
    from pipeline.errors import HostError
    from pipeline.results import BuildResult, DeployStatus

    def unreachable(self, progress, steps):
        raise HostError("cannot reach root@127.0.0.1:1: refused", host=self.name)

    monkeypatch.setattr(providers.SshProvider, "ensure_running", unreachable)
    kcfg = KernelConfig(name="k", remote="r", ref="x", hosts=["box"])
    s = Settings(hosts={"box": HostConfig(name="box")}, matrices={"default": [kcfg]})
    kr = KernelResult(name="k", build=BuildResult(status="ok", module=str(tmp_path / "x.ko")))
    ctx = _Run(s, _run(kr), tmp_path, None, "deploy", lambda msg: None)
    ctx.host_stages([(kcfg, kr)], keep=False)
    assert kr.error == "deploy: host box: cannot reach root@127.0.0.1:1: refused"
    assert [(str(d.status), d.host) for d in kr.deploy] == [(str(DeployStatus.FAILED), "box")]
