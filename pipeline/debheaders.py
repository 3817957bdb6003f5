"""Debian kernel headers of other suites, extracted into the cache (never installed).

`linux-headers-<release>` of a Debian kernel line (5.10 from bullseye, 6.12
from bookworm-security, 7.2 from sid, ...) together with the packages it
needs to build modules — its `-common` headers and its `linux-kbuild-*` — are
downloaded through the line's private apt state and unpacked side by side
under `<cache>/headers/<release>_<version>/`, so their relative links
(scripts -> ../../lib/linux-kbuild-X/scripts) resolve there. The absolute
paths Debian puts in them, the arch Makefile's `include /usr/src/...-common`
(and KBUILD_OUTPUT since 6.x), are pointed at the extracted copy. The package dependencies outside the kernel
(a compiler, libc) are the build's concern: see toolchain.headers_cc and pipeline.buildroot.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from .aptfetch import AptDir, extract
from .config import Settings
from .errors import BuildSetupError, FetchError
from .kernelsrc import DEFAULT_LINE, LINES
from .util import Progress, file_lock

_COMPLETE = ".pv-headers"  # written last: names the packages unpacked


def line_of_release(release: str) -> str | None:
    """The Debian kernel line of a release (5.10.0-46-amd64 -> 5.10), when it is one we import."""
    for line in sorted(LINES, key=len, reverse=True):
        if release.startswith(line + "."):
            return line
    return None


def foreign_line(release: str) -> bool:
    """A release of an imported line other than the host's own (whose headers the system installs)."""
    return line_of_release(release) not in (None, DEFAULT_LINE)


def _kernel_deps(apt: AptDir, package: str, version: str) -> list[tuple[str, str]]:
    """(name, version) of the -common headers and kbuild packages `package` depends on."""
    out = []
    deps = apt.depends_of(package, version)
    for alt in deps.split(","):
        name = alt.split("|")[0].strip().split(" ")[0]
        if re.match(r"linux-(headers-.*-common|kbuild-)", name):
            cands = apt.versions(name)
            pinned = re.search(r"\(= ([^)]+)\)", alt)
            want = pinned.group(1) if pinned else (cands[0].version if cands else "")
            if not want:
                raise FetchError(f"{package} {version}: dependency {name} is not in the {apt.dist.name} lists")
            out.append((name, want))
    return out


def headers_dir(settings: Settings, release: str, progress: Progress = print) -> Path:
    """The prepared headers directory of a Debian kernel release, extracted into the cache when missing."""
    line = line_of_release(release)
    if line is None:
        raise BuildSetupError(f"no Debian kernel line for release {release} (known: {', '.join(LINES)})")
    apt = AptDir(settings, LINES[line].dist)
    # resolved: the Makefile include below must not depend on a worktree's .cache symlink
    top = (settings.path(settings.cache_dir) / "headers").resolve()
    # one extraction of a release at a time: two rows of one line (as shipped and -prefix, side by
    # side) both extracted it, and the second one's rmtree and rename pulled the tree from under the
    # first one's build ("cannot be shown to the sandbox", seen on a fresh cache)
    with file_lock(top / f".lock-{release}", lambda: progress(f"headers: waiting for the extraction of {release}")):
        return _headers_dir(apt, top, release, progress)


def _headers_dir(apt: AptDir, top: Path, release: str, progress: Progress) -> Path:
    # a warm cache: any complete extraction of this release, without asking apt
    for done in sorted(top.glob(f"{release}_*/{_COMPLETE}")):
        return done.parent / "usr/src" / f"linux-headers-{release}"
    package = f"linux-headers-{release}"
    try:
        version = apt.candidate(package).version
    except FetchError:
        # lists older than the release asked for: once more with fresh ones
        apt.ensure_lists(refresh=True, progress=progress)
        try:
            version = apt.candidate(package).version
        except FetchError as exc:
            raise BuildSetupError(f"headers of {release}: {exc.message}") from None
    wanted = [(package, version), *_kernel_deps(apt, package, version)]
    root = top / f"{release}_{version}"
    top.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=top, prefix=".extract-") as tmp:
        stage = Path(tmp) / "root"
        for name, ver in wanted:
            extract(apt.download(name, ver, progress=progress), stage)
        kdir = stage / "usr/src" / package
        makefile = kdir / "Makefile"
        if not makefile.is_file():
            raise FetchError(f"{package} {version}: no usr/src/{package}/Makefile inside")
        # Debian's arch Makefile names the -common tree (and since 6.x its own output dir) by absolute path
        text = makefile.read_text()
        makefile.write_text(re.sub(r"(?<![\w/.])/usr/src/", lambda _m: f"{root}/usr/src/", text))
        (stage / _COMPLETE).write_text("".join(f"{n} {v}\n" for n, v in wanted))
        shutil.rmtree(root, ignore_errors=True)
        stage.rename(root)
    progress(f"headers: {package} {version} extracted into {root}")
    return root / "usr/src" / package


def extraction_root(kdir: Path) -> list[Path]:
    """[the cache directory an extracted headers dir lives in] (its kbuild links point there), else []."""
    root = kdir.parent.parent.parent
    return [root] if (root / _COMPLETE).is_file() else []
