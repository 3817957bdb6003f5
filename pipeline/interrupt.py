"""Ctrl-C and kill safety: stop what a run started, and sweep what an interrupted run left in the cache.

On SIGINT only the main thread sees KeyboardInterrupt; the rows' threads wait on
child processes (git, make in its own session) that a signal sent to our pid alone
never reaches. `stop_children` ends them so the rows return within seconds;
`sweep_run` removes every worktree and branch of a run, also those a stage had
half-created when it was interrupted (and those of a run killed with -9).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from .config import Settings


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this process), parents before their children."""
    todo, out = [pid or os.getpid()], []
    while todo:
        for c in _children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def stop_children(sig: int = signal.SIGTERM) -> list[int]:
    """Signal every child of this process; one leading its own process group (a build) as a group."""
    mine = os.getpgid(0)
    hit = []
    for pid in _children(os.getpid()):
        try:
            pgid = os.getpgid(pid)
            if pgid == pid and pgid != mine:
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
            hit.append(pid)
        except ProcessLookupError:
            pass
    return hit


def sweep_run(settings: Settings, run_id: str, progress=print) -> list[str]:
    """Remove the run's worktrees (`<cache>/worktrees/<run_id>/*`) and branches (`pv/<run_id>/...`)."""
    import git

    from .apply import _refname_part
    from .fetch import cache_path, cache_repo, remove_worktree, worktree_root

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
