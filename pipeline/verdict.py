"""Per-kernel verdict: a pure roll-up of the stage results of one matrix row.

Every stage contributes findings; the verdict is the most severe finding, so a
failure is never hidden by a later success (a kernel whose build emitted new
warnings and whose VF test failed is `test-fails`, and the detail names both).

Verdicts, most severe first (SEVERITY):
  error             the pipeline itself failed for this row (fetch, apply machinery, deploy)
  build-fails       the module does not build with the series
  test-fails        a VF test with the series' module (or the tree's, when already applied) failed
  needs-backport    the series does not apply: conflicting files/hunks
  test-inconclusive the negative control (fix reverted) passed too: the test cannot show the fix matters
  new-warnings      builds, but the series adds compiler warnings
  untested          the run stopped before this row was applied/built/tested (`--until fetch`, Ctrl-C)
  ready-untested    applies and builds cleanly; no host ran the tests
  already-upstream  the series' change is already in the tree (with the commit, or "matched by content")
  ready             applies, builds without new warnings, VF tests pass (and the control fails)
"""

from __future__ import annotations

from .results import KernelResult, TestResult

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
        if p.status != "conflict":
            continue
        where = ", ".join(p.files) or "unknown files"
        hunks = f" ({'; '.join(p.hunks)})" if p.hunks else ""
        parts.append(f"'{p.subject}' conflicts in {where}{hunks}")
    return "; ".join(parts) or (k.apply.detail or "series does not apply")


def _upstream_detail(k: KernelResult) -> str:
    commits = [p.upstream_commit for p in k.apply.patches if p.status == "already-applied" and p.upstream_commit]
    if commits:
        return "upstream commit " + ", ".join(_short(c) for c in dict.fromkeys(commits))
    return "matched by content"


def _test_label(t: TestResult) -> str:
    return f"{t.name}@{t.host}" if t.host else t.name


def _findings(k: KernelResult) -> list[tuple[str, str]]:
    """(verdict, detail) for every noteworthy fact about the row, in stage order."""
    out: list[tuple[str, str]] = []
    if k.error:
        out.append(("error", k.error))
    fetch = k.fetch
    if fetch.status == "failed":
        out.append(("error", f"fetch failed: {fetch.detail or 'no detail'}"))
        return out
    apply = k.apply
    if apply.status == "error":
        out.append(("error", f"apply failed: {apply.detail or 'no detail'}"))
        return out
    if apply.status == "conflict" or any(p.status == "conflict" for p in apply.patches):
        out.append(("needs-backport", _conflict_detail(k)))
        return out  # nothing below ran on this series
    if apply.status in ("not-run", "skipped", "interrupted"):
        why = apply.detail or ("stopped before apply" if apply.status == "not-run" else "apply skipped")
        out.append(("untested", why))
        return out
    upstream = apply.status == "already-applied"
    if upstream:
        out.append(("already-upstream", _upstream_detail(k)))
    else:
        kinds = sorted({p.status for p in apply.patches if p.status not in ("applied",)})
        how = "applies clean" if not kinds else "applies (" + ", ".join(kinds) + ")"
        out.append(("ready", how))

    build = k.build
    if build.status == "build-failed":
        first = build.errors[0] if build.errors else (build.detail or "see build log")
        out.append(("build-fails", f"build failed: {first}"))
        return out
    if build.status == "error":
        out.append(("error", f"build could not run: {build.detail or 'no detail'}"))
        return out
    if build.status == "interrupted":
        out.append(("untested", build.detail or "interrupted during build"))
        return out
    if build.status in ("not-run", "skipped"):
        if not upstream:
            out.append(("untested", build.detail or "not built"))
        return out
    if build.new_warnings:
        n = len(build.new_warnings)
        out.append(("new-warnings", f"{n} new warning{'s' if n != 1 else ''}: {build.new_warnings[0]}"))

    for d in k.deploy:
        if d.status == "failed":
            out.append(("error", f"deploy to {d.host or 'host'} failed: {d.detail or 'no detail'}"))

    # Ctrl-C: what was cut short proves nothing either way; the row stays untested
    cut = [f"deploy to {d.host or 'host'}" for d in k.deploy if d.status == "interrupted"]
    cut += [f"{_test_label(t)} [{t.module}]" for t in k.tests if t.reason.startswith("interrupted")]
    if cut:
        out.append(("untested", "interrupted during " + ", ".join(cut)))
    done = [t for t in k.tests if not t.reason.startswith("interrupted")]
    series_tests = [t for t in done if t.module in ("series", "stock")]
    controls = [t for t in done if t.module == "control"]
    if not series_tests:
        skipped = [d for d in k.deploy if d.status == "skipped"]
        why = skipped[0].detail if skipped and skipped[0].detail else "no host ran the VF tests"
        if not upstream and not any(d.status == "failed" for d in k.deploy):
            out.append(("ready-untested", why))
        return out
    failed = [t for t in series_tests if not t.passed]
    if failed:
        t = failed[0]
        reason = t.reason or f"guest saw {t.seen} of {t.expected} devices"
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        out.append(("test-fails", f"{_test_label(t)} failed: {reason}{more}"))
        return out
    hosts = sorted({t.host for t in series_tests if t.host})
    ok = f"{len(series_tests)}/{len(series_tests)} VF tests pass" + (f" on {', '.join(hosts)}" if hosts else "")
    # a control proves something only when its guest ran and saw too few devices, not when it errored
    shown = [t for t in controls if not t.passed and not t.reason.startswith(("error", "skipped"))]
    if shown:
        out.append(("tests-pass", f"{ok}; negative control fails as expected"))
    elif any(t.passed for t in controls):
        out.append(
            ("test-inconclusive", f"{ok}, but the negative control passed too: the test cannot show the fix matters")
        )
    elif controls:
        why = controls[0].reason or "no result"
        out.append(("test-inconclusive", f"{ok}, but the negative control did not run to a result: {why}"))
    else:
        out.append(("tests-pass", f"{ok}; no negative control ran"))
    return out


def verdict(k: KernelResult) -> tuple[str, str]:
    """(verdict, detail) for one kernel row. Pure: reads only `k`."""
    findings = _findings(k)
    if not findings:
        return "error", "no stage result"
    verdicts = [v for v, _ in findings if v != "tests-pass"]
    worst = min(verdicts, key=SEVERITY.index)
    # the detail: the worst finding first, then the remaining facts in stage order
    details = [d for v, d in findings if v == worst]
    details += [d for v, d in findings if v != worst]
    return worst, "; ".join(details)


def parse_fail_on(value: str, option: str = "--fail-on") -> list[str]:
    """'test-fails,build-fails' -> the verdict names; an unknown one is a ConfigError naming the choices."""
    from .errors import ConfigError

    names = [v.strip() for v in str(value).split(",") if v.strip()]
    for v in names:
        if v not in SEVERITY:
            raise ConfigError(f"{option} {v!r}: not a verdict; expected some of {', '.join(SEVERITY)}")
    return names


def gate_status(kernels: list[KernelResult], fail_on: list[str]) -> tuple[int, str]:
    """(10, why) when a row's verdict is one `fail_on` names, else (0, ""): what CI gates on."""
    from .errors import VerdictGate

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
