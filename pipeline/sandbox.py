"""Confinement of every program that runs a series' code (kbuild, merge_config.sh, checkpatch.pl).

A series from a mailing list brings its own Makefile and C code onto the
machine that holds the CI tokens and the hosts' SSH keys. Each such program
runs under bubblewrap (Debian's `bubblewrap`, the sandbox of flatpak):

- new user, pid, ipc, uts, cgroup, mount and network namespaces (only a
  loopback of its own: no connection to anything on this machine or beyond);
- a filesystem made only of /usr (its /usr/src hidden), /etc/alternatives,
  the read-only roots the caller names (source tree, headers), the one writable
  directory of this build, a private /tmp and HOME on a size-bounded tmpfs;
  nothing of $HOME, ~/.ssh, the project's .cache/lab, runs/ or other trees;
- an empty environment plus what kbuild needs (PATH, HOME, LANG=C, fixed
  KBUILD_BUILD_USER/HOST/TIMESTAMP so modules are reproducible);
- run as root, it drops to an unprivileged uid of its own slot (one per
  concurrent sandbox), so the kernel enforces the process limit (root is
  exempt from RLIMIT_NPROC) and whatever the sandbox left running is killed
  afterwards by uid; rlimits bound memory, processes and file size; the
  caller's deadline bounds time and the log is cut at a size limit.

`run()` is the one entry point: an argv, read-only roots, writable dirs, a cwd.
"""

from __future__ import annotations

import enum
import fcntl
import functools
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .results import SandboxInfo

# never a real user's: the sandbox uid of slot N is UID_BASE + N
UID_BASE = 61500
SLOTS = 16
# the uids are machine-wide, so their locks must be too: two checkouts (or two cache dirs)
# sharing a uid would kill each other's builds in the sweep and share one process limit
SLOT_DIR = Path("/run/pciback-verify-sandbox")
FIXED_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp/home",
    # plain ASCII diagnostics for the parser; kbuild unexports LC_ALL, hence the others too
    "LANG": "C",
    "LC_ALL": "C",
    "LC_CTYPE": "C",
    "LC_MESSAGES": "C",
    "KBUILD_BUILD_USER": "pciback-verify",
    "KBUILD_BUILD_HOST": "sandbox",
    "KBUILD_BUILD_TIMESTAMP": "1970-01-01 00:00:00 UTC",
    "TMPDIR": "/tmp",
}
NO_SANDBOX_FIX = "apt-get install -y bubblewrap"


class Limit(enum.Enum):
    """Which bound stopped a confined program."""

    TIME = "time"
    LOG = "log-size"
    PROCESSES = "processes"
    MEMORY = "memory"


@dataclass
class Limits:
    time_s: float = 3600.0
    memory_mb: int = 4096  # address space per process
    processes: int = 256  # processes of the sandbox's uid
    log_mb: int = 32  # output kept and logged; more kills the program
    file_mb: int = 2048  # largest file it may write
    tmp_mb: int = 512  # its /tmp and HOME


@dataclass
class RunResult:
    returncode: int
    output: str
    limit: Limit | None = None  # the bound that stopped it, if one did
    duration_s: float = 0.0

    def limit_message(self, limits: Limits) -> str:
        return {
            Limit.TIME: f"killed after the time limit of {limits.time_s:g} s",
            Limit.LOG: f"killed at the log size limit of {limits.log_mb} MB",
            Limit.PROCESSES: f"hit the process limit of {limits.processes}",
            Limit.MEMORY: f"hit the memory limit of {limits.memory_mb} MB per process",
            None: "",
        }[self.limit]


class SandboxUnavailable(Exception):
    """bwrap missing or not permitted here; the message names the fix."""


NAMESPACES = ["user", "pid", "ipc", "uts", "cgroup", "mount", "net"]


@functools.cache
def probe() -> str:
    """ "" when bwrap can create the sandbox here, else a one-line reason with the fix."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return f"bubblewrap is not installed; as root run: {NO_SANDBOX_FIX} (or pass --no-sandbox to build unconfined)"
    argv = [*_prefix(UID_BASE), *_bwrap_base([], Limits()), "--", "/usr/bin/true"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode:
        err = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return (
            f"bubblewrap cannot create its namespaces here ({err}); allow user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces>0) "
            "or pass --no-sandbox to build unconfined"
        )
    return ""


@functools.cache
def tool_version() -> str:
    proc = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "bwrap"


def info(ro: Iterable[Path], rw: Iterable[Path], limits: Limits, confined: bool, detail: str = "") -> SandboxInfo:
    if not confined:
        return SandboxInfo(confined=False, detail=detail or "unconfined")
    return SandboxInfo(
        confined=True,
        tool=tool_version(),
        namespaces=list(NAMESPACES),
        uid=UID_BASE if os.geteuid() == 0 else None,
        limits={
            "time_s": limits.time_s,
            "memory_mb": limits.memory_mb,
            "processes": limits.processes,
            "log_mb": limits.log_mb,
            "file_mb": limits.file_mb,
        },
        read_only=sorted({str(p) for p in ro}),
        writable=sorted({str(p) for p in rw}),
        detail=detail,
    )


def _prefix(uid: int) -> list[str]:
    """As root: drop to the slot's uid first (unprivileged user namespaces then do the rest)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--"]


def _paths(p: Path) -> list[str]:
    """A path and, where a symlink leads elsewhere, its real location (both spellings are used)."""
    out = [os.path.abspath(p)]
    real = os.path.realpath(p)
    if real not in out:
        out.append(real)
    return out


def _bwrap_base(binds: list[tuple[str, str, str]], limits: Limits, usr: Path | None = None) -> list[str]:
    # usr: another system's /usr (a build root of another Debian suite, pipeline.buildroot)
    usr_src = str(usr) if usr else "/usr"
    alternatives = str(usr.parent / "etc/alternatives") if usr else "/etc/alternatives"
    argv = [
        "bwrap",
        "--unshare-all",  # ipc, pid, net, uts, cgroup (user too when unprivileged; stated for --disable-userns)
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--ro-bind",
        usr_src,
        "/usr",
        # other kernels' headers and sources: only the roots asked for come back
        "--tmpfs",
        "/usr/src",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--ro-bind-try",
        alternatives,
        "/etc/alternatives",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.tmp_mb * 1024 * 1024),
        "--tmpfs",
        "/tmp",
        "--dir",
        FIXED_ENV["HOME"],
        "--clearenv",
    ]
    for flag, src, dest in binds:
        argv += [flag, src, dest]
    return argv


def _binds(ro: Iterable[Path], rw: Iterable[Path]) -> list[tuple[str, str, str]]:
    """Each root bound at its own path (both spellings where a symlink leads elsewhere)."""
    binds = []
    for flag, paths in (("--ro-bind", ro), ("--bind", rw)):
        for p in paths:
            for spelling in _paths(p):
                binds.append((flag, spelling, spelling))
    return binds


def unreachable(path: Path) -> str:
    """The first directory on the way to `path` the sandbox uid may not traverse ("" when none).

    bwrap resolves its bind sources as that uid, so a root under a 0700 directory
    (/root, pytest's /tmp/pytest-of-root) cannot be shown to the build at all.
    """
    if os.geteuid() != 0:
        return ""
    cur = Path(os.path.realpath(path))
    for d in [*reversed(cur.parents), cur]:
        try:
            st = d.stat()
        except OSError:
            return str(d)
        if stat.S_ISDIR(st.st_mode) and d != cur and not st.st_mode & stat.S_IXOTH:
            return str(d)
    return ""


# ------------------------------------------------------------------ slots


@dataclass
class _Slot:
    index: int
    uid: int
    fh: object


def _acquire_slot(lock_dir: Path) -> _Slot:
    """An exclusive sandbox uid: process limits and the kill-by-uid sweep never touch another build."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for i in range(SLOTS):
            fh = (lock_dir / f"slot-{i}.lock").open("a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            return _Slot(i, UID_BASE + i, fh)
        time.sleep(0.2)


def _release_slot(slot: _Slot) -> None:
    fcntl.flock(slot.fh, fcntl.LOCK_UN)
    slot.fh.close()


def _sweep(uid: int) -> None:
    """Kill every process left with the slot's uid (a double fork escaping the pid namespace cannot; belt and braces)."""
    subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "kill", "-9", "--", "-1"],
        capture_output=True,
        check=False,
    )


def _own(paths: Iterable[Path], uid: int) -> None:
    """Hand the writable directories to the slot's uid (only entries not already its own)."""
    for top in paths:
        if not os.path.lexists(top):
            continue
        for root, dirs, files in os.walk(top):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                st = os.lstat(name)
                if st.st_uid != uid or st.st_gid != uid:
                    os.lchown(name, uid, uid)


# ------------------------------------------------------------------ running


_PROC_RE = re.compile(r"Resource temporarily unavailable|[Cc]annot fork|fork: retry|vfork: .*unavailable")
_MEM_RE = re.compile(
    r"MemoryError|virtual memory exhausted|Cannot allocate memory|out of memory allocating|std::bad_alloc"
)


def _hit_limit(output: str) -> Limit | None:
    """A failure that the tools themselves reported as running out of processes or memory."""
    if _PROC_RE.search(output):
        return Limit.PROCESSES
    if _MEM_RE.search(output):
        return Limit.MEMORY
    return None


def run(
    argv: list[str],
    *,
    cwd: Path,
    ro: Iterable[Path] = (),
    rw: Iterable[Path] = (),
    env: dict[str, str] | None = None,
    limits: Limits | None = None,
    deadline: float | None = None,
    input: str | None = None,
    log=None,
    confined: bool = True,
    slot_dir: Path | None = None,
    usr: Path | None = None,
) -> RunResult:
    """Run argv confined: only `ro` (read-only) and `rw` (writable) are visible besides /usr.

    `env` is added to FIXED_ENV (nothing of the caller's environment passes).
    Output (stdout and stderr together) is appended to `log` (an open text
    file) as it comes and returned, up to limits.log_mb. `deadline` is a
    time.monotonic() value (default: now + limits.time_s). confined=False runs
    the same argv without bwrap (--no-sandbox), still with the fixed environment
    and the time and log limits.
    """
    limits = limits or Limits()
    ro, rw = list(ro), list(rw)
    deadline = deadline if deadline is not None else time.monotonic() + limits.time_s
    full_env = {**FIXED_ENV, **(env or {})}
    slot = None
    rlimits = [
        "prlimit",
        f"--as={limits.memory_mb * 1024 * 1024}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_mb * 1024 * 1024}",
        "--core=0",
        "--",
    ]
    if confined:
        if reason := probe():
            raise SandboxUnavailable(reason)
        uid = None
        if os.geteuid() == 0:
            slot = _acquire_slot(slot_dir or SLOT_DIR)
            uid = slot.uid
            _own(rw, uid)
        for p in ro + rw:
            if closed := unreachable(p):
                raise SandboxUnavailable(
                    f"{p} cannot be shown to the sandbox: {closed} is closed to other users; "
                    f"keep the project, its cache and worktrees where others may traverse (chmod o+x {closed})"
                )
        binds = _binds(ro, rw)
        cmd = [*rlimits, *_prefix(uid or 0), *_bwrap_base(binds, limits, usr), "--chdir", str(cwd)]
        for k, v in full_env.items():
            cmd += ["--setenv", k, v]
        cmd += ["--", *argv]
        popen_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    else:
        home = tempfile.mkdtemp(prefix="pv-home-")
        full_env["HOME"] = home
        cmd = [*rlimits, *argv] if os.geteuid() != 0 else list(argv)  # root ignores nproc; keep as/fsize off too
        popen_env = full_env
    stdin_file = None
    if input is not None:
        stdin_file = tempfile.TemporaryFile()
        stdin_file.write(input.encode())
        stdin_file.seek(0)
    t0 = time.monotonic()
    try:
        if time.monotonic() >= deadline:
            return RunResult(-9, "", Limit.TIME, 0.0)
        # own session: on a limit, bwrap (and with it the whole pid namespace) is killed
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=popen_env,
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        chunks: list[bytes] = []
        size = 0
        cap = limits.log_mb * 1024 * 1024
        hit: Limit | None = None
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                hit = Limit.TIME
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                break
            if size + len(data) > cap:
                data = data[: cap - size]
                hit = Limit.LOG
            size += len(data)
            chunks.append(data)
            if log is not None:
                log.write(data.decode(errors="replace"))
                log.flush()
            if hit:
                break
        if hit:
            _kill(proc)
        proc.stdout.close()
        rc = proc.wait()
        output = b"".join(chunks).decode(errors="replace")
        if hit is None and rc:
            hit = _hit_limit(output)
        return RunResult(rc if not hit or rc else -9, output, hit, round(time.monotonic() - t0, 2))
    finally:
        if stdin_file is not None:
            stdin_file.close()
        if slot is not None:
            _sweep(slot.uid)
            _release_slot(slot)
        if not confined:
            shutil.rmtree(full_env["HOME"], ignore_errors=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ reading what a sandbox wrote


class UnsafeOutput(Exception):
    """A file the sandbox wrote is a link or lies outside its directory: never followed by us."""


def read_out(path: Path, *, within: Path) -> bytes:
    """The bytes of a regular file the sandbox wrote, never through a symlink (of the file or a parent)."""
    real_top = os.path.realpath(within)
    parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if parent != real_top and not parent.startswith(real_top + "/"):
        raise UnsafeOutput(f"{path}: leads outside {within} (a symlink left by the build); refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise UnsafeOutput(f"{path}: not a regular file the build wrote ({e.strerror}); refused") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UnsafeOutput(f"{path}: not a regular file; refused")
        return fh.read()


def copy_out(path: Path, dest: Path, *, within: Path) -> None:
    data = read_out(path, within=within)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def has_links(top: Path) -> bool:
    """Whether a directory the sandbox could write holds a symlink (we would write or read through it)."""
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                return True
    return False
