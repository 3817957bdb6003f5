"""The build stage's step runner: each step (make, merge_config.sh, checkpatch.pl) in the sandbox
of pipeline/sandbox.py, under the build's one deadline, its command and output appended to the
build log; and the typed ways a step ends the build (time limit, another sandbox limit, failure).
The tiny guest kernel's build (guestkernel.py) uses it too. The lab image's commands do not
(lab/image.py `_Builder`): they are ours, run as root on the host itself (mount, debootstrap,
chroot apt-get) and stop the image at their first failure, where a build step is untrusted code
confined and limited whose exit status and output the build stage reads.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from . import sandbox
from .config import Settings
from .errors import BuildSetupError


class BuildTimeout(Exception):
    pass


class LimitHit(Exception):
    """A sandbox limit (log size, processes, memory) stopped a step: the build fails naming it."""

    def __init__(self, what: str, limit: sandbox.Limit, message: str):
        super().__init__(f"{what}: {message}")
        self.limit = limit


class Runner:
    """Runs build steps in the sandbox (pipeline/sandbox.py), under one deadline, appending everything to the log.

    Each call names what the step may see: `ro` roots besides the runner's own,
    and the `rw` directory it may write (its build output).
    """

    def __init__(self, log: Path, deadline: float, env: dict[str, str], timeout_s: int, settings: Settings):
        self.log = log
        self.deadline = deadline
        self.env = env
        self.timeout_s = timeout_s
        sb = settings.sandbox
        self.confined = sb.enabled
        self.limits = sandbox.Limits(
            time_s=timeout_s, memory_mb=sb.memory_mb, processes=sb.processes, log_mb=sb.log_mb, file_mb=sb.file_mb
        )
        self.ro: set[Path] = set()
        self.rw: set[Path] = set()
        self.usr: Path | None = None  # a build root's /usr (pipeline.buildroot), else the host's

    def child(self, log: Path) -> Runner:
        """A runner for a step logged on its own (checkpatch), recorded with this one."""
        other = Runner.__new__(Runner)
        other.__dict__.update(self.__dict__)
        other.log = log
        other.usr = None  # checkpatch runs on the host's perl, not in a build root
        return other

    def info(self) -> sandbox.SandboxInfo:
        detail = "" if self.confined else "unconfined: --no-sandbox (pv.sandbox.enabled false)"
        return sandbox.info(self.ro, self.rw, self.limits, self.confined, detail)

    def note(self, text: str) -> None:
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(f"### {text}\n")

    def __call__(
        self,
        cmd: list[str],
        cwd: Path,
        what: str,
        input: str | None = None,
        *,
        ro: list[Path] = (),
        rw: list[Path] = (),
        env: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        ro, rw = [Path(p) for p in ro], [Path(p) for p in rw]
        self.ro.update(ro)
        self.rw.update(rw)
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(f"\n### {what}\n$ (cd {shlex.quote(str(cwd))} && {shlex.join(cmd)})\n")
            if time.monotonic() >= self.deadline:
                raise BuildTimeout(what)
            try:
                res = sandbox.run(
                    cmd,
                    cwd=cwd,
                    ro=ro,
                    rw=rw,
                    env={**self.env, **(env or {})},
                    limits=self.limits,
                    deadline=self.deadline,
                    input=input,
                    log=fh,
                    confined=self.confined,
                    usr=self.usr,
                )
            except sandbox.SandboxUnavailable as e:
                raise BuildSetupError(f"{what}: build refused: {e}") from None
            if res.limit is not None:
                fh.write(f"\n### {res.limit_message(self.limits)}\n")
            else:
                fh.write(f"### exit status {res.returncode} after {res.duration_s:.1f} s\n")
        if res.limit is sandbox.Limit.TIME:
            raise BuildTimeout(what)
        if res.limit is not None:
            raise LimitHit(what, res.limit, res.limit_message(self.limits))
        return res.returncode, res.output


class StepFailed(Exception):
    def __init__(self, step: str, output: str):
        super().__init__(step)
        self.step = step
        self.output = output


def check(result: tuple[int, str], step: str) -> str:
    rc, out = result
    if rc:
        raise StepFailed(step, out)
    return out
