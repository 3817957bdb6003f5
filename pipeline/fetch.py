"""Fetch stage: one shared bare object cache for every kernel and run, a worktree per kernel per run.

Refs are resolved with `git ls-remote` first, so an unknown ref or an unreachable
remote fails fast with a clear message, and a ref whose commit the cache already
holds is not fetched at all (a repeat run transfers no objects).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import git

from . import interrupt
from .apply import _refname_part
from .config import KernelConfig, Settings
from .errors import FetchError, UnknownRef
from .results import FetchResult
from .statuses import FetchStatus

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def cache_path(settings: Settings) -> Path:
    return settings.path(settings.cache_dir) / "git" / "objects.git"


def worktree_root(settings: Settings) -> Path:
    return settings.path(settings.cache_dir) / "worktrees"


def cache_repo(settings: Settings) -> git.Repo:
    path = cache_path(settings)
    if not (path / "HEAD").exists():
        path.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(path, bare=True)
        with repo.config_writer() as cw:
            cw.set_value("gc", "auto", "0")  # never gc under a running fetch of another row
        return repo
    repo = git.Repo(path)
    # `sparse-checkout set` in a worktree moves core.bare into config.worktree, which GitPython
    # does not read; it would then run git in the parent folder. Run git inside the cache itself.
    repo.git = repo.GitCommandWrapperType(str(path))
    return repo


def remote_url(settings: Settings, remote: str) -> str:
    """URLs pass through; a local path becomes file:// so that --depth is honoured."""
    parsed = urlparse(remote)
    if parsed.scheme in ("http", "https", "git", "ssh", "file") or re.match(r"^[\w.-]+@[\w.-]+:", remote):
        return remote
    path = settings.path(remote)
    if not path.exists():
        raise FetchError(f"remote {remote!r}: no such path ({path})")
    return path.resolve().as_uri()


def _remote_name(url: str) -> str:
    return "r-" + hashlib.sha1(url.encode()).hexdigest()[:12]


# no git call and no wait for the cache lock may hang a run (the lock is held across git calls)
FETCH_TIMEOUT_S = 1800  # a first fetch of a kernel.org branch over a slow line
GIT_TIMEOUT_S = 600  # local git work: worktree add, sparse checkout, count-objects
LOCK_TIMEOUT_S = 3600  # longer than any fetch plus checkout another run may be doing

# what a headers-mode build reads from its tree (a run checks out these and its series' files)
HEADERS_MODE_PATHS = ("/drivers/xen/xen-pciback/", "/scripts/", "/Makefile")


@contextmanager
def _cache_lock(settings: Settings, timeout_s: float = LOCK_TIMEOUT_S, starts_work: bool = False):
    """Fetches into the shared cache one at a time (shallow-file updates are not concurrent-safe).
    Not util.file_lock: this wait has a limit, and a Ctrl-C ends it before new work starts."""
    lock = cache_path(settings).parent / "fetch.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            # after a Ctrl-C no new fetch or checkout starts (`starts_work`): the row behind a running
            # one would otherwise get the lock once stop_children ended the first, and fetch on with
            # nobody to stop it. Cleanup (worktree removal, the sweep) still takes the lock.
            if starts_work and interrupt.requested():
                raise FetchError("interrupted before the fetch started")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if starts_work and interrupt.requested():
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    continue
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FetchError(
                        f"waited {timeout_s:.0f} s for the object cache lock {lock}: another run holds it"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_ref(url: str, ref: str, display: str) -> tuple[str, str]:
    """(full ref name, commit) of `ref` on the remote, via ls-remote."""
    if _SHA_RE.match(ref):
        return ref, ref
    cmd = ["git", "ls-remote", "--", url, ref, f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    if proc.returncode:
        reason = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        raise FetchError(f"remote {display!r} unreachable: {reason}")
    found = {}
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in found:
            return name.removesuffix("^{}"), found[name]
    raise UnknownRef(f"ref {ref!r} not found in remote {display!r}")


def _object_count(repo: git.Repo) -> int:
    out = repo.git.count_objects("-v", kill_after_timeout=GIT_TIMEOUT_S)
    stats = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return int(stats.get("count", 0)) + int(stats.get("in-pack", 0))


def _has_commit(repo: git.Repo, sha: str) -> bool:
    try:
        repo.git.cat_file("-e", f"{sha}^{{commit}}", kill_after_timeout=GIT_TIMEOUT_S)
        return True
    except git.GitCommandError:
        return False


class _Progress(git.RemoteProgress):
    """Print git's fetch progress at most every few seconds, only for fetches that take a moment."""

    def __init__(self, label: str, progress):
        super().__init__()
        self.label, self.progress = label, progress
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, op_code, cur_count, max_count=None, message=""):
        now = time.monotonic()
        if now - self.start < 2 or now - self.last < 3:
            return
        self.last = now
        stage = {
            self.COUNTING: "counting",
            self.COMPRESSING: "compressing",
            self.RECEIVING: "receiving",
            self.RESOLVING: "resolving",
        }.get(op_code & self.OP_MASK, "working")
        pct = f" {100 * cur_count / max_count:5.1f}%" if max_count else ""
        self.progress(f"fetch {self.label}: {stage}{pct} {message}".rstrip())


def fetch_kernel(
    settings: Settings, kcfg: KernelConfig, run_id: str, progress=print, sparse: list[str] | None = None
) -> FetchResult:
    """Fetch the kernel's ref into the cache and check it out into a worktree of this run.

    `sparse`: check out only these paths (a headers-mode build needs the driver and
    scripts/, not the 75,000 files of the whole tree)."""
    t0 = time.monotonic()
    result = FetchResult(remote=kcfg.remote, ref=kcfg.ref)
    url = remote_url(settings, kcfg.remote)
    fullref, sha = resolve_ref(url, kcfg.ref, kcfg.remote)
    with _cache_lock(settings, starts_work=True):
        repo = cache_repo(settings)
        before = _object_count(repo)
        if not _has_commit(repo, sha):
            name = _remote_name(url)
            remote = repo.remote(name) if name in [r.name for r in repo.remotes] else repo.create_remote(name, url)
            local = f"refs/pv/{name}/{kcfg.ref}" if fullref != sha else f"refs/pv/{name}/{sha}"
            progress(f"fetch {kcfg.name}: {kcfg.ref} from {kcfg.remote}")
            try:
                remote.fetch(
                    f"+{fullref}:{local}",
                    depth=1,
                    progress=_Progress(kcfg.name, progress),
                    kill_after_timeout=FETCH_TIMEOUT_S,
                )
            except git.GitCommandError as e:
                raise FetchError(
                    f"fetch of {kcfg.ref!r} from {kcfg.remote!r} failed: {e.stderr.strip()[-300:]}"
                ) from None
        # keep what every kernel uses reachable from a ref of our own, whatever the remote does later
        repo.git.update_ref(f"refs/pv/kernels/{kcfg.name}", sha, kill_after_timeout=GIT_TIMEOUT_S)
        result.objects_received = _object_count(repo) - before
    result.commit = sha
    wt = worktree_root(settings) / run_id / kcfg.name
    wt.parent.mkdir(parents=True, exist_ok=True)
    progress(f"fetch {kcfg.name}: checking out {sha[:12]} into {wt}")
    t_checkout = time.monotonic()
    with _cache_lock(settings, starts_work=True):
        if sparse:
            t = {"kill_after_timeout": GIT_TIMEOUT_S}
            repo.git.worktree("add", "--detach", "--force", "--no-checkout", str(wt), sha, **t)
            wrepo = git.Repo(wt)
            wrepo.git.sparse_checkout("set", "--no-cone", *sparse, **t)
            wrepo.git.checkout("--quiet", "--detach", sha, **t)
        else:
            repo.git.worktree("add", "--detach", "--force", str(wt), sha, kill_after_timeout=GIT_TIMEOUT_S)
    result.sparse = list(sparse or [])
    result.checkout_s = round(time.monotonic() - t_checkout, 2)
    result.worktree = str(wt)
    result.status = FetchStatus.OK
    result.duration_s = round(time.monotonic() - t0, 2)
    result.detail = f"{fullref} at {sha[:12]}, {result.objects_received} new objects"
    return result


def remove_worktree(settings: Settings, worktree: str | Path, branch: str = "", progress=print) -> None:
    """Drop a run's worktree (results and modules live in the run directory) and its branch."""
    repo = cache_repo(settings)
    with _cache_lock(settings):
        try:
            repo.git.worktree("remove", "--force", "--force", str(worktree), kill_after_timeout=GIT_TIMEOUT_S)
        except git.GitCommandError as e:
            progress(f"fetch: could not remove worktree {worktree}: {e.stderr.strip()[-200:]}")
        repo.git.worktree("prune", kill_after_timeout=GIT_TIMEOUT_S)
        if branch:
            try:
                repo.git.branch("-D", branch, kill_after_timeout=GIT_TIMEOUT_S)
            except git.GitCommandError:
                pass
    try:
        Path(worktree).parent.rmdir()  # the run's folder, once its last worktree is gone
    except OSError:
        pass


def sweep_run(settings: Settings, run_id: str, progress=print) -> list[str]:
    """After Ctrl-C or kill -9: remove every worktree (`<cache>/worktrees/<run_id>/*`) and branch
    (`pv/<run_id>/...`) of the run, also those a stage had half-created."""
    if not (cache_path(settings) / "HEAD").exists():
        return []
    removed = []
    repo = cache_repo(settings)
    listed = repo.git.worktree("list", "--porcelain").splitlines()
    root = (worktree_root(settings) / run_id).resolve()
    for wt in sorted(line.split(" ", 1)[1] for line in listed if line.startswith("worktree ")):
        if Path(wt).resolve().parent == root:
            remove_worktree(settings, wt, progress=progress)
            removed.append(wt)
    if root.is_dir():  # a worktree whose `git worktree add` was cut short
        shutil.rmtree(root, ignore_errors=True)
        repo.git.worktree("prune")
        removed.append(str(root))
    prefix = f"refs/heads/pv/{_refname_part(run_id)}/"
    for ref in repo.git.for_each_ref("--format=%(refname)", prefix).split():
        try:
            repo.git.update_ref("-d", ref)
            removed.append(ref)
        except git.GitCommandError as e:
            progress(f"cleanup: could not delete {ref}: {e.stderr.strip()[-200:]}")
    return removed
