"""Offline kernel source: Debian's linux-source-X imported into one local git repository used as a remote.

Kernel lines (`LINES`): 5.10 (bullseye), 6.1 (bookworm, the lab's dom0 kernel),
6.12 (bookworm-security) and 7.2 (sid). Each is imported from the suite that
has it, downloaded through the project-private apt state (pipeline.aptfetch,
never installed), or, for 6.1, from the system's /usr/src tarball when that
is installed at the wanted version. Per line the repository gets a tag named
after the upstream version in the tarball (vX.Y.Z), a branch `<tag>-prefix`
whose one extra commit reverts the upstream fix (the line's revert in
patches/controls/: the tree as a stable branch without the backport), and the
moving aliases `debian-X.Y` and `debian-X.Y-prefix` the matrices refer to.

Incremental: a line whose alias already points at the recorded package version
is left alone (no network, nothing written); `refresh` asks the archive for a
newer version, `force` re-imports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import PROJECT_ROOT
from .aptfetch import AptDir, extract
from .config import KernelConfig, Settings
from .errors import FetchError
from .providers import builtin_lab
from .sysdeps import dpkg_version
from .util import Progress, file_lock

REVERT_PATCH = PROJECT_ROOT / "patches/controls/revert-c81d3d246025.patch"


@dataclass(frozen=True)
class Line:
    """One Debian kernel line: where its source comes from and how its fix is reverted."""

    line: str  # "5.10"
    dist: str  # the private apt distribution that has linux-source-<line>
    revert: Path = REVERT_PATCH

    @property
    def package(self) -> str:
        return f"linux-source-{self.line}"

    @property
    def alias(self) -> str:
        return f"debian-{self.line}"

    @property
    def system_tarball(self) -> Path:
        return Path(f"/usr/src/linux-source-{self.line}.tar.xz")


LINES = {
    "5.10": Line("5.10", "bullseye"),
    "6.1": Line("6.1", "bookworm"),
    "6.12": Line("6.12", "bookworm"),
    # 7.x changed xenbus_read_driver_state()'s arguments: the revert is adapted (see its message)
    "7.2": Line("7.2", "sid", PROJECT_ROOT / "patches/controls/revert-c81d3d246025-7.2.patch"),
}
DEFAULT_LINE = "6.1"
# kept for the callers of the 6.1-only version
SOURCE_PACKAGE = LINES[DEFAULT_LINE].package
TARBALL = LINES[DEFAULT_LINE].system_tarball
NOTE_REF = "refs/notes/debian-package"
# fixed identity and dates: the same tarball always gives the same commits, so
# caches keyed by base commit (build baselines, prepared trees) survive a re-import
_IDENTITY = {
    "GIT_AUTHOR_NAME": "Debian kernel source import",
    "GIT_AUTHOR_EMAIL": "pciback-verify@localhost",
    "GIT_COMMITTER_NAME": "Debian kernel source import",
    "GIT_COMMITTER_EMAIL": "pciback-verify@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}
_REF_RE = re.compile(r"^debian-(\d+\.\d+)(?:-prefix)?$")


@dataclass
class SourceInfo:
    repo: Path
    tag: str
    package_version: str
    commit: str
    prefix_commit: str
    branches: list[str] = field(default_factory=list)
    line: str = DEFAULT_LINE
    package: str = SOURCE_PACKAGE
    imported: bool = False  # False: the repository already had this version, nothing was written
    origin: str = ""  # where the tarball came from (system path or the .deb in the apt cache)
    seconds: float = 0.0  # import time (0 when nothing was imported)


def repo_path(settings: Settings) -> Path:
    return settings.path(settings.cache_dir) / "debian-linux.git"


def _git(repo: Path, *args: str, env: dict | None = None, input: bytes | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        ["git", f"--git-dir={repo}", *args], capture_output=True, env=full_env, input=input, check=False
    )
    if proc.returncode:
        raise FetchError(f"git {' '.join(args[:2])} in {repo} failed: {proc.stderr.decode().strip()[-300:]}")
    return proc.stdout.decode().strip()


# more loose objects than this in the repository: an import packed nothing (before _pack_loose)
LOOSE_LIMIT = 10000


def _pack_loose(repo: Path, commits: list[str]) -> None:
    """A pack of the loose objects the commits reach, without delta search (fast; the other lines'
    packs stay as they are), then the loose copies removed. `git repack` packs only what refs reach,
    and an import sets its refs last: it packed nothing, and every fetch from 83k loose objects cost
    ~10x the CPU (measured: a depth-1 fetch 117 s user from loose objects, 11 s from the pack)."""
    _git(
        repo,
        "pack-objects",
        "-q",
        "--revs",
        "--incremental",
        "--window=0",
        str(repo / "objects/pack/pack"),
        input="".join(f"{c}\n" for c in commits).encode(),
    )
    _git(repo, "prune-packed")


def loose_objects(repo: Path) -> int:
    counts = dict(line.split(": ", 1) for line in _git(repo, "count-objects", "-v").splitlines() if ": " in line)
    return int(counts.get("count", "0"))


def line_of_ref(ref: str) -> str | None:
    """The Debian line a matrix ref names (`debian-5.10`, `debian-7.2-prefix`), if any."""
    m = _REF_RE.match(ref)
    return m.group(1) if m and m.group(1) in LINES else None


def control_revert(settings: Settings, kcfg: KernelConfig) -> Path:
    """The revert a row's negative control and its control-revert evidence use: the kernel's own
    `control_revert` when configured, else its Debian line's (`LINES`, for a debian-X.Y ref), else
    upstream's revert of the fix."""
    if kcfg.control_revert:
        return settings.path(kcfg.control_revert)
    line = line_of_ref(kcfg.ref)
    return LINES[line].revert if line else REVERT_PATCH


def lines_for_refs(refs: Iterable[str]) -> list[str]:
    """The lines a set of refs on the Debian remote needs (the default line for any other ref)."""
    out = []
    for ref in refs:
        line = line_of_ref(ref) or DEFAULT_LINE
        if line not in out:
            out.append(line)
    return out


def wanted_package_version(settings: Settings) -> str | None:
    """The linux-source-6.1 version matching the kernel the lab's dom0 runs, when known."""
    release = builtin_lab(settings).kernel_release()
    if not release:
        return None
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", f"linux-headers-{release}"], capture_output=True, text=True
    )
    m = re.search(r"^Version: (\S+)", proc.stdout, re.M)
    return m.group(1) if m else None


def _upstream_version(makefile: str, what: object = TARBALL) -> str:
    vals = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)", makefile, re.M))
    if len(vals) != 3:
        raise FetchError(f"{what}: no VERSION/PATCHLEVEL/SUBLEVEL in the top Makefile")
    return f"{vals['VERSION']}.{vals['PATCHLEVEL']}.{vals['SUBLEVEL']}"


def recorded(repo: Path, alias: str) -> tuple[str, str]:
    """(tag, package version) the alias points at, ("", "") when the line is not imported."""
    if not repo.exists():
        return "", ""
    try:
        tag = _git(repo, "describe", "--tags", "--exact-match", f"refs/heads/{alias}")
        return tag, _git(repo, "notes", f"--ref={NOTE_REF}", "show", tag)
    except FetchError:
        return "", ""


def _import_lock(repo: Path):
    # runs in several worktrees share one repository: one import at a time
    return file_lock(repo.parent / "debian-linux.lock")


def _init_repo(repo: Path) -> None:
    if repo.exists():
        return
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    # served to the shared fetch cache over file:// with --depth 1
    _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")


def _wanted(settings: Settings, ln: Line, have: str, refresh: bool, progress: Progress) -> str:
    if ln.line == DEFAULT_LINE:
        # the version of the lab's dom0 kernel; else the installed source; else bookworm's candidate
        want = wanted_package_version(settings) or dpkg_version(ln.package)
        if want:
            return want
    elif have and not refresh:
        return have

    apt = AptDir(settings, ln.dist)
    apt.ensure_lists(refresh=refresh, progress=progress)
    return apt.candidate(ln.package).version


def import_line(
    settings: Settings, line: str = DEFAULT_LINE, *, force: bool = False, refresh: bool = False, progress=print
) -> SourceInfo:
    """Line `line` in the local repository: imported when missing or at another version, else left as is."""
    if line not in LINES:
        raise FetchError(f"unknown Debian kernel line {line!r} (known: {', '.join(LINES)})")
    ln = LINES[line]
    repo = repo_path(settings)
    with _import_lock(repo):
        tag, have = recorded(repo, ln.alias)
        want = _wanted(settings, ln, have, refresh, progress)
        if tag and have == want and not force:
            progress(f"source: {ln.alias} is {tag} ({ln.package} {have}), already imported")
            info = _info(repo, ln, tag, have)
            if loose_objects(repo) > LOOSE_LIMIT:  # imported by an earlier version, which left them loose
                progress(f"source: packing the loose objects of {tag}")
                _pack_loose(repo, [info.commit, info.prefix_commit])
            return info
        t0 = time.monotonic()
        _init_repo(repo)
        with tempfile.TemporaryDirectory(dir=repo.parent, prefix=".import-") as tmp:
            tarball, origin = _tarball(settings, ln, want, Path(tmp), progress)
            info = _import_tarball(repo, ln, tarball, want, Path(tmp), progress)
        info.origin = origin
        info.seconds = time.monotonic() - t0
        progress(f"source: {ln.alias} imported as {info.tag} in {info.seconds:.0f} s")
        return info


def import_lines(
    settings: Settings, lines: Iterable[str], *, refresh: bool = False, progress=print
) -> list[SourceInfo]:
    return [import_line(settings, line, refresh=refresh, progress=progress) for line in lines]


def import_debian_source(settings: Settings, force: bool = False, progress=print) -> SourceInfo:
    """The default line (6.1, the lab's dom0 kernel)."""
    return import_line(settings, DEFAULT_LINE, force=force, progress=progress)


def _tarball(settings: Settings, ln: Line, want: str, tmp: Path, progress: Progress) -> tuple[Path, str]:
    if dpkg_version(ln.package) == want and ln.system_tarball.is_file():
        return ln.system_tarball, str(ln.system_tarball)

    apt = AptDir(settings, ln.dist)
    deb = apt.download(ln.package, want, progress=progress)
    progress(f"source: unpacking {deb.name}")
    extract(deb, tmp / "deb")
    tarball = tmp / "deb" / "usr/src" / f"{ln.package}.tar.xz"
    if not tarball.is_file():
        raise FetchError(f"{deb}: no usr/src/{ln.package}.tar.xz inside")
    return tarball, str(deb)


def _import_tarball(repo: Path, ln: Line, tarball: Path, pkg_version: str, tmp: Path, progress: Progress) -> SourceInfo:
    progress(f"source: importing {tarball.name} ({ln.package} {pkg_version}) into {repo}; takes a few minutes")
    src = tmp / "src"
    src.mkdir()
    progress("source: unpacking the tarball")
    subprocess.run(["tar", "-xJf", str(tarball), "-C", str(src)], check=True)
    (top,) = [p for p in src.iterdir() if p.is_dir()]
    version = _upstream_version((top / "Makefile").read_text(), tarball)
    if not version.startswith(ln.line + "."):
        raise FetchError(f"{tarball}: Linux {version} is not of the {ln.line} line")
    tag = f"v{version}"
    index = tmp / "index"
    env = {**_IDENTITY, "GIT_INDEX_FILE": str(index), "GIT_WORK_TREE": str(top)}
    progress(f"source: hashing the tree of {tag}")
    # -f: the tarball's top-level .gitignore ends with "/*" (Debian packaging), which would hide everything
    _git(repo, "add", "-A", "-f", ".", env=env)
    tree = _git(repo, "write-tree", env=env)
    msg = f"Linux {version} as shipped in Debian's {ln.package} {pkg_version}\n"
    commit = _git(repo, "commit-tree", tree, "-m", msg, env=_IDENTITY)
    # the -prefix branch: apply the revert in an index only, no checkout needed
    env_idx = {**_IDENTITY, "GIT_INDEX_FILE": str(index)}
    _git(repo, "read-tree", commit, env=env_idx)
    _git(repo, "apply", "--cached", str(ln.revert), env=env_idx)
    ptree = _git(repo, "write-tree", env=env_idx)
    pmsg = ln.revert.read_text()
    subject = re.search(r"^Subject: (?:\[PATCH\] )?(.*(?:\n .*)*)", pmsg, re.M).group(1).replace("\n", "")
    body = pmsg.split("\n\n", 1)[1].split("\n---\n", 1)[0]
    prefix_commit = _git(repo, "commit-tree", ptree, "-p", commit, "-m", f"{subject}\n\n{body}", env=_IDENTITY)
    progress("source: packing objects")
    _pack_loose(repo, [commit, prefix_commit])
    # refs last: a line whose alias exists is complete
    _git(repo, "tag", "-f", tag, commit)
    _git(repo, "notes", f"--ref={NOTE_REF}", "add", "-f", "-m", pkg_version, tag, env=_IDENTITY)
    _git(repo, "update-ref", f"refs/heads/{tag}-prefix", prefix_commit)
    _git(repo, "update-ref", f"refs/heads/{ln.alias}", commit)
    _git(repo, "update-ref", f"refs/heads/{ln.alias}-prefix", prefix_commit)
    if ln.line == DEFAULT_LINE:
        _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{ln.alias}")
    shutil.rmtree(repo / "logs", ignore_errors=True)
    info = _info(repo, ln, tag, pkg_version)
    info.imported = True
    return info


def _info(repo: Path, ln: Line, tag: str, pkg_version: str) -> SourceInfo:
    commit = _git(repo, "rev-parse", f"{tag}^{{commit}}")
    prefix = _git(repo, "rev-parse", f"refs/heads/{tag}-prefix")
    return SourceInfo(
        repo=repo,
        tag=tag,
        package_version=pkg_version,
        commit=commit,
        prefix_commit=prefix,
        branches=[ln.alias, f"{ln.alias}-prefix", f"{tag}-prefix"],
        line=ln.line,
        package=ln.package,
    )


def is_debian_remote(settings: Settings, remote: str) -> bool:
    return settings.path(remote).resolve() == repo_path(settings).resolve()
