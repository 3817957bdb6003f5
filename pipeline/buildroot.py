"""A build root per Debian suite, for kernels the host's compiler cannot build for.

sid's 7.2 is built with gcc-16 and its kbuild programs need sid's libc; bookworm
has neither. The root is a debootstrap minbase of that suite with the kernel's
gcc and what kbuild's programs link against, under
`<cache>/buildroot/<dist>-gcc<N>-<key>/`, the key hashing the versions of those
packages in the private apt lists (pipeline.aptfetch): unchanged lists, same
root; a refresh that brings new versions gives a new root. A build uses only
its /usr, inside the same sandbox as every build (pipeline.sandbox, `usr=`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from .aptfetch import AptDir, mirrors
from .config import Settings
from .errors import BuildSetupError
from .util import Progress

RECIPE = 1
# kbuild's own programs (linux-kbuild-*) link against these; make and binutils run the build
PACKAGES = ("make", "binutils", "libc6-dev", "libelf1t64", "libssl3t64", "zlib1g", "pahole")
_MARKER = ".pv-buildroot.json"


def root_key(apt: AptDir, gcc: str) -> tuple[str, dict[str, str]]:
    versions = {p: apt.candidate(p).version for p in (gcc, *PACKAGES)}
    blob = json.dumps({"recipe": RECIPE, "dist": apt.dist.name, "versions": versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12], versions


def ensure_root(settings: Settings, dist: str, gcc_major: int, progress: Progress = print) -> Path:
    """The build root of `dist` with gcc-<gcc_major>, made by debootstrap when missing."""
    apt = AptDir(settings, dist)
    apt.ensure_lists(progress=progress)
    gcc = f"gcc-{gcc_major}"
    key, versions = root_key(apt, gcc)
    top = (settings.path(settings.cache_dir) / "buildroot").resolve()
    root = top / f"{dist}-{gcc}-{key}"
    if (root / _MARKER).is_file():
        return root
    if not shutil.which("debootstrap"):
        raise BuildSetupError("a build root needs debootstrap; as root run: apt-get install -y debootstrap")
    main, _security, keyring = mirrors(settings)
    top.mkdir(parents=True, exist_ok=True)
    progress(f"buildroot: debootstrap {dist} minbase with {gcc} {versions[gcc]} into {root} (a few minutes)")
    with tempfile.TemporaryDirectory(dir=top, prefix=f".{dist}-") as tmp:
        stage = Path(tmp) / "root"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--keyring={keyring}",
            f"--include={','.join([gcc, *PACKAGES])}",
            apt.dist.suites[0],
            str(stage),
            main,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            log = stage / "debootstrap" / "debootstrap.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise BuildSetupError(f"debootstrap {dist} failed: {' | '.join(tail) or proc.stderr.strip()[-300:]}")
        (stage / _MARKER).write_text(json.dumps({"dist": dist, "gcc": gcc, "versions": versions}, indent=1))
        stage.rename(root)
    return root


def versions_of(root: Path) -> dict[str, str]:
    """The package versions a build root was made with (its marker)."""
    try:
        return json.loads((root / _MARKER).read_text())["versions"]
    except (OSError, ValueError, KeyError):
        return {}
