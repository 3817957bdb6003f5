"""Typed result objects every stage returns, and their versioned JSON form.

The JSON written from these is the results contract of ../shared/DESIGN.md
(`runs/<id>/results.json`): fields may be added freely; renaming or removing
one requires bumping SCHEMA_VERSION.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ResultsError
from .redact import redact
from .statuses import (
    ApplyStatus,
    BuildStatus,
    DeployStatus,
    EnumField,
    FaultKind,
    FetchStatus,
    Outcome,
    PatchStatus,
    RunStatus,
    Stage,
    UpstreamEvidence,
)

SCHEMA_VERSION = 1


class Refusal(str):
    """A host refused in preflight: the reason (a str, as printed) with its own exit code (72-76, 7)."""

    code: int

    def __new__(cls, reason: str, code: int) -> Refusal:
        obj = super().__new__(cls, reason)
        obj.code = code
        return obj


@dataclass
class PatchInfo:
    """One patch of a series, as parsed (series stage)."""

    subject: str
    author: str = ""
    date: str = ""
    message_id: str = ""
    patch_id: str = ""  # `git patch-id --stable`
    revision: int = 1  # from [PATCH vN m/n]
    index: int = 0  # m of [PATCH m/n], 1-based; 0 when absent
    total: int = 0
    files: list[str] = field(default_factory=list)
    upstream_refs: list[str] = field(default_factory=list)  # "commit X upstream"
    fixes: list[str] = field(default_factory=list)  # Fixes: tags
    source: str = ""  # file the patch came from
    # raw mbox text of the patch; kept out of results.json (see to_dict)
    text: str = field(default="", repr=False, compare=False)


@dataclass
class SeriesInfo:
    name: str
    revision: int = 1
    source: str = ""
    patches: list[PatchInfo] = field(default_factory=list)
    # KCIDB patchset hash (sha256 over the patches' sha256 lines); set by kcidb.patchset_hash
    # while the patch texts are known, so a re-rendered report still has it
    patchset_hash: str = ""


@dataclass
class FetchResult:
    status: FetchStatus = EnumField(FetchStatus, FetchStatus.NOT_RUN)  # type: ignore[assignment]
    remote: str = ""
    ref: str = ""
    commit: str = ""  # the ref resolved to this commit
    worktree: str = ""
    objects_received: int = 0  # from git's own fetch statistics
    sparse: list[str] = field(default_factory=list)  # paths checked out, empty: the whole tree
    checkout_s: float = 0.0  # of duration_s, the worktree checkout
    duration_s: float = 0.0
    detail: str = ""


@dataclass
class AdaptedForm:
    """The patch's change found in a kernel line's own form (evidence control-revert): the line's
    revert of the patch applied cleanly to the tree, so the lines it removes are the tree's."""

    revert: str = ""  # the kernel's control_revert, as configured (project-relative)
    revert_patch_id: str = ""  # `git patch-id --stable` of that revert
    reverts_commit: str = ""  # the commit its message names ("This reverts commit X"), as written there
    lines_verbatim: int = 0  # the patch's significant added lines the revert removes as they are
    series_lines: list[str] = field(default_factory=list)  # the patch's added lines the tree has otherwise
    tree_lines: list[str] = field(default_factory=list)  # the tree's lines in their place (the revert removes)


@dataclass
class PatchApply:
    subject: str
    status: PatchStatus = EnumField(PatchStatus, PatchStatus.NOT_ATTEMPTED)  # type: ignore[assignment]
    detail: str = ""
    files: list[str] = field(default_factory=list)  # conflicting files
    hunks: list[str] = field(default_factory=list)  # conflicting hunk headers
    upstream_commit: str = ""  # for already-applied, when found in history
    commit: str = ""  # commit created in the worktree
    # for already-applied: how it was shown (reverse-apply, history, control-revert, content)
    evidence: UpstreamEvidence = EnumField(UpstreamEvidence, UpstreamEvidence.NONE)  # type: ignore[assignment]
    adapted: AdaptedForm = field(default_factory=AdaptedForm)  # evidence control-revert only


@dataclass
class ApplyResult:
    status: ApplyStatus = EnumField(ApplyStatus, ApplyStatus.NOT_RUN)  # type: ignore[assignment]
    branch: str = ""
    base_commit: str = ""
    head_commit: str = ""
    patches: list[PatchApply] = field(default_factory=list)
    duration_s: float = 0.0
    detail: str = ""


@dataclass
class CheckpatchResult:
    subject: str
    errors: int = 0
    warnings: int = 0
    checks: int = 0
    messages: list[str] = field(default_factory=list)


@dataclass
class SandboxInfo:
    """What a build ran under, recorded in results.json (build.sandbox)."""

    confined: bool = False
    tool: str = ""  # "bwrap 0.8.0"
    namespaces: list[str] = field(default_factory=list)
    uid: int | None = None  # outside uid of the confined programs (None: the caller's)
    limits: dict[str, float] = field(default_factory=dict)
    read_only: list[str] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)
    detail: str = ""  # "unconfined: --no-sandbox" and the like


@dataclass
class BuildResult:
    status: BuildStatus = EnumField(BuildStatus, BuildStatus.NOT_RUN)  # type: ignore[assignment]
    mode: str = ""  # headers | full
    module: str = ""  # path of xen-pciback.ko
    vermagic: str = ""
    srcversion: str = ""
    kernel_release: str = ""  # release the module is built for
    duration_s: float = 0.0
    log: str = ""
    warnings: list[str] = field(default_factory=list)
    new_warnings: list[str] = field(default_factory=list)
    config_warnings: list[str] = field(default_factory=list)  # fragment symbols that did not take
    errors: list[str] = field(default_factory=list)  # first error lines on failure
    checkpatch: list[CheckpatchResult] = field(default_factory=list)
    network_isolated: bool = False
    detail: str = ""
    # module built without the fix: the negative control
    control_module: str = ""
    control_srcversion: str = ""
    control_detail: str = ""  # how the control was made (base commit as is, or with the revert patch), or why not
    prepared_reused: bool = False  # full mode: the configured, prepared tree came from the cache
    reused_from: str = ""  # run id whose build this is (`verify --builds`: CI's test job), "" when built here
    sandbox: SandboxInfo = field(default_factory=SandboxInfo)  # what the series' code ran under
    limit: str = ""  # the sandbox limit that failed the build (sandbox.Limit value), if one did
    steps: dict[str, float] = field(default_factory=dict)  # seconds per build step (see `timed`)


@dataclass
class DeployResult:
    status: DeployStatus = EnumField(DeployStatus, DeployStatus.NOT_RUN)  # type: ignore[assignment]
    host: str = ""
    original: str = ""  # "stock" or srcversion loaded before the run
    srcversion: str = ""  # what /sys/module/xen_pciback/srcversion said after load
    restored: bool = False
    detail: str = ""
    duration_s: float = 0.0
    # seconds per host step: recover, upload, unload, load, check; restore (added when restored)
    steps: dict[str, float] = field(default_factory=dict)


@dataclass
class Toolstack:
    """The host's toolstack as `xl info` (and the package database) reported it, read once per host session."""

    xen_version: str = ""  # hypervisor, `xl info` xen_version (4.17.6-pre)
    xl_version: str = ""  # the xl/libxl build: Debian package version of xen-utils-X.Y, else the hypervisor's X.Y
    dom0_kernel: str = ""  # `xl info` release
    machine: str = ""  # DMI vendor, product, version: "QEMU Standard PC (Q35 + ICH9, 2009) pc-q35-10.0" in the lab
    detail: str = ""  # why a field is empty


@dataclass
class XsCreation:
    """How libxl wrote the PCI backend at domain creation, OBSERVED in xenstored's access log
    (xsobserve.py): the committed transactions that wrote the backend's num_devs, in order."""

    observed: bool = False  # False: the log could not be read (detail says why); never assumed
    source: str = ""  # the log read (oxenstored access log)
    transactions: int = 0  # committed transactions (and plain writes) that wrote num_devs
    num_devs: list[int] = field(default_factory=list)  # the value each of them wrote, in order
    devices_first: int = 0  # dev-N entries the first of them wrote
    detail: str = ""


@dataclass
class TestResult:
    __test__ = False  # not a pytest class

    name: str  # vf-boot-3, vf-hotplug, ...
    host: str
    module: str  # series | control | stock
    expected: int = 0
    seen: int = 0
    seen_bdfs: list[str] = field(default_factory=list)
    # ERROR until the case observed something; results.json also carries `passed` (outcome is pass)
    outcome: Outcome = EnumField(Outcome, Outcome.ERROR)  # type: ignore[assignment]
    reason: str = ""
    teardown_error: str = ""  # the case observed its outcome, then tearing down failed: kept apart
    backend: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    xl_config: str = ""  # the guest's xl config as written to the host (reproduce lines point at a copy)
    toolstack: Toolstack = field(default_factory=Toolstack)  # vf tests: the host's Xen, xl/libxl, dom0 kernel
    xs_creation: XsCreation = field(default_factory=XsCreation)  # vf-boot: libxl's writes at creation
    # seconds per host step: vf_create, assignable, xl_create, marker_wait, backend_read, teardown
    # (vf-hotplug also pci_attach, pci_detach)
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASS


@dataclass
class Reproduce:
    """How to reproduce one failure of a row by hand (reproduce.py): the commands, in order."""

    stage: str  # fetch | apply | build | deploy | test | control | error
    what: str  # the failure, one line
    commands: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # inside the run directory (e.g. the xl config used)


def _legacy_outcome(data: dict[str, Any]) -> Outcome:
    """A test written before `outcome` existed (schema 1 files of earlier versions): from `passed`
    and the reason's prefix those versions wrote. Only here; nothing else reads a reason."""
    if data.get("passed"):
        return Outcome.PASS
    reason = str(data.get("reason", ""))
    for prefix, outcome in (("interrupted", Outcome.INTERRUPTED), ("skipped", Outcome.SKIPPED)):
        if reason.startswith(prefix):
            return outcome
    return Outcome.ERROR if reason.startswith("error") or "; error: " in reason else Outcome.FAIL


@dataclass
class AbsorbedFault:
    """One retry the pipeline used around a lab fault (absorbed.py records them): the run went on and
    its verdict stands, but the fault is on record, so that a lab getting worse shows."""

    what: FaultKind = EnumField(FaultKind, FaultKind.QUERY_KILLED)  # type: ignore[assignment]
    host: str = ""
    step: str = ""  # what was tried again: the command (`xl list`), `ssh handshake`, `vf-boot-3 [series]`
    evidence: str = ""  # how the first try ended: exit status or signal, exception type and first line
    at: str = ""  # when (UTC, seconds)
    kernel: str = ""  # the row and test case running then ("" outside them)
    case: str = ""


@dataclass
class HostVisit:
    """One host stage of a run: the host the rows went to in turn (providers.boot_order), whether
    the pipeline booted it for them, and where the time went: what the matrix benchmark reads for
    lab boots per run (target: one per dom0 kernel)."""

    host: str
    rows: list[str] = field(default_factory=list)
    booted: bool = False  # the pipeline booted it (or waited for the boot it began beside the builds)
    boot_s: float = 0.0  # QEMU start to dom0 answering, when booted (lab_ready_s of that boot)
    wait_s: float = 0.0  # what this host stage waited for the host to answer (0 s: it was running)
    stages_s: float = 0.0  # deploy, tests and restore of its rows


@dataclass
class KernelResult:
    name: str
    ref: str = ""
    remote: str = ""
    verdict: str = "untested"
    verdict_detail: str = ""
    fetch: FetchResult = field(default_factory=FetchResult)
    apply: ApplyResult = field(default_factory=ApplyResult)
    build: BuildResult = field(default_factory=BuildResult)
    deploy: list[DeployResult] = field(default_factory=list)
    tests: list[TestResult] = field(default_factory=list)
    error: str = ""  # the pipeline itself failed for this row
    error_code: int = 0  # exit code of the PipelineError behind `error`, or of a preflight refusal
    failed_stage: Stage = EnumField(Stage, Stage.NONE)  # type: ignore[assignment]
    reproduce: list[Reproduce] = field(default_factory=list)  # one entry per failure, any stage


@dataclass
class RunResult:
    run_id: str
    status: RunStatus = EnumField(RunStatus, RunStatus.INCOMPLETE)  # type: ignore[assignment]
    started: str = ""
    finished: str = ""
    until: str = ""  # last stage requested
    series: SeriesInfo = field(default_factory=lambda: SeriesInfo(name=""))
    kernels: list[KernelResult] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    merged_from: list[str] = field(default_factory=list)  # `report --merge`: the runs this one joins
    faults_absorbed: list[AbsorbedFault] = field(default_factory=list)  # every retry around a lab fault
    host_visits: list[HostVisit] = field(default_factory=list)  # the host stages, in the order they ran
    # seconds of the run's own steps: source_import, rows (fetch/apply/build of all kernels),
    # lab_build, lab_start (QEMU started beside the builds), guest_kernel, prepare_wait (what the
    # host stages waited for those), lab_boot (what they waited for dom0), lab_ready_s (QEMU start
    # to dom0 answering: the boots themselves, summed over the run's boots), host_lock,
    # host_recover, hosts (all host stages)
    steps: dict[str, float] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for patch in data["series"]["patches"]:
            patch.pop("text", None)
        for k in data["kernels"]:
            for t in k["tests"]:
                t["passed"] = t["outcome"] == Outcome.PASS  # the schema-1 field readers know
        # schema first, for humans reading the file
        return {"schema": data.pop("schema"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"results schema {data.get('schema')!r}, expected {SCHEMA_VERSION}")
        return _from_dict(cls, data)


def _from_dict(cls: type, data: Any) -> Any:
    """Rebuild nested dataclasses from their asdict() form; unknown keys are ignored."""
    import typing

    hints = typing.get_type_hints(cls)
    if cls is TestResult and isinstance(data, dict) and "outcome" not in data:
        data = {**data, "outcome": _legacy_outcome(data)}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    import typing

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {tp.__name__}, got {type(value).__name__}")
        return _from_dict(tp, value)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v) for v in value]
    if origin is dict and not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)  # ValueError for a status this version does not know
    # scalars: a wrong type would surface later as a crash in a report (bool is an int in Python)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise TypeError(f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


@contextmanager
def timed(steps: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to steps[name] (also when it raises: a failed step took time too)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        steps[name] = round(steps.get(name, 0.0) + time.monotonic() - t0, 2)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename: readers never see half a file."""

    text = redact(text)  # no artifact ever holds a secret variable's value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(run_dir: Path, run: RunResult) -> Path:
    path = run_dir / "results.json"
    atomic_write_text(path, json.dumps(run.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def load_results(path: Path) -> RunResult:
    """A run's RunResult; anything that is not a whole results.json of this schema is a ResultsError."""

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path.parent}: not a run directory (no results.json)") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a results.json (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: truncated or not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a results.json (a JSON {type(data).__name__}, not an object)")
    if data.get("schema") != SCHEMA_VERSION:
        raise ResultsError(f"{path}: results schema {data.get('schema')!r}, this version reads schema {SCHEMA_VERSION}")
    try:
        return RunResult.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        # a field of the wrong shape (hand-edited or cut): say which file, not where it broke in here
        raise ResultsError(f"{path}: not a valid results.json ({type(e).__name__}: {e})") from None


class RunDir:
    """A run's own directory under the results root; never reused, `latest` points at it."""

    def __init__(self, root: Path, run_id: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        base = run_id or new_run_id()
        run_id = base
        n = 1
        while True:
            try:
                (self.root / run_id).mkdir()
                break
            except FileExistsError:  # never overwrite an earlier run
                n += 1
                run_id = f"{base}.{n}"
        self.run_id = run_id
        self.path = self.root / run_id

    def point_latest(self) -> None:
        link = self.root / "latest"
        tmp = self.root / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.run_id)
        os.replace(tmp, link)
