"""Running the lab: up (boot and wait for SSH + `xl info`), down, status, ensure_up (build if
needed, then up), and the inventory host `lab` it stands for."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .. import absorbed
from ..config import HostConfig, Settings
from ..errors import HostError, LabError
from ..host import Host
from ..results import atomic_write_text, now_iso, timed
from ..statuses import FaultKind
from ..util import Progress
from ..util import noprogress as _quiet
from .emulator import ensure as ensure_qemu
from .image import build
from .layout import du, is_built, kernel_release, locked, paths, read_state, tail
from .qemu import (
    cleanup_stale,
    cpu_seconds,
    free_port,
    is_our_qemu,
    kill,
    last_port,
    machine,
    machine_change,
    our_pid,
    qemu_argv,
    qmp_command,
    wait_gone,
)


@dataclass
class LabStatus:
    running: bool
    pid: int = 0
    port: int = 0
    uptime_s: float = 0.0
    kernel_release: str = ""  # from dom0 when it answers, else the manifest's
    ssh_ok: bool = False
    built: bool = False
    detail: str = ""
    qemu: str = ""  # the running QEMU's build and version ("system 7.2.19 (Debian ...)")


def write_known_hosts(settings: Settings, port: int) -> Path:
    p = paths(settings)
    parts = p.host_key_pub.read_text(encoding="utf-8").split()
    atomic_write_text(p.known_hosts, f"[127.0.0.1]:{port} {parts[0]} {parts[1]}\n")
    return p.known_hosts


def host_config(settings: Settings, name: str = "lab") -> HostConfig:
    """The inventory host `lab` filled in from the lab's state (port of the running lab, if any)."""
    p = paths(settings)
    base = settings.hosts.get(name) or HostConfig(name=name, lab=True)
    port = int(read_state(p).get("port") or 0)
    return dataclasses.replace(
        base,
        name=name,
        address="127.0.0.1",
        port=port,
        user="root",
        key=str(p.key),
        known_hosts=str(p.known_hosts),
        ssh_config="none",  # the lab is on 127.0.0.1 whatever ~/.ssh/config says about hosts
        proxy_jump="none",
        pf_bdf=base.pf_bdf or "0000:01:00.0",
        max_vfs=settings.lab.vfs,
        kernel_release=kernel_release(settings) or "",
        lab=True,
    )


def _ready(host: HostConfig) -> str | None:
    """`uname -r` when dom0 answers over SSH and `xl info` works, else None. Polled while dom0
    boots: a refused connection or a broken handshake is the wait, never a fault absorbed."""
    h = Host(host, connect_timeout=5)
    try:
        rc, out, _ = h.probe(["sh", "-c", "xl info >/dev/null && uname -r"], timeout=20)
    except HostError:
        return None
    finally:
        h.close()
    return out.strip() if rc == 0 else None


def _poweroff(host: HostConfig) -> None:
    """Ask dom0 to power off; the connection drops when it does (an error here is expected)."""
    h = Host(host, connect_timeout=5)
    try:
        # --force skips the orderly stop of every unit (a minute under TCG) but still kills
        # processes and unmounts cleanly
        h.run(["sh", "-c", "sync; systemctl poweroff --force"], timeout=20, check=False)
    except HostError:
        pass
    finally:
        h.close()


def up(
    settings: Settings, progress: Progress = _quiet, steps: dict[str, float] | None = None, name: str = "lab"
) -> HostConfig:
    """Boot the lab (or return the running one) and wait until SSH answers and `xl info` works.
    `name`: the inventory host being brought up, what the faults absorbed on the way are recorded
    under ("lab" for a caller without an inventory)."""
    with locked(settings, progress):
        host = _up(settings, progress, steps=steps, name=name)
    assert host is not None
    return host


def _build_unless_running(settings: Settings, progress: Progress, steps: dict[str, float]) -> None:
    """Build the lab if its inputs changed, unless it runs (a running lab is used as it is)."""
    if not our_pid(paths(settings)):
        with timed(steps, "lab_build"):
            build(settings, progress)


def start(
    settings: Settings, progress: Progress = _quiet, steps: dict[str, float] | None = None, name: str = "lab"
) -> None:
    """Build the lab if its inputs changed and start its QEMU if it is not running, without waiting
    for dom0: a run starts its lab's boot beside the source import and the builds, and `ensure_up`
    then waits only for what is left of the boot. `steps` gets lab_build and lab_start; `name` as for up."""
    steps = {} if steps is None else steps
    _build_unless_running(settings, progress, steps)
    with timed(steps, "lab_start"), locked(settings, progress):
        _up(settings, progress, wait=False, name=name)


class BootHung(LabError):
    """The boot stopped: QEMU got almost no CPU for HUNG_S while the console stood still (a halted
    dom0 uses none; a busy machine still gives a booting QEMU its share)."""


HUNG_S = 120.0
HUNG_CPU_S = 1.0


def _up(
    settings: Settings,
    progress: Progress = _quiet,
    wait: bool = True,
    steps: dict[str, float] | None = None,
    name: str = "lab",
) -> HostConfig | None:
    """The running lab's config once dom0 answers; `wait=False`: None as soon as QEMU runs. A boot
    that hung is booted once more (on record as absorbed under the host `name`: seen in CI, dom0
    stopped at 2 s after `xen:balloon: Initialising balloon driver`, QEMU idle, where the boot
    budget waits 20 min)."""
    try:
        return _up_once(settings, progress, wait, steps)
    except BootHung as e:
        absorbed.record(FaultKind.LAB_BOOT_HUNG, name, "lab boot", e.message)
        progress(f"lab: {e.message}; booting again")
        return _up_once(settings, progress, wait, steps)


def _up_once(
    settings: Settings, progress: Progress = _quiet, wait: bool = True, steps: dict[str, float] | None = None
) -> HostConfig | None:
    p = paths(settings)
    if not is_built(settings):
        raise LabError("the lab is not built: run `invoke lab.build`")
    pid = our_pid(p)
    state = read_state(p)
    if pid and state.get("port") and (change := machine_change(state.get("machine"), settings)):
        # e.g. another pv.lab.qemu or pv.lab.device, or a lab booted before Xen's eager-FPU setting
        progress(f"lab: running as another machine ({change}): restarting")
        _down(settings, progress)
        pid, state = 0, read_state(p)
    if pid and state.get("port"):
        host = host_config(settings)
        write_known_hosts(settings, host.port)
        if not wait:
            return None
        if _ready(host):
            progress(f"lab: already running (pid {pid}, port {host.port})")
            return host
        progress(f"lab: QEMU pid {pid} runs but dom0 is not ready yet; waiting")
        since, cpu0 = float(state.get("started_epoch", time.time())), 0.0
        if boot_overdue(cpu_seconds(pid), time.time() - since, settings.lab.boot_timeout_s, settings.lab.smp):
            # past a whole boot's budget: it booted before and one probe missed (a loaded machine);
            # a fresh budget from now, not one already spent, which killed a lab answering a moment later
            since, cpu0 = time.time(), cpu_seconds(pid)
        return _wait_ready(settings, pid, since, progress, cpu0, steps)
    if pid:  # ours but without state: cannot know its port
        kill(pid, p)
    if p.pidfile.exists() or p.qmp.exists() or p.state.exists():
        progress("lab: removing the stale pid file / QMP socket of a QEMU that is gone")
    cleanup_stale(p)

    qemu = ensure_qemu(settings, progress)
    last_err = ""
    for _attempt in range(3):  # the port may be taken between probing and QEMU's bind
        # the previous port when free: known_hosts and HostConfigs held elsewhere stay valid
        port = free_port(int(state.get("port") or last_port(p)))
        write_known_hosts(settings, port)
        for log in (p.console, p.qemu_log):
            if log.exists():
                os.replace(log, log.with_name(log.name + ".1"))
        argv = qemu_argv(settings, port, qemu)
        t0 = time.time()
        progress(f"lab: starting QEMU {qemu.version.split()[0]} (TCG, {settings.lab.memory}, SSH on 127.0.0.1:{port})")
        # stderr appends to qemu.log (which -D also writes): it outlives -daemonize's parent
        with open(p.qemu_log, "ab") as err:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, check=False)
        if proc.returncode == 0:
            pid = our_pid(p)
            if not pid:
                raise LabError(f"QEMU started but left no live pid in {p.pidfile}; console: {tail(p.console, 5)}")
            atomic_write_text(p.dir / "last_port", f"{port}\n")
            atomic_write_text(
                p.state,
                json.dumps(
                    {
                        "pid": pid,
                        "port": port,
                        "started": now_iso(),
                        "started_epoch": t0,
                        "argv": argv,
                        "qemu": qemu.name,
                        "qemu_version": qemu.version,
                        "machine": machine(settings),
                    },
                    indent=1,
                )
                + "\n",
            )
            return _wait_ready(settings, pid, t0, progress, steps=steps) if wait else None
        last_err = tail(p.qemu_log, 1) or f"exit {proc.returncode}"
        cleanup_stale(p)
        if "hostfwd" not in last_err and "Could not set up host forwarding" not in last_err:
            break
    raise LabError(f"QEMU did not start: {last_err}")


# a boot that has had this many times its budget in wall time is given up even if QEMU got little
# CPU (a guest halted for good uses none)
WALL_FACTOR = 4


def boot_overdue(cpu_s: float, wall_s: float, budget_s: float, smp: int) -> str:
    """Why a lab boot is given up, or "": past its budget in QEMU's own CPU time (`budget_s` per
    vCPU), so that a machine busy with other work slows the boot without failing it, or past
    WALL_FACTOR x budget_s of wall time."""
    if cpu_s > budget_s * smp:
        return f"QEMU used {cpu_s:.0f} CPU s ({budget_s:.0f} s x {smp} vCPUs) in {wall_s:.0f} s"
    if wall_s > budget_s * WALL_FACTOR:
        return f"{wall_s:.0f} s passed ({WALL_FACTOR} x {budget_s:.0f} s; QEMU had {cpu_s:.0f} CPU s)"
    return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_ready(
    settings: Settings,
    pid: int,
    t0: float,
    progress: Progress,
    cpu0: float = 0.0,
    steps: dict[str, float] | None = None,
) -> HostConfig:
    """Until dom0 answers, within a boot's budget counted from `t0` and `cpu0` (QEMU's CPU seconds then).
    `steps` gets lab_ready_s: from QEMU's start (t0) to dom0 answering, the boot itself."""
    p = paths(settings)
    host = host_config(settings)
    next_report = time.time() + 10
    still = (time.time(), cpu_seconds(pid), _size(p.console))  # when the boot last moved
    try:
        while not (
            why := boot_overdue(
                cpu_seconds(pid) - cpu0, time.time() - t0, settings.lab.boot_timeout_s, settings.lab.smp
            )
        ):
            if not is_our_qemu(pid, p):
                raise LabError(f"QEMU exited while booting; console: {tail(p.console, 8)}")
            release = _ready(host)
            if release and settings.lab.dom0_kernel and release != settings.lab.dom0_kernel:
                raise LabError(f"dom0 booted {release}, not the dom0 kernel asked for ({settings.lab.dom0_kernel})")
            if release:
                if steps is not None:
                    steps["lab_ready_s"] = round(time.time() - t0, 2)
                progress(
                    f"lab: ready after {time.time() - t0:.0f}s ({cpu_seconds(pid):.0f} CPU s): dom0 {release}, "
                    f"ssh root@127.0.0.1 -p {host.port}"
                )
                return host
            now = (time.time(), cpu_seconds(pid), _size(p.console))
            if now[1] - still[1] >= HUNG_CPU_S or now[2] != still[2]:
                still = now
            elif now[0] - still[0] > HUNG_S:
                raise BootHung(
                    f"dom0's boot stopped: QEMU used {now[1] - still[1]:.1f} CPU s in {now[0] - still[0]:.0f} s, "
                    f"console unchanged at: {tail(p.console, 1)[:100]}"
                )
            if time.time() >= next_report:
                progress(f"lab: booting, {time.time() - t0:.0f}s: {tail(p.console, 1)[:100]}")
                next_report = time.time() + 10
            time.sleep(2)
        raise LabError(f"the lab did not answer SSH + `xl info`: {why}; console: {tail(p.console, 8)}")
    except BaseException:
        # never leave an orphan QEMU behind a failed or interrupted up
        with contextlib.suppress(LabError):
            kill(pid, p)
        cleanup_stale(p)
        raise


def down(settings: Settings, progress: Progress = _quiet, timeout: float = 90) -> bool:
    """Power the lab off (ssh poweroff, then QMP, then signals); False when it was not running."""
    with locked(settings, progress):
        return _down(settings, progress, timeout)


def _down(settings: Settings, progress: Progress = _quiet, timeout: float = 90) -> bool:
    p = paths(settings)
    pid = our_pid(p)
    if not pid:
        cleanup_stale(p)
        progress("lab: not running")
        return False
    host = host_config(settings)
    t0 = time.time()
    progress("lab: powering dom0 off")
    if host.port:
        _poweroff(host)
    if not wait_gone(pid, p, timeout * 2 / 3):
        progress("lab: no clean poweroff; QMP system_powerdown")
        with contextlib.suppress(OSError, ValueError):
            qmp_command(p, "system_powerdown")
        if not wait_gone(pid, p, timeout / 3):
            progress(f"lab: killing QEMU pid {pid}")
            kill(pid, p)
    cleanup_stale(p)
    progress(f"lab: down after {time.time() - t0:.0f}s")
    return True


def status(settings: Settings, probe: bool = True) -> LabStatus:
    p = paths(settings)
    built = is_built(settings)
    pid = our_pid(p)
    release = kernel_release(settings) or ""
    if not pid:
        stale = p.pidfile.exists()
        return LabStatus(
            False, built=built, kernel_release=release, detail="stale pid file (QEMU gone)" if stale else ""
        )
    st = read_state(p)
    uptime = time.time() - float(st.get("started_epoch", time.time()))
    s = LabStatus(True, pid=pid, port=int(st.get("port") or 0), uptime_s=uptime, kernel_release=release, built=built)
    s.qemu = f"{st.get('qemu', 'system')} {st.get('qemu_version', '')}".strip()
    if probe and s.port:
        got = _ready(host_config(settings))
        s.ssh_ok = bool(got)
        s.kernel_release = got or release
        s.detail = "" if got else "not answering SSH + xl info (booting?)"
    return s


def ensure_up(
    settings: Settings, progress: Progress = _quiet, steps: dict[str, float] | None = None, name: str = "lab"
) -> HostConfig:
    """Build the lab if its inputs changed and boot it if it is not running: the host for `invoke verify`.

    `steps` gets the seconds of lab_build and lab_boot (lab_boot: a few when it was running); `name`
    as for up."""
    steps = {} if steps is None else steps
    _build_unless_running(settings, progress, steps)
    with timed(steps, "lab_boot"):  # with `start` before: only what was left of the boot
        return up(settings, progress, steps, name)


XEN_BANNER = "(XEN) Xen version "  # Xen prints it once per boot of the machine on the lab's console


def xen_boots(settings: Settings) -> int:
    """How often the machine has booted on the console of the lab's current QEMU (the console
    starts anew with each QEMU): one more under the same QEMU is a machine reset."""
    try:
        return paths(settings).console.read_bytes().count(XEN_BANNER.encode())
    except FileNotFoundError:
        return 0


def console_tail(settings: Settings, lines: int = 40) -> str:
    try:
        text = paths(settings).console.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def disk_usage(settings: Settings) -> dict[str, int]:
    """Allocated bytes of the lab directory and of the image (it is sparse)."""
    p = paths(settings)
    return {
        "lab_dir": du(p.dir) if p.dir.exists() else 0,
        "image": p.image.stat().st_blocks * 512 if p.image.exists() else 0,
    }
