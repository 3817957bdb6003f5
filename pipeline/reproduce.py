"""A reproduce recipe for every failure of a row, whatever the stage (fetch, apply, build, deploy,
test, the negative control, a pipeline error): the commands a maintainer types to see it again.

Each recipe has the `invoke verify --kernel X --until STAGE` line that reruns the pipeline
up to the failing stage; an apply conflict also gets the git commands (fetch, checkout, `b4 am`
or `git am -3`); a failed VF test the xl config the guest was created with, copied into the run
directory (`repro/<kernel>/<test>-<module>.cfg`), and the `xl create` line for the host.
Which statuses get one is decided by their kind (FAIL or ERROR), never by their words.
`annotate(run, run_dir)` fills KernelResult.reproduce; the summaries and the mails show them.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from . import PROJECT_ROOT
from .results import KernelResult, Outcome, Reproduce, RunResult, SeriesInfo, atomic_write_text
from .statuses import Kind, PatchStatus

# a stage status or test outcome of these kinds gets a recipe: a failure of the series (FAIL) or a
# stage that could not be carried out (ERROR); each status is mapped by its kind, never its word
FAILING = (Kind.FAIL, Kind.ERROR)

# the first stage each verdict-relevant failure is seen at, for the --until of its invoke line
_UNTIL = {"fetch": "fetch", "apply": "apply", "build": "build", "deploy": "deploy", "test": "test", "control": "test"}


def _q(s: str) -> str:
    return shlex.quote(str(s))


def invoke_line(run: RunResult, k: KernelResult, stage: str) -> str:
    args = ["invoke", "verify", "--kernel", k.name]
    if run.series.source:
        args += ["--series", run.series.source]
    args += ["--until", _UNTIL.get(stage, "report")]
    return " ".join(_q(a) for a in args)


def am_commands(series: SeriesInfo) -> list[str]:
    """`b4 am <msgid>` when the series came from a list, else `git am -3` of each patch file."""
    msgid = next((p.message_id for p in series.patches if p.message_id), "")
    if msgid:
        return [f"b4 am -o . {_q(msgid.strip('<>'))}", "git am -3 ./*.mbx"]
    files = list(dict.fromkeys(p.source for p in series.patches if p.source)) or [series.source or "series.mbox"]
    cmds = [f"git am -3 {_q(f)}" for f in files]
    return cmds


def checkout_commands(k: KernelResult) -> list[str]:
    return [
        f"git fetch {_q(k.remote)} {_q(k.fetch.ref or k.ref)}",
        f"git checkout {_q(k.fetch.commit or 'FETCH_HEAD')}",
    ]


def _from_project(run_dir: Path | None) -> str:
    """The run directory as `invoke` (run in the project) reaches it: relative when under the project."""
    if run_dir is None:
        return ""
    d = Path(run_dir).resolve()
    return f"{d.relative_to(PROJECT_ROOT)}/" if d.is_relative_to(PROJECT_ROOT) else f"{d}/"


def _save_config(run_dir: Path | None, k: KernelResult, t) -> str:
    if run_dir is None or not t.xl_config:
        return ""
    rel = f"repro/{k.name}/{t.name}-{t.module}.cfg"
    atomic_write_text(Path(run_dir) / rel, t.xl_config)
    return rel


def recipes(run: RunResult, k: KernelResult, run_dir: Path | None = None) -> list[Reproduce]:
    out: list[Reproduce] = []
    f, a, b = k.fetch, k.apply, k.build
    if f.status.kind in FAILING:
        out.append(
            Reproduce(
                "fetch",
                f.detail or "fetch failed",
                [f"git ls-remote {_q(k.remote)} {_q(k.ref)}", invoke_line(run, k, "fetch")],
            )
        )
    conflicts = [p for p in a.patches if p.status is PatchStatus.CONFLICT]
    if a.status.kind in FAILING or conflicts:
        where = "; ".join(f"{p.subject}: {', '.join(p.files) or 'conflict'}" for p in conflicts) or a.detail
        out.append(
            Reproduce(
                "apply",
                f"does not apply: {where}" if conflicts else (a.detail or f"apply {a.status}"),
                [*checkout_commands(k), *am_commands(run.series), invoke_line(run, k, "apply")],
            )
        )
    if b.status.kind in FAILING or (b.status.kind is Kind.OK and b.new_warnings):
        what = (
            (b.errors[0] if b.errors else b.detail or f"build {b.status}")
            if b.status.kind is not Kind.OK
            else f"{len(b.new_warnings)} new warning(s): {b.new_warnings[0]}"
        )
        cmds = [*checkout_commands(k), *am_commands(run.series)] if b.mode == "full" else []
        out.append(
            Reproduce(
                "build", what, [*cmds, invoke_line(run, k, "build")], [b.log] if b.log and "\n" not in b.log else []
            )
        )
    for d in k.deploy:
        if d.status.kind in FAILING:
            out.append(Reproduce("deploy", f"deploy to {d.host}: {d.detail}", [invoke_line(run, k, "deploy")]))
    for t in k.tests:
        if t.module == "control" or t.outcome.kind not in FAILING:
            continue  # a control is expected to fail; a passing control is a recipe of its own below
        cfg = _save_config(run_dir, k, t)
        cmds = [invoke_line(run, k, "test")]
        if cfg:
            # the guest as this test created it, on the same inventory host (lab or real: hostcmd.py)
            remote = f"/tmp/{t.name}.cfg"
            cmds.append(
                f"invoke hosts.run --host {_q(t.host)} --put {_q(f'{_from_project(run_dir)}{cfg}:{remote}')} "
                f"-c {_q(f'xl create {remote}')}   # with the {t.module} xen-pciback.ko loaded"
            )
        out.append(
            Reproduce(
                "test",
                f"{t.name} [{t.module}] on {t.host}: {t.reason or f'{t.seen}/{t.expected}'}",
                cmds,
                [cfg] if cfg else [],
            )
        )
    controls = [t for t in k.tests if t.module == "control" and t.outcome not in (Outcome.INTERRUPTED, Outcome.SKIPPED)]
    if controls and all(t.passed for t in controls):
        t = controls[0]
        cfg = _save_config(run_dir, k, t)
        out.append(
            Reproduce(
                "control",
                f"the negative control {t.name} passed on {t.host}: the test cannot show the fix matters",
                [invoke_line(run, k, "control")],
                [cfg] if cfg else [],
            )
        )
    if k.error and not out:
        out.append(Reproduce("error", k.error, [invoke_line(run, k, k.failed_stage or "report")]))
    return out


def annotate(run: RunResult, run_dir: Path | None = None) -> None:
    for k in run.kernels:
        k.reproduce = recipes(run, k, run_dir)
