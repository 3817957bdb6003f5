"""The lab's QEMU process: its command line, whether a pid is our QEMU, stopping it, the SSH port
it forwards and its QMP socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import LabError
from .devices import device
from .emulator import QemuBin
from .layout import LabPaths, dom0_boot_files, paths

# Xen: smap=0 avoids the dom0 #PF crash loop under TCG's -cpu max (lab README, traps).
# spec-ctrl=eager-fpu: TCG's CPU says AMD, so Xen would switch vCPU FPU state lazily (CR0.TS and
# #NM), but TCG's XSAVE/XSAVEOPT/XRSTOR ignore CR0.TS (no #NM): dom0's kernel then saved and
# restored whatever vector registers were loaded, and dom0 processes ran with another's ymm
# state (measured with bench/fpucheck.c: heap crashes, SSH MAC/signature errors, lab README).
XEN_ARGS = (
    "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus={smp} "
    "loglvl=all guest_loglvl=all iommu=1,verbose,debug smap=0 spec-ctrl=eager-fpu"
)
DOM0_ARGS = "root=/dev/vda rw console=hvc0 earlyprintk=xen net.ifnames=0"
# what could reset the machine without a word from Xen, or precede it, in qemu.log: the ICH9 TCO
# watchdog firing, the IOMMU's DMA faults and its warnings (bad invalidation queue tail, bad
# interrupt remapping), a failed invalidation-wait write. Rare events: nothing logged otherwise.
RESET_TRACES = tuple(
    arg
    for event in (
        "tco_timer_expired",
        "watchdog_perform*",
        "vtd_dmar_fault",
        "vtd_warn_*",
        "vtd_inv_desc_wait_write_fail",
    )
    for arg in ("-trace", f"enable={event}")
)
QEMU = "qemu-system-x86_64"


def qemu_argv(settings: Settings, port: int, qemu: QemuBin | None = None) -> list[str]:
    """QEMU's command line for the lab (reference: ../shared/lab/reference/run-xen.sh); `qemu`: the
    build to run (emulator.ensure), else the system's binary found on PATH."""
    p = paths(settings)
    vfs = settings.lab.vfs
    # inside -initrd a comma separates modules: a comma within an argument is written ",,"
    vmlinuz, initrd = dom0_boot_files(settings)  # the image's own dom0 kernel or a host's dom0_kernel
    dom0 = f"{vmlinuz} {DOM0_ARGS}".replace(",", ",,")
    dev = device(settings.lab.device)
    dev.check(vfs, qemu.version if qemu else "")
    return [
        *(qemu.argv() if qemu else [QEMU]),
        "-name", "pciback-verify-lab",
        "-accel", qemu.accel if qemu else "tcg,thread=multi",
        "-cpu", "max",
        "-machine", "q35",
        "-smp", str(settings.lab.smp),
        "-m", settings.lab.memory,
        "-device", "intel-iommu,intremap=on",
        "-display", "none",
        "-serial", f"file:{p.console}",
        # QEMU's complaints about the guest (bad DMA, NVMe protocol errors) in qemu.log; with -D
        # given, -daemonize keeps stderr (the same file, lifecycle.up) for QEMU's own warnings
        "-D", str(p.qemu_log),
        # cpu_reset: the CPU state at every reset, so a reset of the running machine says why
        # (seen: a silent reset at a VT-d map after 93 clean cycles, lab_health on 10.0)
        "-d", "guest_errors,cpu_reset",
        *dev.trace_args(),
        *RESET_TRACES,
        "-qmp", f"unix:{p.qmp},server=on,wait=off",
        "-pidfile", str(p.pidfile),
        "-daemonize",
        "-kernel", str(p.xen),
        "-append", " ".join((XEN_ARGS.format(smp=settings.lab.smp), *(qemu.xen_args if qemu else ()))),
        "-initrd", f"{dom0},{initrd}",
        "-drive", f"file={p.image},if=virtio,format=raw,cache=unsafe",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
        *dev.qemu_args(vfs, "rp1"),
    ]  # fmt: skip


# what a lab is booted as beyond its port, in the order `machine` records it
MACHINE_FIELDS = ("QEMU", "device", "VFs", "memory", "vCPUs", "Xen command line", "dom0 command line", "dom0 kernel")


def _machine_fields(settings: Settings) -> tuple[str, ...]:
    # dom0 kernel: "" for the image's own, else the extra kernel's release (a host's dom0_kernel)
    return (settings.lab.qemu, settings.lab.device, str(settings.lab.vfs), settings.lab.memory, str(settings.lab.smp),
            XEN_ARGS, DOM0_ARGS, settings.lab.dom0_kernel)  # fmt: skip


def machine(settings: Settings) -> str:
    """What a running lab was booted as, beyond its port (its state records it): a lab booted
    otherwise is restarted (`machine_change`)."""
    return " | ".join(_machine_fields(settings))


def machine_change(recorded: str | None, settings: Settings) -> str:
    """What differs between the machine a running lab recorded and the one `settings` ask for, ""
    when nothing does: "QEMU 'system' -> '10.0'", "Xen command line +spec-ctrl=eager-fpu"."""
    want = _machine_fields(settings)
    have = recorded.split(" | ") if recorded else []
    if len(have) == len(want) - 1:  # recorded before the dom0 kernel was: the image's own
        have.append("")
    if len(have) != len(want):
        return "no machine recorded (booted by an older pipeline)" if not recorded else f"machine {recorded!r}"
    out = []
    for name, h, w in zip(MACHINE_FIELDS, have, want, strict=True):
        if h == w:
            continue
        if " " in h or " " in w:  # a command line: the words it lost and gained
            hw, ww = h.split(), w.split()
            out.append(" ".join([name, *(f"-{x}" for x in hw if x not in ww), *(f"+{x}" for x in ww if x not in hw)]))
        else:
            out.append(f"{name} {h!r} -> {w!r}")
    return ", ".join(out)


def our_pid(p: LabPaths) -> int:
    """The pid in our pid file if that process is alive and really is our QEMU (pids get reused)."""
    try:
        pid = int(p.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0
    return pid if is_our_qemu(pid, p) else 0


def is_our_qemu(pid: int, p: LabPaths) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False
    if state in ("Z", "X"):
        # the leader thread is a zombie at once, but its files (port, image lock) are released
        # only when the last of QEMU's threads has exited
        with contextlib.suppress(OSError):
            return len(os.listdir(f"/proc/{pid}/task")) > 1
        return False
    if cmdline == [b""]:
        # an exiting process has dropped its memory (and cmdline) before closing its files:
        # still ours until the port and the image lock are free
        return comm.startswith("qemu-system")
    if not any(QEMU.encode() in a for a in cmdline[:1]):
        return False
    # compare real paths: the same lab reached through a symlinked cache dir is still ours (an
    # unresolved compare called it gone and its pid/state files were removed under a running QEMU)
    ours = os.path.realpath(p.image)
    for arg in cmdline:
        for opt in arg.decode(errors="replace").split(","):
            if opt.startswith("file=") and os.path.realpath(opt[5:]) == ours:
                return True
    return False


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has had so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # after the comm field: state is fields[0], utime and stime are the stat file's fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_gone(pid: int, p: LabPaths, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not is_our_qemu(pid, p):
            return True
        time.sleep(0.5)
    return not is_our_qemu(pid, p)


def kill(pid: int, p: LabPaths) -> None:
    """Terminate our own QEMU (checked by pid file and command line), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if not is_our_qemu(pid, p):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, p, wait):
            return
    raise LabError(f"QEMU pid {pid} does not die")


def last_port(p: LabPaths) -> int:
    try:
        return int((p.dir / "last_port").read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def cleanup_stale(p: LabPaths) -> None:
    for f in (p.pidfile, p.qmp, p.state):
        f.unlink(missing_ok=True)


def free_port(preferred: int = 0) -> int:
    """A TCP port on 127.0.0.1 nobody listens on; the preferred one when it is free."""
    for candidate in ([preferred] if preferred else []) + [0]:
        if not port_in_use(candidate):
            if candidate:
                return candidate
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]
    raise LabError("no free TCP port on 127.0.0.1")


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port. SO_REUSEADDR as QEMU's hostfwd uses it: closed
    connections in TIME_WAIT (after a kill -9) do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def qmp_command(p: LabPaths, command: str, timeout: float = 5) -> dict[str, Any]:
    """One QMP command over the lab's unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(p.qmp))
        f = s.makefile("rwb")
        json.loads(f.readline())  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    break
        return reply
