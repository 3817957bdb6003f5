"""The project's own test suite as `invoke test` runs it: the lab tests in one pytest process and
every other test in a second one beside it.

Why two: a lab test spends most of its time waiting on a dom0 under TCG (measured: about one of
the two cores busy during a verify), while the kernel, build and unit tests want a core of their
own; run one after the other the suite took 41-47 minutes here. The other tests stream to the
terminal; the lab half writes a log that is followed once the other half is done, so the two
outputs never interleave and nothing is lost. Each half has its own pytest temporary root and its
own absorbed-fault journal (each prints its own total and slowest tests). The other half runs at
nice 10: the lab's QEMU, at 0, keeps its share of the cores when both halves build at once (seen in
CI on a slower machine: the lab half's dom0 starved until SSH banners timed out).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .absorbed import JOURNAL_ENV
from .util import follow

NO_TESTS = 5  # pytest's exit code when a selection has no test: fine for one half, not for both
QUICK = "not kernel and not build and not lab"
OTHER_NICE = 10  # the half beside the lab's: it yields the cores to the lab's QEMU


@dataclass(frozen=True)
class Half:
    name: str  # "lab" | "other"
    argv: list[str]
    log: Path | None = None  # None: straight to the terminal
    nice: int = 0  # added to the process's niceness (every child inherits it)


@dataclass
class Outcome:
    name: str
    rc: int
    seconds: float


@dataclass
class SuiteResult:
    halves: list[Outcome] = field(default_factory=list)

    @property
    def rc(self) -> int:
        return combined_rc([h.rc for h in self.halves])


def combined_rc(rcs: list[int]) -> int:
    """The suite's exit code: a failing half fails it; a half with no test selected is fine unless
    no half ran any (pytest's 5 then, which CI counts as a failure)."""
    ran = [rc for rc in rcs if rc != NO_TESTS]
    if not ran:
        return NO_TESTS
    return next((rc for rc in ran if rc), 0)


def _marker(base: str | None, part: str) -> str:
    return f"({base}) and {part}" if base else part


def plan(
    root: Path,
    *,
    quick: bool = False,
    k: str | None = None,
    m: str | None = None,
    download: bool = False,
    python: str = sys.executable,
    durations: int = 25,
) -> list[Half]:
    """The pytest processes of one `invoke test`: one for --quick, else the lab half and the rest."""
    base_argv = [python, "-m", "pytest", f"--durations={durations}"]
    if k:
        base_argv += ["-k", k]
    tmp = f"/tmp/pytest-pv-{root.name}"
    if quick:
        return [Half("other", [*base_argv, "-m", QUICK, f"--basetemp={tmp}"])]
    base = m or (None if download else "not download")
    return [
        Half("lab", [*base_argv, "-m", _marker(base, "lab"), f"--basetemp={tmp}-lab"], log=Path(f"{tmp}-lab.log")),
        Half("other", [*base_argv, "-m", _marker(base, "not lab"), f"--basetemp={tmp}"], nice=OTHER_NICE),
    ]


def _niced(h: Half) -> dict:
    return {"preexec_fn": lambda n=h.nice: os.nice(n)} if h.nice else {}


def run(halves: list[Half], cwd: Path, say: Callable[[str], None], out=None) -> SuiteResult:
    """Start every half at once; the terminal half's output live, then each logged half's."""
    out = out or sys.stdout
    env = {k: v for k, v in os.environ.items() if k != JOURNAL_ENV}  # each half keeps its own
    procs: list[tuple[Half, subprocess.Popen, float]] = []
    try:
        for h in halves:
            if h.log is not None:
                h.log.parent.mkdir(parents=True, exist_ok=True)
                with open(h.log, "wb") as fh:
                    p = subprocess.Popen(h.argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, **_niced(h))
                say(f"suite: the {h.name} tests run beside the others, output in {h.log} (shown after them)")
            else:
                p = subprocess.Popen(h.argv, cwd=cwd, env=env, **_niced(h))
            procs.append((h, p, time.monotonic()))
        result = SuiteResult()
        ended: dict[str, float] = {}
        for h, p, t0 in sorted(procs, key=lambda x: x[0].log is not None):  # the live one first
            if h.log is not None:
                say(f"suite: the {h.name} tests' output follows")
                for line in follow(h.log, from_start=True, until=lambda p=p: p.poll() is not None):
                    out.write(line)
                    out.flush()
            p.wait()
            ended[h.name] = time.monotonic() - t0
            result.halves.append(Outcome(h.name, p.returncode, ended[h.name]))
        return result
    except KeyboardInterrupt:
        # the terminal's Ctrl-C reached every half (one process group): let each put its host back
        for _, p, _ in procs:
            try:
                p.wait(timeout=300)
            except subprocess.TimeoutExpired:
                p.kill()
        raise


def describe(result: SuiteResult) -> str:
    parts = [f"{h.name} tests {int(h.seconds // 60)} min {int(h.seconds % 60)} s (exit {h.rc})" for h in result.halves]
    return "suite: " + ", ".join(parts)
