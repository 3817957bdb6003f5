#!/usr/bin/env python3
"""Lab health: N cycles of create 3 VFs -> guest with 3 VFs -> marker -> destroy -> VFs removed,
per QEMU build, side by side in one run, counting every fault per 100 cycles.

    .venv/bin/python bench/lab_health.py [-n 100] [--qemu system,10.0] [--vfs 3]

Each cycle is the pipeline's own vf-boot case (VfPool + Guest) with the fixed module. Counted:
dom0 process crashes (new `segfault at` / `traps:` / `general protection` lines in dom0's dmesg),
wrong VF counts (the guest saw fewer than N), cycles that ended in an error (SSH, xl, libxl),
QEMU deaths (the lab restarted) and new lines in QEMU's own log (qemu.log: warnings, guest errors,
NVMe error traces), the faults the pipeline's own retries absorbed (pipeline/absorbed.py), and
vector-register state that changed under a dom0 process: two bench/fpucheck.c processes (built
here, static) hold known values in ymm/xmm registers in dom0 for the whole run and count every
register another context's state replaced (how the lab's lazy-FPU corruption was found).
The guest is the one a run makes (pv.guest_kernel). glibc's heap checks are on for every dom0 command of the run
(MALLOC_PERTURB_ and no tcache through /etc/environment, restored afterwards; --debug-malloc adds
malloc.check) so corruption shows early. A reset of the running machine keeps QEMU's account of it
(-d cpu_reset) and the console before it under .cache/lab/resets/. Exit 0 only when every build ran clean.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # labmodules

from labmodules import build_pair  # noqa: E402

from pipeline import absorbed, lab, provision  # noqa: E402
from pipeline.config import project_settings  # noqa: E402
from pipeline.deploy import deploy, preflight, restore  # noqa: E402
from pipeline.dom0 import boot_id  # noqa: E402
from pipeline.errors import HostError, LabError  # noqa: E402
from pipeline.host import Host  # noqa: E402
from pipeline.hostlock import HostLock  # noqa: E402
from pipeline.providers import run_guest  # noqa: E402
from pipeline.statuses import Outcome  # noqa: E402
from pipeline.vftest import vf_boot  # noqa: E402

# a crashed dom0 process (the kernel's line) or glibc's heap checks aborting one (not the journal's "corrupted")
CRASH = re.compile(
    r"segfault at|traps:|general protection|malloc\(\): |free\(\): |double free|corrupted (size|double-linked|top)"
)
ENVIRONMENT = "/etc/environment"
# perturb: freed and new memory filled, so a use after free shows; no tcache: every free goes
# through glibc's own list checks ("double free", "corrupted size")
PERTURB = "MALLOC_PERTURB_=165"
TUNABLES = "glibc.malloc.tcache_count=0"
# malloc.check needs this preloaded (glibc >= 2.34); only with --debug-malloc: with it, xl's forked
# child hung once in futex_wait (a malloc_debug lock held across fork), a hang of the bench's making
DEBUG_MALLOC = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"


def heap_checks(debug_malloc: bool) -> str:
    """The /etc/environment lines of the heap checks."""
    if not debug_malloc:
        return f"{PERTURB}\nGLIBC_TUNABLES={TUNABLES}\n"
    return f"{PERTURB}\nGLIBC_TUNABLES={TUNABLES}:glibc.malloc.check=3\nLD_PRELOAD={DEBUG_MALLOC}\n"


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Tally:
    qemu: str
    version: str = ""
    cycles: int = 0
    passed: int = 0
    wrong_count: int = 0
    errors: int = 0
    dom0_crashes: int = 0
    qemu_deaths: int = 0
    machine_resets: int = 0  # dom0 rebooted while QEMU ran on (a reset of the emulated machine)
    qemu_log_lines: int = 0
    vector_changes: int = 0  # ymm/xmm registers of a dom0 process that another context's state replaced
    seconds: list[float] = dataclasses.field(default_factory=list)
    what: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    faults: list = dataclasses.field(default_factory=list)  # what the pipeline's retries absorbed

    def per100(self, n: int) -> str:
        return f"{100 * n / self.cycles:.0f}" if self.cycles else "-"

    def clean(self) -> bool:
        return (
            self.cycles > 0
            and self.passed == self.cycles
            and not (self.dom0_crashes or self.qemu_deaths or self.machine_resets or self.faults or self.vector_changes)
        )


def _dmesg_crashes(host: Host) -> list[str]:
    rc, out, _ = host.query(["dmesg"], timeout=60)
    return [ln for ln in out.splitlines() if CRASH.search(ln)] if rc == 0 else []


def _boot_id(host: Host) -> str:
    try:
        return boot_id(host)
    except HostError:  # not answering (rebooting): the next cycle tells
        return ""


def _qemu_log_lines(settings) -> int:
    try:
        return len(lab.paths(settings).qemu_log.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return 0


def reset_evidence(settings, log0: int, label: str) -> str:
    """What QEMU logged at a reset of the running machine (`-d cpu_reset`: each vCPU's state as it
    reset; "Triple fault" when a CPU fault caused it) and the console before it, kept under
    .cache/lab/resets/ for the lab's own postmortem. Returns a one-line summary."""
    p = lab.paths(settings)
    try:
        new = p.qemu_log.read_text(errors="replace").splitlines()[log0:]
        console = p.console.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "no qemu.log"
    banners = [i for i, ln in enumerate(console) if ln.startswith(lab.XEN_BANNER)]
    before = console[max(0, banners[-1] - 60) : banners[-1]] if len(banners) > 1 else console[-60:]
    out = p.dir / "resets" / f"{label}.log"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(["# qemu.log since the cycle began", *new, "# console before the reset", *before]) + "\n")
    rips = [ln.split()[0] for ln in new if ln.startswith(("RIP=", "EIP="))]
    triple = any("Triple fault" in ln for ln in new)
    return f"{'triple fault' if triple else 'no triple fault'}, {len(rips)} vCPU state(s), first {rips[0] if rips else '-'}; {out}"


class HeapChecks:
    """glibc heap checks for every command the bench's SSH sessions start (pam_env reads
    /etc/environment at login); the file is put back exactly as found."""

    def __init__(self, host: Host, debug_malloc: bool = False):
        self.host = host
        self.debug_malloc = debug_malloc
        self.text = ""  # the lines installed (the preload only where the library exists)
        self.before: str | None = None
        self.installed = False

    def __enter__(self) -> HeapChecks:
        self.install()
        return self

    def install(self) -> None:
        now = self.host.read_text(ENVIRONMENT)
        if self.installed and self.text in (now or ""):
            self.host.close()  # the disk persisted across a restart: already in place
            return
        self.before, self.installed = now, True
        self.text = heap_checks(self.debug_malloc and self.host.exists(DEBUG_MALLOC))
        self.host.write_text(ENVIRONMENT, (self.before or "") + self.text)
        self.host.close()  # the next command logs in again and gets the environment

    def __exit__(self, *exc) -> None:
        if self.before is None:
            self.host.run(["rm", "-f", ENVIRONMENT], check=False)
        else:
            self.host.write_text(ENVIRONMENT, self.before)


class VectorCheck:
    """Two fpucheck processes in dom0 for the run (one per dom0 vCPU), read after each cycle."""

    SOURCE = Path(__file__).with_name("fpucheck.c")
    DIR = "/run/pciback-verify/fpucheck"

    def __init__(self, host: Host, tmp: Path):
        self.host = host
        self.tmp = tmp
        self.seen = 0

    def _binary(self) -> Path:
        avx2 = self.host.query(["grep", "-qw", "avx2", "/proc/cpuinfo"])[0] == 0
        out = self.tmp / ("fpucheck-avx2" if avx2 else "fpucheck-sse")
        if not out.exists():
            cc = shutil.which("gcc") or "gcc"
            flags = ["-mavx2"] if avx2 else []
            subprocess.run([cc, "-O2", "-static", *flags, "-o", str(out), str(self.SOURCE)], check=True)
        return out

    def start(self) -> None:
        self.host.mkdir_p(self.DIR)
        self.host.put(self._binary(), f"{self.DIR}/fpucheck")
        self.host.run(["chmod", "0755", f"{self.DIR}/fpucheck"])
        for i in (1, 2):
            # detached from the SSH session: it outlives this command, its output in its own file
            self.host.run(
                [
                    "sh",
                    "-c",
                    'setsid "$0" 1000000 > "$1" 2>&1 < /dev/null &',
                    f"{self.DIR}/fpucheck",
                    f"{self.DIR}/{i}.log",
                ]
            )

    def changed(self) -> int:
        """Registers changed since the last call (a restarted dom0 starts again from 0)."""
        rc, out, _ = self.host.query(["sh", "-c", 'cat "$0"/*.log 2>/dev/null | grep -c ^MISMATCH', self.DIR])
        total = int(out.strip() or 0) if rc in (0, 1) else 0
        new, self.seen = max(0, total - self.seen), total
        return new

    def stop(self) -> None:
        self.host.run(["pkill", "-x", "fpucheck"], check=False)
        self.host.run(["rm", "-rf", self.DIR], check=False)


def run_build(settings, name: str, n: int, vfs: int, tmp: Path, debug_malloc: bool = False) -> Tally:
    settings.lab.qemu = name
    hc = lab.ensure_up(settings, say)
    st = lab.status(settings, probe=False)
    t = Tally(name, st.qemu)
    mods = build_pair(settings, tmp, say)
    b = mods["series"]
    started = st.pid
    with (
        absorbed.collect(t.faults),
        Host(hc) as host,
        HostLock(host, f"lab-health-{os.getpid()}", say).acquire(),
    ):
        why = preflight(host, b, vfs)
        if why:
            raise SystemExit(f"preflight refused the module: {why}")
        guests = provision.RunGuests(settings, f"lab-health-{os.getpid()}", {}, say)  # as a run makes it
        image = run_guest(guests, host)
        d = deploy(host, Path(b.module), b.srcversion, say)
        if d.status != "ok":
            raise SystemExit(f"deploy failed: {d.detail}")
        tmp.mkdir(parents=True, exist_ok=True)
        vectors = VectorCheck(host, tmp)
        try:
            with HeapChecks(host, debug_malloc) as checks:
                vectors.start()
                crashes = _dmesg_crashes(host)
                booted = _boot_id(host)
                for i in range(1, n + 1):
                    log0 = _qemu_log_lines(settings)
                    try:
                        r = vf_boot(host, vfs, "series", image, lambda m: None)
                    except (HostError, LabError) as e:
                        t.cycles += 1
                        t.errors += 1
                        t.what[type(e).__name__ + ": " + e.message[:80]] += 1
                        say(f"[{name} {i}/{n}] raised: {e.message[:160]}")
                        r = None
                    else:
                        t.cycles += 1
                        t.seconds.append(r.duration_s)
                        t.passed += r.passed
                        if r.outcome == Outcome.ERROR:
                            t.errors += 1
                            t.what[r.reason[:80]] += 1
                        elif not r.passed:
                            t.wrong_count += 1
                            t.what[f"saw {r.seen} of {vfs}"] += 1
                    pid = lab.status(settings, probe=False).pid
                    rebooted = pid == started and _boot_id(host) not in ("", booted)
                    if pid != started or rebooted:
                        if rebooted:  # QEMU lives on, the machine reset (seen at a VT-d map, no message)
                            t.machine_resets += 1
                            t.what["machine reset (dom0 rebooted, QEMU alive)"] += 1
                            why = reset_evidence(settings, log0, f"{name}-{i}")
                            say(f"[{name} {i}/{n}] dom0 rebooted under a running QEMU ({why}); waiting for it")
                            hc = lab.ensure_up(settings, say)
                        else:
                            t.qemu_deaths += 1
                            t.what["QEMU died"] += 1
                            say(
                                f"[{name} {i}/{n}] QEMU {started} is gone: {lab.console_tail(settings, 3)!r}; restarting"
                            )
                            hc = lab.ensure_up(settings, say)
                            started = lab.status(settings, probe=False).pid
                        host.config = hc
                        host.close()
                        booted = _boot_id(host)
                        # a new dom0: stock module and no heap checks; without these the next
                        # cycles erred on "xen_pciback is not loaded", a bench fault, not the lab's
                        checks.install()
                        vectors.seen = 0
                        vectors.start()
                        d = deploy(host, Path(b.module), b.srcversion, say)
                        if d.status != "ok":
                            raise SystemExit(f"deploy after the restart failed: {d.detail}")
                        # and the guest's files: they live in dom0's /run (tmpfs); without them every
                        # later cycle erred at xl create (seen: 74 cycles after a QEMU 7.2 death)
                        image = run_guest(guests, host)
                        crashes = _dmesg_crashes(host)
                        continue
                    t.qemu_log_lines += max(0, _qemu_log_lines(settings) - log0)
                    now = _dmesg_crashes(host)
                    new = now[len(crashes) :] if now[: len(crashes)] == crashes else now
                    t.dom0_crashes += len(new)
                    for ln in new:
                        t.what["dom0: " + re.sub(r"^\[[^]]*\]\s*", "", ln)[:60]] += 1
                    crashes = now
                    changed = vectors.changed()
                    t.vector_changes += changed
                    outcome = "raised" if r is None else r.outcome
                    why = f" ({r.reason[:120]})" if r is not None and r.outcome == Outcome.ERROR else ""
                    say(
                        f"[{name} {i}/{n}] {outcome}{why} in {r.duration_s if r else 0:.1f}s; new dom0 crash lines {len(new)}, "
                        f"vector registers changed {changed}"
                    )
        finally:
            vectors.stop()
            restore(host, d, say)
            guests.remove(host)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="cycles per QEMU build (default 100)")
    ap.add_argument("--qemu", default="system,10.0", help="builds to compare (pv.lab.qemu values)")
    ap.add_argument("--vfs", type=int, default=3)
    ap.add_argument("--debug-malloc", action="store_true", help="glibc's malloc.check too (preloads libc_malloc_debug)")
    args = ap.parse_args()
    settings = project_settings()
    was = settings.lab.qemu
    was_running = lab.status(settings, probe=False).running
    tallies = []
    try:
        with tempfile.TemporaryDirectory(prefix="lab-health-") as tmp:
            for name in args.qemu.split(","):
                tallies.append(run_build(settings, name.strip(), args.n, args.vfs, Path(tmp) / name, args.debug_malloc))
    finally:
        settings.lab.qemu = was
        if not was_running:
            lab.down(settings, say)
    head = f"{'qemu':<34} {'cycles':>6} {'pass':>5} {'wrong':>5} {'error':>5} {'dom0 crash':>10} {'QEMU died':>9} {'reset':>5} {'qemu.log':>8} {'faults':>6} {'vec regs':>8} {'median s':>8}"
    print(head + "   (counts per 100 cycles)")
    for t in tallies:
        med = sorted(t.seconds)[len(t.seconds) // 2] if t.seconds else 0.0
        print(
            f"{t.version[:34]:<34} {t.cycles:>6} {t.per100(t.passed):>5} {t.per100(t.wrong_count):>5} {t.per100(t.errors):>5} "
            f"{t.per100(t.dom0_crashes):>10} {t.per100(t.qemu_deaths):>9} {t.per100(t.machine_resets):>5} {t.per100(t.qemu_log_lines):>8} {t.per100(len(t.faults)):>6} {t.per100(t.vector_changes):>8} {med:>8.1f}"
        )
        for what, k in t.what.most_common(8):
            print(f"    {k:>3} x {what}")
        if t.faults:
            print(f"    {absorbed.tally(t.faults)}")
    return 0 if all(t.clean() for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
