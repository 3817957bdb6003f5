"""Every status of every stage, and every outcome of a test case, through every report format
(parametrised over the enums of pipeline/statuses.py), and the verdict roll-up over every combination
of case outcomes (as kernel-patches-daemon tests its roll-up over all inputs)."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET

import pytest
from sample_runs import k_prefix, sample_run

from pipeline import kcidb, report, reproduce
from pipeline.results import DeployResult, KernelResult, PatchApply, TestResult, load_results, write_results
from pipeline.statuses import (
    ApplyStatus,
    BuildStatus,
    DeployStatus,
    FetchStatus,
    Kind,
    Outcome,
    PatchStatus,
    RunStatus,
    Stage,
)
from pipeline.verdict import SEVERITY, STATE, apply_verdicts, verdict

# the status enum of each stage (and of a patch, a test case), as _row sets them
STAGE_STATUSES = {
    "fetch": FetchStatus,
    "apply": ApplyStatus,
    "patch": PatchStatus,
    "build": BuildStatus,
    "deploy": DeployStatus,
    "test": Outcome,
}
ALL = [(stage, member) for stage, enum in STAGE_STATUSES.items() for member in enum]


def _row(stage: str, status) -> KernelResult:
    """debian-6.1-prefix as in a good run, with one stage's status (or every series test's outcome) set."""
    k = k_prefix()
    if stage == "fetch":
        k.fetch.status = status
    elif stage == "apply":
        k.apply.status = status
    elif stage == "patch":
        k.apply.patches = [PatchApply(subject="p", status=status, files=["drivers/xen/xen-pciback/xenbus.c"])]
        k.apply.status = "conflict" if status == "conflict" else "applied"
    elif stage == "build":
        k.build.status = status
        if status != "ok":
            k.build.detail = f"build {status}"
    elif stage == "deploy":
        k.deploy = [DeployResult(status=status, host="lab", detail=f"deploy {status}")]
    elif stage == "test":
        for t in k.tests:
            if t.module == "series":
                t.outcome = status
                t.reason = f"case {status}"
                t.xl_config = f'name = "pvtest-{t.name}"\n'
    k.verdict, k.verdict_detail = verdict(k)
    return k


def _case(cases, name: str) -> dict:
    (c,) = [c for c in cases if c["name"] == name]
    return c


@pytest.mark.parametrize("stage,status", ALL, ids=[f"{s}-{m.value or 'none'}" for s, m in ALL])
def test_every_status_through_every_report(stage, status, tmp_path):
    k = _row(stage, status)
    run = sample_run()
    run.kernels = [k]
    kind = status.kind
    assert k.verdict in SEVERITY and STATE[k.verdict]

    # results.json: the same string as always, and back to the same member
    write_results(tmp_path, run)
    raw = json.loads((tmp_path / "results.json").read_text())["kernels"][0]
    back = load_results(tmp_path).kernels[0]
    if stage in ("fetch", "apply", "build"):
        assert raw[stage]["status"] == status.value and getattr(back, stage).status is status
    elif stage == "patch":
        assert raw["apply"]["patches"][0]["status"] == status.value and back.apply.patches[0].status is status
    elif stage == "deploy":
        assert raw["deploy"][0]["status"] == status.value and back.deploy[0].status is status
    else:
        series = [t for t in raw["tests"] if t["module"] == "series"]
        assert {t["outcome"] for t in series} == {status.value}
        assert {t["passed"] for t in series} == {status is Outcome.PASS}  # schema-1 readers
    assert back == k

    # JUnit: the stage's case has the outcome of the status' kind; a failure/error is never skipped
    xml = report.render_junit(run)
    ET.fromstring(xml)
    cases = report.junit_cases(run)
    name = {"fetch": "fetch", "apply": "apply", "patch": "apply", "build": "build", "deploy": "deploy@lab"}.get(stage)
    if name:
        got = _case(cases, name)["outcome"]
        assert got == report.JUNIT[kind] or (stage == "patch" and got == report.JUNIT[ApplyStatus(k.apply.status).kind])
    else:
        for c in cases:
            if c["name"].startswith("test ") and "[series]" in c["name"]:
                assert c["outcome"] == report.JUNIT[kind]
    if kind in (Kind.FAIL, Kind.ERROR):
        assert "skipped" not in {c["outcome"] for c in cases if c["name"] == name}

    # KCIDB: valid, and the build/test status from the kind
    data = kcidb.render_kcidb(run)
    kcidb.validate_kcidb(data)
    if stage == "build" and kind is not Kind.SKIP and kind is not Kind.INTERRUPTED:
        assert data["builds"][0]["status"] == kcidb.KCIDB[kind]
    if stage == "test" and data["builds"]:
        series = [t for t in data["tests"] if t["misc"]["module"] == "series"]
        assert {t["status"] for t in series} == {kcidb.KCIDB[kind]}

    # HTML/Markdown/table: the status is shown; the HTML cell class follows the kind
    cells = report.stage_cells(k)
    cell = cells.get({"patch": "apply", "test": "tests"}.get(stage, stage))
    if stage in ("fetch", "build", "deploy") and not (stage == "build" and status is BuildStatus.OK):
        assert cell["cls"] == report.CELL_CLASS[kind]
    html = report.render_html(run, tmp_path)
    md = report.render_markdown(run, tmp_path)
    table = report.format_table(run)
    assert k.verdict in html and k.verdict in md and k.verdict in table
    if stage in ("apply", "build"):
        assert status.value in table
    if stage == "test":
        assert (status.value.upper() if status is not Outcome.PASS else "pass") in md

    # reproduce: a failure (FAIL) or a stage not carried out (ERROR) gets its stage's recipe with the
    # invoke line up to that stage (a test case also the xl config it used); any other status none
    got = reproduce.recipes(run, k, tmp_path)
    if kind not in (Kind.FAIL, Kind.ERROR):
        assert got == [], got
    else:
        rstage = "apply" if stage == "patch" else stage
        assert {rp.stage for rp in got} == {rstage}, got
        line = f"invoke verify --kernel {k.name} --series {run.series.source} --until {rstage}"
        assert all(line in rp.commands and rp.what for rp in got), got
        if stage == "test":
            assert [rp.files for rp in got] == [[f"repro/{k.name}/{t.name}-series.cfg"] for t in k.tests[:3]]
            assert (tmp_path / got[0].files[0]).read_text() == k.tests[0].xl_config


def test_setup_error_build_is_a_failure_everywhere():
    """Missing toolchain/headers (runner: BuildStatus.SETUP_FAILED) is a failure in every report."""
    k = _row("build", BuildStatus.SETUP_FAILED)
    k.error, k.failed_stage, k.error_code = "build: missing gcc", Stage.BUILD, 6
    k.verdict, k.verdict_detail = verdict(k)
    run = sample_run()
    run.kernels = [k]
    assert k.verdict == "build-fails" and "missing gcc" not in k.verdict_detail.split(";")[1:]
    assert _case(report.junit_cases(run), "build")["outcome"] == "failure"
    assert report.stage_cells(k)["build"]["cls"] == "fail"
    assert kcidb.render_kcidb(run)["builds"][0]["status"] == "FAIL"
    assert STATE[k.verdict] == "fail"


def test_every_kind_is_mapped_by_every_report():
    for mapping in (report.JUNIT, kcidb.KCIDB, report.CELL_CLASS):
        assert set(mapping) == set(Kind)
    for enum in [*STAGE_STATUSES.values(), RunStatus, Stage]:
        for member in enum:
            assert isinstance(member.kind, Kind)


def test_a_status_is_never_a_free_word():
    k = KernelResult(name="k")
    with pytest.raises(ValueError):
        k.build.status = "broken"
    k.build.status = "failed"  # today's string for a setup error: stored as the member
    assert k.build.status is BuildStatus.SETUP_FAILED
    with pytest.raises(ValueError):
        TestResult(name="t", host="h", module="series", outcome="passed")


# ------------------------------------------------------------------ verdict over every combination

OUTCOMES = list(Outcome)


def _expected(series: tuple, control: tuple) -> str:
    """The roll-up, written independently of verdict.py: only `fail` fails; an error proves nothing."""
    not_run = (Outcome.INTERRUPTED, Outcome.SKIPPED)
    ran = [o for o in series if o not in not_run]
    ctl = [o for o in control if o not in not_run]
    interrupted = Outcome.INTERRUPTED in series + control
    if Outcome.FAIL in ran:
        return "test-fails"
    if Outcome.ERROR in ran:
        return "test-inconclusive"
    if not ran:
        return "untested" if interrupted else "ready-untested"
    if ctl and Outcome.FAIL not in ctl:
        return "test-inconclusive"  # the control passed, or never reached a result
    return "untested" if interrupted else "ready"


def _tests(series: tuple, control: tuple, teardown: bool) -> list[TestResult]:
    out = [
        TestResult(name=f"vf-boot-{i + 1}", host="lab", module="series", expected=i + 1, outcome=o, reason=f"r{i}")
        for i, o in enumerate(series)
    ]
    out += [TestResult(name="vf-boot-3", host="lab", module="control", expected=3, outcome=o) for o in control]
    if teardown:
        for t in out:
            t.teardown_error = "lab: VF teardown: tee: Bad file descriptor"
    return out


@pytest.mark.parametrize("control", [(), *[(o,) for o in OUTCOMES]], ids=lambda c: "ctl-" + (c[0] if c else "none"))
def test_verdict_over_every_combination_of_case_outcomes(control):
    n = 0
    for series in itertools.product(OUTCOMES, repeat=3):
        for teardown in (False, True):  # a teardown error after the observation never changes the verdict
            k = k_prefix()
            k.tests = _tests(series, control, teardown)
            got, detail = verdict(k)
            assert got == _expected(series, control), (series, control, teardown, detail)
            if teardown and any(o in (Outcome.PASS, Outcome.FAIL) for o in series + control):
                assert "teardown error" in detail
            n += 1
    assert n == 5**3 * 2


def test_verdicts_of_the_sample_run_are_unchanged():
    run = sample_run()
    apply_verdicts(run.kernels)
    assert [k.verdict for k in run.kernels] == ["already-upstream", "ready", "needs-backport", "build-fails"]
