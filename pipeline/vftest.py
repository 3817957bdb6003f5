"""Test stage: VF visibility in a PV guest (vf-boot-N, vf-hotplug) on a Xen host.

Each test creates VFs on the host's SR-IOV PF, makes them assignable, starts a
PV guest (pipeline.guest: the guest protocol, its xl config and `Guest`) and reads two
things: the guest's own PVLAB_MARKER line from its console log (count and
BDFs it sees) and what pciback published in xenstore under
/local/domain/0/backend/pci/<domid>/0 — read BEFORE teardown, because with
the bug pcifront finds the missing devices late, while the domain dies.
Teardown always runs: domain destroyed, stale backend dirs of dead domains
removed, VFs made non-assignable, sriov_numvfs back to its starting value.
"""

from __future__ import annotations

import time
from typing import Any

from . import absorbed, sriov, xsobserve
from .config import Settings
from .dom0 import assignable_devices
from .errors import HostError
from .guest import MARKER_TIMEOUT_S, XENBUS_INITIALISED, Guest, GuestImage, Marker
from .host import Host
from .interrupt import deferred_sigint
from .results import Outcome, TestResult, timed
from .statuses import FaultKind
from .util import Progress
from .util import noprogress as _noprogress

# restoring sriov_numvfs: writes of the value found are idempotent, so a failed one is tried again
# on a fresh connection (seen on the lab: `tee` failing with "Bad file descriptor" after the test)
TEARDOWN_ATTEMPTS = 3


# ------------------------------------------------------------------ verdict (pure)


def dev_entries(backend: dict[str, Any]) -> int:
    return sum(1 for k in backend if k.startswith("dev-"))


def verdict(expected: int, marker: Marker | None, backend: dict[str, Any]) -> tuple[bool, str]:
    """Pass iff the guest saw `expected` devices and every state-i (i < expected) is 3 (Initialised)."""
    problems = []
    if marker is None:
        problems.append("guest printed no PVLAB_MARKER")
    elif marker.count != expected:
        problems.append(f"guest saw {marker.count} of {expected}")
    bad = []
    for i in range(expected):
        st = backend.get(f"state-{i}")
        if st != XENBUS_INITIALISED:
            bad.append(f"state-{i}={st if st is not None else 'missing'}")
    if bad:
        problems.append(f"backend {' '.join(bad)} (want {XENBUS_INITIALISED})")
    if problems:
        return False, "; ".join(problems)
    return True, f"guest saw {expected} of {expected}; backend state-0..{expected - 1} = {XENBUS_INITIALISED}"


# ------------------------------------------------------------------ host steps


class VfPool:
    """N VFs on the PF, assignable to guests; numvfs, VF drivers and assignability restored on exit.

    VFs are created only when the PF has none; existing ones (free: see `sriov.refusal`) are used
    as they are. After teardown the PF is read again and must be exactly as found.
    """

    def __init__(self, host: Host, n: int, progress: Progress = _noprogress, steps: dict[str, float] | None = None):
        self.host = host
        self.n = n
        self.progress = progress
        self.steps = steps if steps is not None else {}  # vf_create, assignable, teardown (seconds)
        self.pf = sriov.pf_path(host.config.pf_bdf)
        self.start: sriov.PfState | None = None
        self.bdfs: list[str] = []
        self.added: list[str] = []
        self.changed_numvfs = False
        self.changed_autoprobe = False
        self.overrides: dict[str, str] = {}  # VF -> driver_override before we set it ("(null)": none)
        self.teardown_failures: list[str] = []  # every failed teardown attempt, also when a later one worked
        self.teardown_ok = True
        self.teardown_raised = ""  # the HostError message teardown raised, if it did

    def _vf_bdfs(self, count: int) -> list[str]:
        out = []
        for i in range(count):
            target = self.host.out(["readlink", f"{self.pf}/virtfn{i}"])
            out.append(target.rsplit("/", 1)[-1])
        return out

    def _assignable(self) -> list[str]:
        return assignable_devices(self.host)

    def __enter__(self) -> VfPool:
        try:
            self.setup()
        except BaseException:
            with deferred_sigint(self.progress), timed(self.steps, "teardown"):
                self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        with deferred_sigint(self.progress), timed(self.steps, "teardown"):
            self.teardown()

    def setup(self) -> None:
        with timed(self.steps, "vf_create"):
            self._create()
        with timed(self.steps, "assignable"):
            self._make_assignable()

    def _create(self) -> None:
        h = self.host
        if h.read_text("/sys/module/xen_pciback/srcversion") is None:
            raise HostError("xen_pciback is not loaded")
        self.start = start = sriov.read_pf(h, h.config.pf_bdf, wait_driver_s=sriov.DRIVER_WAIT_S)
        why = sriov.refusal(start, h.name)
        if why:
            raise HostError(why)
        if start.numvfs and start.numvfs < self.n:
            raise HostError(
                f"PF {h.config.pf_bdf} has {start.numvfs} VF(s) already, the test needs {self.n}; "
                "existing VFs are never recreated"
            )
        if not start.numvfs:
            # VFs are born unbound (no autoprobe) and go to pciback alone (driver_override):
            # no dom0 driver (nvme) sets a VF up and fails on it before the guest gets it
            if start.autoprobe != "0":
                self.changed_autoprobe = True
                h.write_sysfs(f"{self.pf}/sriov_drivers_autoprobe", "0")
            self.changed_numvfs = True
            self.progress(f"{h.name}: creating {self.n} VF(s) on {h.config.pf_bdf} ({start.driver})")
            h.write_sysfs(f"{self.pf}/sriov_numvfs", str(self.n))
        self.bdfs = self._vf_bdfs(self.n)

    def _make_assignable(self) -> None:
        h = self.host
        held = set(self._assignable())
        for bdf in self.bdfs:
            if bdf in held or sriov.short(bdf) in held:
                continue
            override = f"{sriov.pf_path(bdf)}/driver_override"
            before = (h.read_text(override) or "(null)").strip()
            if before != sriov.PCIBACK_DRIVER:
                self.overrides[bdf] = before  # first: a Ctrl-C right after the write must still undo it
                h.write_sysfs(override, sriov.PCIBACK_DRIVER)  # probing allowed without autoprobe
            self.added.append(bdf)  # first: a Ctrl-C right after the add must still undo it
            h.run(["xl", "pci-assignable-add", bdf], timeout=120)

    def teardown(self) -> None:
        """Undo setup. Every failure is kept in `teardown_failures`; raises when the VFs are not back."""
        h = self.host
        errors = []
        held = self._held_by_a_domain()
        if held:
            # removing a VF a domain still uses leaves its DMA pointed at a device that is gone
            # (pciback: "removing device ... while still in-use"): left as is for recovery
            self.teardown_ok = False
            self.teardown_raised = f"{h.name}: VF teardown: {held}; VFs left in place for the next run's recovery"
            self.teardown_failures.append(self.teardown_raised)
            raise HostError(self.teardown_raised)
        for bdf in reversed(self.added):
            rc, _, err = h.run(["xl", "pci-assignable-remove", bdf], check=False, timeout=120)
            if rc:
                errors.append(f"pci-assignable-remove {bdf}: {err.strip()}")
        self.added = []
        for bdf, before in list(self.overrides.items()):
            try:
                h.write_sysfs(f"{sriov.pf_path(bdf)}/driver_override", "" if before == "(null)" else before)
            except HostError as e:
                errors.append(f"driver_override of {bdf}: {e.message}")
            del self.overrides[bdf]
        self.teardown_failures += errors
        for attempt in range(1, TEARDOWN_ATTEMPTS + 1):
            try:
                self._restore_numvfs()
                break
            except HostError as e:
                self.teardown_failures.append(f"{e.message} (attempt {attempt} of {TEARDOWN_ATTEMPTS})")
                if attempt == TEARDOWN_ATTEMPTS:
                    errors.append(e.message)
                    break
                self.progress(f"{h.name}: VF teardown failed ({e.message}); again on a fresh connection")
                absorbed.record(
                    FaultKind.TEARDOWN_RETRY, h.name, f"VF teardown of {h.config.pf_bdf}", absorbed.of_error(e)
                )
                h.close()
                time.sleep(1)
        if self.start is not None and not errors:
            try:
                now = sriov.read_pf(h, h.config.pf_bdf)
                if now.snapshot() != self.start.snapshot():
                    errors.append(f"PF not as found: was {self.start.snapshot()}, now {now.snapshot()}")
            except HostError as e:
                errors.append(f"PF not read back: {e.message}")
            self.teardown_failures += errors
        self.teardown_ok = not errors
        if errors:
            self.teardown_raised = f"{h.name}: VF teardown: {'; '.join(errors)}"
            raise HostError(self.teardown_raised)

    def _held_by_a_domain(self, wait_s: float = 60.0) -> str:
        """'' when no live domain holds one of our VFs, waiting up to `wait_s` for a dying one."""
        ours = {sriov.long(b) for b in self.bdfs}
        deadline = time.monotonic() + wait_s
        while True:
            try:
                used = {b: d for b, d in sriov.domain_devices(self.host).items() if sriov.long(b) in ours}
            except HostError:
                return ""  # cannot tell: the teardown itself will report what fails
            if not used:
                return ""
            if time.monotonic() >= deadline:
                return "still used by " + ", ".join(f"{d} ({b})" for b, d in sorted(used.items()))
            time.sleep(2)

    def _restore_numvfs(self) -> None:
        h = self.host
        if self.changed_numvfs:
            h.write_sysfs(f"{self.pf}/sriov_numvfs", "0")  # the PF had none: ours go
            self.changed_numvfs = False
        if self.changed_autoprobe and self.start is not None:
            h.write_sysfs(f"{self.pf}/sriov_drivers_autoprobe", self.start.autoprobe)
            self.changed_autoprobe = False

    def teardown_note(self) -> str:
        """What went wrong while tearing down ('' when nothing did), and whether it was put right."""
        if not self.teardown_failures:
            return ""
        end = "VFs restored on a later attempt" if self.teardown_ok else "VFs NOT restored"
        return f"{self.host.name}: VF teardown: {'; '.join(self.teardown_failures)}; {end}"


# ------------------------------------------------------------------ tests


def vf_boot(
    host: Host,
    n: int,
    module_label: str,
    image: GuestImage,
    progress: Progress = _noprogress,
    marker_timeout: float = MARKER_TIMEOUT_S,
) -> TestResult:
    """Guest created with N VFs in pci=[...]; pass iff it sees N and every state-i is 3.
    `marker_timeout` is Guest.wait_devices' stall timeout: how long the guest's console may stay
    still before the wait gives up (CEILING_FACTOR x it at most)."""
    name = f"vf-boot-{n}"
    res = TestResult(name=name, host=host.name, module=module_label, expected=n)
    t0 = time.monotonic()
    pool = VfPool(host, n, progress, res.steps)
    try:
        with pool:
            with Guest(host, f"pvtest-{name}", image, pool.bdfs, n, name, res.steps) as guest:
                progress(f"{host.name}: {name} [{module_label}]: xl create with {', '.join(pool.bdfs)}")
                t_create = time.monotonic()
                res.toolstack = xsobserve.toolstack(host)
                xslog = xsobserve.Cursor(host)  # the access log's end: only this creation's lines are read
                try:
                    domid = guest.create()
                finally:  # also when xl create fails: the failure's reproduce line needs it most
                    res.xl_config = guest.config_text
                marker = guest.wait_devices(n, timeout=marker_timeout)
                res.metrics["marker_s"] = round(time.monotonic() - t_create, 1)
                res.backend = guest.backend()  # before teardown: late devices appear while dying
                res.xs_creation = xslog.creation(domid)
                res.metrics["domid"] = domid
                res.metrics["host_bdfs"] = pool.bdfs
                if marker is not None:
                    res.seen = marker.count
                    res.seen_bdfs = marker.bdfs
                passed, res.reason = verdict(n, marker, res.backend)
                # observed: what happens from here on (guest destroy, VF teardown) cannot change it
                res.outcome = Outcome.PASS if passed else Outcome.FAIL
    except HostError as e:
        _host_fault(res, e.message)
    _teardown_done(res, pool)
    res.duration_s = round(time.monotonic() - t0, 1)
    progress(f"{host.name}: {name} [{module_label}]: {_said(res)}")
    return res


def _observed(res: TestResult) -> bool:
    return res.outcome in (Outcome.PASS, Outcome.FAIL)


def _host_fault(res: TestResult, message: str) -> None:
    """A HostError: before the observation the case is an error; after it, a teardown error on record."""
    if _observed(res):
        res.teardown_error = "; ".join(x for x in (res.teardown_error, message) if x)
    else:
        res.outcome = Outcome.ERROR
        res.reason = (res.reason + "; " if res.reason else "") + f"error: {message}"


def _teardown_done(res: TestResult, pool: VfPool) -> None:
    """Every teardown failure goes on record, also those a later attempt put right (nothing raised):
    after the observation as the case's teardown error, before it as a warning of the errored case."""
    note = pool.teardown_note()
    if not note:
        return
    if _observed(res):
        # the full account replaces the one-line HostError _host_fault put there
        kept = res.teardown_error.replace(pool.teardown_raised, "") if pool.teardown_raised else res.teardown_error
        res.teardown_error = "; ".join(x for x in (kept.strip("; "), note) if x)
    else:
        res.warnings.append(note)


def _said(res: TestResult) -> str:
    torn = f" (teardown error: {res.teardown_error})" if res.teardown_error else ""
    return f"{res.outcome.upper()}: {res.reason}{torn}"


def vf_hotplug(
    host: Host, n: int, cycles: int, module_label: str, image: GuestImage, progress: Progress = _noprogress
) -> TestResult:
    """Guest with 1 VF, the others attached one by one, then `cycles` detach/attach cycles (VF 1, 2, ...).
    Each step waits for its count with Guest.wait_marker's default stall timeout (MARKER_TIMEOUT_S)."""
    name = "vf-hotplug"
    res = TestResult(name=name, host=host.name, module=module_label, expected=n)
    t0 = time.monotonic()
    steps: list[dict[str, Any]] = []
    failures: list[str] = []  # what the guest observed wrongly
    pool = VfPool(host, n, progress, res.steps)
    try:
        with pool:
            vfs = pool.bdfs
            with Guest(host, f"pvtest-{name}", image, vfs[:1], 1, name, res.steps) as guest:
                progress(f"{host.name}: {name} [{module_label}]: xl create with {vfs[0]}")
                res.toolstack = xsobserve.toolstack(host)
                try:
                    guest.create()
                finally:
                    res.xl_config = guest.config_text
                seq = 0

                def step(label: str, want: int) -> None:
                    nonlocal seq
                    m = guest.wait_marker(after_seq=seq, count=want)
                    be = guest.backend()
                    entry = {
                        "step": label,
                        "want": want,
                        "seen": m.count if m else None,
                        "num_devs": be.get("num_devs"),
                        "dev_entries": dev_entries(be),
                    }
                    steps.append(entry)
                    if m is None:
                        latest = guest.markers()
                        got = latest[-1].count if latest else "nothing"
                        failures.append(f"{label}: guest did not report {want} (last report: {got})")
                        if latest:
                            seq = latest[-1].seq
                    else:
                        seq = m.seq
                        res.seen = m.count
                        res.seen_bdfs = m.bdfs
                    progress(f"{host.name}: {name}: {label}: seen {entry['seen']}/{want}, num_devs {entry['num_devs']}")

                step("boot", 1)
                for k, bdf in enumerate(vfs[1:], start=2):
                    with timed(res.steps, "pci_attach"):
                        host.run(["xl", "pci-attach", guest.name, bdf], timeout=180)
                    step(f"attach {bdf}", k)
                for c in range(1, cycles + 1):
                    # cycle the device in slot dev-0: libxl only reuses the last slot, so this is
                    # where leftover dev-N entries (the seed thread's complaint) would pile up
                    vf = vfs[(c - 1) % len(vfs)]
                    with timed(res.steps, "pci_detach"):
                        host.run(["xl", "pci-detach", guest.name, vf], timeout=180)
                    step(f"cycle {c}: detach {vf}", n - 1)
                    with timed(res.steps, "pci_attach"):
                        host.run(["xl", "pci-attach", guest.name, vf], timeout=180)
                    step(f"cycle {c}: attach {vf}", n)
                # every step observed: a fault from here on (backend read, teardown) cannot change it
                res.outcome = Outcome.FAIL if failures else Outcome.PASS
                res.backend = guest.backend()
    except HostError as e:
        if not _observed(res) and failures:
            res.outcome = Outcome.FAIL  # the guest already showed a wrong count before the host failed
            failures.append(f"error: {e.message}")
        else:
            _host_fault(res, e.message)
    _teardown_done(res, pool)
    res.metrics["steps"] = steps
    nd = [s["num_devs"] for s in steps if s["num_devs"] is not None]
    de = [s["dev_entries"] for s in steps]
    res.metrics["num_devs"] = nd
    res.metrics["dev_entries"] = de
    if nd and nd[-1] > n:
        res.warnings.append(
            f"num_devs grew to {nd[-1]} ({de[-1]} dev-N entries) for {n} devices after {cycles} detach/attach "
            "cycle(s): leftover entries accumulate"
        )
    if res.outcome is not Outcome.ERROR:
        res.reason = "; ".join(failures) if failures else f"guest saw the right count after all {len(steps)} steps"
    res.duration_s = round(time.monotonic() - t0, 1)
    progress(f"{host.name}: {name} [{module_label}]: {_said(res)}")
    return res


def boot_counts(host: Host, settings: Settings, module_label: str) -> list[tuple[int, TestResult | None]]:
    """The vf-boot-N cases to run: (N, None), or (N, a skipped result) when the host offers fewer VFs."""
    limit = host.config.max_vfs
    out: list[tuple[int, TestResult | None]] = []
    for n in settings.vf_counts:
        skip = None
        if n > limit:
            why = f"skipped: host {host.name} offers {limit} VFs"
            skip = TestResult(
                name=f"vf-boot-{n}",
                host=host.name,
                module=module_label,
                expected=n,
                outcome=Outcome.SKIPPED,
                reason=why,
            )
        out.append((n, skip))
    return out
