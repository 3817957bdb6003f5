"""The lab's folder, `settings.path(settings.lab.dir)`, and what is read from it without QEMU:

    id_ed25519[.pub]     the lab's client key pair (root's authorized_keys in dom0)
    host_ed25519.pub     dom0's SSH host key, generated at build time
    known_hosts          `[127.0.0.1]:PORT` entry for that key, rewritten at every up
    dom0.img, boot/      disk image; xen (uncompressed ELF), vmlinuz, initrd.img
    manifest.json        what was built from which inputs (see image.build())
    build.log            every command of the last build and its output
    qemu.pid, qmp.sock, console.log, state.json   the running lab
    qemu.log             QEMU's own warnings and errors (stderr) and its guest-error/NVMe-error traces
    last_port            SSH port of the last boot, taken again when free
    lock                 flock: one lab command (build/up/down) at a time across processes
    debs/                debootstrap's download cache

image.py writes the image files and the manifest, lifecycle.py the files of the running lab.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import LabError
from ..util import Progress, file_lock


@dataclass
class LabPaths:
    dir: Path

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def host_key_pub(self) -> Path:
        return self.dir / "host_ed25519.pub"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def image(self) -> Path:
        return self.dir / "dom0.img"

    @property
    def boot(self) -> Path:
        return self.dir / "boot"

    @property
    def xen(self) -> Path:
        return self.boot / "xen"

    @property
    def vmlinuz(self) -> Path:
        return self.boot / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.boot / "initrd.img"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def build_log(self) -> Path:
        return self.dir / "build.log"

    @property
    def work(self) -> Path:
        return self.dir / "build"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp(self) -> Path:
        """QMP's unix socket: in the lab folder, unless that path is too long for a socket (108 bytes
        with the NUL, seen under gitlab-ci-local's build folders): then in a private folder of this
        user under the runtime dir, named by the lab folder's hash."""
        sock = self.dir / "qmp.sock"
        if len(os.fsencode(sock)) < SOCKET_PATH_MAX:
            return sock
        return _private_runtime_dir() / f"lab-{hashlib.sha256(os.fsencode(self.dir.resolve())).hexdigest()[:16]}.qmp"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def state(self) -> Path:
        return self.dir / "state.json"


SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; some room for QEMU's own suffixes


def _private_runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR (or the temp dir)/pciback-verify-<uid>: made 0700, refused if anyone else owns it
    or can write into it (a socket there is trusted as the lab's)."""
    d = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"pciback-verify-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    st = d.lstat()
    if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise LabError(f"{d} is not a private folder of this user (owner {st.st_uid}, mode {st.st_mode & 0o777:o})")
    return d


def paths(settings: Settings) -> LabPaths:
    return LabPaths(settings.path(settings.lab.dir))


def read_manifest(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(paths(settings).manifest.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def kernel_release(settings: Settings) -> str | None:
    """The dom0 kernel release this lab boots, known without a boot: an extra dom0 kernel's release
    (`dom0_kernel`: the image installs exactly it), else the one the last lab build recorded, or None."""
    if settings.lab.dom0_kernel:
        return settings.lab.dom0_kernel
    m = read_manifest(settings)
    return m.get("dom0_kernel_release") if m else None


def dom0_boot_files(settings: Settings) -> tuple[Path, Path]:
    """The vmlinuz and initrd the lab boots as dom0: the image's own, or an extra dom0 kernel's."""
    p = paths(settings)
    r = settings.lab.dom0_kernel
    return (p.boot / f"vmlinuz-{r}", p.boot / f"initrd.img-{r}") if r else (p.vmlinuz, p.initrd)


def image_kernels_built(settings: Settings) -> bool:
    """Whether the image holds every extra dom0 kernel the inventory asks of it, boot files and all."""
    from ..labsuites import image_kernels

    m = read_manifest(settings) or {}
    have = m.get("dom0_kernels") or {}
    want = set(image_kernels(settings))
    if set(have) != want:
        return False
    p = paths(settings)
    return all((p.boot / f"{n}-{r}").exists() for r in want for n in ("vmlinuz", "initrd.img"))


def is_built(settings: Settings) -> bool:
    p = paths(settings)
    m = read_manifest(settings)
    return bool(m) and all(
        x.exists() for x in (p.image, p.xen, p.vmlinuz, p.initrd, p.host_key_pub, p.key, *dom0_boot_files(settings))
    )


def read_state(p: LabPaths) -> dict[str, Any]:
    try:
        return json.loads(p.state.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def locked(settings: Settings, progress: Progress):
    """One lab command at a time across processes (two test sessions must not both start QEMU)."""
    return file_lock(paths(settings).dir / "lock", lambda: progress("lab: waiting for another lab command to finish"))


def tail(path: Path, n: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # systemd's colours
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total
