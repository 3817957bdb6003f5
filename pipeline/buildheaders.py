"""Headers mode: the headers directory a kernel's module is built against, and its target.

KernelConfig.build.headers is a path, a release, or "auto" (the lab's dom0 release, else the
newest installed linux-headers-*-amd64). A release of another Debian line we import is
extracted into the cache from its suite (pipeline.debheaders). The compiler is the headers'
kernel's own gcc (pipeline.toolchain), or, when the host has none as new, a build root of the
line's suite (pipeline.buildroot).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import buildroot, debheaders, providers
from .buildmodule import Target, hash_key, kernel_release_of
from .buildrun import Runner
from .config import KernelConfig, Settings
from .errors import BuildSetupError
from .kernelsrc import LINES
from .toolchain import cc_identity, check_toolchain, headers_cc, make_cc
from .util import Progress


def _release_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def resolve_headers(settings: Settings, kcfg: KernelConfig, progress: Progress = print) -> Path:
    """The headers directory to build against: a path, a release, or "auto" (the lab's dom0 release).

    A release the system has no headers for, of another Debian line we import
    (5.10, 6.12, 7.2), is extracted into the cache from its suite (pipeline.debheaders).
    """
    value = kcfg.build.headers
    if value and value != "auto":
        path = settings.path(value) if "/" in value else Path(f"/usr/src/linux-headers-{value}")
        # the host's own line (6.1 on bookworm) is installed from the system's apt as before
        if not (path / "Makefile").exists() and "/" not in value and debheaders.foreign_line(value):
            return debheaders.headers_dir(settings, value, progress)
        if not (path / "Makefile").exists():
            release = path.name.removeprefix("linux-headers-")
            raise BuildSetupError(
                f"{kcfg.name}: headers directory {path} is missing or not prepared; "
                f"for a Debian kernel as root run: apt-get install -y linux-headers-{release}"
            )
        return path
    release = providers.builtin_lab(settings).kernel_release()
    if release:
        path = Path(f"/usr/src/linux-headers-{release}")
        if not (path / "Makefile").exists():
            raise BuildSetupError(
                f"{kcfg.name}: headers of the lab's kernel {release} are not installed; "
                f"as root run: apt-get install -y linux-headers-{release}"
            )
        return path
    found = sorted(
        (p for p in Path("/usr/src").glob("linux-headers-*-amd64") if (p / "Makefile").exists()),
        key=lambda p: _release_key(p.name),
    )
    if not found:
        raise BuildSetupError(
            f"{kcfg.name}: no Debian kernel headers installed; as root run: apt-get install -y linux-headers-amd64"
        )
    return found[-1]


def headers_target(settings: Settings, kcfg: KernelConfig, run: Runner, progress: Progress) -> Target:
    """The headers-mode target: the headers directory, the compiler (the host's or a build root's), the cache entry."""
    kdir = resolve_headers(settings, kcfg, progress)
    cc = headers_cc(kdir)
    release = kernel_release_of(kdir)
    line = debheaders.line_of_release(release) if debheaders.extraction_root(kdir) else None
    if not shutil.which(cc) and line:
        # no host compiler as new as the kernel's (sid's 7.2: gcc-16): its suite's build root

        root = buildroot.ensure_root(settings, LINES[line].dist, int(cc.removeprefix("gcc-")), progress)
        run.usr = root / "usr"
        identity = f"{cc} {buildroot.versions_of(root).get(cc, '')} in {root.name}"
        ccache = False
    else:
        check_toolchain("headers", cc)
        identity = cc_identity(cc)
        ccache = True
    key = hash_key("headers", str(kdir.resolve()), release, make_cc(cc) if ccache else cc, identity)
    key_dir = settings.path(settings.cache_dir) / "build" / f"headers-{release or kdir.name}-{key}"
    run.note(f"headers {kdir} (release {release}), compiler {identity}, cache {key_dir}")
    progress(f"{kcfg.name}: build: against headers {kdir.name} ({release}) with {cc}")
    return Target("headers", key_dir, kdir, None, cc, release, ccache)
