"""The readiness line of a branch, as a stable maintainer reads it: one line per matrix row.

    <branch>: <apply>; <build>; <VF tests>

- apply: `already upstream` with its evidence (the commit and how it was shown: the patch
  reverse-applies, its subject or patch-id in history, the line's own revert applying, or by
  content), `applies clean` / `with offset` / `with a 3-way merge`, or `needs backport:` with
  the file and hunk of each conflict;
- build: what the module was built for and its new warnings, or why it was not built;
- VF tests: per host, how many passed, the host's dom0 kernel and Xen version, and the control.

`readiness(k)` is a pure function of a KernelResult (as the verdict is), rendered by
summary.md and summary.html (report.py); results.json holds what it is derived from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .results import ApplyStatus, BuildStatus, DeployStatus, KernelResult, Outcome, PatchStatus, TestResult
from .statuses import UpstreamEvidence
from .verdict import control_not_applicable

_NOT_RUN = (Outcome.INTERRUPTED, Outcome.SKIPPED)
_APPLIES = {PatchStatus.APPLIED: "clean", PatchStatus.APPLIED_OFFSET: "offset", PatchStatus.APPLIED_3WAY: "3-way"}
_APPLIES_WORDS = {"clean": "applies clean", "offset": "applies with offset", "3-way": "applies with a 3-way merge"}
_HOW_SHOWN = {
    UpstreamEvidence.REVERSE_APPLY: "the patch reverse-applies",
    UpstreamEvidence.HISTORY: "its subject or patch-id is in the history",
}


@dataclass
class HostRun:
    """The series' VF tests on one host."""

    host: str
    dom0_kernel: str = ""  # `xl info` release; else the release the deploy matched the module to
    xen: str = ""  # `xl info` xen_version
    passed: int = 0
    ran: int = 0  # cases that ran to an outcome (not cut short, not skipped)
    failed: list[str] = field(default_factory=list)
    errored: list[str] = field(default_factory=list)
    control: str = (
        ""  # fails (as it must) | passes (inconclusive) | error (inconclusive) | not-applicable (why) | not run
    )


@dataclass
class Readiness:
    state: str  # already-upstream | applies | needs-backport | not-applied
    apply: str  # the words of the line's first part
    applies: str = ""  # state applies: clean | offset | 3-way (the least clean patch)
    conflicts: list[str] = field(default_factory=list)  # state needs-backport: "<file>: <hunk>" (or the file)
    build: str = ""
    tests: str = ""
    hosts: list[HostRun] = field(default_factory=list)
    line: str = ""  # "<apply>; <build>; <tests>"


def control_cell(ctl: list[TestResult]) -> tuple[str, str]:
    """(text, class) of the negative control: it must fail; passing or erroring proves nothing."""
    if any(t.outcome is Outcome.FAIL for t in ctl):
        return "fails (as it must)", "ok"
    if any(t.outcome is Outcome.PASS for t in ctl):
        return "passes (inconclusive)", "warn"
    return "error (inconclusive)", "warn"


def host_control(ts: list[TestResult]) -> str:
    """The control on one host, with not-applicable's reason (verdict.control_not_applicable)."""
    ctl = [t for t in ts if t.module == "control"]
    excused = [why for t in ctl if (why := control_not_applicable(t))]
    if excused and not any(t.outcome is Outcome.FAIL for t in ctl):
        return f"not-applicable ({excused[0]})"
    return control_cell(ctl)[0] if ctl else "not run"


def _upstream(k: KernelResult) -> str:
    done = [p for p in k.apply.patches if p.status is PatchStatus.ALREADY_APPLIED]
    commits = list(dict.fromkeys(p.upstream_commit[:12] for p in done if p.upstream_commit))
    how = list(dict.fromkeys(_HOW_SHOWN[p.evidence] for p in done if p.upstream_commit and p.evidence in _HOW_SHOWN))
    if commits:
        return f"already upstream (commit {', '.join(commits)}" + "".join(f"; {h}" for h in how) + ")"
    forms = [p.adapted for p in done if p.evidence is UpstreamEvidence.CONTROL_REVERT]
    if forms:
        f = forms[0]
        n = len(f.series_lines)
        of = f" of {f.reverts_commit[:12]}" if f.reverts_commit else ""
        if not n:  # the revert of upstream's own form: nothing of this line's
            return f"already upstream (its revert{of} applies: {f.revert}; no line adapted)"
        adapted = f"{n} line{'s' if n != 1 else ''} adapted"
        return f"already upstream in this line's form (its revert{of} applies: {f.revert}; {adapted})"
    return "already upstream (matched by content: no commit found in the history)"


def _places(k: KernelResult) -> list[str]:
    out = []
    for p in k.apply.patches:
        if p.status is PatchStatus.CONFLICT:
            files = ", ".join(p.files) or "unknown file"
            # hunks are "<file>: @@ ... @@ context" (in older runs the header alone)
            out += [h if ": @@" in h else f"{files}: {h}" for h in p.hunks] or [files]
    return out


def _apply(k: KernelResult) -> Readiness:
    a, patches = k.apply, k.apply.patches
    n = len(patches)
    if a.status is ApplyStatus.CONFLICT or any(p.status is PatchStatus.CONFLICT for p in patches):
        places = _places(k)
        which = [i for i, p in enumerate(patches, 1) if p.status is PatchStatus.CONFLICT]
        of = f" (patch {', '.join(map(str, which))} of {n})" if n > 1 and which else ""
        return Readiness("needs-backport", f"needs backport{of}: " + "; ".join(places), conflicts=places)
    if a.status is ApplyStatus.ALREADY_APPLIED:
        return Readiness("already-upstream", _upstream(k))
    if a.status is ApplyStatus.APPLIED:
        kinds = [_APPLIES.get(p.status, "") for p in patches]
        worst = next((w for w in ("3-way", "offset") if w in kinds), "clean")
        text = _APPLIES_WORDS[worst]
        if n > 1 and worst != "clean":
            text += f" (patch {', '.join(str(i) for i, w in enumerate(kinds, 1) if w == worst)} of {n})"
        up = sum(p.status is PatchStatus.ALREADY_APPLIED for p in patches)
        if up:
            text += f", {up} of {n} patches already upstream"
        return Readiness("applies", text, applies=worst)
    if a.status is ApplyStatus.FAILED:
        return Readiness("not-applied", f"apply failed: {a.detail or 'no detail'}")
    words = {ApplyStatus.INTERRUPTED: "apply interrupted", ApplyStatus.SKIPPED: "apply skipped"}
    return Readiness("not-applied", words.get(a.status, "not applied (the run stopped before apply)"))


def _build(k: KernelResult, state: str) -> str:
    b = k.build
    if b.status is BuildStatus.OK:
        release = b.kernel_release or (b.vermagic.split() or [""])[0]
        n = len(b.new_warnings)
        warned = f"{n} new warning{'s' if n != 1 else ''}: {b.new_warnings[0]}" if n else "no new warnings"
        return f"builds{f' for {release}' if release else ''}, {warned}"
    if b.status is BuildStatus.BUILD_FAILED:
        return f"build fails: {b.errors[0] if b.errors else b.detail or 'see the build log'}"
    if b.status is BuildStatus.SETUP_FAILED:
        return f"build could not run: {b.detail or 'no detail'}"
    if b.status is BuildStatus.ERROR:
        return f"module not buildable in this configuration: {b.detail or 'no detail'}"
    if b.status is BuildStatus.INTERRUPTED:
        return "build interrupted"
    if state == "needs-backport":
        return "no build attempted"
    return "not built"


def _hosts(k: KernelResult) -> list[HostRun]:
    series = [t for t in k.tests if t.module in ("series", "stock") and t.outcome not in _NOT_RUN]
    out = []
    for h in dict.fromkeys(t.host for t in series):
        ts = [t for t in k.tests if t.host == h and t.outcome not in _NOT_RUN]
        mine = [t for t in series if t.host == h]
        tool = next((t.toolstack for t in ts if t.toolstack.xen_version or t.toolstack.dom0_kernel), ts[0].toolstack)
        deployed = any(d.host == h and d.status is DeployStatus.OK for d in k.deploy)
        # a deploy loads a module only on a host running the release it was built for (deploy.preflight)
        matched = (k.build.kernel_release or (k.build.vermagic.split() or [""])[0]) if deployed else ""
        out.append(
            HostRun(
                host=h,
                dom0_kernel=tool.dom0_kernel or matched,
                xen=tool.xen_version,
                passed=sum(t.passed for t in mine),
                ran=len(mine),
                failed=[t.name for t in mine if t.outcome is Outcome.FAIL],
                errored=[t.name for t in mine if t.outcome is Outcome.ERROR],
                control=host_control(ts),
            )
        )
    return out


def _tests(k: KernelResult, hosts: list[HostRun]) -> str:
    if not hosts:
        if any(t.outcome is Outcome.INTERRUPTED for t in k.tests):
            return "VF tests interrupted"
        why = [f"deploy to {d.host} failed: {d.detail}" for d in k.deploy if d.status is DeployStatus.FAILED]
        why += [d.detail for d in k.deploy if d.status is DeployStatus.SKIPPED and d.detail]
        return "VF tests not run" + (f" ({'; '.join(why)})" if why else "")
    parts = []
    for h in hosts:
        text = f"{h.passed}/{h.ran} pass on {h.host} (dom0 kernel {h.dom0_kernel or '?'}, Xen {h.xen or '?'})"
        if h.failed:
            text += f", {', '.join(h.failed)} fail{'s' if len(h.failed) == 1 else ''}"
        if h.errored:
            text += f", {', '.join(h.errored)} could not be carried out"
        parts.append(f"{text}, control {h.control}")
    return "VF tests " + "; ".join(parts)


def readiness(k: KernelResult) -> Readiness:
    r = _apply(k)
    r.build = _build(k, r.state)
    r.hosts = _hosts(k)
    r.tests = _tests(k, r.hosts)
    r.line = f"{r.apply}; {r.build}; {r.tests}"
    return r
