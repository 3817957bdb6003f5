"""Build stage: xen-pciback.ko for one kernel, with the warning delta, checkpatch and the negative control.

Two modes (KernelConfig.build.mode):
- headers: the tree's drivers/xen/xen-pciback built as an external module
  against a prepared headers directory (Debian's linux-headers-<release>);
- full: base config + kconfig fragments, olddefconfig, modules_prepare into an
  output directory cached by (base commit, config inputs), then the module.

The module is always built from a copy of its sources in a stable directory of
the build cache (one per role: series, baseline, control), so builds of one
kernel never share objects, ccache hits across revisions (same paths), and the
prepared tree is never modified by a module build.

Everything that executes code of the tree (make, merge_config.sh,
checkpatch.pl) runs in the bubblewrap sandbox of pipeline/sandbox.py: it sees
the tree and headers read-only and writes only its own build directory, with an
empty environment, no network and limits on time, memory, processes and log
size. Files the sandbox wrote are read back only as regular files inside it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import debheaders, sandbox
from .checkpatch import run_checkpatch
from .config import KernelConfig, Settings
from .errors import BuildSetupError
from .kconfig import check_fragments, parse_config
from .results import BuildResult, PatchInfo, atomic_write_text, timed

MODULE_DIR = "drivers/xen/xen-pciback"
MODULE_NAME = "xen-pciback.ko"
MODULE_SYMBOL = "CONFIG_XEN_PCIDEV_BACKEND"
MAX_ERROR_LINES = 10

Progress = Callable[[str], None]

# build products inside a module directory; everything else there is source
_PRODUCT_RE = re.compile(r"(\.(o|ko|mod|mod\.c|cmd|d|symvers|order|a)$|^\.)")
_DIAG_RE = re.compile(
    r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<kind>warning|error|fatal error): (?P<msg>.*)$"
)
_LINECOL_RE = re.compile(r":\d+:(?:\d+:)? ")
_CONFIG_TARGET_RE = re.compile(r"[a-z0-9_.-]*config")


def make_jobs() -> int:
    """make -j per build: the matrix already runs kernels side by side."""
    return max(1, min(2, os.cpu_count() or 1))


# ------------------------------------------------------------------ sandbox and runner


class BuildTimeout(Exception):
    pass


class _LimitHit(Exception):
    """A sandbox limit (log size, processes, memory) stopped a step: the build fails naming it."""

    def __init__(self, what: str, limit: sandbox.Limit, message: str):
        super().__init__(f"{what}: {message}")
        self.limit = limit


class _Runner:
    """Runs build steps in the sandbox (pipeline/sandbox.py), under one deadline, appending everything to the log.

    Each call names what the step may see: `ro` roots besides the runner's own,
    and the `rw` directory it may write (its build output).
    """

    def __init__(self, log: Path, deadline: float, env: dict[str, str], timeout_s: int, settings: Settings):
        self.log = log
        self.deadline = deadline
        self.env = env
        self.timeout_s = timeout_s
        sb = settings.sandbox
        self.confined = sb.enabled
        self.limits = sandbox.Limits(
            time_s=timeout_s, memory_mb=sb.memory_mb, processes=sb.processes, log_mb=sb.log_mb, file_mb=sb.file_mb
        )
        self.ro: set[Path] = set()
        self.rw: set[Path] = set()
        self.usr: Path | None = None  # a build root's /usr (pipeline.buildroot), else the host's

    def child(self, log: Path) -> _Runner:
        """A runner for a step logged on its own (checkpatch), recorded with this one."""
        other = _Runner.__new__(_Runner)
        other.__dict__.update(self.__dict__)
        other.log = log
        other.usr = None  # checkpatch runs on the host's perl, not in a build root
        return other

    def info(self) -> sandbox.SandboxInfo:
        detail = "" if self.confined else "unconfined: --no-sandbox (pv.sandbox.enabled false)"
        return sandbox.info(self.ro, self.rw, self.limits, self.confined, detail)

    def note(self, text: str) -> None:
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(f"### {text}\n")

    def __call__(
        self,
        cmd: list[str],
        cwd: Path,
        what: str,
        input: str | None = None,
        *,
        ro: list[Path] = (),
        rw: list[Path] = (),
        env: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        ro, rw = [Path(p) for p in ro], [Path(p) for p in rw]
        self.ro.update(ro)
        self.rw.update(rw)
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(f"\n### {what}\n$ (cd {shlex.quote(str(cwd))} && {shlex.join(cmd)})\n")
            if time.monotonic() >= self.deadline:
                raise BuildTimeout(what)
            try:
                res = sandbox.run(
                    cmd,
                    cwd=cwd,
                    ro=ro,
                    rw=rw,
                    env={**self.env, **(env or {})},
                    limits=self.limits,
                    deadline=self.deadline,
                    input=input,
                    log=fh,
                    confined=self.confined,
                    usr=self.usr,
                )
            except sandbox.SandboxUnavailable as e:
                raise BuildSetupError(f"{what}: build refused: {e}") from None
            if res.limit is not None:
                fh.write(f"\n### {res.limit_message(self.limits)}\n")
            else:
                fh.write(f"### exit status {res.returncode} after {res.duration_s:.1f} s\n")
        if res.limit is sandbox.Limit.TIME:
            raise BuildTimeout(what)
        if res.limit is not None:
            raise _LimitHit(what, res.limit, res.limit_message(self.limits))
        return res.returncode, res.output


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock between concurrent builds (threads or processes) using one cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------ toolchain


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


def _headers_cc(kdir: Path) -> str:
    """The compiler for modules of the headers' kernel.

    Its own gcc-N when installed; else the oldest installed gcc newer than it
    (bullseye's 5.10 is built with gcc-10, which bookworm lacks: gcc-12 builds
    its modules); else gcc, and build.check_compiler says what is missing.
    """
    want = _headers_gcc_major(kdir)
    if want is None:
        return "gcc"
    newer = [m for m in _host_gcc_majors() if m >= want]
    return f"gcc-{newer[0]}" if newer else f"gcc-{want}"


def _cc_identity(cc: str) -> str:
    proc = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout.splitlines() or [cc])[0]


def _make_cc(cc: str) -> str:
    # ccache replays cached diagnostics, so warnings stay complete on a hit
    return f"ccache {cc}" if shutil.which("ccache") else cc


# ------------------------------------------------------------------ headers


def kernel_release_of(kdir: Path) -> str:
    """UTS release of a prepared headers or output directory ("" when not prepared)."""
    try:
        text = (kdir / "include" / "generated" / "utsrelease.h").read_text()
    except OSError:
        return ""
    m = re.search(r'UTS_RELEASE "([^"]+)"', text)
    return m.group(1) if m else ""


def _lab_release(settings: Settings) -> str | None:
    try:
        from . import lab

        return lab.kernel_release(settings) or None
    except (ImportError, AttributeError):
        return None


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
    release = _lab_release(settings)
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


# ------------------------------------------------------------------ diagnostics


def _normalise_path(path: str, roots: list[tuple[Path, str]], cwd: Path | None) -> str:
    # relative paths are relative to make's directory (ccache's base_dir makes them so)
    p = os.path.normpath(os.path.join(cwd, path) if cwd and not os.path.isabs(path) else path)
    for root, label in roots:
        for r in {os.path.normpath(root), os.path.realpath(root)}:
            if p == r or p.startswith(r + "/"):
                rel = os.path.relpath(p, r)
                return f"{label}/{rel}" if label else rel
    return p


def parse_diagnostics(
    output: str, roots: list[tuple[Path, str]], cwd: Path | None = None
) -> tuple[list[str], list[str]]:
    """Compiler warnings and errors as `file:line:col: kind: message [-Wflag]`, paths relative to the tree."""
    warnings: list[str] = []
    errors: list[str] = []
    for line in output.splitlines():
        # kbuild unexports LC_ALL, so gcc may still quote in UTF-8
        m = _DIAG_RE.match(line.rstrip().replace("\u2018", "'").replace("\u2019", "'"))
        if not m:
            continue
        file = _normalise_path(m.group("file"), roots, cwd)
        col = f"{m.group('col')}:" if m.group("col") else ""
        text = f"{file}:{m.group('line')}:{col} {m.group('kind')}: {m.group('msg')}"
        target = warnings if m.group("kind") == "warning" else errors
        if text not in target:  # a header's warning repeats once per file including it
            target.append(text)
    return warnings, errors


def warning_key(warning: str) -> str:
    """A warning without its line and column: code moved by a patch still matches its baseline."""
    return _LINECOL_RE.sub(": ", warning, count=1)


def new_warnings(series: list[str], baseline: list[str]) -> list[str]:
    """Warnings of the series build beyond those of the baseline (counted per normalised text)."""
    left = Counter(warning_key(w) for w in baseline)
    added = []
    for w in series:
        k = warning_key(w)
        if left[k] > 0:
            left[k] -= 1
        else:
            added.append(w)
    return added


def _first_errors(output: str, errors: list[str]) -> list[str]:
    from .buildlog import first_errors

    return first_errors(output, errors, MAX_ERROR_LINES)


def modinfo(ko: Path, field_name: str) -> str:
    proc = subprocess.run(["modinfo", "-F", field_name, str(ko)], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


# ------------------------------------------------------------------ module sources


def _worktree_sources(worktree: Path) -> dict[str, bytes]:
    src = worktree / MODULE_DIR
    if not src.is_dir():
        raise BuildSetupError(f"{worktree}: no {MODULE_DIR} in this tree")
    files = {}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and not _PRODUCT_RE.search(p.name):
            files[rel] = p.read_bytes()
    return files


def _commit_sources(worktree: Path, commit: str) -> dict[str, bytes]:
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
class _Target:
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
            f"CC={_make_cc(self.cc) if self.ccache else self.cc}",
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


_CC_RE = re.compile(r"^\s+CC \[M\]\s+(\S+\.o)\s*$")


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


def _diagnostics_by_object(output: str, roots, cwd) -> dict[str, list[str]]:
    """Warnings per compiled object; make -Otarget keeps each object's output in one block."""
    blocks: dict[str, list[str]] = {}
    current = ""
    for line in output.splitlines():
        if m := _CC_RE.match(line):
            current = os.path.basename(m.group(1))
            blocks[current] = []
        elif current:
            blocks[current].append(line)
    return {obj: parse_diagnostics("\n".join(lines), roots, cwd)[0] for obj, lines in blocks.items()}


def build_module(target: _Target, run: _Runner, files: dict[str, bytes], role: str, what: str) -> ModuleBuild:
    """Build xen-pciback.ko from these sources in the target's `role` directory (locked while used).

    The directory is kept between builds: a new revision recompiles only the
    files it changed. Warnings of objects make did not rebuild come from the
    previous build (same source, same flags, same warnings), kept per object.
    """
    workdir = target.key_dir / "work" / role
    moddir = workdir / MODULE_DIR
    state = workdir / "warnings.json"
    with _locked(target.key_dir / "work" / f"{role}.lock"):
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
        by_object = {**previous, **_diagnostics_by_object(out, target.roots(moddir), target.kdir)}
        by_object = {obj: w for obj, w in by_object.items() if (moddir / obj).exists()}
        atomic_write_text(state, json.dumps(by_object, indent=1, sort_keys=True) + "\n")
        warnings: list[str] = []
        for obj in sorted(by_object):  # the same order whether built afresh or incrementally
            warnings += [w for w in by_object[obj] if w not in warnings]
        others, errors = parse_diagnostics(out, target.roots(moddir), target.kdir)
        warnings += [w for w in others if w not in warnings]
        built = moddir / MODULE_NAME
        if rc or not os.path.lexists(built):
            return ModuleBuild(False, None, warnings, _first_errors(out, errors))
        # out of the sandbox's reach before anything reads it; a symlink planted there is refused
        ko = target.key_dir / "work" / f"{role}.ko"
        try:
            sandbox.copy_out(built, ko, within=workdir)
        except sandbox.UnsafeOutput as e:
            return ModuleBuild(False, None, warnings, [str(e)])
        return ModuleBuild(True, ko, warnings, [], modinfo(ko, "srcversion"), modinfo(ko, "vermagic"))


def _cached_build(
    target: _Target, run: _Runner, entry: str, files_fn: Callable[[], tuple[dict[str, bytes] | None, str]], what: str
) -> tuple[ModuleBuild | None, str, bool]:
    """A module build cached under key_dir/<entry> (baseline and control of a base commit)."""
    cache = target.key_dir / entry
    meta = cache / "build.json"
    with _locked(cache.with_suffix(".lock")):
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


# ------------------------------------------------------------------ preparing targets


def _hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _headers_target(settings: Settings, kcfg: KernelConfig, run: _Runner, progress: Progress) -> _Target:
    kdir = resolve_headers(settings, kcfg, progress)
    cc = _headers_cc(kdir)
    release = kernel_release_of(kdir)
    line = debheaders.line_of_release(release) if debheaders.extraction_root(kdir) else None
    if not shutil.which(cc) and line:
        # no host compiler as new as the kernel's (sid's 7.2: gcc-16): its suite's build root
        from . import buildroot
        from .kernelsrc import LINES

        root = buildroot.ensure_root(settings, LINES[line].dist, int(cc.removeprefix("gcc-")), progress)
        run.usr = root / "usr"
        identity = f"{cc} {buildroot.versions_of(root).get(cc, '')} in {root.name}"
        ccache = False
    else:
        check_toolchain("headers", cc)
        identity = _cc_identity(cc)
        ccache = True
    key = _hash("headers", str(kdir.resolve()), release, _make_cc(cc) if ccache else cc, identity)
    key_dir = settings.path(settings.cache_dir) / "build" / f"headers-{release or kdir.name}-{key}"
    run.note(f"headers {kdir} (release {release}), compiler {identity}, cache {key_dir}")
    progress(f"{kcfg.name}: build: against headers {kdir.name} ({release}) with {cc}")
    return _Target("headers", key_dir, kdir, None, cc, release, ccache)


@dataclass
class _Prepared:
    target: _Target
    config_warnings: list[str]
    module_symbol: str  # value of CONFIG_XEN_PCIDEV_BACKEND in .config
    reused: bool


def _fragments(settings: Settings, kcfg: KernelConfig) -> list[tuple[str, Path, str]]:
    out = []
    for frag in kcfg.build.fragments:
        path = settings.path(frag)
        if not path.is_file():
            raise BuildSetupError(f"{kcfg.name}: kconfig fragment {frag} not found ({path})")
        out.append((frag, path, path.read_text()))
    return out


def _base_config(settings: Settings, kcfg: KernelConfig) -> tuple[str, Path | None]:
    """("target", None) for a make target such as tinyconfig, ("file", path) for a config file."""
    base = kcfg.build.base_config
    path = settings.path(base)
    if path.is_file():
        return "file", path
    if _CONFIG_TARGET_RE.fullmatch(base):
        return "target", None
    raise BuildSetupError(f"{kcfg.name}: base_config {base!r} is neither a make *config target nor a file")


def _full_target(
    settings: Settings, kcfg: KernelConfig, worktree: Path, base_commit: str, run: _Runner, progress: Progress
) -> _Prepared:
    check_toolchain("full")
    cc = "gcc"
    frags = _fragments(settings, kcfg)
    kind, base_path = _base_config(settings, kcfg)
    base_desc = base_path.read_bytes() if base_path else kcfg.build.base_config.encode()
    # every input of the configured, prepared tree; a new series revision changes none of them
    key = _hash(
        "full", base_commit, kind, base_desc, *(f"{n}\n{t}" for n, _, t in frags), _make_cc(cc), _cc_identity(cc)
    )
    key_dir = settings.path(settings.cache_dir) / "build" / f"full-{base_commit[:12]}-{key}"
    out = key_dir / "out"
    marker = key_dir / "prepared.json"
    target = _Target("full", key_dir, out, worktree, cc, "")
    jobs = make_jobs()
    make = ["make", "-C", str(worktree), f"O={out}", f"CC={_make_cc(cc)}"]
    with _locked(key_dir / "prepare.lock"):
        if marker.exists():
            data = json.loads(marker.read_text())
            run.note(
                f"prepared tree reused: {out} (base {base_commit[:12]}, config key {key}); no config step, no modules_prepare"
            )
            progress(f"{kcfg.name}: build: prepared tree of {base_commit[:12]} reused")
            target.release = kernel_release_of(out)
            return _Prepared(target, data["config_warnings"], data["module_symbol"], True)
        if out.exists():
            shutil.rmtree(out)  # a half-prepared tree from an interrupted run
        out.mkdir(parents=True)
        progress(f"{kcfg.name}: build: configuring ({kcfg.build.base_config} + {len(frags)} fragment(s))")
        if kind == "file":
            shutil.copyfile(base_path, out / ".config")
        else:
            _check(
                run(
                    make + [kcfg.build.base_config],
                    worktree,
                    f"config: make {kcfg.build.base_config}",
                    ro=[worktree],
                    rw=[out],
                ),
                "base config",
            )
        merge = worktree / "scripts" / "kconfig" / "merge_config.sh"
        # copies inside the output directory: the sandbox needs no view of where the fragments live
        frag_dir = out / ".pv-fragments"
        frag_dir.mkdir()
        frag_copies = []
        for i, (_, _, text) in enumerate(frags):
            frag_copies.append(frag_dir / f"{i}.config")
            frag_copies[-1].write_text(text)
        _check(
            run(
                ["sh", str(merge), "-m", "-O", str(out), str(out / ".config"), *(str(p) for p in frag_copies)],
                out,  # it makes its temporary files in the current directory
                "config: merge_config.sh -m",
                ro=[worktree],
                rw=[out],
            ),
            "merge_config.sh",
        )
        _check(
            run(make + ["olddefconfig"], worktree, "config: make olddefconfig", ro=[worktree], rw=[out]), "olddefconfig"
        )
        config_text = sandbox.read_out(out / ".config", within=out).decode(errors="replace")
        issues = check_fragments([(n, t) for n, _, t in frags], config_text, worktree)
        config_warnings = [i.message() for i in issues]
        symbol = parse_config(config_text).get(MODULE_SYMBOL, "absent")
        if symbol != "m":
            # not cached as prepared: the fragments must change anyway
            return _Prepared(target, config_warnings, symbol, False)
        progress(f"{kcfg.name}: build: make modules_prepare (once per base commit and config)")
        _check(
            run(
                make + [f"-j{jobs}", "modules_prepare"],
                worktree,
                "prepare: make modules_prepare",
                ro=[worktree],
                rw=[out],
            ),
            "modules_prepare",
        )
        target.release = kernel_release_of(out)
        atomic_write_text(marker, json.dumps({"config_warnings": config_warnings, "module_symbol": symbol}) + "\n")
        return _Prepared(target, config_warnings, symbol, False)


class _StepFailed(Exception):
    def __init__(self, step: str, output: str):
        super().__init__(step)
        self.step = step
        self.output = output


def _check(result: tuple[int, str], step: str) -> str:
    rc, out = result
    if rc:
        raise _StepFailed(step, out)
    return out


# ------------------------------------------------------------------ the stage


def _module_changed(worktree: Path, base_commit: str) -> bool:
    """Does the tree's module source (working tree, series included) differ from base_commit's?"""
    proc = subprocess.run(
        ["git", "-C", str(worktree), "diff", "--quiet", base_commit, "--", MODULE_DIR], capture_output=True, check=False
    )
    if proc.returncode not in (0, 1):
        raise BuildSetupError(
            f"git diff {base_commit[:12]} in {worktree} failed: {proc.stderr.decode().strip()[-200:]}"
        )
    return proc.returncode == 1


def _build_env(settings: Settings) -> dict[str, str]:
    """What a build step gets on top of the sandbox's fixed environment (nothing of ours passes)."""
    cache = settings.path(settings.cache_dir)
    # CCACHE_DIR is per work directory (build_module); relative paths keep hits across revisions
    return {"CCACHE_BASEDIR": str(cache), "CCACHE_NOHASHDIR": "1", "CCACHE_DIR": "/tmp/ccache"}


def build_kernel(
    settings: Settings,
    kcfg: KernelConfig,
    worktree: Path,
    base_commit: str,
    patches: list[PatchInfo],
    run_dir: Path,
    progress: Progress,
) -> BuildResult:
    """Build xen-pciback.ko of `worktree` for one kernel; see the module docstring.

    Results go under run_dir/build/<kernel>/ (log, module, control module).
    Missing tools or headers raise BuildSetupError; a failing build is a
    status (`build-failed`, or `error` when the config cannot build the module).
    """
    start = time.monotonic()
    worktree = Path(worktree).resolve()
    out_dir = Path(run_dir) / "build" / kcfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "build.log"
    res = BuildResult(mode=kcfg.build.mode, log=str(log))
    run = _Runner(log, start + kcfg.build.timeout_s, _build_env(settings), kcfg.build.timeout_s, settings)
    if run.confined and (reason := sandbox.probe()):
        raise BuildSetupError(f"{kcfg.name}: build refused: {reason}")
    res.network_isolated = run.confined
    notes = [] if run.confined else ["unconfined build (--no-sandbox): the series' code ran with this machine's view"]
    run.note(f"{kcfg.name}: {kcfg.build.mode} build of {worktree} (base {base_commit})")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"checkpatch-{kcfg.name}")
    checkpatch: Future | None = None
    try:
        if kcfg.build.mode == "headers":
            with timed(res.steps, "prepare"):
                target = _headers_target(settings, kcfg, run, progress)
        else:
            with timed(res.steps, "prepare"):
                prep = _full_target(settings, kcfg, worktree, base_commit, run, progress)
            target = prep.target
            res.config_warnings = prep.config_warnings
            res.prepared_reused = prep.reused
            if prep.module_symbol != "m":
                res.status = "error"
                res.detail = (
                    f"{MODULE_SYMBOL} is {prep.module_symbol} after olddefconfig, not m: the module cannot be built"
                )
                return res
        res.kernel_release = target.release

        if patches:
            progress(f"{kcfg.name}: build: checkpatch on {len(patches)} patch(es), beside the build")
            # independent of the build and mostly one core: run it alongside, logged on its own
            cp_run = run.child(out_dir / "checkpatch.log")
            checkpatch = pool.submit(run_checkpatch, worktree, patches, cp_run)
            run.note(f"checkpatch: running beside the build, log {cp_run.log}")

        progress(f"{kcfg.name}: build: xen-pciback.ko (series)")
        # one work directory per kernel: kernels sharing headers build side by side
        role = "series-" + re.sub(r"[^A-Za-z0-9._-]", "_", kcfg.name)
        with timed(res.steps, "series"):
            series = build_module(target, run, _worktree_sources(worktree), role, "module: series")
        res.warnings = series.warnings
        if not series.ok:
            res.status = "build-failed"
            res.errors = series.errors
        else:
            res.status = "ok"
            res.module = str(out_dir / MODULE_NAME)
            shutil.copy2(series.ko, res.module)
            res.srcversion, res.vermagic = series.srcversion, series.vermagic

        changed = _module_changed(worktree, base_commit)
        # read lazily: a warm rebuild finds baseline and control in the cache and never needs them
        base_files = functools.cache(lambda: _commit_sources(worktree, base_commit))
        if changed:
            progress(f"{kcfg.name}: build: baseline without the series ({base_commit[:12]})")
            with timed(res.steps, "baseline"):
                baseline, _, _ = _cached_build(
                    target, run, f"baseline/{base_commit}", lambda: (base_files(), "base commit"), "module: baseline"
                )
            if baseline is not None and baseline.ok:
                res.new_warnings = new_warnings(res.warnings, baseline.warnings)
            else:
                res.new_warnings = list(res.warnings)
                notes.append("baseline (base commit) does not build: every warning counts as new")
        # unchanged: the series build is the baseline, nothing is new

        progress(f"{kcfg.name}: build: negative control (module without the fix)")
        revert = settings.path(kcfg.control_revert)

        def control_files() -> tuple[dict[str, bytes] | None, str]:
            # one staging folder per control entry: two rows never patch the same files
            return control_sources(
                base_files(), revert, target.key_dir / "work" / f"stage-{control_entry.replace('/', '-')}"
            )

        control_entry = f"control/{base_commit}-{_hash(revert.read_bytes() if revert.exists() else b'')}"
        with timed(res.steps, "control"):
            control, cdetail, _ = _cached_build(target, run, control_entry, control_files, "module: control")
        res.control_detail = cdetail
        if control is not None and control.ok:
            (out_dir / "control").mkdir(exist_ok=True)
            res.control_module = str(out_dir / "control" / MODULE_NAME)
            shutil.copy2(control.ko, res.control_module)
            res.control_srcversion = control.srcversion
        elif control is not None:
            res.control_detail = f"control does not build ({cdetail}): {'; '.join(control.errors[:2])}"

        if checkpatch is not None:
            with timed(res.steps, "checkpatch_wait"):  # beyond the build: what checkpatch added
                res.checkpatch, note = checkpatch.result()
            if note:
                notes.append(note)
    except BuildTimeout as e:
        res.status = "build-failed"
        res.errors = [f"{e}: killed after the time limit of {kcfg.build.timeout_s} s"]
        res.limit = sandbox.Limit.TIME.value
    except _LimitHit as e:
        res.status = "build-failed"
        res.errors = [str(e)]
        res.limit = e.limit.value
    except _StepFailed as e:
        res.status = "build-failed" if res.status in ("not-run", "ok") else res.status
        _, errors = parse_diagnostics(e.output, [(worktree, "")])
        first = _first_errors(e.output, errors)  # the real error first, with the step it stopped
        res.errors = [f"{e.step} failed: {first[0]}", *first[1:]] if first else [f"{e.step} failed"]
    finally:
        pool.shutdown(wait=True)
        res.duration_s = round(time.monotonic() - start, 2)
        res.sandbox = run.info()
    if res.status == "build-failed" and not res.detail:
        notes.insert(0, f"build failed: {res.errors[0] if res.errors else 'see ' + str(log)}")
    if res.new_warnings:
        notes.append(f"{len(res.new_warnings)} new warning(s)")
    res.detail = "; ".join(n for n in [res.detail, *notes] if n)
    run.note(f"result: {res.status} in {res.duration_s} s")
    return res
