"""Test stage: VF visibility in a PV guest (vf-boot-N, vf-hotplug) on a Xen host.

Each test creates VFs on the host's SR-IOV PF, makes them assignable, starts a
PV guest (xl config rendered from templates/xl-guest.cfg.j2) and reads two
things: the guest's own PVLAB_MARKER line from its console log (count and
BDFs it sees) and what pciback published in xenstore under
/local/domain/0/backend/pci/<domid>/0 — read BEFORE teardown, because with
the bug pcifront finds the missing devices late, while the domain dies.
Teardown always runs: domain destroyed, stale backend dirs of dead domains
removed, VFs made non-assignable, sriov_numvfs back to its starting value.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import sriov, xsobserve
from .config import Settings
from .dom0 import PCIBACK_BE, assignable_devices, destroy_domain, remove_stale_backends
from .errors import HostError
from .host import Host, killed_by_signal
from .interrupt import deferred_sigint
from .results import Outcome, TestResult, timed
from .util import STATE_DIR, templates
from .util import noprogress as _noprogress

Progress = Callable[[str], None]

CONSOLE_DIR = "/var/log/xen/console"
WORK_DIR = STATE_DIR
MARKER_RE = re.compile(r"PVLAB_MARKER seq=(\d+) count=(\d+) bdfs=(\S*)")
BACKEND_KEY_RE = re.compile(r"^(num_devs|state|root_num|(?:state|dev|vdev)-\d+)$")
XENBUS_INITIALISED = 3
XENBUS_CONNECTED = 4
MARKER_TIMEOUT_S = 90.0  # TCG boots are slow; a wait normally ends far sooner (devices_final)
POLL_S = 0.5  # how often the host reads the guest's console (and the backend while devices are missing)
# how long "the rest will not come" must hold before the wait ends: libxl has written every device
# before the domain runs, so a fixed module configures them within moments of num_devs changing
FINAL_HOLD_S = 2.0
# restoring sriov_numvfs: writes of the value found are idempotent, so a failed one is tried again
# on a fresh connection (seen on the lab: `tee` failing with "Bad file descriptor" after the test)
TEARDOWN_ATTEMPTS = 3


# ------------------------------------------------------------------ parsing (pure)


@dataclass
class Marker:
    seq: int
    count: int
    bdfs: list[str]


def parse_markers(console: str) -> list[Marker]:
    """Every PVLAB_MARKER line of a guest console log, in order (timestamps and \\r tolerated)."""
    out = []
    for m in MARKER_RE.finditer(console):
        bdfs = [b for b in m.group(3).split(",") if b]
        out.append(Marker(seq=int(m.group(1)), count=int(m.group(2)), bdfs=bdfs))
    return out


def parse_xenstore_ls(text: str, base: str) -> dict[str, str]:
    """`xenstore-ls -f BASE` output -> {relative key: value} for the entries directly under BASE."""
    base = base.rstrip("/") + "/"
    result: dict[str, str] = {}
    for line in text.splitlines():
        path, sep, value = line.partition(" = ")
        if not sep or not path.startswith(base):
            continue
        key = path[len(base) :]
        if "/" in key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        result[key] = value
    return result


def backend_summary(entries: dict[str, str]) -> dict[str, Any]:
    """The backend keys the results carry; numbers as ints (num_devs, state, state-N)."""
    out: dict[str, Any] = {}
    for key in sorted(entries, key=_natural):
        if not BACKEND_KEY_RE.match(key):
            continue
        val = entries[key]
        if key in ("num_devs", "state", "root_num") or key.startswith("state-"):
            try:
                out[key] = int(val)
                continue
            except ValueError:
                pass
        out[key] = val
    return out


def _natural(key: str) -> tuple:
    name, _, num = key.partition("-")
    return (name, int(num) if num.isdigit() else -1)


def dev_entries(backend: dict[str, Any]) -> int:
    return sum(1 for k in backend if k.startswith("dev-"))


def devices_final(expected: int, marker: Marker | None, backend: dict[str, Any]) -> bool:
    """Will the guest's count change no more? Yes once it sees all `expected`; or, short of that, once
    libxl has written all of them (num_devs), pciback is Connected, and the guest sees exactly the
    devices pciback published (vdev-*): the bug's end state, in which pciback never looks again."""
    if marker is None:
        return False
    if marker.count >= expected:
        return True
    vdevs = sum(1 for k in backend if k.startswith("vdev-"))
    return backend.get("num_devs") == expected and backend.get("state") == XENBUS_CONNECTED and marker.count == vdevs


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


# ------------------------------------------------------------------ guest config


def _xlstr(value: Any) -> str:
    s = str(value)
    if any(c in s for c in "\"\\\n\r'"):
        raise ValueError(f"refusing to put {s!r} into an xl config string")
    return f'"{s}"'


_ENV = templates()  # values go through the xlstr filter
_ENV.filters["xlstr"] = _xlstr


def render_guest_config(
    name: str, kernel: str, ramdisk: str, pci: list[str], expect: int, test: str, memory: int = 256
) -> str:
    return _ENV.get_template("xl-guest.cfg.j2").render(
        name=name, kernel=kernel, ramdisk=ramdisk, pci=pci, expect=expect, test=test, memory=memory
    )


@dataclass
class GuestImage:
    """Guest kernel and initramfs, as paths inside the host's dom0."""

    kernel: str
    ramdisk: str


def default_guest(host: Host, settings: Settings | None) -> GuestImage:
    """The lab's guest files (built into its image). Any other host gets its guest from the run
    (pipeline.provision), passed in as `image`."""
    if host.config.lab and settings is not None:
        from . import lab

        files = lab.guest_files(settings)
        return GuestImage(kernel=files.kernel, ramdisk=files.initrd)
    raise HostError(f"host {host.name}: no test guest: a host other than the lab gets it from provision.provision()")


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
        if start.autoprobe != "1":
            self.changed_autoprobe = True
            h.write_sysfs(f"{self.pf}/sriov_drivers_autoprobe", "1")  # else pciback binding fails (ENODEV)
        if not start.numvfs:
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
            self.added.append(bdf)  # first: a Ctrl-C right after the add must still undo it
            h.run(["xl", "pci-assignable-add", bdf], timeout=120)

    def teardown(self) -> None:
        """Undo setup. Every failure is kept in `teardown_failures`; raises when the VFs are not back."""
        h = self.host
        errors = []
        for bdf in reversed(self.added):
            rc, _, err = h.run(["xl", "pci-assignable-remove", bdf], check=False, timeout=120)
            if rc:
                errors.append(f"pci-assignable-remove {bdf}: {err.strip()}")
        self.added = []
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


class Guest:
    """A PV test guest; destroyed on exit whatever happened."""

    def __init__(
        self,
        host: Host,
        name: str,
        image: GuestImage,
        pci: list[str],
        expect: int,
        test: str,
        steps: dict[str, float] | None = None,
    ):
        self.steps = steps if steps is not None else {}  # xl_create, marker_wait, backend_read, teardown
        self.host = host
        self.name = name
        self.image = image
        self.pci = pci
        self.expect = expect
        self.test = test
        self.domid: int | None = None
        self.console = f"{CONSOLE_DIR}/guest-{name}.log"
        self.cfg = f"{WORK_DIR}/{name}.cfg"
        self.config_text = ""  # what was written to self.cfg

    def create(self) -> int:
        with timed(self.steps, "xl_create"):
            return self._create()

    def _create(self) -> int:
        h = self.host
        destroy_domain(h, self.name)
        remove_stale_backends(h)
        h.mkdir_p(WORK_DIR)
        h.mkdir_p(CONSOLE_DIR)
        self.config_text = render_guest_config(
            self.name, self.image.kernel, self.image.ramdisk, self.pci, self.expect, self.test
        )
        h.write_text(self.cfg, self.config_text)
        create = ["xl", "create", self.cfg]
        for attempt in (1, 2):
            h.run(["rm", "-f", self.console])
            rc, out, err = h.run(create, timeout=180, check=False)
            if rc == 0:
                break
            # libxl's own helper crashing ("died due to fatal signal"), or xl itself killed by a
            # signal (no exit status: rc -1), both seen on the emulated lab under load: not the
            # module under test, so clean up and create once more
            if attempt == 1 and (killed_by_signal(rc) or "died due to fatal signal" in err + out):
                destroy_domain(h, self.name)
                remove_stale_backends(h)
                continue
            raise h.failed(create, rc, out, err)
        self.domid = int(h.out(["xl", "domid", self.name]))
        return self.domid

    def markers(self) -> list[Marker]:
        rc, out, _ = self.host.run(["cat", self.console], check=False, timeout=30)
        return parse_markers(out) if rc == 0 else []

    def wait_marker(
        self, after_seq: int = 0, count: int | None = None, timeout: float = MARKER_TIMEOUT_S
    ) -> Marker | None:
        """First marker with seq > after_seq (and the given count, if any); the last one seen on timeout."""
        with timed(self.steps, "marker_wait"):
            return self._wait_marker(after_seq, count, timeout)

    def _wait_marker(self, after_seq: int, count: int | None, timeout: float) -> Marker | None:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            for m in self.markers():
                if m.seq <= after_seq:
                    continue
                last = m
                if count is None or m.count == count:
                    return m
            if time.monotonic() > deadline:
                return last if count is None else None
            time.sleep(POLL_S)

    def wait_devices(self, expected: int, timeout: float = MARKER_TIMEOUT_S) -> Marker | None:
        """The guest's last marker once its count is final (devices_final, held for FINAL_HOLD_S when
        short of `expected`); the last one seen on timeout."""
        with timed(self.steps, "marker_wait"):
            return self._wait_devices(expected, timeout)

    def _wait_devices(self, expected: int, timeout: float) -> Marker | None:
        deadline = time.monotonic() + timeout
        held: tuple | None = None  # (the marker and backend found final, since when)
        last = None
        while True:
            ms = self.markers()
            last = ms[-1] if ms else last
            if last is not None and last.count >= expected:
                return last
            if last is not None:
                be = self._backend()
                if devices_final(expected, last, be):
                    seen = (last.seq, tuple(sorted(be.items())))
                    if held is None or held[0] != seen:
                        held = (seen, time.monotonic())
                    elif time.monotonic() - held[1] >= FINAL_HOLD_S:
                        return last
                else:
                    held = None
            if time.monotonic() > deadline:
                return last
            time.sleep(POLL_S)

    def backend(self) -> dict[str, Any]:
        with timed(self.steps, "backend_read"):
            return self._backend()

    def _backend(self) -> dict[str, Any]:
        base = f"{PCIBACK_BE}/{self.domid}/0"
        rc, out, _ = self.host.query(["xenstore-ls", "-f", base], timeout=30)
        return backend_summary(parse_xenstore_ls(out, base)) if rc == 0 else {}

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc) -> None:
        with deferred_sigint(), timed(self.steps, "teardown"):
            destroy_domain(self.host, self.name)
            remove_stale_backends(self.host)
            self.host.run(["rm", "-f", self.cfg], check=False)


# ------------------------------------------------------------------ tests


def vf_boot(
    host: Host,
    n: int,
    module_label: str,
    image: GuestImage,
    progress: Progress = _noprogress,
    marker_timeout: float = MARKER_TIMEOUT_S,
) -> TestResult:
    """Guest created with N VFs in pci=[...]; pass iff it sees N and every state-i is 3."""
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
                domid = guest.create()
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
    """Guest with 1 VF, the others attached one by one, then `cycles` detach/attach cycles (VF 1, 2, ...)."""
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
                guest.create()
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
