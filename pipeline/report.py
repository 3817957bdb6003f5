"""Report stage: what a run's users act on, rendered from its RunResult.

`write_reports(run, run_dir)` writes, atomically, next to results.json:
  junit.xml     one test case per kernel x stage/test (GitLab's `artifacts:reports:junit`)
  kcidb.json    KernelCI KCIDB v5 (checkouts with patchset_hash, builds, tests): pipeline/kcidb.py
  summary.md    stable-backport readiness (a line per branch: pipeline/readiness.py), with a Greg-KH-style
                section per branch the series does not apply to
  summary.html  colour-coded matrix kernels x stages, with links to the logs in the run directory
`format_table(run)` is the terminal summary `invoke verify` prints; `compare(a, b)` says what changed
between two revisions of a series. Templates: pipeline/templates/report/.

Log links: a stage's log is linked when `<run_dir>/<kernel>/<stage>.log` or
`<run_dir>/logs/<kernel>/<stage>.log` exists; BuildResult.log is linked when it names
a file inside the run directory, and written to logs/<kernel>/build.log when it holds the log text itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2

from . import absorbed
from .kcidb import patchset_hash, render_kcidb, validate_kcidb
from .readiness import control_cell, host_control, readiness
from .reproduce import annotate
from .results import (
    ApplyStatus,
    BuildStatus,
    KernelResult,
    Outcome,
    PatchStatus,
    RunResult,
    TestResult,
    atomic_write_text,
)
from .statuses import Kind
from .util import templates, xmlsafe
from .verdict import STATE, Change, change, verdict_of
from .xsobserve import describe as describe_creation

STAGES = ("fetch", "apply", "build", "checkpatch", "deploy", "tests", "control")

# every report maps a status from its Kind (statuses.py), the same way for every stage (KCIDB: kcidb.py)
CELL_CLASS = {Kind.OK: "ok", Kind.FAIL: "fail", Kind.ERROR: "fail", Kind.SKIP: "skip", Kind.INTERRUPTED: "skip"}
JUNIT = {Kind.OK: "pass", Kind.FAIL: "failure", Kind.ERROR: "error", Kind.SKIP: "skipped", Kind.INTERRUPTED: "skipped"}


# ----------------------------------------------------------------- helpers


def stable_version(k: KernelResult) -> str:
    """'5.10' for linux-5.10.y / 5.10.y / debian-6.1; the kernel name when no X.Y is found."""
    for s in (k.ref, k.name):
        m = re.search(r"(?<![\d.])(\d+\.\d+)(?![\d])", s or "")
        if m:
            return m.group(1)
    return k.name


def _short(commit: str) -> str:
    return commit[:12] if commit else ""


_NOT_RUN = (Outcome.INTERRUPTED, Outcome.SKIPPED)


def _series_tests(k: KernelResult) -> list[TestResult]:
    """The series' tests that ran (one cut short by Ctrl-C or never started is not counted as run)."""
    return [t for t in k.tests if t.module in ("series", "stock") and t.outcome not in _NOT_RUN]


def _controls(k: KernelResult) -> list[TestResult]:
    return [t for t in k.tests if t.module == "control" and t.outcome not in _NOT_RUN]


def _test_id(t: TestResult) -> str:
    return f"{t.name}[{t.module}]@{t.host}" if t.host else f"{t.name}[{t.module}]"


def _md_cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def _env() -> jinja2.Environment:
    env = templates("report", autoescape=lambda name: bool(name) and name.endswith((".html.j2", ".xml.j2")))
    env.filters["xmlsafe"] = xmlsafe
    env.filters["md_cell"] = _md_cell
    env.filters["short"] = _short
    return env


# ----------------------------------------------------------------- stage cells


def _cell(status: str, cls: str, title: str = "", link: str = "") -> dict[str, str]:
    return {"text": status, "cls": cls, "title": title, "link": link}


def _log_link(run_dir: Path | None, kernel: str, stage: str) -> str:
    if run_dir is None:
        return ""
    for rel in (f"{kernel}/{stage}.log", f"logs/{kernel}/{stage}.log"):
        if (run_dir / rel).is_file():
            return rel
    return ""


def _build_log_link(run_dir: Path | None, k: KernelResult) -> str:
    if run_dir is None or not k.build.log:
        return _log_link(run_dir, k.name, "build")
    log = k.build.log
    if "\n" in log:  # the log text itself: give it a file to link to
        rel = f"logs/{k.name}/build.log"
        if not (run_dir / rel).exists():
            atomic_write_text(run_dir / rel, log)
        return rel
    p = Path(log)
    p = p if p.is_absolute() else run_dir / p
    try:
        rel = str(p.resolve().relative_to(run_dir.resolve()))
    except (ValueError, OSError):
        return _log_link(run_dir, k.name, "build")
    return rel if p.is_file() else _log_link(run_dir, k.name, "build")


def stage_cells(k: KernelResult, run_dir: Path | None = None) -> dict[str, dict[str, str]]:
    """Per stage of a row: display text, colour class (ok/warn/fail/skip), tooltip and log link."""
    c: dict[str, dict[str, str]] = {}
    f = k.fetch
    fcls = CELL_CLASS[f.status.kind]
    c["fetch"] = _cell(f.status, fcls, f.detail or _short(f.commit), _log_link(run_dir, k.name, "fetch"))

    a = k.apply
    acls = CELL_CLASS[a.status.kind]
    clean = (PatchStatus.APPLIED, PatchStatus.ALREADY_APPLIED)
    kinds = sorted({p.status for p in a.patches if p.status not in clean})
    if acls == "ok" and kinds:
        acls = "warn"  # offset/fuzz/3-way: applies, but not clean
    atext = a.status + (f" ({', '.join(kinds)})" if kinds and a.status is not ApplyStatus.CONFLICT else "")
    atitle = "; ".join(f"{p.subject}: {p.status}" + (f" {', '.join(p.files)}" if p.files else "") for p in a.patches)
    c["apply"] = _cell(atext, acls, atitle or a.detail, _log_link(run_dir, k.name, "apply"))

    b = k.build
    bcls = CELL_CLASS[b.status.kind]
    btext = str(b.status)
    if b.status is BuildStatus.OK and b.new_warnings:
        bcls, btext = "warn", f"ok, {len(b.new_warnings)} new warning(s)"
    btitle = (b.errors[0] if b.errors else "") or "; ".join(b.new_warnings) or b.vermagic or b.detail
    c["build"] = _cell(btext, bcls, btitle, _build_log_link(run_dir, k))

    if b.checkpatch:
        errs = sum(x.errors for x in b.checkpatch)
        warns = sum(x.warnings for x in b.checkpatch)
        c["checkpatch"] = _cell(f"{errs} errors, {warns} warnings", "fail" if errs else ("warn" if warns else "ok"))
    else:
        c["checkpatch"] = _cell("not-run", "skip")

    if k.deploy:
        classes = {CELL_CLASS[d.status.kind] for d in k.deploy}
        worst = "fail" if "fail" in classes else ("ok" if "ok" in classes else "skip")
        text = ", ".join(f"{d.host}: {d.status}" for d in k.deploy)
        title = "; ".join(d.detail for d in k.deploy if d.detail)
        c["deploy"] = _cell(text, worst, title, _log_link(run_dir, k.name, "deploy"))
    else:
        c["deploy"] = _cell("not-run", "skip")

    st = _series_tests(k)
    if st:
        passed = sum(t.passed for t in st)
        errors = sum(t.outcome is Outcome.ERROR for t in st)
        title = "; ".join(
            f"{_test_id(t)}: {t.seen}/{t.expected}"
            + ("" if t.passed else f" {t.outcome.upper()} {t.reason}")
            + (f" (teardown error: {t.teardown_error})" if t.teardown_error else "")
            for t in st
        )
        failed = any(t.outcome is Outcome.FAIL for t in st)
        cls = "fail" if failed else ("warn" if errors else "ok")  # an error is no failure: inconclusive
        text = f"{passed}/{len(st)} pass" + (f", {errors} error" if errors else "")
        c["tests"] = _cell(text, cls, title, _log_link(run_dir, k.name, "test"))
    else:
        c["tests"] = _cell("not-run", "skip")

    ctl = _controls(k)
    if ctl:
        text, cls = control_cell(ctl)
        c["control"] = _cell(text, cls, "; ".join(f"{_test_id(t)}: {t.seen}/{t.expected} {t.outcome}" for t in ctl))
    else:
        c["control"] = _cell("not-run", "skip")
    return c


def _row(k: KernelResult, run: RunResult, run_dir: Path | None) -> dict[str, Any]:
    v, d = verdict_of(k)
    st = _series_tests(k)
    return {
        "k": k,
        "name": k.name,
        "ref": k.ref,
        "commit": k.fetch.commit,
        "verdict": v,
        "detail": d,
        "state": STATE.get(v, "fail"),
        "cells": stage_cells(k, run_dir),
        "tests_passed": sum(t.passed for t in st),
        "tests_total": len(st),
        "seen": sum(t.seen for t in st),
        "expected": sum(t.expected for t in st),
        "version": stable_version(k),
        "conflicts": [p for p in k.apply.patches if p.status is PatchStatus.CONFLICT],
        "readiness": readiness(k),
    }


# ----------------------------------------------------------------- terminal


def format_table(run: RunResult) -> str:
    """One row per kernel: name, ref@commit, apply, build, tests (passed/run, VFs seen/expected), verdict."""
    head = ["KERNEL", "REF@COMMIT", "APPLY", "BUILD", "TESTS", "VFS", "VERDICT"]
    rows = []
    for k in run.kernels:
        r = _row(k, run, None)
        ref = f"{k.ref}@{_short(k.fetch.commit)}" if k.fetch.commit else k.ref
        tests = f"{r['tests_passed']}/{r['tests_total']}" if r["tests_total"] else "-"
        if _controls(k):
            ctl = _controls(k)
            tests += " ctl:" + (
                "fail"
                if any(t.outcome is Outcome.FAIL for t in ctl)
                else "PASS"
                if any(t.passed for t in ctl)
                else "ERR"
            )
        vfs = f"{r['seen']}/{r['expected']}" if r["tests_total"] else "-"
        rows.append([k.name, ref, r["cells"]["apply"]["text"], r["cells"]["build"]["text"], tests, vfs, r["verdict"]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [head, *rows]]
    title = f"{run.series.name} v{run.series.revision}: run {run.run_id} ({run.status})"
    return "\n".join([title, *lines, absorbed.tally(run.faults_absorbed)]) + "\n"


def comparison(run_a: RunResult, run_b: RunResult) -> dict[str, Any]:
    """What changed from run A to run B (e.g. series v1 -> v2), as data (`report --compare --json`):
    per kernel its Change, the verdict before and after, and the later run's detail."""
    a = {k.name: verdict_of(k) for k in run_a.kernels}
    b = {k.name: verdict_of(k) for k in run_b.kernels}
    kernels = []
    for name in dict.fromkeys([*a, *b]):
        before, after = a.get(name, (None, ""))[0], b.get(name, (None, ""))[0]
        kernels.append(
            {
                "kernel": name,
                "change": change(before, after),
                "before": before,
                "after": after,
                "detail": b[name][1] if name in b else "",
            }
        )
    counts = {c.value: sum(1 for k in kernels if k["change"] is c) for c in Change}

    def side(run: RunResult) -> dict[str, Any]:
        return {"run_id": run.run_id, "series": run.series.name, "revision": run.series.revision}

    return {"from": side(run_a), "to": side(run_b), "kernels": kernels, "counts": counts}


def compare(run_a: RunResult, run_b: RunResult) -> str:
    """`comparison` as text: per kernel better / worse / same / new / gone."""
    data = comparison(run_a, run_b)
    fa, fb = data["from"], data["to"]
    lines = [f"{fa['series']} v{fa['revision']} ({fa['run_id']}) -> {fb['series']} v{fb['revision']} ({fb['run_id']})"]
    for k in data["kernels"]:
        ch = k["change"]
        text = {Change.NEW: k["after"], Change.GONE: k["before"]}.get(ch, f"{k['before']} -> {k['after']}")
        shown = ch in (Change.BETTER, Change.WORSE, Change.NEW) and k["detail"]
        lines.append(f"  {ch.upper():6}  {k['kernel']}: {text}" + (f"  ({k['detail']})" if shown else ""))
    lines.append("  " + ", ".join(f"{n} {c}" for c, n in data["counts"].items() if n))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- junit


def junit_cases(run: RunResult) -> list[dict[str, Any]]:
    """Test cases: classname = kernel, name = stage or test; outcome pass|failure|error|skipped."""
    cases = []

    def add(k, name, outcome, message="", out="", time=0.0):
        cases.append(
            {"classname": k.name, "name": name, "outcome": outcome, "message": message, "out": out, "time": time}
        )

    for k in run.kernels:
        f = k.fetch
        fo = JUNIT[f.status.kind]
        add(k, "fetch", fo, f.detail or f.status, f"{k.remote} {f.ref} -> {f.commit}", f.duration_s)
        a = k.apply
        ao = JUNIT[a.status.kind]
        lines = [
            f"{p.status}: {p.subject}" + (f" [{p.upstream_commit}]" if p.upstream_commit else "") for p in a.patches
        ]
        for p in a.patches:
            if p.status is PatchStatus.CONFLICT:
                lines.append(f"  conflicts in {', '.join(p.files)} {' '.join(p.hunks)}".rstrip())
            if p.adapted.revert:
                lines.append(f"  in this line's form: {p.adapted.revert} applies")
        msg = verdict_of(k)[1] if ao == "failure" else (a.detail or a.status)
        add(k, "apply", ao, msg, "\n".join(lines), a.duration_s)
        b = k.build
        bo = JUNIT[b.status.kind]
        bmsg = (b.errors[0] if b.errors else b.detail) if bo != "pass" else b.vermagic
        add(
            k,
            "build",
            bo,
            bmsg or b.status,
            "\n".join([f"module {b.module}", f"vermagic {b.vermagic}", *b.errors]),
            b.duration_s,
        )
        if b.status is BuildStatus.OK:
            wo = "failure" if b.new_warnings else "pass"
            add(k, "build.new-warnings", wo, f"{len(b.new_warnings)} new warning(s)", "\n".join(b.new_warnings))
        for cp in b.checkpatch:
            add(
                k,
                f"checkpatch: {cp.subject}",
                "failure" if cp.errors else "pass",
                f"{cp.errors} errors, {cp.warnings} warnings",
                "\n".join(cp.messages),
            )
        for d in k.deploy:
            do = JUNIT[d.status.kind]
            add(
                k,
                f"deploy@{d.host}",
                do,
                d.detail or d.status,
                f"srcversion {d.srcversion}, restored {d.restored}",
                d.duration_s,
            )
        for t in k.tests:
            out = f"seen {t.seen}/{t.expected} {' '.join(t.seen_bdfs)}\nbackend {json.dumps(t.backend, sort_keys=True)}"
            if t.teardown_error:
                out += f"\nteardown error (after the result was observed): {t.teardown_error}"
            if t.module == "control":
                # the control is expected to fail; its verdict is the negative-control case below
                co = "pass" if t.outcome in (Outcome.PASS, Outcome.FAIL) else JUNIT[t.outcome.kind]
                add(
                    k,
                    f"test {_test_id(t)}",
                    co,
                    "" if co == "pass" else t.reason or str(t.outcome),
                    f"negative control {t.outcome}: {t.reason}\n{out}",
                    t.duration_s,
                )
            else:
                add(
                    k,
                    f"test {_test_id(t)}",
                    JUNIT[t.outcome.kind],
                    t.reason or f"guest saw {t.seen} of {t.expected}",
                    out,
                    t.duration_s,
                )
        ctl = _controls(k)
        if ctl:
            shown = any(t.outcome is Outcome.FAIL for t in ctl)
            add(
                k,
                "negative-control",
                "pass" if shown else "failure",
                ""
                if shown
                else "the control (fix reverted) passed too: the test cannot show the fix matters"
                if any(t.passed for t in ctl)
                else "the control (fix reverted) did not run to a result: the test cannot show the fix matters",
            )
    return cases


def render_junit(run: RunResult) -> str:
    cases = junit_cases(run)
    suites = []
    for k in run.kernels:
        own = [c for c in cases if c["classname"] == k.name]
        suites.append(
            {
                "name": k.name,
                "cases": own,
                "tests": len(own),
                "failures": sum(c["outcome"] == "failure" for c in own),
                "errors": sum(c["outcome"] == "error" for c in own),
                "skipped": sum(c["outcome"] == "skipped" for c in own),
                "time": sum(c["time"] for c in own),
            }
        )
    return _env().get_template("junit.xml.j2").render(run=run, suites=suites)


# ----------------------------------------------------------------- markdown / html


def host_grid(run: RunResult) -> dict[str, Any]:
    """Kernel x host: per cell the host's Xen (and xl/libxl), the creation pattern observed on the
    largest vf-boot case there, the series' tests and the control (with not-applicable's reason)."""
    hosts = list(dict.fromkeys(t.host for k in run.kernels for t in k.tests if t.host))
    rows = []
    for k in run.kernels:
        cells = {}
        for h in hosts:
            ts = [t for t in k.tests if t.host == h and t.outcome not in _NOT_RUN]
            if not ts:
                continue
            boots = [t for t in ts if t.name.startswith("vf-boot") and t.xs_creation.observed] or [
                t for t in ts if t.name.startswith("vf-boot")
            ]
            seen = max(boots, key=lambda t: t.expected) if boots else None
            tool = next((t.toolstack for t in ts if t.toolstack.xen_version), ts[0].toolstack)
            series = [t for t in ts if t.module in ("series", "stock")]
            cells[h] = {
                "xen": tool.xen_version or "?",
                "xl": tool.xl_version,
                "pattern": describe_creation(seen.xs_creation) if seen else "no vf-boot case",
                "series": f"{sum(t.passed for t in series)}/{len(series)} pass",
                "control": host_control(ts),
            }
        rows.append({"name": k.name, "cells": cells})
    return {"hosts": hosts, "rows": rows}


def _context(run: RunResult, run_dir: Path | None) -> dict[str, Any]:
    rows = [_row(k, run, run_dir) for k in run.kernels]
    sources = list(dict.fromkeys(p.source for p in run.series.patches if p.source)) or [
        run.series.source or "<series.mbox>"
    ]
    return {
        "run": run,
        "series": run.series,
        "rows": rows,
        "grid": host_grid(run),
        "faults": {"line": absorbed.summary(run.faults_absorbed), "each": run.faults_absorbed},
        "stages": STAGES,
        "patchset_hash": patchset_hash(run.series),
        "am_sources": sources,
        "not_applying": [r for r in rows if r["k"].apply.status is ApplyStatus.CONFLICT or r["conflicts"]],
        "first_msgid": next((p.message_id for p in run.series.patches if p.message_id), ""),
        "upstream_refs": list(dict.fromkeys(ref for p in run.series.patches for ref in p.upstream_refs)),
    }


def render_markdown(run: RunResult, run_dir: Path | None = None) -> str:
    return _env().get_template("summary.md.j2").render(**_context(run, run_dir))


def render_html(run: RunResult, run_dir: Path | None = None) -> str:
    return _env().get_template("summary.html.j2").render(**_context(run, run_dir))


def write_reports(run: RunResult, run_dir: Path) -> list[Path]:
    """Write junit.xml, kcidb.json, summary.md and summary.html into the run directory, each atomically."""
    run_dir = Path(run_dir)
    annotate(run, run_dir)  # before rendering: the summaries show the recipes
    if not run.series.patchset_hash:
        run.series.patchset_hash = patchset_hash(run.series)
    kcidb = render_kcidb(run)
    validate_kcidb(kcidb)
    out = {
        "junit.xml": render_junit(run),
        "kcidb.json": json.dumps(kcidb, indent=2) + "\n",
        "summary.md": render_markdown(run, run_dir),
        "summary.html": render_html(run, run_dir),
    }
    paths = []
    for name, text in out.items():
        atomic_write_text(run_dir / name, text)
        paths.append(run_dir / name)
    return paths
