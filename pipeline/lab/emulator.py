"""The QEMU builds the lab can run, selected by `pv.lab.qemu`.

`system`: the qemu-system-x86 apt installed (7.2 on Debian 12). `10.0`: bookworm-backports'
10.0.x, downloaded with the project-private apt (aptfetch) into `<cache>/qemu-<version>/` and
extracted, never installed: the system keeps its own QEMU, so both can be measured in one run
(bench/lab_health.py). A new build is one more entry in EMULATORS.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from dataclasses import dataclass

from ..aptfetch import AptDir, extract
from ..config import Settings
from ..errors import ConfigError, LabError
from ..results import atomic_write_text
from ..util import Progress

BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class QemuBin:
    """One runnable QEMU: its binary, the firmware directories it needs (-L) and its version line."""

    name: str
    binary: str
    data_dirs: tuple[str, ...] = ()
    version: str = ""  # "10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
    xen_args: tuple[str, ...] = ()  # what Xen needs on this build's machine
    accel: str = "tcg,thread=multi"  # QEMU's -accel: one host thread per vCPU unless a build says otherwise
    extra_args: tuple[str, ...] = ()  # what this build needs on every command line

    def argv(self) -> list[str]:
        out = [self.binary]
        for d in self.data_dirs:
            out += ["-L", d]
        return [*out, *self.extra_args]


def _version(binary: str) -> str:
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"{binary} --version: {e}") from e
    first = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    if proc.returncode or not first.startswith("QEMU emulator version "):
        raise LabError(f"{binary} --version: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-200:]}")
    return first.removeprefix("QEMU emulator version ")


class Emulator:
    name = ""

    def ensure(self, settings: Settings, progress: Progress) -> QemuBin:
        raise NotImplementedError


class SystemQemu(Emulator):
    name = "system"  # the qemu-system-x86 apt installed (7.2 on Debian 12)

    def ensure(self, settings: Settings, progress: Progress) -> QemuBin:
        binary = shutil.which(BINARY)
        if not binary:
            raise LabError(f"{BINARY} not found: install qemu-system-x86 (./pv does)")
        return QemuBin(self.name, binary, (), _version(binary))


@dataclass(frozen=True)
class Pinned:
    package: str
    prefix: str = ""  # newest version starting with this; "" for the newest in the suite


class BackportQemu(Emulator):
    """A QEMU of another suite, downloaded and extracted under the cache."""

    def __init__(self, name: str, dist: str, packages: tuple[Pinned, ...], xen_args=()):
        self.name = name
        self.dist = dist
        self.packages = packages
        self.xen_args = tuple(xen_args)

    def _pick(self, apt, pin: Pinned):
        hits = [p for p in apt.versions(pin.package) if p.version.startswith(pin.prefix)]
        if not hits:
            raise LabError(f"{pin.package} {pin.prefix or ''}*: not in {self.dist} (it left the archive?)")
        return hits[0]

    def ensure(self, settings: Settings, progress: Progress) -> QemuBin:

        apt = AptDir(settings, self.dist)
        apt.ensure_lists(progress=progress)
        pkgs = [self._pick(apt, pin) for pin in self.packages]
        root = settings.path(settings.cache_dir) / f"qemu-{pkgs[0].version.split(':')[-1]}"
        stamp = root / ".extracted"
        want = "".join(f"{p.name} {p.version}\n" for p in pkgs)
        if not (stamp.exists() and stamp.read_text() == want):
            progress(f"lab: fetching QEMU {pkgs[0].version} from {self.dist} into {root}")
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            for p in pkgs:
                extract(apt.download(p.name, p.version, progress), tmp)
            atomic_write_text(tmp / ".extracted", want)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
        binary = root / "usr/bin" / BINARY
        # its own firmware first (the packages' symlinks point at the system's ipxe ROMs,
        # found through QEMU's default firmware path)
        dirs = tuple(str(d) for d in (root / "usr/share/qemu", root / "usr/share/seabios") if d.is_dir())
        # no audio backend: probing one made this build load the system QEMU's modules (another
        # build: "Only modules from the same build can be loaded", five lines in every qemu.log)
        return QemuBin(
            self.name, str(binary), dirs, _version(str(binary)), self.xen_args, extra_args=("-audio", "none")
        )


class Variant(Emulator):
    """Another build run differently, to measure one change against it in the same bench run:
    `-1t` puts all vCPUs in one host thread (`-accel tcg,thread=single`: no cross-thread TLB
    flush or memory-ordering questions between vCPUs); `-dom0-1cpu` gives dom0 one vCPU (no
    TLB shootdown between dom0's own vCPUs, Xen's last `dom0_max_vcpus=` wins); `-noxsave` turns
    Xen's XSAVE off (`xsave=0`: vCPU state switched with FXSAVE, no AVX for dom0's userspace); `-pin` pins dom0's vCPU n to CPU n (`dom0_vcpus_pin`: a dom0
    vCPU's register state never moves between CPUs)."""

    def __init__(self, base: Emulator, suffix: str, accel: str = "", xen_args: tuple[str, ...] = ()):
        self.base = base
        self.name = f"{base.name}-{suffix}"
        self.accel = accel
        self.xen_args = xen_args

    def ensure(self, settings: Settings, progress: Progress) -> QemuBin:
        got = self.base.ensure(settings, progress)
        return dataclasses.replace(
            got, name=self.name, accel=self.accel or got.accel, xen_args=(*got.xen_args, *self.xen_args)
        )


_SYSTEM = SystemQemu()
_BACKPORT_10 = BackportQemu(
    "10.0",
    "bookworm-backports",
    (Pinned("qemu-system-x86", "1:10.0."), Pinned("qemu-system-data", "1:10.0."), Pinned("seabios")),
    # measured: on 10.0's machine Xen 4.17 switches to x2apic_mixed and interrupts get lost
    # ("No irq handler for vector ..", AHCI and NVMe timeouts); in xAPIC mode (7.2's) it boots
    xen_args=("x2apic=false",),
)

_BASES = (_SYSTEM, _BACKPORT_10)
EMULATORS: dict[str, Emulator] = {
    e.name: e
    for e in (
        *_BASES,
        *(Variant(b, "1t", accel="tcg,thread=single") for b in _BASES),
        *(Variant(b, "dom0-1cpu", xen_args=("dom0_max_vcpus=1",)) for b in _BASES),
        *(Variant(b, "noxsave", xen_args=("xsave=0",)) for b in _BASES),
        *(Variant(b, "pin", xen_args=("dom0_vcpus_pin",)) for b in _BASES),
        *(Variant(b, "lazyfpu", xen_args=("spec-ctrl=eager-fpu=0",)) for b in _BASES),
    )
}


def emulator(settings: Settings) -> Emulator:
    try:
        return EMULATORS[settings.lab.qemu]
    except KeyError:
        raise ConfigError(f"pv.lab.qemu {settings.lab.qemu!r}: expected one of {', '.join(EMULATORS)}") from None


def ensure(settings: Settings, progress: Progress) -> QemuBin:
    return emulator(settings).ensure(settings, progress)
