"""One build of xen-pciback.ko: its sources (the tree's, a commit's, the negative control's),
the target it is built for (a headers directory, or a full tree and its prepared output), and
the build itself in a stable work directory of the build cache, with its warnings per object,
srcversion and vermagic; baseline and control builds cached per base commit.

The module is always built from a copy of its sources in a stable directory of
the build cache (one per role: series, baseline, control), so builds of one
kernel never share objects, ccache hits across revisions (same paths), and the
prepared tree is never modified by a module build.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import debheaders, sandbox
from .buildlog import diagnostics_by_object, first_errors, parse_diagnostics
from .buildrun import Runner
from .errors import BuildSetupError
from .results import atomic_write_text
from .toolchain import make_cc, make_jobs
from .util import file_lock

MODULE_DIR = "drivers/xen/xen-pciback"
MODULE_NAME = "xen-pciback.ko"
MODULE_SYMBOL = "CONFIG_XEN_PCIDEV_BACKEND"

# build products inside a module directory; everything else there is source
_PRODUCT_RE = re.compile(r"(\.(o|ko|mod|mod\.c|cmd|d|symvers|order|a)$|^\.)")


def kernel_release_of(kdir: Path) -> str:
    """UTS release of a prepared headers or output directory ("" when not prepared)."""
    try:
        text = (kdir / "include" / "generated" / "utsrelease.h").read_text()
    except OSError:
        return ""
    m = re.search(r'UTS_RELEASE "([^"]+)"', text)
    return m.group(1) if m else ""


def hash_key(*parts: str | bytes) -> str:
    """A short digest of these inputs: names a cache entry (prepared target, control build)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def modinfo(ko: Path, field_name: str) -> str:
    proc = subprocess.run(["modinfo", "-F", field_name, str(ko)], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


# ------------------------------------------------------------------ module sources


def worktree_sources(worktree: Path) -> dict[str, bytes]:
    src = worktree / MODULE_DIR
    if not src.is_dir():
        raise BuildSetupError(f"{worktree}: no {MODULE_DIR} in this tree")
    files = {}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and not _PRODUCT_RE.search(p.name):
            files[rel] = p.read_bytes()
    return files


def commit_sources(worktree: Path, commit: str) -> dict[str, bytes]:
    proc = subprocess.run(
        ["git", "-C", str(worktree), "archive", "--format=tar", commit, MODULE_DIR],
        capture_output=True,
        check=False,
    )
    if proc.returncode:
        raise BuildSetupError(f"git archive {commit[:12]} {MODULE_DIR} failed: {proc.stderr.decode().strip()[-200:]}")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tf:
        for member in tf:
            if member.isfile():
                rel = member.name[len(MODULE_DIR) + 1 :]
                files[rel] = tf.extractfile(member).read()
    return files


def _fill(moddir: Path, files: dict[str, bytes]) -> None:
    """A clean module directory with exactly these sources (same path every time: ccache hits)."""
    if moddir.exists():
        shutil.rmtree(moddir)
    for rel, data in files.items():
        dest = moddir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def _git_env(stage: Path) -> dict[str, str]:
    # keep git from finding an enclosing repository: `git apply` then patches plain files
    return {**os.environ, "GIT_CEILING_DIRECTORIES": str(stage.parent)}


def control_sources(base_files: dict[str, bytes], revert: Path, stage: Path) -> tuple[dict[str, bytes] | None, str]:
    """Module sources WITHOUT the fix, from the base tree's sources.

    The revert patch applies: the fix is in the base tree, so the control is
    the base tree reverted. The revert is already in (it applies in reverse):
    the base tree lacks the fix and is itself the control.
    """
    if not revert.exists():
        return None, f"no control: {revert} not found"
    if stage.exists():
        shutil.rmtree(stage)
    _fill(stage / MODULE_DIR, base_files)
    env = _git_env(stage)

    def git_apply(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "apply", *args, str(revert)], cwd=stage, env=env, capture_output=True, text=True, check=False
        )

    try:
        if git_apply("--check").returncode == 0:
            proc = git_apply()
            if proc.returncode:
                return None, f"no control: git apply {revert.name} failed: {proc.stderr.strip()[-200:]}"
            files = {
                p.relative_to(stage / MODULE_DIR).as_posix(): p.read_bytes()
                for p in sorted((stage / MODULE_DIR).rglob("*"))
                if p.is_file()
            }
            return files, f"base commit with {revert.name} applied (the fix is in the base tree)"
        if git_apply("--check", "--reverse").returncode == 0:
            return dict(base_files), f"base commit as is (it lacks the fix: {revert.name} is already in)"
        return None, f"no control: {revert.name} neither applies to the base tree nor is already in it"
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------ one module build


@dataclass
class ModuleBuild:
    ok: bool
    ko: Path | None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    srcversion: str = ""
    vermagic: str = ""


@dataclass
class Target:
    """Where and how a module is built for one kernel (headers dir, or full tree + output dir)."""

    mode: str
    key_dir: Path  # cache directory of this prepared target
    kdir: Path  # headers directory, or the O= output directory
    srctree: Path | None  # full mode: the kernel source tree
    cc: str
    release: str
    ccache: bool = True  # False in a build root (it has no ccache)

    def make_cmd(self, moddir: Path, jobs: int) -> list[str]:
        # srcversion for every module (modpost -a): deploy identifies the loaded module by it
        args = [
            f"M={moddir}",
            f"-j{jobs}",
            f"CC={make_cc(self.cc) if self.ccache else self.cc}",
            "CONFIG_MODULE_SRCVERSION_ALL=y",
        ]
        if self.mode == "headers":
            # the Debian headers' own .config has it =m; stated so any headers dir builds it
            return ["make", "-C", str(self.kdir), *args, f"{MODULE_SYMBOL}=m", "modules"]
        return ["make", "-C", str(self.srctree), f"O={self.kdir}", *args, "modules"]

    def ro_roots(self) -> list[Path]:
        """What a module build reads: the headers (and the trees their Makefile includes), or tree + prepared output."""
        if self.srctree:
            return [self.srctree, self.kdir]
        return [self.kdir, *_included_dirs(self.kdir), *debheaders.extraction_root(self.kdir)]

    def roots(self, moddir: Path) -> list[tuple[Path, str]]:
        roots = [(moddir, MODULE_DIR), (self.kdir, "")]
        if self.srctree:
            roots.append((self.srctree, ""))
        return roots


def _included_dirs(kdir: Path) -> list[Path]:
    """Debian's linux-headers-<flavour>/Makefile is one `include .../linux-headers-<v>-common/Makefile`."""
    try:
        text = (kdir / "Makefile").read_text(errors="replace")
    except OSError:
        return []
    return [Path(m.group(1)).parent for m in re.finditer(r"^\s*include\s+(/\S+)$", text, re.M)]


def _sync_sources(moddir: Path, files: dict[str, bytes]) -> bool:
    """Make moddir hold exactly these sources, rewriting only files that changed.

    Unchanged files keep their mtime, so make recompiles only what the new
    revision changed. Returns False when the directory had to be started afresh.
    """
    present = (
        {p.relative_to(moddir).as_posix() for p in moddir.rglob("*") if p.is_file() and not _PRODUCT_RE.search(p.name)}
        if moddir.is_dir() and not moddir.is_symlink()
        else set()
    )
    # a link left by an earlier (sandboxed) build would make us write through it, outside
    if not present or present - set(files) or sandbox.has_links(moddir):
        _fill(moddir, files)  # first use, or a source was removed: stale objects could survive
        return False
    for rel, data in files.items():
        dest = moddir / rel
        if not dest.is_file() or dest.read_bytes() != data:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    return True


def build_module(target: Target, run: Runner, files: dict[str, bytes], role: str, what: str) -> ModuleBuild:
    """Build xen-pciback.ko from these sources in the target's `role` directory (locked while used).

    The directory is kept between builds: a new revision recompiles only the
    files it changed. Warnings of objects make did not rebuild come from the
    previous build (same source, same flags, same warnings), kept per object.
    """
    workdir = target.key_dir / "work" / role
    moddir = workdir / MODULE_DIR
    state = workdir / "warnings.json"
    with file_lock(target.key_dir / "work" / f"{role}.lock"):
        try:
            previous = json.loads(state.read_text()) if state.exists() else None
        except ValueError:
            previous = None
        if previous is None:
            _fill(moddir, files)
            previous = {}
        elif not _sync_sources(moddir, files):
            previous = {}
        state.unlink(missing_ok=True)  # stale if this build is interrupted
        # the ccache of this work directory only: no build can plant objects in another's cache
        rc, out = run(
            [*target.make_cmd(moddir, make_jobs()), "-Otarget"],
            moddir,
            what,
            ro=target.ro_roots(),
            rw=[workdir],
            env={"CCACHE_DIR": str(workdir / ".ccache")},
        )
        by_object = {**previous, **diagnostics_by_object(out, target.roots(moddir), target.kdir)}
        by_object = {obj: w for obj, w in by_object.items() if (moddir / obj).exists()}
        atomic_write_text(state, json.dumps(by_object, indent=1, sort_keys=True) + "\n")
        warnings: list[str] = []
        for obj in sorted(by_object):  # the same order whether built afresh or incrementally
            warnings += [w for w in by_object[obj] if w not in warnings]
        others, errors = parse_diagnostics(out, target.roots(moddir), target.kdir)
        warnings += [w for w in others if w not in warnings]
        built = moddir / MODULE_NAME
        if rc or not os.path.lexists(built):
            return ModuleBuild(False, None, warnings, first_errors(out, errors))
        # out of the sandbox's reach before anything reads it; a symlink planted there is refused
        ko = target.key_dir / "work" / f"{role}.ko"
        try:
            sandbox.copy_out(built, ko, within=workdir)
        except sandbox.UnsafeOutput as e:
            return ModuleBuild(False, None, warnings, [str(e)])
        return ModuleBuild(True, ko, warnings, [], modinfo(ko, "srcversion"), modinfo(ko, "vermagic"))


def cached_build(
    target: Target, run: Runner, entry: str, files_fn: Callable[[], tuple[dict[str, bytes] | None, str]], what: str
) -> tuple[ModuleBuild | None, str, bool]:
    """A module build cached under key_dir/<entry> (baseline and control of a base commit)."""
    cache = target.key_dir / entry
    meta = cache / "build.json"
    with file_lock(cache.with_suffix(".lock")):
        if meta.exists():
            data = json.loads(meta.read_text())
            ko = cache / MODULE_NAME
            mb = ModuleBuild(data["ok"], ko if data["ok"] else None, data["warnings"], data["errors"])
            mb.srcversion, mb.vermagic = data["srcversion"], data["vermagic"]
            run.note(f"{what}: cached in {cache}")
            return mb, data["detail"], True
        files, detail = files_fn()
        if files is None:
            return None, detail, False
        mb = build_module(target, run, files, entry.replace("/", "-"), what)
        cache.mkdir(parents=True, exist_ok=True)
        if mb.ok:
            shutil.copy2(mb.ko, cache / MODULE_NAME)
            mb.ko = cache / MODULE_NAME
        data = {
            "ok": mb.ok,
            "warnings": mb.warnings,
            "errors": mb.errors,
            "srcversion": mb.srcversion,
            "vermagic": mb.vermagic,
            "detail": detail,
        }
        atomic_write_text(meta, json.dumps(data, indent=1) + "\n")
        return mb, detail, False
