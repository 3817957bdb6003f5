"""The test guest for a host that is not the built-in lab: made by the pipeline, nothing installed by hand.

A PV guest needs a kernel that boots as one, xen-pcifront for it and an /init that speaks the
guest protocol (templates/lab/guest-init.sh.j2). The kernel is the host's own: the dom0 kernel
of the running release, `/boot/vmlinuz-<release>` (its /boot/config must not say it cannot run
as a PV guest). xen-pcifront comes from the host's /lib/modules/<release> (none needed when it
is built in), busybox from this machine's busybox-static. The initramfs is built here with the
same builder as the lab's (`initramfs`), kept in the cache per host release (reused while the
host's xen-pcifront.ko has the same sha256), uploaded into the run's directory on the host
(`guest_dir`) and removed when the run leaves the host. Leftovers of runs that died are removed
by the next run, under the host lock.

With `pv.guest_kernel: tiny` (the default) the kernel is not the host's: it is the small PV kernel
of pipeline/guestkernel.py with xen-pcifront built in, uploaded beside the initramfs, so every
host (the built-in lab too) runs the same guest whatever its dom0 kernel.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings
from .errors import HostError, PipelineError, without_host
from .results import atomic_write_text, timed
from .util import STATE_DIR, Progress, render
from .util import noprogress as _noprogress

if TYPE_CHECKING:  # the runner imports this module; paramiko loads with the first host
    from .guestkernel import GuestKernel
    from .host import Host


RUN_ROOT = STATE_DIR
GUEST_POLL_S = "0.25"  # guest protocol: how often the guest lists its PCI devices (busybox sleep)
GUEST_PREFIX = "guest-"
BUSYBOX = Path("/bin/busybox")


@dataclass
class GuestProvision:
    """What a run put on a host for its guest, and where it came from (goes into the results)."""

    host: str
    release: str
    dir: str  # on the host; removed at the end of the run
    kernel: str  # on the host
    initrd: str  # on the host
    pcifront: str  # the host's module file, or "builtin"
    pcifront_sha256: str
    initrd_sha256: str
    cache: str  # "hit" | "built"
    provisioned: bool = True
    kernel_source: str = "host"  # "host": the host's dom0 kernel; "tiny": pipeline/guestkernel.py's
    kernel_sha256: str = ""  # of the uploaded kernel ("tiny" only)

    def record(self) -> dict:
        return asdict(self)


def guest_dir(run_id: str) -> str:
    return f"{RUN_ROOT}/{GUEST_PREFIX}{run_id}"


# ------------------------------------------------------------------ the initramfs (also the lab's)


def initramfs(pcifront_ko: bytes | None, poll_s: str = GUEST_POLL_S, busybox: Path = BUSYBOX) -> bytes:
    """gzip'd newc cpio: busybox-static, /init (guest protocol), xen-pcifront.ko unless it is built in."""
    if not busybox.exists():
        raise HostError(f"this machine has no {busybox}: install busybox-static (deps/apt.txt)")
    with tempfile.TemporaryDirectory(prefix="pv-guest-") as tmp:
        gdir = Path(tmp)
        (gdir / "bin").mkdir()
        for d in ("proc", "sys", "dev"):
            (gdir / d).mkdir()
        shutil.copy2(busybox, gdir / "bin/busybox")
        if pcifront_ko is not None:
            (gdir / "xen-pcifront.ko").write_bytes(pcifront_ko)
        init = gdir / "init"
        init.write_text(render("lab", "guest-init.sh.j2", poll_s=poll_s), encoding="utf-8")
        init.chmod(0o755)
        for x in [gdir, *gdir.rglob("*")]:
            os.utime(x, (0, 0))  # with gzip's mtime 0: the same inputs give the same bytes
        names = sorted(str(x.relative_to(gdir)) for x in gdir.rglob("*"))
        listing = ("\n".join([".", *names]) + "\n").encode()
        proc = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "--reproducible", "-R", "0:0"],
            input=listing,
            cwd=gdir,
            capture_output=True,
        )
        if proc.returncode != 0:
            raise HostError(f"cpio failed building the guest initramfs: {proc.stderr.decode(errors='replace')[-300:]}")
        return gzip.compress(proc.stdout, compresslevel=6, mtime=0)


def plain_module(name: str, data: bytes) -> bytes:
    """busybox insmod takes uncompressed modules."""
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        raise HostError(f"{name}: zstd-compressed modules are not supported for the guest")
    return data


# ------------------------------------------------------------------ the host side


def _pv_kernel_reason(host: Host, release: str) -> str | None:
    kernel = f"/boot/vmlinuz-{release}"
    if not host.exists(kernel):
        return f"{host.name} has no {kernel}: the test guest boots the host's own kernel"
    config = host.read_text(f"/boot/config-{release}")
    if config is not None and "CONFIG_XEN_PV=y" not in config:
        return f"{kernel} on {host.name} cannot boot as a PV guest (CONFIG_XEN_PV is not set in /boot/config-{release})"
    return None


def pcifront_file(host: Host, release: str) -> str:
    """The host's xen-pcifront module file for `release`, "builtin", or HostError."""
    rc, out, err = host.query(["modinfo", "-k", release, "-F", "filename", "xen-pcifront"], timeout=60)
    name = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
    if name == "(builtin)":
        return "builtin"
    if not name:
        raise HostError(
            f"no xen-pcifront module for {release} in /lib/modules ({err.strip() or f'modinfo exit {rc}'})",
            host=host.name,
        )
    return name


def inspect(host: Host) -> tuple[str, str | None, str | None]:
    """(release, pcifront file or "builtin" or None, why the guest cannot be made or None). Reads only."""
    release = host.out(["uname", "-r"])
    why = _pv_kernel_reason(host, release)
    try:
        pcifront = pcifront_file(host, release)
    except HostError as e:
        return release, None, why or e.message
    return release, pcifront, why


def provision(
    host: Host, settings: Settings, run_id: str, progress: Progress = _noprogress, kernel: GuestKernel | None = None
) -> GuestProvision:
    """Make the guest for this host, upload it into the run's directory there; HostError when it cannot.
    `kernel`: the guest kernel to upload (pipeline.guestkernel); None: the host's own dom0 kernel."""
    if kernel is not None:
        release, pcifront, ko_sha = kernel.release, "builtin", "builtin"
        cache = settings.path(settings.cache_dir) / "guests" / f"tiny-{kernel.key}"
    else:
        release, pcifront, why = inspect(host)
        if why:
            raise HostError(why)
        assert pcifront is not None
        if pcifront == "builtin":
            ko_sha = "builtin"
        else:
            ko_sha = host.out(["sha256sum", pcifront]).split()[0]
        cache = settings.path(settings.cache_dir) / "guests" / release
    meta_path = cache / "guest.json"
    initrd_path = cache / "guest-initrd.gz"
    meta = _read_json(meta_path)
    busybox_sha = hashlib.sha256(BUSYBOX.read_bytes()).hexdigest() if BUSYBOX.exists() else ""
    inputs = {
        "release": release,
        "pcifront_sha256": ko_sha,
        "busybox_sha256": busybox_sha,
        "init_sha256": hashlib.sha256(render("lab", "guest-init.sh.j2", poll_s=GUEST_POLL_S).encode()).hexdigest(),
    }
    hit = meta.get("inputs") == inputs and initrd_path.is_file()
    if hit:
        data = initrd_path.read_bytes()
        hit = hashlib.sha256(data).hexdigest() == meta.get("initrd_sha256")
    if not hit:
        origin = "built in" if pcifront == "builtin" else "from the host"
        progress(f"{host.name}: making the test guest for {release} (xen-pcifront {origin}, local busybox)")
        ko = None
        if pcifront != "builtin":
            with tempfile.TemporaryDirectory(prefix="pv-pcifront-") as tmp:
                local = Path(tmp) / Path(pcifront).name
                host.get(pcifront, local)
                ko = plain_module(local.name, local.read_bytes())
        data = initramfs(ko)
        cache.mkdir(parents=True, exist_ok=True)
        tmp_initrd = initrd_path.with_suffix(".tmp")
        tmp_initrd.write_bytes(data)
        tmp_initrd.replace(initrd_path)
        atomic_write_text(
            meta_path,
            json.dumps({"inputs": inputs, "initrd_sha256": hashlib.sha256(data).hexdigest()}, indent=2) + "\n",
        )
    initrd_sha = hashlib.sha256(data).hexdigest()
    remote_dir = guest_dir(run_id)
    host.mkdir_p(remote_dir)
    remote_initrd = f"{remote_dir}/guest-initrd.gz"
    uploads = [(initrd_path, remote_initrd, initrd_sha)]
    remote_kernel = f"/boot/vmlinuz-{release}"
    if kernel is not None:
        remote_kernel = f"{remote_dir}/vmlinuz"
        uploads.append((kernel.path, remote_kernel, kernel.sha256))
    for local, remote, _ in uploads:
        host.put(local, remote)
    sums = {}  # remote path -> sha256, as sha256sum prints it
    for line in host.out(["sha256sum", "--", *(remote for _, remote, _ in uploads)]).splitlines():
        if len(parts := line.split(maxsplit=1)) == 2:
            sums[parts[1]] = parts[0]
    for _, remote, sha in uploads:
        if sums.get(remote) != sha:
            remove(host, run_id)
            raise HostError(f"the uploaded guest file does not match ({remote})", host=host.name)
    g = GuestProvision(
        host=host.name,
        release=release,
        dir=remote_dir,
        kernel=remote_kernel,
        initrd=remote_initrd,
        pcifront=pcifront,
        pcifront_sha256=ko_sha,
        initrd_sha256=initrd_sha,
        cache="hit" if hit else "built",
        kernel_source="tiny" if kernel is not None else "host",
        kernel_sha256=kernel.sha256 if kernel is not None else "",
    )
    what = f"tiny kernel {release}" if kernel is not None else g.kernel
    progress(f"{host.name}: test guest {what} + {g.initrd} ({'cached' if hit else 'built'})")
    return g


class RunGuests:
    """The test guests of one run: made per host once (after its first preflight passed: a refused
    host gets nothing uploaded), from the one tiny kernel the run gets (`pv.guest_kernel: tiny`)."""

    def __init__(
        self, settings: Settings | None, run_id: str, steps: dict[str, float], progress: Progress = _noprogress
    ):
        self.settings, self.run_id, self.steps, self.progress = settings, run_id, steps, progress
        self.tiny = settings is not None and settings.guest_kernel == "tiny"  # None: a runner test's stand-in
        self.made: dict[str, GuestProvision] = {}
        self._kernel: GuestKernel | PipelineError | None = None

    def kernel(self) -> GuestKernel:
        """Built once per machine (cached); its error is kept, so every host refused for it says why."""
        from . import guestkernel

        if self._kernel is None:
            try:
                with timed(self.steps, "guest_kernel"):
                    self._kernel = guestkernel.ensure(self.settings, self.progress)
            except PipelineError as e:
                self._kernel = e
        if isinstance(self._kernel, PipelineError):
            raise self._kernel
        return self._kernel

    def prepare(self) -> None:
        """Get the kernel before any host is booted or locked: a first build takes minutes."""
        if self.tiny:
            try:
                self.kernel()
            except PipelineError:
                pass  # each host that needs the guest is refused with this error

    def make(self, host: Host) -> GuestProvision:
        g = self.made.get(host.name)
        # the guest lives in the host's /run (tmpfs): a host that rebooted (the lab restarted
        # after QEMU died) has lost it, and is given it again
        if g is not None and g.dir.startswith(RUN_ROOT) and not all(map(host.exists, (g.initrd, g.kernel))):
            self.progress(f"{host.name}: the test guest is gone from {g.dir} (the host restarted?); uploading it again")
            g = None
        if g is None:
            kernel = self.kernel() if self.tiny else None
            g = self.made[host.name] = provision(host, self.settings, self.run_id, self.progress, kernel=kernel)
        return g

    def record(self, host_name: str) -> dict | None:
        g = self.made.get(host_name)
        return g.record() if g else None

    def remove(self, host: Host) -> None:
        """The run's guest files leave the host with the run (a run that died: the next one removes them)."""
        try:
            remove(host, self.run_id)
        except PipelineError as e:
            self.progress(
                f"{host.name}: could not remove the test guest ({without_host(e, host.name)}); the next run does"
            )


def remove(host: Host, run_id: str) -> None:
    """Remove this run's guest directory from the host (idempotent)."""
    host.run(["rm", "-rf", "--", guest_dir(run_id)], timeout=60)
    host.run(["rmdir", "--ignore-fail-on-non-empty", RUN_ROOT], check=False, timeout=30)


def leftovers(host: Host) -> list[str]:
    """Guest directories on the host (of any run)."""
    try:
        return sorted(e for e in host.sftp().listdir(RUN_ROOT) if e.startswith(GUEST_PREFIX))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise HostError(f"cannot list {RUN_ROOT}: {e}", host=host.name) from None


def remove_leftovers(host: Host, progress: Progress = _noprogress) -> list[str]:
    """Guest directories that runs which died left behind; call with the host lock held."""
    gone = leftovers(host)
    for entry in gone:
        progress(f"{host.name}: removing {RUN_ROOT}/{entry} left by an earlier run")
        host.run(["rm", "-rf", "--", f"{RUN_ROOT}/{entry}"], timeout=60)
    return gone


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
