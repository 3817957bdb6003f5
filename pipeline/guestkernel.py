"""The VF tests' PV guest kernel: tinyconfig + kconfigs/guest-pv.config, built once here.

The guest only boots, loads nothing and counts its PCI devices (templates/lab/guest-init.sh.j2),
so it needs no distribution kernel: a ~1 MB bzImage with xen-pcifront and the hvc console built
in, the same for every host and every dom0 kernel. Built from Debian's linux-source-6.1 tarball
(deps/apt.txt) with this machine's gcc, in the build sandbox (pipeline/sandbox.py: no network,
only its tree visible), and cached under .cache/guest-kernel/<key> where the key hashes every
input (fragment, tarball, compiler, this recipe). A build that dies leaves no cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import PROJECT_ROOT
from .buildrun import Runner
from .config import Settings
from .errors import BuildSetupError
from .results import atomic_write_text
from .util import Progress, file_lock
from .util import noprogress as _noprogress

RECIPE = 1  # bump when the steps below change what they build
FRAGMENT = PROJECT_ROOT / "kconfigs" / "guest-pv.config"
# deps/apt.txt's linux-source-6.1, as kernelsrc.LINES["6.1"].system_tarball (not imported from
# there: kernelsrc reaches the lab package, which reaches provision, which uses this module)
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
BUILD_TIMEOUT_S = 3600  # tinyconfig takes 2-8 min on 2 cores; a hung build must still end


@dataclass
class GuestKernel:
    path: Path  # the bzImage, on this machine
    sha256: str
    release: str  # `make kernelrelease`
    key: str
    cache: str  # "hit" | "built"
    build_s: float = 0.0

    def record(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def fragment_options(text: str) -> dict[str, str]:
    """CONFIG_X=v lines of a Kconfig fragment (comments and blanks skipped)."""
    opts = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            opts[name] = value
    return opts


def missing_options(fragment: dict[str, str], config: str) -> list[str]:
    """The fragment's options the final .config does not have as asked (Kconfig drops an option
    whose dependencies are not met without a word: the guest would then boot without it)."""
    have = fragment_options(config)
    return [f"{k}={v}" for k, v in fragment.items() if have.get(k, "n") != v]


def _compiler_id() -> str:
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildSetupError(f"no usable gcc for the guest kernel: {e}") from None
    return out.splitlines()[0] if out else ""


def inputs(tarball: Path, fragment: Path = FRAGMENT) -> dict:
    if not tarball.is_file():
        raise BuildSetupError(f"no {tarball}: install linux-source-6.1 (deps/apt.txt) for the guest kernel")
    st = tarball.stat()
    return {
        "recipe": RECIPE,
        "fragment_sha256": hashlib.sha256(fragment.read_bytes()).hexdigest(),
        "tarball": str(tarball),
        "tarball_size": st.st_size,
        "tarball_mtime": int(st.st_mtime),
        "compiler": _compiler_id(),
    }


def key_of(inp: dict) -> str:
    return hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]


def _cached(entry: Path, key: str) -> GuestKernel | None:
    try:
        meta = json.loads((entry / "guest-kernel.json").read_text())
        data = (entry / "bzImage").read_bytes()
    except (OSError, ValueError):
        return None
    sha = hashlib.sha256(data).hexdigest()
    if sha != meta.get("sha256"):
        return None
    return GuestKernel(entry / "bzImage", sha, meta.get("release", ""), key, "hit", meta.get("build_s", 0.0))


def ensure(settings: Settings, progress: Progress = _noprogress, tarball: Path | None = None) -> GuestKernel:
    """The cached guest kernel, built first when its inputs changed. BuildSetupError when it cannot be."""
    tarball = tarball or TARBALL
    inp = inputs(tarball)
    key = key_of(inp)
    root = settings.path(settings.cache_dir) / "guest-kernel"
    entry = root / key
    if hit := _cached(entry, key):
        return hit
    with file_lock(root / f"{key}.lock"):
        if hit := _cached(entry, key):  # another run built it while we waited
            return hit
        return _build(settings, inp, key, tarball, root, progress)


def _build(settings: Settings, inp: dict, key: str, tarball: Path, root: Path, progress: Progress) -> GuestKernel:
    t0 = time.monotonic()
    work = root / f"build-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = root / f"build-{key}.log"
    log.write_text("", encoding="utf-8")
    run = Runner(log, t0 + BUILD_TIMEOUT_S, {}, BUILD_TIMEOUT_S, settings)

    def step(cmd: list[str], what: str, cwd: Path, ro: list[Path] = ()) -> str:
        rc, out = run(cmd, cwd, what, ro=list(ro), rw=[work])
        if rc:
            tail = "\n".join(out.strip().splitlines()[-5:])
            raise BuildSetupError(f"guest kernel: {what} failed (exit {rc}; log {log}): {tail}")
        return out

    try:
        progress(f"guest kernel: extracting {tarball.name} (built once, cached as {key})")
        step(["tar", "-xf", str(tarball), "-C", str(work)], "extract", work, ro=[tarball])
        trees = [d for d in work.iterdir() if d.is_dir()]
        if len(trees) != 1:
            raise BuildSetupError(f"guest kernel: {tarball} holds {len(trees)} top directories, expected one")
        src = trees[0]
        frag = work / "guest-pv.config"
        shutil.copy2(FRAGMENT, frag)
        progress("guest kernel: tinyconfig + kconfigs/guest-pv.config")
        step(["make", "-s", "ARCH=x86_64", "tinyconfig"], "tinyconfig", src)
        step(["scripts/kconfig/merge_config.sh", "-m", ".config", str(frag)], "merge_config", src)
        step(["make", "-s", "ARCH=x86_64", "olddefconfig"], "olddefconfig", src)
        missing = missing_options(fragment_options(FRAGMENT.read_text()), (src / ".config").read_text())
        if missing:
            raise BuildSetupError(f"guest kernel: the final .config lacks {', '.join(missing)}")
        jobs = str(os.cpu_count() or 1)
        progress(f"guest kernel: make -j{jobs} bzImage (a few minutes, once per machine)")
        step(["make", "-s", "ARCH=x86_64", f"-j{jobs}", "bzImage"], "bzImage", src)
        release = step(["make", "-s", "ARCH=x86_64", "kernelrelease"], "kernelrelease", src).strip().splitlines()[-1]
        entry = root / key
        tmp = root / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy2(src / "arch/x86/boot/bzImage", tmp / "bzImage")
        shutil.copy2(src / ".config", tmp / "config")
        sha = hashlib.sha256((tmp / "bzImage").read_bytes()).hexdigest()
        build_s = round(time.monotonic() - t0, 1)
        meta = {"inputs": inp, "sha256": sha, "release": release, "build_s": build_s}
        atomic_write_text(tmp / "guest-kernel.json", json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)  # the entry appears whole or not at all
        shutil.copy2(log, entry / "build.log")
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        log.unlink(missing_ok=True)
    progress(f"guest kernel: {release} built in {build_s:.0f} s ({(entry / 'bzImage').stat().st_size // 1024} KiB)")
    return GuestKernel(entry / "bzImage", sha, release, key, "built", build_s)
