"""Offline kernel source: Debian's linux-source-6.1 imported into a local git repository used as a remote.

The repository gets a tag named after the upstream version in the tarball
(v6.1.N), a branch `<tag>-prefix` whose one extra commit reverts the upstream
fix (patches/controls/revert-c81d3d246025.patch: the tree as a stable branch
without the backport), and the moving aliases `debian-6.1` and
`debian-6.1-prefix` the default matrix refers to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import PROJECT_ROOT
from .config import Settings
from .errors import FetchError
from .sysdeps import apt_install, dpkg_version

SOURCE_PACKAGE = "linux-source-6.1"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
REVERT_PATCH = PROJECT_ROOT / "patches/controls/revert-c81d3d246025.patch"
ALIAS = "debian-6.1"
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


@dataclass
class SourceInfo:
    repo: Path
    tag: str
    package_version: str
    commit: str
    prefix_commit: str
    branches: list[str] = field(default_factory=list)


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


def wanted_package_version(settings: Settings) -> str | None:
    """The linux-source-6.1 version matching the kernel the lab's dom0 runs, when known."""
    try:
        from . import lab

        release = lab.kernel_release(settings)
    except (ImportError, AttributeError):
        release = None
    if not release:
        return None
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", f"linux-headers-{release}"], capture_output=True, text=True
    )
    m = re.search(r"^Version: (\S+)", proc.stdout, re.M)
    return m.group(1) if m else None


def ensure_source_package(settings: Settings, progress=print) -> str:
    want = wanted_package_version(settings)
    have = dpkg_version(SOURCE_PACKAGE)
    if have and (want is None or have == want) and TARBALL.exists():
        return have
    spec = f"{SOURCE_PACKAGE}={want}" if want else SOURCE_PACKAGE
    progress(f"source: installing {spec} (the lab's dom0 kernel source)")
    apt_install([spec])
    return dpkg_version(SOURCE_PACKAGE) or ""


def _upstream_version(makefile: str) -> str:
    vals = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)", makefile, re.M))
    if len(vals) != 3:
        raise FetchError(f"{TARBALL}: no VERSION/PATCHLEVEL/SUBLEVEL in the top Makefile")
    return f"{vals['VERSION']}.{vals['PATCHLEVEL']}.{vals['SUBLEVEL']}"


def _tarball_version(tarball: Path) -> str:
    with tarfile.open(tarball) as tf:
        for member in tf:
            if member.name.count("/") == 1 and member.name.endswith("/Makefile"):
                fh = tf.extractfile(member)
                return _upstream_version(fh.read().decode())
    raise FetchError(f"{tarball}: no top-level Makefile")


def import_debian_source(settings: Settings, force: bool = False, progress=print) -> SourceInfo:
    pkg_version = ensure_source_package(settings, progress)
    repo = repo_path(settings)
    note_ref = "refs/notes/debian-package"
    if repo.exists() and not force:
        try:
            tag = _git(repo, "describe", "--tags", "--exact-match", ALIAS)
            recorded = _git(repo, "notes", f"--ref={note_ref}", "show", tag)
        except FetchError:
            tag, recorded = "", ""
        if tag and recorded == pkg_version:
            return _info(repo, tag, pkg_version)
    progress(f"source: importing {TARBALL} ({SOURCE_PACKAGE} {pkg_version}) into {repo}; takes a few minutes")
    if not repo.exists():
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
        # served to the shared fetch cache over file:// with --depth 1
        _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    with tempfile.TemporaryDirectory(dir=repo.parent, prefix=".import-") as tmp:
        progress("source: unpacking the tarball")
        subprocess.run(["tar", "-xJf", str(TARBALL), "-C", tmp], check=True)
        (top,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        version = _upstream_version((top / "Makefile").read_text())
        tag = f"v{version}"
        index = Path(tmp) / "index"
        env = {**_IDENTITY, "GIT_INDEX_FILE": str(index), "GIT_WORK_TREE": str(top)}
        progress(f"source: hashing the tree of {tag}")
        # -f: the tarball's top-level .gitignore ends with "/*" (Debian packaging), which would hide everything
        _git(repo, "add", "-A", "-f", ".", env=env)
        tree = _git(repo, "write-tree", env=env)
        msg = f"Linux {version} as shipped in Debian's {SOURCE_PACKAGE} {pkg_version}\n"
        commit = _git(repo, "commit-tree", tree, "-m", msg, env=_IDENTITY)
        _git(repo, "tag", "-f", tag, commit)
        _git(repo, "notes", f"--ref={note_ref}", "add", "-f", "-m", pkg_version, tag, env=_IDENTITY)
        # the -prefix branch: apply the revert in an index only, no checkout needed
        env_idx = {**_IDENTITY, "GIT_INDEX_FILE": str(index)}
        _git(repo, "read-tree", commit, env=env_idx)
        _git(repo, "apply", "--cached", str(REVERT_PATCH), env=env_idx)
        ptree = _git(repo, "write-tree", env=env_idx)
        pmsg = REVERT_PATCH.read_text()
        subject = re.search(r"^Subject: (?:\[PATCH\] )?(.*(?:\n .*)*)", pmsg, re.M).group(1).replace("\n", "")
        body = pmsg.split("\n\n", 1)[1].split("\n---\n", 1)[0]
        prefix_commit = _git(repo, "commit-tree", ptree, "-p", commit, "-m", f"{subject}\n\n{body}", env=_IDENTITY)
        _git(repo, "update-ref", f"refs/heads/{tag}-prefix", prefix_commit)
        _git(repo, "update-ref", f"refs/heads/{ALIAS}", commit)
        _git(repo, "update-ref", f"refs/heads/{ALIAS}-prefix", prefix_commit)
        _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{ALIAS}")
        progress("source: packing objects")
        # one pack without delta search: fast, and fetches reuse it as is
        _git(repo, "repack", "-a", "-d", "-q", "--window=0")
    shutil.rmtree(repo / "logs", ignore_errors=True)
    return _info(repo, tag, pkg_version)


def _info(repo: Path, tag: str, pkg_version: str) -> SourceInfo:
    commit = _git(repo, "rev-parse", f"{tag}^{{commit}}")
    prefix = _git(repo, "rev-parse", f"refs/heads/{tag}-prefix")
    return SourceInfo(
        repo=repo,
        tag=tag,
        package_version=pkg_version,
        commit=commit,
        prefix_commit=prefix,
        branches=[ALIAS, f"{ALIAS}-prefix", f"{tag}-prefix"],
    )


def is_debian_remote(settings: Settings, remote: str) -> bool:
    return settings.path(remote).resolve() == repo_path(settings).resolve()
