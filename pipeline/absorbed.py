"""Faults the pipeline absorbed: every retry around lab flakiness leaves a typed record.

A retry site calls `record(what, host, step, evidence)` and goes on; nothing is passed through
signatures. The runner opens a collector for its run (`collect(run.faults_absorbed)`, a contextvar),
and `about(kernel=, case=)` names the row and test case running; a record goes into every collector
open in the calling context (a test's collector inside a run's sees the run's faults too). Threads
do not inherit a context: one that runs host commands starts in `contextvars.copy_context()`.

PV_FAULTS_JOURNAL names a file every record is also appended to, one JSON line, by every process
that inherits the variable, collector or not: how a test session totals the faults of the
`invoke verify` runs it starts (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from .redact import redact
from .results import AbsorbedFault, now_iso
from .statuses import FaultKind

JOURNAL_ENV = "PV_FAULTS_JOURNAL"
_STEP_MAX, _EVIDENCE_MAX = 160, 240  # a record says where and how, it is no log

_collectors: ContextVar[tuple[list[AbsorbedFault], ...]] = ContextVar("absorbed_collectors", default=())
_about: ContextVar[tuple[str, str]] = ContextVar("absorbed_about", default=("", ""))


@contextmanager
def collect(into: list[AbsorbedFault] | None = None) -> Iterator[list[AbsorbedFault]]:
    """Every fault recorded in this context until the block ends is appended to `into` (or a new list)."""
    sink: list[AbsorbedFault] = [] if into is None else into
    token = _collectors.set((*_collectors.get(), sink))
    try:
        yield sink
    finally:
        _collectors.reset(token)


@contextmanager
def about(kernel: str | None = None, case: str | None = None) -> Iterator[None]:
    """The row and test case that faults recorded in the block belong to (None: as around it)."""
    k, c = _about.get()
    token = _about.set((k if kernel is None else kernel, c if case is None else case))
    try:
        yield
    finally:
        _about.reset(token)


def _clip(text: str, limit: int) -> str:
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record(what: FaultKind, host: str, step: str, evidence: str) -> AbsorbedFault:
    """Put one absorbed fault on record (every open collector, the journal) and return it."""
    kernel, case = _about.get()
    fault = AbsorbedFault(
        what=what,
        host=host,
        step=_clip(step, _STEP_MAX),
        evidence=_clip(evidence, _EVIDENCE_MAX),
        at=now_iso(),
        kernel=kernel,
        case=case,
    )
    for sink in _collectors.get():
        sink.append(fault)
    journal = os.environ.get(JOURNAL_ENV)
    if journal:
        # one write of one line in append mode: lines of processes writing at once stay whole
        with open(journal, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(dataclasses.asdict(fault)) + "\n")
    return fault


def read_journal(path: Path) -> list[AbsorbedFault]:
    """The records of a PV_FAULTS_JOURNAL file (none when it does not exist)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [AbsorbedFault(**json.loads(line)) for line in lines if line.strip()]


def of_error(e: BaseException) -> str:
    """Evidence of an exception: its type and the first line of its message."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def of_exit(rc: int, err: str = "") -> str:
    """Evidence of a command that ended badly: its exit status (the signal, when it names one) and
    the last line it wrote to stderr."""
    if rc == -1:  # OpenSSH reports a signal death as exit-signal, which paramiko leaves at -1
        how = "no exit status (killed by a signal)"
    else:
        how = f"exit {rc}"
        try:  # through a shell, a signal death is 128 + the signal's number
            how += f" ({signal.Signals(rc - 128).name})" if rc > 128 else ""
        except ValueError:
            pass
    last = next((line.strip() for line in reversed(err.splitlines()) if line.strip()), "")
    return f"{how}: {last}" if last else how


def summary(faults: list[AbsorbedFault]) -> str:
    """'N faults absorbed' (what the summaries and the terminal say)."""
    return f"{len(faults)} fault{'' if len(faults) == 1 else 's'} absorbed"


def tally(faults: list[AbsorbedFault]) -> str:
    """'N faults absorbed', with how many of each kind (the terminal's closing line)."""
    kinds = Counter(f.what for f in faults)
    each = ", ".join(f"{what} x{n}" if n > 1 else str(what) for what, n in sorted(kinds.items()))
    return summary(faults) + (f" ({each})" if each else "")


def describe(fault: AbsorbedFault) -> str:
    """One line per fault: what, where (host, step, row and case), how."""
    inside = ", ".join(x for x in (fault.kernel, fault.case) if x)
    return (
        f"{fault.what} on {fault.host}: {fault.step}"
        + (f" ({inside})" if inside else "")
        + (f": {fault.evidence}" if fault.evidence else "")
    )
