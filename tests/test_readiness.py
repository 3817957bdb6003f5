"""The readiness line per branch (pipeline/readiness.py): every kind a stable maintainer reads,
on the sample runs and on variations of their rows."""

from __future__ import annotations

import dataclasses

import pytest
from sample_runs import SUBJECT, XENBUS, k_conflict, k_line, k_prefix, k_stable_3way, lines_run, vf_tests

from pipeline.readiness import readiness
from pipeline.report import render_html, render_markdown
from pipeline.results import DeployResult, PatchApply
from pipeline.statuses import ApplyStatus, BuildStatus, Outcome


def test_every_debian_line_as_issue_16_expects_it():
    got = {k.name: readiness(k) for k in lines_run().kernels}
    for line, release in (("5.10", "5.10.0-46-amd64"), ("6.1", "6.1.0-31-amd64"), ("6.12", "6.12.117+deb12-amd64")):
        shipped, prefix = got[f"debian-{line}"], got[f"debian-{line}-prefix"]
        assert shipped.state == "already-upstream"
        assert shipped.apply == (
            "already upstream (its revert of c81d3d246025 applies: patches/controls/revert-c81d3d246025.patch;"
            " no line adapted)"
        )
        assert prefix.state == "applies" and prefix.applies == "clean" and prefix.apply == "applies clean"
        for r in (shipped, prefix):
            assert r.build == f"builds for {release}, no new warnings"
            assert (
                r.tests == f"VF tests 3/3 pass on lab (dom0 kernel {release}, Xen 4.17.7), control fails (as it must)"
            )
    assert got["debian-7.2"].apply == (
        "already upstream in this line's form (its revert of c81d3d246025 applies:"
        " patches/controls/revert-c81d3d246025-7.2.patch; 1 line adapted)"
    )
    r = got["debian-7.2-prefix"]
    hunk = f"{XENBUS}: @@ -374,8 +375,7 @@ static int xen_pcibk_reconfigure(struct"
    assert (r.state, r.conflicts, r.build, r.tests) == (
        "needs-backport",
        [hunk],
        "no build attempted",
        "VF tests not run",
    )
    assert r.line == f"needs backport: {hunk}; no build attempted; VF tests not run"


def test_three_way_new_warnings_and_two_hosts():
    r = readiness(k_stable_3way())
    assert r.state == "applies" and r.applies == "3-way" and r.apply == "applies with a 3-way merge"
    assert r.build.startswith("builds for 6.6.63, 1 new warning: drivers/xen/xen-pciback/xenbus.c:381:6: warning:")
    assert [(h.host, h.dom0_kernel, h.xen, h.passed, h.ran) for h in r.hosts] == [
        ("xen1", "6.6.63", "4.17.7", 3, 3),
        ("xen2", "6.6.63", "4.14.6", 3, 3),
    ]
    assert r.tests == (
        "VF tests 3/3 pass on xen1 (dom0 kernel 6.6.63, Xen 4.17.7), control fails (as it must); "
        "3/3 pass on xen2 (dom0 kernel 6.6.63, Xen 4.14.6), control not-applicable "
        "(libxl 4.14: all 3 devices in 1 transaction; the race needs per-device writes)"
    )


def _patch(status: str, **kw) -> PatchApply:
    return PatchApply(subject=SUBJECT, status=status, **kw)


@pytest.mark.parametrize(
    ("patches", "want"),
    [
        ([_patch("applied")], "applies clean"),
        ([_patch("applied-offset")], "applies with offset"),
        ([_patch("applied"), _patch("applied-offset")], "applies with offset (patch 2 of 2)"),
        ([_patch("applied-offset"), _patch("applied-3way")], "applies with a 3-way merge (patch 2 of 2)"),
        ([_patch("already-applied", upstream_commit="c81d3d24602540f6"), _patch("applied")],
         "applies clean, 1 of 2 patches already upstream"),
    ],
)  # fmt: skip
def test_how_a_series_applies(patches, want):
    k = k_prefix()
    k.apply.patches = patches
    assert readiness(k).apply == want


@pytest.mark.parametrize(
    ("evidence", "commit", "want"),
    [
        ("reverse-apply", "c81d3d24602540f6", "already upstream (commit c81d3d246025; the patch reverse-applies)"),
        ("history", "c81d3d24602540f6", "already upstream (commit c81d3d246025; its subject or patch-id is in the history)"),
        ("content", "", "already upstream (matched by content: no commit found in the history)"),
    ],
)  # fmt: skip
def test_already_upstream_names_its_evidence(evidence, commit, want):
    k = k_line("6.1", prefix=False)
    k.apply.patches = [_patch("already-applied", evidence=evidence, upstream_commit=commit)]
    assert readiness(k).apply == want


def test_needs_backport_names_each_conflicting_patch_file_and_hunk():
    k = k_conflict()
    k.apply.patches = [
        _patch("applied"),
        _patch("conflict", files=[XENBUS, "drivers/xen/xen-pciback/pciback.h"], hunks=[f"{XENBUS}: @@ -1 +1 @@ x"]),
        _patch("not-attempted"),
    ]
    assert readiness(k).apply == f"needs backport (patch 2 of 3): {XENBUS}: @@ -1 +1 @@ x"
    k.apply.patches[1].hunks = []  # git said which file only
    assert readiness(k).conflicts == [f"{XENBUS}, drivers/xen/xen-pciback/pciback.h"]
    # a run recorded before hunks named their file: the header with the patch's files
    assert readiness(k_conflict()).conflicts == [f"{XENBUS}: @@ -689,6 +689,15 @@ static void xen_pcibk_be_watch"]


@pytest.mark.parametrize(
    ("status", "detail", "errors", "want"),
    [
        ("build-failed", "", ["x.c:1:1: error: boom"], "build fails: x.c:1:1: error: boom"),
        ("failed", "no linux-headers-7.2.13+deb14-amd64", [], "build could not run: no linux-headers-7.2.13+deb14-amd64"),
        ("error", "XEN_PCIDEV_BACKEND is not =m", [], "module not buildable in this configuration: XEN_PCIDEV_BACKEND is not =m"),
        ("interrupted", "", [], "build interrupted"),
        ("not-run", "", [], "not built"),
        ("skipped", "", [], "not built"),
    ],
)  # fmt: skip
def test_every_build_status_has_its_words(status, detail, errors, want):
    k = k_prefix()
    k.build = dataclasses.replace(k.build, status=status, detail=detail, errors=errors)
    k.deploy, k.tests = [], []
    assert readiness(k).build == want


def test_every_status_reads_as_a_line():
    """No apply or build status falls through the line: each gives words of its own."""
    for a in ApplyStatus:
        for b in BuildStatus:
            k = k_prefix()
            k.apply.status, k.build.status = a, b
            if a is ApplyStatus.CONFLICT:
                k.apply.patches = [_patch("conflict", files=[XENBUS])]
            r = readiness(k)
            assert r.state in ("already-upstream", "applies", "needs-backport", "not-applied")
            assert r.apply and r.build and r.tests and r.line.count("; ") >= 2, (a, b, r.line)


def test_vf_tests_failing_erroring_not_run_and_interrupted():
    k = k_prefix()
    k.tests = vf_tests("lab", "series", 2) + vf_tests("lab", "control", 1)
    k.tests[0].outcome, k.tests[0].reason = Outcome.ERROR, "xl create failed"
    assert readiness(k).tests == (
        "VF tests 1/3 pass on lab (dom0 kernel 6.1.0-31-amd64, Xen ?), vf-boot-3 fails,"
        " vf-boot-1 could not be carried out, control fails (as it must)"
    )
    k.tests = []
    k.deploy = [
        DeployResult(
            status="skipped",
            host="lab",
            detail="lab runs kernel 6.1.0-31-amd64, module built for 5.10.0-46-amd64: not loaded",
        )
    ]
    assert (
        readiness(k).tests
        == "VF tests not run (lab runs kernel 6.1.0-31-amd64, module built for 5.10.0-46-amd64: not loaded)"
    )
    k.deploy = [DeployResult(status="failed", host="lab", detail="insmod: Invalid module format")]
    assert readiness(k).tests == "VF tests not run (deploy to lab failed: insmod: Invalid module format)"
    k.deploy = [DeployResult(status="ok", host="lab")]
    k.tests = vf_tests("lab", "series", 3, counts=(1,))
    k.tests[0].outcome = Outcome.INTERRUPTED
    assert readiness(k).tests == "VF tests interrupted"


def test_summaries_show_the_line_of_every_row():
    run = lines_run()
    md, html = render_markdown(run), render_html(run)
    for k in run.kernels:
        r = readiness(k)
        assert f"- {k.name}: {r.line}\n" in md
        assert f'data-kernel="{k.name}" data-state="{r.state}"' in html
