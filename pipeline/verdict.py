"""Per-kernel verdict: a pure roll-up of the stage results of one matrix row.

Every stage contributes findings; the verdict is the most severe finding, so a
failure is never hidden by a later success (a kernel whose build emitted new
warnings and whose VF test failed is `test-fails`, and the detail names both).

Verdicts, most severe first (SEVERITY):
  error             the pipeline itself failed for this row (fetch, apply machinery, deploy)
  build-fails       the module does not build with the series, or the build could not run at all
                    (toolchain/headers missing: BuildStatus.SETUP_FAILED), never "skipped"
  test-fails        a VF test with the series' module (or the tree's, when already applied) has
                    outcome `fail`; only an observed failure can give this verdict
  needs-backport    the series does not apply: conflicting files/hunks
  test-inconclusive the negative control (fix reverted) passed too, or did not run to a result, or a
                    series test case still had outcome `error` after the retry: no proof either way
  new-warnings      builds, but the series adds compiler warnings
  untested          the run stopped before this row was applied/built/tested (`--until fetch`, Ctrl-C)
  ready-untested    applies and builds cleanly; no host ran the tests
  already-upstream  the series' change is already in the tree (with the commit; in the line's own form,
                    its control revert applying; or "matched by content")
  ready             applies, builds without new warnings, VF tests pass (and the control fails)
"""

from __future__ import annotations

import enum

from .errors import ConfigError, VerdictGate
from .results import (
    ApplyStatus,
    BuildStatus,
    DeployStatus,
    FetchStatus,
    KernelResult,
    Outcome,
    PatchStatus,
    Stage,
    TestResult,
)
from .statuses import UpstreamEvidence

SEVERITY = [
    "error",
    "build-fails",
    "test-fails",
    "needs-backport",
    "test-inconclusive",
    "new-warnings",
    "untested",
    "ready-untested",
    "already-upstream",
    "ready",
]

# coarse outcome of a verdict for posting back (patchwork check states)
STATE = {
    "ready": "success",
    "already-upstream": "success",
    "ready-untested": "warning",
    "untested": "warning",
    "new-warnings": "warning",
    "test-inconclusive": "warning",
    "needs-backport": "fail",
    "test-fails": "fail",
    "build-fails": "fail",
    "error": "fail",
}


class Change(enum.StrEnum):
    """How a kernel's verdict moved from one run (or series revision) to the next: `report --compare`
    and the dashboard."""

    BETTER = "better"
    WORSE = "worse"
    SAME = "same"
    NEW = "new"  # not in the earlier run
    GONE = "gone"  # not in the later run


def change(before: str | None, after: str | None) -> Change:
    """The Change from verdict `before` to `after` (None: the kernel was not in that run)."""
    if before is None:
        return Change.NEW
    if after is None:
        return Change.GONE
    ra, rb = rank(before), rank(after)
    return Change.BETTER if rb < ra else Change.WORSE if rb > ra else Change.SAME


def rank(verdict_name: str) -> int:
    """0 is best; higher is worse. Unknown verdicts count as errors."""
    order = list(reversed(SEVERITY))
    # ready and already-upstream are equally good outcomes
    if verdict_name in ("ready", "already-upstream"):
        return 0
    try:
        return order.index(verdict_name)
    except ValueError:
        return len(order)


def _short(commit: str) -> str:
    return commit[:12] if commit else ""


def _conflict_detail(k: KernelResult) -> str:
    parts = []
    for p in k.apply.patches:
        if p.status is not PatchStatus.CONFLICT:
            continue
        where = ", ".join(p.files) or "unknown files"
        hunks = f" ({'; '.join(p.hunks)})" if p.hunks else ""
        parts.append(f"'{p.subject}' conflicts in {where}{hunks}")
    return "; ".join(parts) or (k.apply.detail or "series does not apply")


def _upstream_detail(k: KernelResult) -> str:
    done = [p for p in k.apply.patches if p.status is PatchStatus.ALREADY_APPLIED]
    commits = [p.upstream_commit for p in done if p.upstream_commit]
    if commits:
        return "upstream commit " + ", ".join(_short(c) for c in dict.fromkeys(commits))
    # the line's own form of the fix, shown by its revert applying (apply.adapted_form), not a commit found
    forms = [p.adapted for p in done if p.evidence is UpstreamEvidence.CONTROL_REVERT]
    if forms:
        return "; ".join(
            f"in this line's form: its revert{f' of {f.reverts_commit}' if f.reverts_commit else ''} applies"
            f" ({f.revert.rsplit('/', 1)[-1]}), {f'{len(f.series_lines)} line(s)' if f.series_lines else 'no line'} adapted"
            for f in forms
        )
    return "matched by content"


def _test_label(t: TestResult) -> str:
    return f"{t.name}@{t.host}" if t.host else t.name


def control_not_applicable(t: TestResult) -> str:
    """Why a negative control that passed proves nothing against the kernel on its host ("" when it
    counts): the host's libxl was OBSERVED writing every device in one transaction, so the race the
    fix closes cannot happen there. Pure; a pattern that was not observed never excuses a control."""
    x = t.xs_creation
    if t.module != "control" or t.outcome is not Outcome.PASS or not x.observed or x.transactions != 1:
        return ""
    who = f"libxl {_xy(t.toolstack.xl_version)}" if t.toolstack.xl_version else f"libxl on {t.host}"
    n = x.num_devs[0] if x.num_devs else t.expected
    return f"{who}: all {n} devices in 1 transaction; the race needs per-device writes"


def _xy(version: str) -> str:
    """'4.14.6-1' -> '4.14'"""
    return ".".join(version.split(".")[:2]).split("-")[0].split("+")[0]


def _findings(k: KernelResult) -> list[tuple[str, str]]:
    """(verdict, detail) for every noteworthy fact about the row, in stage order.

    Reads statuses and outcomes (enums) only: a message is detail, never a decision."""
    out: list[tuple[str, str]] = []
    fetch, apply, build = k.fetch, k.apply, k.build
    # a stage whose own record says it failed speaks for the row's error (no second copy of it)
    stage_says = {
        Stage.FETCH: fetch.status is FetchStatus.FAILED,
        Stage.APPLY: apply.status is ApplyStatus.FAILED,
        Stage.BUILD: build.status is BuildStatus.SETUP_FAILED,
    }
    if k.error and not stage_says.get(k.failed_stage, False):
        out.append(("error", k.error))
    if fetch.status is FetchStatus.FAILED:
        out.append(("error", f"fetch failed: {fetch.detail or 'no detail'}"))
        return out
    if apply.status is ApplyStatus.FAILED:
        out.append(("error", f"apply failed: {apply.detail or 'no detail'}"))
        return out
    if apply.status is ApplyStatus.CONFLICT or any(p.status is PatchStatus.CONFLICT for p in apply.patches):
        out.append(("needs-backport", _conflict_detail(k)))
        return out  # nothing below ran on this series
    if apply.status in (ApplyStatus.NOT_RUN, ApplyStatus.SKIPPED, ApplyStatus.INTERRUPTED):
        why = apply.detail or ("stopped before apply" if apply.status is ApplyStatus.NOT_RUN else "apply skipped")
        out.append(("untested", why))
        return out
    upstream = apply.status is ApplyStatus.ALREADY_APPLIED
    if upstream:
        out.append(("already-upstream", _upstream_detail(k)))
    else:
        kinds = sorted({p.status for p in apply.patches if p.status is not PatchStatus.APPLIED})
        how = "applies clean" if not kinds else "applies (" + ", ".join(kinds) + ")"
        out.append(("ready", how))

    if build.status is BuildStatus.BUILD_FAILED:
        first = build.errors[0] if build.errors else (build.detail or "see build log")
        out.append(("build-fails", f"build failed: {first}"))
        return out
    if build.status is BuildStatus.SETUP_FAILED:
        out.append(("build-fails", f"build could not run (setup): {build.detail or 'no detail'}"))
        return out
    if build.status is BuildStatus.ERROR:
        out.append(("build-fails", f"module cannot be built in this configuration: {build.detail or 'no detail'}"))
        return out
    if build.status is BuildStatus.INTERRUPTED:
        out.append(("untested", build.detail or "interrupted during build"))
        return out
    if build.status in (BuildStatus.NOT_RUN, BuildStatus.SKIPPED):
        if not upstream:
            out.append(("untested", build.detail or "not built"))
        return out
    if build.new_warnings:
        n = len(build.new_warnings)
        out.append(("new-warnings", f"{n} new warning{'s' if n != 1 else ''}: {build.new_warnings[0]}"))

    for d in k.deploy:
        if d.status is DeployStatus.FAILED:
            out.append(("error", f"deploy to {d.host or 'host'} failed: {d.detail or 'no detail'}"))

    # Ctrl-C: what was cut short proves nothing either way; the row stays untested
    cut = [f"deploy to {d.host or 'host'}" for d in k.deploy if d.status is DeployStatus.INTERRUPTED]
    cut += [f"{_test_label(t)} [{t.module}]" for t in k.tests if t.outcome is Outcome.INTERRUPTED]
    if cut:
        out.append(("untested", "interrupted during " + ", ".join(cut)))
    ran = [t for t in k.tests if t.outcome not in (Outcome.INTERRUPTED, Outcome.SKIPPED)]
    skipped = [t for t in k.tests if t.outcome is Outcome.SKIPPED]
    series_tests = [t for t in ran if t.module in ("series", "stock")]
    controls = [t for t in ran if t.module == "control"]
    # the verdict rests on hosts where the race was observed live; a passing control elsewhere is noted
    excused = [(t, why) for t in controls if (why := control_not_applicable(t))]
    if excused:
        out.append(("note", "; ".join(f"{_test_label(t)} [control] not-applicable: {why}" for t, why in excused)))
        controls = [t for t in controls if not control_not_applicable(t)]
    torn = [t for t in k.tests if t.teardown_error]
    if torn:  # on record, never the verdict: the observation stands
        out.append(
            (
                "note",
                "teardown error after the result was observed: "
                + "; ".join(f"{_test_label(t)} [{t.module}]: {t.teardown_error}" for t in torn),
            )
        )
    if skipped:
        out.append(("note", "not run: " + "; ".join(f"{_test_label(t)} [{t.module}]: {t.reason}" for t in skipped)))
    if not series_tests:
        refused = [d for d in k.deploy if d.status is DeployStatus.SKIPPED]
        why = refused[0].detail if refused and refused[0].detail else "no host ran the VF tests"
        if not upstream and not any(d.status is DeployStatus.FAILED for d in k.deploy):
            out.append(("ready-untested", why))
        return out
    failed = [t for t in series_tests if t.outcome is Outcome.FAIL]
    if failed:
        t = failed[0]
        reason = t.reason or f"guest saw {t.seen} of {t.expected} devices"
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        out.append(("test-fails", f"{_test_label(t)} failed: {reason}{more}"))
        return out
    errored = [t for t in series_tests if t.outcome is Outcome.ERROR]
    if errored:
        # still errored after the runner's retry: the host, not the series, kept the test from a result
        t = errored[0]
        more = f" (+{len(errored) - 1} more)" if len(errored) > 1 else ""
        passed = len(series_tests) - len(errored)
        out.append(
            (
                "test-inconclusive",
                f"{_test_label(t)} could not be carried out: {t.reason or 'no result'}{more}; "
                f"{passed}/{len(series_tests)} VF tests pass",
            )
        )
        return out
    hosts = sorted({t.host for t in series_tests if t.host})
    ok = f"{len(series_tests)}/{len(series_tests)} VF tests pass" + (f" on {', '.join(hosts)}" if hosts else "")
    # a control proves something only when its guest ran and saw too few devices, not when it errored
    shown = [t for t in controls if t.outcome is Outcome.FAIL]
    if shown:
        out.append(("tests-pass", f"{ok}; negative control fails as expected"))
    elif any(t.outcome is Outcome.PASS for t in controls):
        out.append(
            ("test-inconclusive", f"{ok}, but the negative control passed too: the test cannot show the fix matters")
        )
    elif controls:
        why = controls[0].reason or "no result"
        out.append(("test-inconclusive", f"{ok}, but the negative control did not run to a result: {why}"))
    elif excused:
        out.append(
            (
                "tests-pass",
                f"{ok}; negative control not applicable on {', '.join(sorted({t.host for t, _ in excused}))}",
            )
        )
    else:
        out.append(("tests-pass", f"{ok}; no negative control ran"))
    return out


# findings that are detail only, never a verdict
_NEUTRAL = ("tests-pass", "note")


def verdict(k: KernelResult) -> tuple[str, str]:
    """(verdict, detail) for one kernel row. Pure: reads only `k`."""
    findings = _findings(k)
    if not findings:
        return "error", "no stage result"
    verdicts = [v for v, _ in findings if v not in _NEUTRAL] or ["error"]
    worst = min(verdicts, key=SEVERITY.index)
    # the detail: the worst finding first, then the remaining facts in stage order
    details = [d for v, d in findings if v == worst]
    details += [d for v, d in findings if v != worst]
    return worst, "; ".join(details)


def verdict_of(k: KernelResult) -> tuple[str, str]:
    """The recorded verdict, or a fresh roll-up when the row was never given one."""
    if k.verdict_detail or k.verdict not in ("", "untested"):
        return k.verdict, k.verdict_detail
    return verdict(k)


def parse_fail_on(value: str, option: str = "--fail-on") -> list[str]:
    """'test-fails,build-fails' -> the verdict names; an unknown one is a ConfigError naming the choices."""

    names = [v.strip() for v in str(value).split(",") if v.strip()]
    for v in names:
        if v not in SEVERITY:
            raise ConfigError(f"{option} {v!r}: not a verdict; expected some of {', '.join(SEVERITY)}")
    return names


def gate_status(kernels: list[KernelResult], fail_on: list[str]) -> tuple[int, str]:
    """(10, why) when a row's verdict is one `fail_on` names, else (0, ""): what CI gates on."""

    hit = [k for k in kernels if k.verdict in fail_on]
    if not hit:
        return 0, ""
    k = hit[0]
    more = f" (+{len(hit) - 1} more)" if len(hit) > 1 else ""
    return VerdictGate.exit_code, f"{k.name}: verdict {k.verdict} (--fail-on): {k.verdict_detail}{more}"


def apply_verdicts(kernels: list[KernelResult]) -> None:
    """Fill verdict/verdict_detail of each row in place (the one impure convenience)."""
    for k in kernels:
        k.verdict, k.verdict_detail = verdict(k)
