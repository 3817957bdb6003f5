"""The built-in Xen lab host: Xen 4.17 + a Debian 12 dom0 under QEMU (TCG), reached over SSH.

`build()` makes the dom0 disk image (debootstrap + `mkfs.ext4 -d`, no loop mounts), the boot
files for QEMU's multiboot loader and the test guest's initramfs; it is a no-op while the
recipe and the resolved package versions are unchanged. `up()` boots it with an emulated
Intel IOMMU and an SR-IOV NVMe PF, `down()` powers it off. `host_config()` turns the lab into
the inventory host `lab`. All state lives in `settings.path(settings.lab.dir)`:

    id_ed25519[.pub]     the lab's client key pair (root's authorized_keys in dom0)
    host_ed25519.pub     dom0's SSH host key, generated at build time
    known_hosts          `[127.0.0.1]:PORT` entry for that key, rewritten at every up
    dom0.img, boot/      disk image; xen (uncompressed ELF), vmlinuz, initrd.img
    manifest.json        what was built from which inputs (see build())
    build.log            every command of the last build and its output
    qemu.pid, qmp.sock, console.log, state.json   the running lab
    last_port            SSH port of the last boot, taken again when free
    lock                 flock: one lab command (build/up/down) at a time across processes
    debs/                debootstrap's download cache
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import TEMPLATES, util
from .config import HostConfig, Settings
from .errors import HostError, LabError
from .results import atomic_write_text, now_iso, timed
from .util import noprogress as _quiet

Progress = Callable[[str], None]

# Bump when the build recipe changes in a way the templates and package list do not show.
RECIPE_VERSION = 1
SUITE = "bookworm"
HOSTNAME = "xen-dom0"
GUEST_DIR = "/root/pvlab"  # in dom0: the guest initramfs and xl configs
GUEST_INITRD = f"{GUEST_DIR}/guest-initrd.gz"
IMAGE_SIZE = "3G"
LAB_TEMPLATES = TEMPLATES / "lab"

# debootstrap --include; the kernel comes afterwards from the host's suites (version skew)
DEBOOTSTRAP_PACKAGES = [
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "openssh-server",
    "pciutils",
    "procps",
    "less",
    "busybox",
    "xz-utils",
    "xen-utils-4.17",
    "xenstore-utils",
    "xen-hypervisor-4.17-amd64",
    "initramfs-tools",
    "ca-certificates",
]
KERNEL_PACKAGE = "linux-image-amd64"
# Boot time under TCG is precious: no udev-settle networking, timers, VT gettys or e2scrub.
ENABLED_UNITS = ["systemd-networkd.service"]
MASKED_UNITS = [
    "systemd-networkd-wait-online.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "getty-static.service",
    "getty@tty1.service",
    "systemd-binfmt.service",
]
# Host-side apt candidates that decide what the image contains: part of the input hash.
VERSIONED_PACKAGES = [
    KERNEL_PACKAGE,
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "openssh-server",
    "systemd",
    "busybox-static",  # the guest's busybox comes from the host
]

# Xen: smap=0 avoids the dom0 #PF crash loop under TCG's -cpu max (lab README, traps).
XEN_ARGS = (
    "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus={smp} "
    "loglvl=all guest_loglvl=all iommu=1,verbose,debug smap=0"
)
DOM0_ARGS = "root=/dev/vda rw console=hvc0 earlyprintk=xen net.ifnames=0"
QEMU = "qemu-system-x86_64"


# ------------------------------------------------------------------ paths and records


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
    def state(self) -> Path:
        return self.dir / "state.json"


SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; some room for QEMU's own suffixes


def _private_runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR (or the temp dir)/pciback-verify-<uid>: made 0700, refused if anyone else owns it
    or can write into it (a socket there is trusted as the lab's)."""
    import tempfile

    d = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"pciback-verify-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    st = d.lstat()
    if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise LabError(f"{d} is not a private folder of this user (owner {st.st_uid}, mode {st.st_mode & 0o777:o})")
    return d


def paths(settings: Settings) -> LabPaths:
    return LabPaths(settings.path(settings.lab.dir))


@dataclass
class BuildInfo:
    """What build() did; `rebuilt` is False when the inputs were unchanged."""

    rebuilt: bool
    input_hash: str
    manifest: dict[str, Any]
    duration_s: float = 0.0


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


@dataclass
class GuestFiles:
    """Where the test guest's kernel and initramfs are inside dom0."""

    kernel: str
    initrd: str


@dataclass
class AptEntry:
    uri: str
    suites: list[str]
    components: list[str] = field(default_factory=lambda: ["main"])
    signed_by: str = ""


# ------------------------------------------------------------------ small helpers


def render(template: str, **ctx: Any) -> str:
    return util.render("lab", template, **ctx)


def read_manifest(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(paths(settings).manifest.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def kernel_release(settings: Settings) -> str | None:
    """The dom0 kernel release recorded by the last lab build (no boot needed), or None."""
    m = read_manifest(settings)
    return m.get("dom0_kernel_release") if m else None


def guest_files(settings: Settings) -> GuestFiles:
    m = read_manifest(settings)
    if not m:
        raise LabError("the lab is not built: run `invoke lab.build`")
    return GuestFiles(kernel=m["guest"]["kernel"], initrd=m["guest"]["initrd"])


# ------------------------------------------------------------------ inputs


def parse_apt_sources(files: dict[str, str]) -> list[AptEntry]:
    """Debian `deb` entries of the given apt source files (deb822 `.sources` and one-line `.list`)."""
    entries: list[AptEntry] = []
    for name, text in sorted(files.items()):
        if name.endswith(".sources"):
            for block in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in block.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    entries.append(
                        AptEntry(
                            uri,
                            fields.get("suites", "").split(),
                            fields.get("components", "main").split(),
                            fields.get("signed-by", ""),
                        )
                    )
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                parts = line.split()
                if len(parts) < 3 or parts[0] != "deb":
                    continue
                opts = ""
                if parts[1].startswith("["):
                    end = next(i for i, p in enumerate(parts) if p.endswith("]"))
                    opts, parts = " ".join(parts[1 : end + 1]), [parts[0], *parts[end + 1 :]]
                m = re.search(r"signed-by=(\S+?)\]?(\s|$)", opts)
                entries.append(AptEntry(parts[1], [parts[2]], parts[3:] or ["main"], m.group(1) if m else ""))
    # only Debian's own suites of the release the lab uses
    return [e for e in entries if any(s == SUITE or s.startswith(SUITE + "-") for s in e.suites)]


def host_apt_entries() -> list[AptEntry]:
    files: dict[str, str] = {}
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.is_file() and (p.name.endswith(".list") or p.name.endswith(".sources")):
            files[str(p)] = p.read_text(encoding="utf-8", errors="replace")
    return parse_apt_sources(files)


def resolve_mirror(settings: Settings, entries: list[AptEntry] | None = None) -> str:
    if settings.lab.mirror != "auto":
        return settings.lab.mirror
    for e in entries if entries is not None else host_apt_entries():
        if SUITE in e.suites:
            return e.uri
    raise LabError(f"lab.mirror is auto but the host's apt configuration has no `{SUITE}` suite; set pv.lab.mirror")


def chroot_apt_entries(settings: Settings, entries: list[AptEntry]) -> list[AptEntry]:
    """The dom0's apt sources: the host's bookworm suites; an explicit mirror replaces the main archive."""
    out = []
    for e in entries:
        e = dataclasses.replace(e, suites=[s for s in e.suites if s == SUITE or s.startswith(SUITE + "-")])
        if settings.lab.mirror != "auto" and not any(s.endswith("-security") for s in e.suites):
            e = dataclasses.replace(e, uri=settings.lab.mirror)
        out.append(e)
    return out


def apt_candidates(packages: Sequence[str]) -> dict[str, str]:
    """Host apt's candidate version per package ("" when unknown)."""
    out = subprocess.run(
        ["apt-cache", "policy", *packages],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    ).stdout
    result = {p: "" for p in packages}
    cur = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            cur = line[:-1]
        elif cur and line.strip().startswith("Candidate:"):
            v = line.split(":", 1)[1].strip()
            result[cur] = "" if v == "(none)" else v
    return result


def recipe_files() -> dict[str, str]:
    """Every template of the lab, by relative path, with its content."""
    return {
        str(p.relative_to(LAB_TEMPLATES)): p.read_text(encoding="utf-8")
        for p in sorted(LAB_TEMPLATES.rglob("*"))
        if p.is_file()
    }


def input_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def collect_inputs(settings: Settings, key_pub: str) -> dict[str, Any]:
    entries = host_apt_entries()
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": SUITE,
        "debootstrap_packages": DEBOOTSTRAP_PACKAGES,
        "kernel_package": KERNEL_PACKAGE,
        "units": {"enabled": ENABLED_UNITS, "masked": MASKED_UNITS},
        "templates": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in recipe_files().items()},
        "mirror": resolve_mirror(settings, entries),
        "apt_sources": [dataclasses.asdict(e) for e in chroot_apt_entries(settings, entries)],
        "candidates": apt_candidates(VERSIONED_PACKAGES),
        "image_size": IMAGE_SIZE,
        "authorized_key": key_pub.strip(),
    }


# ------------------------------------------------------------------ build


class _Builder:
    def __init__(self, settings: Settings, progress: Progress):
        self.settings = settings
        self.p = paths(settings)
        self.progress = progress
        self.log = None

    def say(self, msg: str) -> None:
        self.progress(f"lab.build: {msg}")
        if self.log:
            self.log.write(f"== {time.strftime('%H:%M:%S')} {msg}\n")
            self.log.flush()

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        cwd: Path | None = None,
        env: dict | None = None,
        capture: bool = False,
        binary: bool = False,
    ) -> Any:
        assert self.log is not None
        self.log.write(f"$ {shlex.join(argv)}\n")
        self.log.flush()
        full_env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        full_env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + full_env.get("PATH", "")
        proc = subprocess.run(
            list(argv),
            input=input,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE if capture else self.log,
            stderr=self.log,
            check=False,
        )
        if proc.returncode != 0:
            tail = _tail(self.p.build_log, 5)
            raise LabError(
                f"lab build failed: `{shlex.join(argv[:4])}...` exited {proc.returncode}; see {self.p.build_log}: {tail}"
            )
        if not capture:
            return ""
        return proc.stdout if binary else proc.stdout.decode(errors="replace")


def _tail(path: Path, n: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # systemd's colours
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:])


@contextlib.contextmanager
def _mounted(b: _Builder, root: Path) -> Iterator[None]:
    """proc and sysfs in the build chroot for apt's maintainer scripts; always unmounted again."""
    done: list[Path] = []
    try:
        for fstype, sub in (("proc", "proc"), ("sysfs", "sys")):
            target = root / sub
            b.run(["mount", "-t", fstype, fstype, str(target)])
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if subprocess.run(["umount", str(target)], check=False, capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def _ensure_client_key(p: LabPaths) -> str:
    p.dir.mkdir(parents=True, exist_ok=True)
    if not p.key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pciback-verify-lab", "-f", str(p.key)], check=True
        )
    return Path(str(p.key) + ".pub").read_text(encoding="utf-8")


def is_built(settings: Settings) -> bool:
    p = paths(settings)
    m = read_manifest(settings)
    return bool(m) and all(x.exists() for x in (p.image, p.xen, p.vmlinuz, p.initrd, p.host_key_pub, p.key))


def build(settings: Settings, progress: Progress = _quiet, force: bool = False) -> BuildInfo:
    """Build the lab image unless it is up to date with its inputs. Needs root."""
    with _locked(settings, progress):
        return _build_unlocked(settings, progress, force)


def _build_unlocked(settings: Settings, progress: Progress = _quiet, force: bool = False) -> BuildInfo:
    t0 = time.monotonic()
    p = paths(settings)
    key_pub = _ensure_client_key(p)
    inputs = collect_inputs(settings, key_pub)
    h = input_hash(inputs)
    old = read_manifest(settings)
    if not force and old and old.get("input_hash") == h and is_built(settings):
        progress(f"lab.build: up to date ({h[:12]}, built {old.get('built_at')}); nothing to do")
        with open(p.build_log, "a", encoding="utf-8") as log:
            log.write(f"== {now_iso()} up to date: input hash {h}; nothing rebuilt\n")
        return BuildInfo(rebuilt=False, input_hash=h, manifest=old, duration_s=time.monotonic() - t0)
    if status(settings, probe=False).running:
        raise LabError("the lab image must be rebuilt but the lab is running: run `invoke lab.down` first")
    if os.geteuid() != 0:
        raise LabError("lab.build needs root (debootstrap, chroot, mount of proc in the build chroot)")
    missing = [
        t
        for t in ("debootstrap", "mkfs.ext4", "cpio", "ssh-keygen", QEMU)
        if not shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin")
    ]
    if missing:
        raise LabError(f"missing host tools for the lab: {', '.join(missing)} (install deps/apt.txt)")
    if not inputs["candidates"].get(KERNEL_PACKAGE):
        raise LabError(f"host apt knows no candidate for {KERNEL_PACKAGE}: run apt-get update")

    b = _Builder(settings, progress)
    with open(p.build_log, "w", encoding="utf-8") as log:
        b.log = log
        log.write(f"== {now_iso()} lab build, input hash {h}\n{json.dumps(inputs, indent=1, sort_keys=True)}\n")
        manifest = _build(b, inputs, h)
    manifest["duration_s"] = round(time.monotonic() - t0, 1)
    atomic_write_text(p.manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    progress(
        f"lab.build: done in {manifest['duration_s']:.0f}s: dom0 {manifest['dom0_kernel_release']}, Xen {manifest['xen_version']}"
    )
    return BuildInfo(rebuilt=True, input_hash=h, manifest=manifest, duration_s=manifest["duration_s"])


def _build(b: _Builder, inputs: dict[str, Any], h: str) -> dict[str, Any]:
    p = b.p
    work = p.work
    if work.exists():
        b.say("removing the previous build directory")
        _rmtree_unmounted(work)
    root = work / "rootfs"
    out = work / "out"
    (out / "boot").mkdir(parents=True)
    env = util.templates("lab")

    b.say(f"debootstrap {SUITE} minbase from {inputs['mirror']} (about 1-2 min)")
    # downloaded .debs are kept: a rebuild after a recipe change does not fetch them again
    debs = p.dir / "debs"
    debs.mkdir(exist_ok=True)
    b.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs.resolve()}",
            "--include=" + ",".join(DEBOOTSTRAP_PACKAGES),
            SUITE,
            str(root),
            inputs["mirror"],
        ]
    )

    b.say("configuring the dom0 root filesystem")
    entries = [AptEntry(**e) for e in inputs["apt_sources"]]
    for tpl in sorted((LAB_TEMPLATES / "rootfs").rglob("*.j2")):
        rel = str(tpl.relative_to(LAB_TEMPLATES / "rootfs"))[: -len(".j2")]
        text = env.get_template(f"rootfs/{rel}.j2").render(hostname=HOSTNAME, entries=entries)
        append = rel.endswith(".append")
        dest = root / (rel[: -len(".append")] if append else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "a" if append else "w", encoding="utf-8") as fh:
            fh.write(text)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)  # replaced by debian.sources
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(render("policy-rc.d.j2"), encoding="utf-8")
    policy.chmod(0o755)
    # seed apt's lists from the host's (same suites): `apt-get update` then only checks InRelease
    lists = root / "var/lib/apt/lists"
    for f in Path("/var/lib/apt/lists").glob("*_dists_*"):
        if f.is_file():
            shutil.copy2(f, lists / f.name)

    kver = inputs["candidates"][KERNEL_PACKAGE]
    b.say(f"installing {KERNEL_PACKAGE}={kver} and updates from the host's suites in the chroot")
    with _mounted(b, root):
        b.run(["chroot", str(root), "apt-get", "update"])
        b.run(["chroot", str(root), "apt-get", "-y", "--no-install-recommends", "install", f"{KERNEL_PACKAGE}={kver}"])
        b.run(["chroot", str(root), "apt-get", "-y", "--no-install-recommends", "upgrade"])
        b.run(["chroot", str(root), "apt-get", "clean"])
        b.run(["chroot", str(root), "systemctl", "enable", *ENABLED_UNITS])
        b.run(["chroot", str(root), "systemctl", "mask", *MASKED_UNITS])
        pkg_versions = b.run(
            [
                "chroot",
                str(root),
                "dpkg-query",
                "-W",
                "-f",
                "${Package} ${Version}\\n",
                *[x for x in VERSIONED_PACKAGES if x != "busybox-static"],
                "busybox",
            ],
            capture=True,
        )
    policy.unlink()
    installed = dict(line.split(" ", 1) for line in pkg_versions.splitlines() if " " in line)

    releases = sorted(d.name for d in (root / "lib/modules").iterdir() if d.is_dir())
    if len(releases) != 1:
        raise LabError(f"expected one kernel in the dom0 image, found {releases}")
    release = releases[0]
    host_uname = os.uname().release
    if not Path(f"/usr/src/linux-headers-{release}").is_dir():
        b.say(f"note: the host has no /usr/src/linux-headers-{release} (modules for the lab need them)")

    b.say("SSH: root's authorized key and a fresh ed25519 host key")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(inputs["authorized_key"] + "\n", encoding="utf-8")
    (ssh_dir / "authorized_keys").chmod(0o600)
    for old_key in glob.glob(str(root / "etc/ssh/ssh_host_*")):
        os.unlink(old_key)
    hk = root / "etc/ssh/ssh_host_ed25519_key"
    b.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{HOSTNAME}", "-f", str(hk)])
    shutil.copy2(str(hk) + ".pub", out / "host_ed25519.pub")

    b.say("boot files: uncompressed Xen ELF for multiboot, dom0 vmlinuz and initrd")
    xens = sorted((root / "boot").glob("xen-4.17*.gz"))
    if not xens:
        raise LabError("no /boot/xen-4.17*.gz in the dom0 image")
    with gzip.open(xens[-1], "rb") as src, open(out / "boot/xen", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy2(root / f"boot/vmlinuz-{release}", out / "boot/vmlinuz")
    shutil.copy2(root / f"boot/initrd.img-{release}", out / "boot/initrd.img")

    b.say("test guest initramfs: busybox-static + xen-pcifront.ko")
    guest_initrd = _guest_initramfs(b, root, release, work / "guest")
    gdir = root / GUEST_DIR.lstrip("/")
    gdir.mkdir(parents=True, exist_ok=True)
    (gdir / "guest-initrd.gz").write_bytes(guest_initrd)
    (root / "var/log/xen/console").mkdir(parents=True, exist_ok=True)

    b.say(f"disk image: mkfs.ext4 -d ({IMAGE_SIZE} sparse)")
    b.run(["mkfs.ext4", "-q", "-F", "-L", "dom0root", "-d", str(root), str(out / "dom0.img"), IMAGE_SIZE])
    rootfs_bytes = _du(root)

    # move the finished outputs in place, then drop the rootfs (it lives on in the image)
    p.boot.mkdir(parents=True, exist_ok=True)
    for name in ("xen", "vmlinuz", "initrd.img"):
        os.replace(out / "boot" / name, p.boot / name)
    os.replace(out / "host_ed25519.pub", p.host_key_pub)
    os.replace(out / "dom0.img", p.image)
    b.say("removing the build directory")
    _rmtree_unmounted(work)

    xen_pkg = installed.get("xen-hypervisor-4.17-amd64", "")
    return {
        "schema": 1,
        "input_hash": h,
        "inputs": inputs,
        "built_at": now_iso(),
        "dom0_kernel_release": release,
        "kernel_package_version": installed.get(KERNEL_PACKAGE, ""),
        "xen_version": xen_pkg.split("+")[0].split("-")[0] if xen_pkg else "",
        "xen_package_version": xen_pkg,
        "packages": installed,
        "host_kernel_release": host_uname,
        "headers_on_host": Path(f"/usr/src/linux-headers-{release}").is_dir(),
        "image": str(p.image),
        "image_size": IMAGE_SIZE,
        "image_allocated_bytes": p.image.stat().st_blocks * 512,
        "rootfs_bytes": rootfs_bytes,
        "boot": {"xen": str(p.xen), "vmlinuz": str(p.vmlinuz), "initrd": str(p.initrd)},
        "guest": {"kernel": f"/boot/vmlinuz-{release}", "initrd": GUEST_INITRD},
        "ssh": {"key": str(p.key), "host_key_pub": str(p.host_key_pub), "user": "root"},
        "build_log": str(p.build_log),
    }


def _guest_initramfs(b: _Builder, root: Path, release: str, gdir: Path) -> bytes:
    """The guest initramfs with the dom0 image's xen-pcifront (the builder other hosts use too)."""
    from . import provision

    mods = list((root / f"lib/modules/{release}").rglob("xen-pcifront.ko*"))
    if not mods:
        raise LabError(f"no xen-pcifront.ko in the dom0 kernel {release}")
    try:
        return provision.initramfs(provision.plain_module(mods[0].name, mods[0].read_bytes()))
    except HostError as e:
        raise LabError(e.message) from None


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def _rmtree_unmounted(path: Path) -> None:
    """Remove a build directory, refusing if anything is still mounted below it."""
    mounts = Path("/proc/mounts").read_text().split("\n")
    prefix = str(path.resolve()) + "/"
    busy = [m.split()[1] for m in mounts if m and (m.split()[1] + "/").startswith(prefix)]
    for m in sorted(busy, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    # rm is much faster than shutil.rmtree on a 40k-file rootfs
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


# ------------------------------------------------------------------ running QEMU


@contextlib.contextmanager
def _locked(settings: Settings, progress: Progress) -> Iterator[None]:
    """One lab command at a time across processes (two test sessions must not both start QEMU)."""
    d = paths(settings).dir
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("lab: waiting for another lab command to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # released when the file is closed


def qemu_argv(settings: Settings, port: int) -> list[str]:
    """QEMU's command line for the lab (reference: ../shared/lab/reference/run-xen.sh)."""
    p = paths(settings)
    vfs = settings.lab.vfs
    # inside -initrd a comma separates modules: a comma within an argument is written ",,"
    dom0 = f"{p.vmlinuz} {DOM0_ARGS}".replace(",", ",,")
    nvme = (
        f"nvme,id=nvme0,bus=rp1,serial=pvlab01,subsys=nvmesubsys0,sriov_max_vfs={vfs},"
        # QEMU's constraints: vq >= 2*VFs, ioqpairs >= vq+2, vi >= VFs, msix >= vi+2
        f"sriov_vq_flexible={2 * vfs},sriov_vi_flexible={vfs},max_ioqpairs={2 * vfs + 4},msix_qsize={vfs + 5}"
    )
    return [
        QEMU,
        "-name", "pciback-verify-lab",
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-machine", "q35",
        "-smp", str(settings.lab.smp),
        "-m", settings.lab.memory,
        "-device", "intel-iommu,intremap=on",
        "-display", "none",
        "-serial", f"file:{p.console}",
        "-qmp", f"unix:{p.qmp},server=on,wait=off",
        "-pidfile", str(p.pidfile),
        "-daemonize",
        "-kernel", str(p.xen),
        "-append", XEN_ARGS.format(smp=settings.lab.smp),
        "-initrd", f"{dom0},{p.initrd}",
        "-drive", f"file={p.image},if=virtio,format=raw,cache=unsafe",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
        "-device", "nvme-subsys,id=nvmesubsys0,nqn=pvlab",
        "-device", nvme,
    ]  # fmt: skip


def ssh_argv(host: HostConfig, *, tty: bool = False) -> list[str]:
    """ssh options for a host: its key, strict checking against its known_hosts only."""
    argv = ["ssh", "-F", "none", "-p", str(host.port)]
    if host.key:
        argv += ["-i", host.key, "-o", "IdentitiesOnly=yes"]
    if host.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    argv += [
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=INFO",  # ERROR hides why a connection died ("incorrect signature" is logged at INFO)
        "-o",
        "ServerAliveInterval=15",
    ]
    argv += ["-t"] if tty else ["-o", "BatchMode=yes", "-T"]
    return [*argv, f"{host.user}@{host.address}"]


SSH_HANDSHAKE_TRIES = 3
# what OpenSSH says when the key exchange failed, before any command could run
_HANDSHAKE_FAILED = re.compile(r"incorrect signature|kex_exchange_identification|banner exchange")


def run_ssh(
    host: HostConfig,
    command: str | Sequence[str],
    *,
    timeout: float = 120,
    check: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a command in the host's shell; a list is quoted word by word."""
    cmd = command if isinstance(command, str) else shlex.join(command)
    for attempt in range(1, SSH_HANDSHAKE_TRIES + 1):
        try:
            proc = subprocess.run(
                [*ssh_argv(host), cmd], capture_output=True, text=True, timeout=timeout, input=input, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise LabError(f"ssh {host.name}: `{cmd}` timed out after {timeout:.0f}s") from e
        # a handshake damaged in transit (seen in the lab under load): the command never started
        if proc.returncode != 255 or not _HANDSHAKE_FAILED.search(proc.stderr) or attempt == SSH_HANDSHAKE_TRIES:
            break
        time.sleep(attempt)
    if check and proc.returncode != 0:
        out = " | ".join(x for x in (proc.stdout.strip(), proc.stderr.strip()) if x).replace("\n", " | ")
        raise LabError(f"ssh {host.name}: `{cmd}` exited {proc.returncode}: {out[-600:]}")
    return proc


def _read_state(p: LabPaths) -> dict[str, Any]:
    try:
        return json.loads(p.state.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _our_pid(p: LabPaths) -> int:
    """The pid in our pid file if that process is alive and really is our QEMU (pids get reused)."""
    try:
        pid = int(p.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0
    return pid if _is_our_qemu(pid, p) else 0


def _is_our_qemu(pid: int, p: LabPaths) -> bool:
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


def _wait_gone(pid: int, p: LabPaths, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _is_our_qemu(pid, p):
            return True
        time.sleep(0.5)
    return not _is_our_qemu(pid, p)


def _kill(pid: int, p: LabPaths) -> None:
    """Terminate our own QEMU (checked by pid file and command line), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if not _is_our_qemu(pid, p):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, p, wait):
            return
    raise LabError(f"QEMU pid {pid} does not die")


def _last_port(p: LabPaths) -> int:
    try:
        return int((p.dir / "last_port").read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def _cleanup_stale(p: LabPaths) -> None:
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


def write_known_hosts(settings: Settings, port: int) -> Path:
    p = paths(settings)
    parts = p.host_key_pub.read_text(encoding="utf-8").split()
    atomic_write_text(p.known_hosts, f"[127.0.0.1]:{port} {parts[0]} {parts[1]}\n")
    return p.known_hosts


def host_config(settings: Settings, name: str = "lab") -> HostConfig:
    """The inventory host `lab` filled in from the lab's state (port of the running lab, if any)."""
    p = paths(settings)
    base = settings.hosts.get(name) or HostConfig(name=name, lab=True)
    port = int(_read_state(p).get("port") or 0)
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


def _ready(host: HostConfig) -> str | None:
    """`uname -r` when dom0 answers over SSH and `xl info` works, else None."""
    try:
        r = run_ssh(host, "xl info >/dev/null && uname -r", timeout=20)
    except LabError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def up(settings: Settings, progress: Progress = _quiet) -> HostConfig:
    """Boot the lab (or return the running one) and wait until SSH answers and `xl info` works."""
    with _locked(settings, progress):
        return _up(settings, progress)


def _up(settings: Settings, progress: Progress = _quiet) -> HostConfig:
    p = paths(settings)
    if not is_built(settings):
        raise LabError("the lab is not built: run `invoke lab.build`")
    pid = _our_pid(p)
    state = _read_state(p)
    if pid and state.get("port"):
        host = host_config(settings)
        write_known_hosts(settings, host.port)
        if _ready(host):
            progress(f"lab: already running (pid {pid}, port {host.port})")
            return host
        progress(f"lab: QEMU pid {pid} runs but dom0 is not ready yet; waiting")
        return _wait_ready(settings, pid, float(state.get("started_epoch", time.time())), progress)
    if pid:  # ours but without state: cannot know its port
        _kill(pid, p)
    if p.pidfile.exists() or p.qmp.exists() or p.state.exists():
        progress("lab: removing the stale pid file / QMP socket of a QEMU that is gone")
    _cleanup_stale(p)

    last_err = ""
    for _attempt in range(3):  # the port may be taken between probing and QEMU's bind
        # the previous port when free: known_hosts and HostConfigs held elsewhere stay valid
        port = free_port(int(state.get("port") or _last_port(p)))
        write_known_hosts(settings, port)
        if p.console.exists():
            os.replace(p.console, p.dir / "console.log.1")
        argv = qemu_argv(settings, port)
        t0 = time.time()
        progress(f"lab: starting QEMU (TCG, {settings.lab.memory}, SSH on 127.0.0.1:{port})")
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            pid = _our_pid(p)
            if not pid:
                raise LabError(f"QEMU started but left no live pid in {p.pidfile}; console: {_tail(p.console, 5)}")
            atomic_write_text(p.dir / "last_port", f"{port}\n")
            atomic_write_text(
                p.state,
                json.dumps(
                    {"pid": pid, "port": port, "started": now_iso(), "started_epoch": t0, "argv": argv}, indent=1
                )
                + "\n",
            )
            return _wait_ready(settings, pid, t0, progress)
        last_err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        _cleanup_stale(p)
        if "hostfwd" not in last_err and "Could not set up host forwarding" not in last_err:
            break
    raise LabError(f"QEMU did not start: {last_err}")


def _wait_ready(settings: Settings, pid: int, t0: float, progress: Progress) -> HostConfig:
    p = paths(settings)
    host = host_config(settings)
    deadline = t0 + settings.lab.boot_timeout_s
    next_report = time.time() + 10
    try:
        while time.time() < deadline:
            if not _is_our_qemu(pid, p):
                raise LabError(f"QEMU exited while booting; console: {_tail(p.console, 8)}")
            release = _ready(host)
            if release:
                progress(f"lab: ready after {time.time() - t0:.0f}s: dom0 {release}, ssh root@127.0.0.1 -p {host.port}")
                return host
            if time.time() >= next_report:
                progress(f"lab: booting, {time.time() - t0:.0f}s: {_tail(p.console, 1)[:100]}")
                next_report = time.time() + 10
            time.sleep(2)
        raise LabError(
            f"the lab did not answer SSH + `xl info` within {settings.lab.boot_timeout_s}s; console: {_tail(p.console, 8)}"
        )
    except BaseException:
        # never leave an orphan QEMU behind a failed or interrupted up
        with contextlib.suppress(LabError):
            _kill(pid, p)
        _cleanup_stale(p)
        raise


def down(settings: Settings, progress: Progress = _quiet, timeout: float = 90) -> bool:
    """Power the lab off (ssh poweroff, then QMP, then signals); False when it was not running."""
    with _locked(settings, progress):
        return _down(settings, progress, timeout)


def _down(settings: Settings, progress: Progress = _quiet, timeout: float = 90) -> bool:
    p = paths(settings)
    pid = _our_pid(p)
    if not pid:
        _cleanup_stale(p)
        progress("lab: not running")
        return False
    host = host_config(settings)
    t0 = time.time()
    progress("lab: powering dom0 off")
    if host.port:
        with contextlib.suppress(LabError):
            # --force skips the orderly stop of every unit (a minute under TCG) but still kills
            # processes and unmounts cleanly; the ssh connection drops when that happens
            run_ssh(host, "sync; systemctl poweroff --force", timeout=20)
    if not _wait_gone(pid, p, timeout * 2 / 3):
        progress("lab: no clean poweroff; QMP system_powerdown")
        with contextlib.suppress(OSError, ValueError):
            qmp_command(p, "system_powerdown")
        if not _wait_gone(pid, p, timeout / 3):
            progress(f"lab: killing QEMU pid {pid}")
            _kill(pid, p)
    _cleanup_stale(p)
    progress(f"lab: down after {time.time() - t0:.0f}s")
    return True


def status(settings: Settings, probe: bool = True) -> LabStatus:
    p = paths(settings)
    built = is_built(settings)
    pid = _our_pid(p)
    release = kernel_release(settings) or ""
    if not pid:
        stale = p.pidfile.exists()
        return LabStatus(
            False, built=built, kernel_release=release, detail="stale pid file (QEMU gone)" if stale else ""
        )
    st = _read_state(p)
    uptime = time.time() - float(st.get("started_epoch", time.time()))
    s = LabStatus(True, pid=pid, port=int(st.get("port") or 0), uptime_s=uptime, kernel_release=release, built=built)
    if probe and s.port:
        got = _ready(host_config(settings))
        s.ssh_ok = bool(got)
        s.kernel_release = got or release
        s.detail = "" if got else "not answering SSH + xl info (booting?)"
    return s


def ensure_up(settings: Settings, progress: Progress = _quiet, steps: dict[str, float] | None = None) -> HostConfig:
    """Build the lab if its inputs changed and boot it if it is not running: the host for `invoke verify`.

    `steps` gets the seconds of lab_build and lab_boot (lab_boot: a few when it was running)."""
    steps = {} if steps is None else steps
    if not _our_pid(paths(settings)):
        with timed(steps, "lab_build"):
            build(settings, progress)
    with timed(steps, "lab_boot"):
        return up(settings, progress)


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
        "lab_dir": _du(p.dir) if p.dir.exists() else 0,
        "image": p.image.stat().st_blocks * 512 if p.image.exists() else 0,
    }
