"""The lab image build: debootstrap a dom0 root filesystem from the recipe, install the kernel
and Xen, make the boot files and the test guest's initramfs, pack it all with `mkfs.ext4 -d`
(no loop mounts). A no-op while the recipe's input hash is unchanged. Needs root."""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import util
from ..aptfetch import AptDir
from ..aptsources import AptEntry
from ..config import Settings
from ..errors import FetchError, LabError
from ..labsuites import HOST_SUITE, Dom0Kernel, dom0_kernel, image_kernels, suite_of
from ..results import atomic_write_text, now_iso
from ..util import Progress
from ..util import noprogress as _quiet
from .guestfiles import GUEST_DIR, GUEST_INITRD, guest_initramfs
from .layout import LabPaths, du, image_kernels_built, is_built, locked, paths, read_manifest, tail
from .qemu import QEMU, our_pid
from .recipe import (
    ENABLED_UNITS,
    HOSTNAME,
    IMAGE_SIZE,
    KERNEL_PACKAGE,
    LAB_TEMPLATES,
    MASKED_UNITS,
    collect_inputs,
    input_hash,
    render,
    versioned_packages,
)


@dataclass
class BuildInfo:
    """What build() did; `rebuilt` is False when the inputs were unchanged."""

    rebuilt: bool
    input_hash: str
    manifest: dict[str, Any]
    duration_s: float = 0.0


class _Builder:
    """The image build's commands, logged to build.log: as root, on the host, not sandboxed (they
    mount, debootstrap and chroot), the first failure ends the build (not buildrun.Runner: that
    confines untrusted kernel code and hands back the exit status)."""

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
            last = tail(self.p.build_log, 5)
            raise LabError(
                f"lab build failed: `{shlex.join(argv[:4])}...` exited {proc.returncode}; see {self.p.build_log}: {last}"
            )
        if not capture:
            return ""
        return proc.stdout if binary else proc.stdout.decode(errors="replace")


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


def build(settings: Settings, progress: Progress = _quiet, force: bool = False) -> BuildInfo:
    """Build the lab image unless it is up to date with its inputs. Needs root."""
    with locked(settings, progress):
        return _build_unlocked(settings, progress, force)


def _build_unlocked(settings: Settings, progress: Progress = _quiet, force: bool = False) -> BuildInfo:
    t0 = time.monotonic()
    p = paths(settings)
    key_pub = _ensure_client_key(p)
    inputs = collect_inputs(settings, key_pub)
    # the extra dom0 kernels the inventory asks of this folder's image (none for a default folder)
    kernels = image_kernels(settings)
    if kernels:
        inputs["dom0_kernels"] = kernels
    h = input_hash(inputs)
    old = read_manifest(settings)
    if not force and old and old.get("input_hash") == h and is_built(settings) and image_kernels_built(settings):
        progress(f"lab.build: up to date ({h[:12]}, built {old.get('built_at')}); nothing to do")
        with open(p.build_log, "a", encoding="utf-8") as log:
            log.write(f"== {now_iso()} up to date: input hash {h}; nothing rebuilt\n")
        return BuildInfo(rebuilt=False, input_hash=h, manifest=old, duration_s=time.monotonic() - t0)
    if our_pid(p):
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
        manifest = _build(b, inputs, h, [dom0_kernel(k) for k in kernels])
    manifest["duration_s"] = round(time.monotonic() - t0, 1)
    atomic_write_text(p.manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    progress(
        f"lab.build: done in {manifest['duration_s']:.0f}s: dom0 {manifest['dom0_kernel_release']}, Xen {manifest['xen_version']}"
    )
    return BuildInfo(rebuilt=True, input_hash=h, manifest=manifest, duration_s=manifest["duration_s"])


def _build(b: _Builder, inputs: dict[str, Any], h: str, extra: list[Dom0Kernel]) -> dict[str, Any]:
    p = b.p
    work = p.work
    if work.exists():
        b.say("removing the previous build directory")
        _rmtree_unmounted(work)
    root = work / "rootfs"
    out = work / "out"
    (out / "boot").mkdir(parents=True)
    env = util.templates("lab")

    suite = suite_of(b.settings)
    b.say(f"debootstrap {suite.name} minbase (Xen {suite.xen}) from {inputs['mirror']} (about 1-2 min)")
    # downloaded .debs are kept: a rebuild after a recipe change does not fetch them again
    debs = p.dir / "debs"
    debs.mkdir(exist_ok=True)
    b.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs.resolve()}",
            "--include=" + ",".join(inputs["debootstrap_packages"]),
            suite.name,
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
    if not suite.foreign_kernel:
        # seed apt's lists from the host's (same suites): `apt-get update` then only checks InRelease
        lists = root / "var/lib/apt/lists"
        for f in Path("/var/lib/apt/lists").glob("*_dists_*"):
            if f.is_file():
                shutil.copy2(f, lists / f.name)

    kver = inputs["candidates"][KERNEL_PACKAGE]
    # another suite's root gets the host suite's very kernel .debs (the variable held fixed), the
    # meta package and the image it depends on, resolved by apt inside the chroot from local files
    local_debs = _host_suite_kernel_debs(b, kver, root) if suite.foreign_kernel else []
    b.say(f"installing {KERNEL_PACKAGE}={kver} and updates in the chroot")
    with _mounted(b, root):
        apt_get = ["chroot", str(root), "apt-get", "-y", "--no-install-recommends"]
        b.run(["chroot", str(root), "apt-get", "update"])
        if local_debs:
            # upgrade first: the suite's own linux-image-amd64 (trixie's 6.12) must not replace the
            # host suite's; held, so an apt run in the lab keeps it too
            b.run([*apt_get, "upgrade"])
            b.run([*apt_get, "install", *local_debs])
            b.run(["chroot", str(root), "apt-mark", "hold", KERNEL_PACKAGE])
            for deb in local_debs:
                (root / deb.lstrip("/")).unlink()
        else:
            b.run([*apt_get, "install", f"{KERNEL_PACKAGE}={kver}"])
            b.run([*apt_get, "upgrade"])
        if extra:
            also_debs, kernel_debs = _extra_kernel_debs(b, extra, root)
            if also_debs:  # first, alone: e.g. sid's linux-base, which 7.2 pre-depends on
                b.run([*apt_get, "install", *also_debs])
                _hooks_into_etc(b, root)
            b.say(f"installing the extra dom0 kernels {', '.join(k.release for k in extra)}")
            b.run([*apt_get, "install", *kernel_debs])
            for deb in also_debs + kernel_debs:
                (root / deb.lstrip("/")).unlink()
            for k in extra:  # a kernel whose postinst made no initramfs (none seen): made here
                if not (root / f"boot/initrd.img-{k.release}").exists():
                    b.run(["chroot", str(root), "update-initramfs", "-c", "-k", k.release])
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
                *[x for x in versioned_packages(suite) if x != "busybox-static"],
                "busybox",
                *[k.package for k in extra],
                *sorted({p for k in extra for p in k.also}),
            ],
            capture=True,
        )
    policy.unlink()
    installed = dict(line.split(" ", 1) for line in pkg_versions.splitlines() if " " in line)

    extra_releases = {k.release for k in extra}
    found = sorted(d.name for d in (root / "lib/modules").iterdir() if d.is_dir())
    releases = [r for r in found if r not in extra_releases]
    if len(releases) != 1 or not extra_releases <= set(found):
        want = f"the suite's kernel and {', '.join(sorted(extra_releases))}" if extra else "one kernel"
        raise LabError(f"expected {want} in the dom0 image, found {found}")
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
    xens = sorted((root / "boot").glob(f"xen-{suite.xen}*.gz"))
    if not xens:
        raise LabError(f"no /boot/xen-{suite.xen}*.gz in the dom0 image")
    with gzip.open(xens[-1], "rb") as src, open(out / "boot/xen", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy2(root / f"boot/vmlinuz-{release}", out / "boot/vmlinuz")
    shutil.copy2(root / f"boot/initrd.img-{release}", out / "boot/initrd.img")
    extra_boot: dict[str, dict[str, str]] = {}
    for k in extra:
        # 7.x ships its vmlinuz in /usr/lib/modules/<release>/ (and may leave /boot to a later hook)
        vmlinuz = next(
            (
                f
                for f in (root / f"boot/vmlinuz-{k.release}", root / f"usr/lib/modules/{k.release}/vmlinuz")
                if f.exists()
            ),
            None,
        )
        if vmlinuz is None:
            raise LabError(f"no vmlinuz of the extra dom0 kernel {k.release} in the image (/boot, /usr/lib/modules)")
        shutil.copy2(vmlinuz, out / f"boot/vmlinuz-{k.release}")
        shutil.copy2(root / f"boot/initrd.img-{k.release}", out / f"boot/initrd.img-{k.release}")
        extra_boot[k.release] = {"vmlinuz": f"/{vmlinuz.relative_to(root)}", "line": k.line, "dist": k.dist}

    b.say("test guest initramfs: busybox-static + xen-pcifront.ko")
    guest_initrd = guest_initramfs(root, release)
    gdir = root / GUEST_DIR.lstrip("/")
    gdir.mkdir(parents=True, exist_ok=True)
    (gdir / "guest-initrd.gz").write_bytes(guest_initrd)
    (root / "var/log/xen/console").mkdir(parents=True, exist_ok=True)

    b.say(f"disk image: mkfs.ext4 -d ({IMAGE_SIZE} sparse)")
    b.run(["mkfs.ext4", "-q", "-F", "-L", "dom0root", "-d", str(root), str(out / "dom0.img"), IMAGE_SIZE])
    rootfs_bytes = du(root)

    # move the finished outputs in place, then drop the rootfs (it lives on in the image)
    p.boot.mkdir(parents=True, exist_ok=True)
    for old_file in p.boot.glob("*-*"):  # an earlier build's extra kernels
        old_file.unlink()
    for name in ("xen", "vmlinuz", "initrd.img", *(f"{n}-{r}" for r in extra_boot for n in ("vmlinuz", "initrd.img"))):
        os.replace(out / "boot" / name, p.boot / name)
    os.replace(out / "host_ed25519.pub", p.host_key_pub)
    os.replace(out / "dom0.img", p.image)
    b.say("removing the build directory")
    _rmtree_unmounted(work)

    xen_pkg = installed.get(suite.hypervisor_package, "")
    return {
        "schema": 1,
        "input_hash": h,
        "inputs": inputs,
        "suite": suite.name,
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
        # the extra dom0 kernels (a host's dom0_kernel): boot files boot/vmlinuz-<release>, initrd.img-<release>
        "dom0_kernels": {
            r: {
                **v,
                "package_version": installed.get(f"linux-image-{r}", ""),
                "boot": {"vmlinuz": str(p.boot / f"vmlinuz-{r}"), "initrd": str(p.boot / f"initrd.img-{r}")},
            }
            for r, v in extra_boot.items()
        },
        "guest": {"kernel": f"/boot/vmlinuz-{release}", "initrd": GUEST_INITRD},
        "ssh": {"key": str(p.key), "host_key_pub": str(p.host_key_pub), "user": "root"},
        "build_log": str(p.build_log),
    }


def _host_suite_kernel_debs(b: _Builder, kver: str, root: Path) -> list[str]:
    """The host suite's KERNEL_PACKAGE=kver and the linux-image it depends on, downloaded through the
    project's private apt state (never the system's) and copied into the chroot's /tmp: their paths
    there, for `apt-get install` (which resolves their dependencies from the chroot's own suite)."""

    apt = AptDir(b.settings, HOST_SUITE)
    try:
        meta = apt.download(KERNEL_PACKAGE, kver, progress=b.say)
        image = apt.depends_of(KERNEL_PACKAGE, kver).split(",")[0].split("(")[0].strip()
        if not image.startswith("linux-image-"):
            raise LabError(f"{KERNEL_PACKAGE} {kver} depends on {image!r}, not a linux-image package")
        debs = [meta, apt.download(image, kver, progress=b.say)]
    except FetchError as e:
        raise LabError(f"the {HOST_SUITE} dom0 kernel for the {suite_of(b.settings).name} lab: {e.message}") from None
    out = []
    for deb in debs:
        shutil.copy2(deb, root / "tmp" / deb.name)
        out.append(f"/tmp/{deb.name}")
    return out


def _extra_kernel_debs(b: _Builder, extra: list[Dom0Kernel], root: Path) -> list[str]:
    """The .debs of the extra dom0 kernels (linux-image-<release> and what each needs from its own
    distribution, e.g. sid's linux-base for 7.2) at their candidate versions, downloaded through the
    project's private apt state (never the system's) and copied into the chroot's /tmp: their paths
    there, for one `apt-get install` (the rest of their dependencies from the chroot's suite)."""
    also: list[Path] = []
    debs: list[Path] = []
    for k in extra:
        apt = AptDir(b.settings, k.dist)
        try:
            for pkg in k.also:
                also.append(apt.download(pkg, apt.candidate(pkg).version, progress=b.say))
            # 7.x's linux-image is a small package depending on linux-binary/-modules/-base-<release>
            # (= its version): the packages of its own build, followed through such pinned dependencies
            todo, seen = [(k.package, apt.candidate(k.package).version)], set()
            while todo:
                pkg, ver = todo.pop()
                if pkg in seen:
                    continue
                seen.add(pkg)
                debs.append(apt.download(pkg, ver, progress=b.say))
                todo += _pinned_depends(apt, pkg, ver)
        except FetchError as e:
            raise LabError(f"the extra dom0 kernel {k.release} ({k.dist}): {e.message}") from None

    def into_chroot(files: list[Path]) -> list[str]:
        for deb in dict.fromkeys(files):
            shutil.copy2(deb, root / "tmp" / deb.name)
        return [f"/tmp/{deb.name}" for deb in dict.fromkeys(files)]

    return into_chroot(also), into_chroot(debs)


def _hooks_into_etc(b: _Builder, root: Path) -> None:
    """sid's linux-base (4.17) ships kernel hooks under /usr/share/kernel/<type>.d (00-legacy-boot
    copies 7.x's /usr/lib/modules/<release>/vmlinuz to /boot) and, when that folder exists, hands
    run-parts two folders, which bookworm's run-parts (debianutils 5.7: exactly one) refuses, so
    every kernel's postinst failed ("run-parts: missing operand"). Its hooks are moved beside
    /etc/kernel's (run in name order with them), the folders removed."""
    share = root / "usr/share/kernel"
    for d in sorted(share.glob("*.d")) if share.is_dir() else []:
        dest = root / "etc/kernel" / d.name
        dest.mkdir(parents=True, exist_ok=True)
        for hook in sorted(d.iterdir()):
            b.say(
                f"kernel hook {hook.relative_to(root)} -> /etc/kernel/{d.name}/ (bookworm's run-parts takes one folder)"
            )
            os.replace(hook, dest / hook.name)
        d.rmdir()


def _pinned_depends(apt: AptDir, package: str, version: str) -> list[tuple[str, str]]:
    """(name, version) of the dependencies of `package`=`version` pinned to one version (`name (= v)`)."""
    show = apt._run("apt-cache", "show", f"{package}={version}").split("\n\n")[0]
    out = []
    for field in re.findall(r"^(?:Pre-)?Depends: (.*)$", show, re.M):
        for alt in field.split(","):
            if m := re.fullmatch(r"\s*([\w.+-]+)(?::\w+)? \(= ([^)]+)\)\s*", alt.split("|")[0]):
                out.append((m.group(1), m.group(2)))
    return out


def _rmtree_unmounted(path: Path) -> None:
    """Remove a build directory, refusing if anything is still mounted below it."""
    mounts = Path("/proc/mounts").read_text().split("\n")
    prefix = str(path.resolve()) + "/"
    busy = [m.split()[1] for m in mounts if m and (m.split()[1] + "/").startswith(prefix)]
    for m in sorted(busy, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    # rm is much faster than shutil.rmtree on a 40k-file rootfs
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
