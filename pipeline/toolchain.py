"""The compilers and tools a module build needs: which are missing (and their Debian packages),
which gcc builds modules for a headers directory's kernel, what identifies a compiler in a
cache key, and make's -j."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import BuildSetupError


def make_jobs() -> int:
    """make -j per build: the matrix already runs kernels side by side."""
    return max(1, min(2, os.cpu_count() or 1))


_TOOLS_COMMON = {"make": "make", "gcc": "gcc", "perl": "perl", "modinfo": "kmod", "git": "git"}
_TOOLS_FULL = {"flex": "flex", "bison": "bison", "bc": "bc"}
_HEADERS_FULL = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/opensslv.h": "libssl-dev"}


def check_toolchain(mode: str, cc: str = "gcc") -> None:
    """Raise BuildSetupError naming the Debian packages of every missing tool."""
    missing: dict[str, str] = {}
    tools = dict(_TOOLS_COMMON)
    if mode == "full":
        tools.update(_TOOLS_FULL)
    for tool, pkg in tools.items():
        if not shutil.which(tool):
            missing[tool] = pkg
    if cc != "gcc" and not shutil.which(cc):
        missing[cc] = cc  # Debian names versioned compilers after the binary (gcc-12)
    if mode == "full":
        for header, pkg in _HEADERS_FULL.items():
            if not Path(header).exists():
                missing[header] = pkg
    if missing:
        pkgs = sorted(set(missing.values()))
        raise BuildSetupError(
            f"missing for {mode}-mode kernel builds: {', '.join(missing)}; as root run: apt-get install -y {' '.join(pkgs)}"
        )


def _headers_gcc_major(kdir: Path) -> int | None:
    """Major version of the gcc the headers' kernel was built with (CONFIG_CC_VERSION_TEXT)."""
    auto = kdir / "include" / "config" / "auto.conf"
    try:
        m = re.search(r'^CONFIG_CC_VERSION_TEXT="?(?:\S+-)?gcc-(\d+)\b', auto.read_text(errors="replace"), re.M)
    except OSError:
        m = None
    return int(m.group(1)) if m else None


def _host_gcc_majors() -> list[int]:
    return sorted(int(p.name.removeprefix("gcc-")) for p in Path("/usr/bin").glob("gcc-[0-9]*") if p.name[4:].isdigit())


def headers_cc(kdir: Path) -> str:
    """The compiler for modules of the headers' kernel.

    Its own gcc-N when installed; else the oldest installed gcc newer than it
    (bullseye's 5.10 is built with gcc-10, which bookworm lacks: gcc-12 builds
    its modules); else gcc, and check_toolchain says what is missing.
    """
    want = _headers_gcc_major(kdir)
    if want is None:
        return "gcc"
    newer = [m for m in _host_gcc_majors() if m >= want]
    return f"gcc-{newer[0]}" if newer else f"gcc-{want}"


def cc_identity(cc: str) -> str:
    proc = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout.splitlines() or [cc])[0]


def make_cc(cc: str) -> str:
    # ccache replays cached diagnostics, so warnings stay complete on a hit
    return f"ccache {cc}" if shutil.which("ccache") else cc
