"""The vocabulary of results: every status a stage records and every outcome of a test case is a
member of one of these enums, serialised to the same strings results.json always had (schema 1
unchanged; added: TestResult.outcome and .teardown_error, KernelResult.failed_stage,
RunResult.faults_absorbed). Reports, the
verdict and posting map from the members (their `kind`), never from words in a message.

The result objects holding them are in pipeline/results.py; EnumField is how their status fields
refuse anything that is not a member.
"""

from __future__ import annotations

import enum
from typing import Any


class Kind(enum.StrEnum):
    """What a status means to every report: a pass, a failure of the series, an error of the
    pipeline or host (the stage could not be carried out), not run, or cut short by Ctrl-C."""

    OK = "ok"
    FAIL = "fail"
    ERROR = "error"
    SKIP = "skip"
    INTERRUPTED = "interrupted"


class _Status(enum.StrEnum):
    @property
    def kind(self) -> Kind:
        return _KINDS[type(self)][self]


class FetchStatus(_Status):
    OK = "ok"
    FAILED = "failed"  # remote unreachable, unknown ref (the row's error_code says which)
    SKIPPED = "skipped"
    NOT_RUN = "not-run"
    RUNNING = "running"
    INTERRUPTED = "interrupted"


class PatchStatus(_Status):
    APPLIED = "applied"
    APPLIED_OFFSET = "applied-offset"
    APPLIED_3WAY = "applied-3way"
    ALREADY_APPLIED = "already-applied"
    CONFLICT = "conflict"
    NOT_ATTEMPTED = "not-attempted"


class ApplyStatus(_Status):
    """Series roll-up on one kernel (apply.rollup), or why there is none."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already-applied"
    CONFLICT = "conflict"
    FAILED = "failed"  # the apply machinery itself failed (a PipelineError in the stage)
    SKIPPED = "skipped"
    NOT_RUN = "not-run"
    INTERRUPTED = "interrupted"


class BuildStatus(_Status):
    OK = "ok"
    BUILD_FAILED = "build-failed"  # the module does not build (compiler, modpost, ld, Makefile)
    SETUP_FAILED = "failed"  # the build could not run: toolchain or headers missing (BuildSetupError)
    ERROR = "error"  # the kernel's configuration cannot build the module (not =m after olddefconfig)
    SKIPPED = "skipped"
    NOT_RUN = "not-run"
    INTERRUPTED = "interrupted"


class DeployStatus(_Status):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # preflight refused the host (KernelResult.error_code says why)
    NOT_RUN = "not-run"
    INTERRUPTED = "interrupted"


class Outcome(_Status):
    """A test case: PASS/FAIL is what the guest observed; ERROR the case could not be carried out
    (setup failed, the host misbehaved before a result); INTERRUPTED Ctrl-C; SKIPPED never started
    (the host offers fewer VFs, no control module). A teardown fault after the observation does not
    change it: it goes to TestResult.teardown_error."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"


class RunStatus(_Status):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    INTERRUPTED = "interrupted"


class Stage(_Status):
    """The stage a row failed in (KernelResult.failed_stage); NONE when it did not fail."""

    NONE = ""
    FETCH = "fetch"
    APPLY = "apply"
    BUILD = "build"
    DEPLOY = "deploy"
    TEST = "test"


class UpstreamEvidence(enum.StrEnum):
    """How an already-applied patch was shown to be in the tree (PatchApply.evidence), strongest first.
    Not a status: the patch's status is ALREADY_APPLIED in each case; this says what a reader may trust."""

    NONE = ""  # the patch is not already-applied (or a run recorded before this field)
    REVERSE_APPLY = "reverse-apply"  # the patch itself reverse-applies: the tree has it verbatim
    HISTORY = "history"  # a commit in the tree's history has its subject or patch-id (upstream_commit)
    # the kernel's control revert (a revert of this very patch, adapted to the line) applies cleanly:
    # the tree has the change in that line's form (PatchApply.adapted says which lines differ)
    CONTROL_REVERT = "control-revert"
    CONTENT = "content"  # every significant added line is in its file, no removed run left: the weakest


class FaultKind(enum.StrEnum):
    """A lab fault a retry absorbed (results: AbsorbedFault; absorbed.py). Not a status: the run went
    on and its verdict stands; each is on record so that a lab getting worse shows before it costs one."""

    QUERY_KILLED = "query-killed"  # a read-only command killed by a signal, run again (Host.query)
    HANDSHAKE_BROKEN = "handshake-broken"  # an SSH handshake damaged in transit, tried again
    STREAM_BROKEN = "stream-broken"  # the SSH transport died before a command started: fresh connection
    SFTP_RETRY = "sftp-retry"  # an SFTP read failed, again on a fresh session
    SYSFS_WRITE_RETRY = "sysfs-write-retry"  # `tee` never read the value ("Bad file descriptor")
    XL_CREATE_CRASHED = "xl-create-crashed"  # xl create (or its libxl helper) killed by a signal, created again
    DESTROY_REISSUED = "destroy-reissued"  # a domain still listed 10 s after `xl destroy`: destroyed again
    TEARDOWN_RETRY = "teardown-retry"  # restoring the PF's VFs failed, again on a fresh connection
    LAB_RESTARTED = "lab-restarted"  # the built-in lab stopped answering mid-run and was booted again
    LAB_BOOT_HUNG = "lab-boot-hung"  # the lab's boot stopped (QEMU idle, console still): booted again
    CASE_RERUN = "case-rerun"  # a VF test case errored (no guest result) and ran once more
    HOST_REBOOTED = "host-rebooted"  # the host rebooted under a case (new boot id): module and guest loaded again
    STAGED_CHANGED = "staged-changed"  # the staged module's bytes changed on the host before the load: uploaded again
    TEST_RERUN = "test-rerun"  # (the test suite) a lab test failed under a machine reset or a QEMU death: run once more


_K = Kind
_KINDS: dict[type, dict[Any, Kind]] = {
    FetchStatus: {
        "ok": _K.OK,
        "failed": _K.ERROR,
        "skipped": _K.SKIP,
        "not-run": _K.SKIP,
        "running": _K.SKIP,
        "interrupted": _K.INTERRUPTED,
    },
    PatchStatus: {
        "applied": _K.OK,
        "applied-offset": _K.OK,
        "applied-3way": _K.OK,
        "already-applied": _K.OK,
        "conflict": _K.FAIL,
        "not-attempted": _K.SKIP,
    },
    ApplyStatus: {
        "applied": _K.OK,
        "already-applied": _K.OK,
        "conflict": _K.FAIL,
        "failed": _K.ERROR,
        "skipped": _K.SKIP,
        "not-run": _K.SKIP,
        "interrupted": _K.INTERRUPTED,
    },
    # a build that could not run is a failure in every report, never "skipped" (issue 11)
    BuildStatus: {
        "ok": _K.OK,
        "build-failed": _K.FAIL,
        "failed": _K.FAIL,
        "error": _K.FAIL,
        "skipped": _K.SKIP,
        "not-run": _K.SKIP,
        "interrupted": _K.INTERRUPTED,
    },
    DeployStatus: {
        "ok": _K.OK,
        "failed": _K.ERROR,
        "skipped": _K.SKIP,
        "not-run": _K.SKIP,
        "interrupted": _K.INTERRUPTED,
    },
    Outcome: {"pass": _K.OK, "fail": _K.FAIL, "error": _K.ERROR, "interrupted": _K.INTERRUPTED, "skipped": _K.SKIP},
    RunStatus: {"complete": _K.OK, "incomplete": _K.ERROR, "interrupted": _K.INTERRUPTED},
    Stage: {s: _K.ERROR for s in ("", "fetch", "apply", "build", "deploy", "test")},
}


class EnumField:
    """Dataclass field holding an enum member: assigning the string stores the member, and a string
    that is no member raises at once (ValueError), so a status can never be a free word."""

    def __init__(self, enum_cls: type[enum.Enum], default: enum.Enum):
        self.enum_cls, self.default = enum_cls, default

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_{name}"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self.default  # what dataclass() reads as the field's default
        return getattr(obj, self.attr)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.attr, self.enum_cls(value))
