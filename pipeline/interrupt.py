"""Ctrl-C and kill safety: stop what a run started, and sweep what an interrupted run left in the cache.

On SIGINT only the main thread sees KeyboardInterrupt; the rows' threads wait on
child processes (git, make in its own session) that a signal sent to our pid alone
never reaches. `stop_children` ends them so the rows return within seconds;
`fetch.sweep_run` then removes every worktree and branch of the run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
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


def stop_children(sig: int = signal.SIGTERM) -> list[int]:
    """Signal every child of this process; one leading its own process group (a build) as a group."""
    mine = os.getpgid(0)
    hit = []
    for pid in children(os.getpid()):
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


_requested = threading.Event()
_watching = False


def requested() -> bool:
    """Ctrl-C was pressed during this `watch_sigint` block (even if a cleanup error hid the KeyboardInterrupt)."""
    return _requested.is_set()


@contextmanager
def watch_sigint() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered (see `requested`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _watching
    _requested.clear()

    def note(signum, frame) -> None:
        if _requested.is_set():
            _already_stopping()
            return
        _requested.set()
        # said at once, like the deferred case: the host's cleanup that follows can take a while
        _to_stderr("Ctrl-C: stopping, putting back what the run changed first")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    _watching = True
    try:
        yield
    finally:
        _watching = False
        signal.signal(signal.SIGINT, previous or signal.default_int_handler)


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _already_stopping() -> None:
    # one Ctrl-C stops the run; more would cut the host's cleanup short, so they only say so
    _to_stderr(
        f"Ctrl-C: already stopping, putting the host back first (kill -9 {os.getpid()} forces it; "
        "the next run against that host then restores it)"
    )


class _Deferral:
    depth = 0
    pending = False
    previous: object = None
    notify: Callable[[str], None] | None = None


@contextmanager
def deferred_sigint(notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise KeyboardInterrupt.

    For what must not be cut in half on a host: a remote command in flight (an `xl create`
    abandoned mid-way would leave a domain behind), a teardown, a module restore. Nested
    blocks defer to the outermost one. Outside the main thread this is a no-op (only the
    main thread receives signals).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    st = _Deferral
    if st.depth == 0:
        if not _watching:  # no run around this block: an old Ctrl-C must not mute a new one
            _requested.clear()
        st.pending = False
        st.notify = notify or _to_stderr

        def hold(signum, frame) -> None:
            if _requested.is_set():
                _already_stopping()
                return
            _requested.set()
            st.notify("Ctrl-C: finishing the host step in progress, then stopping")
            st.pending = True

        st.previous = signal.signal(signal.SIGINT, hold)
    st.depth += 1
    try:
        yield
    finally:
        st.depth -= 1
        if st.depth == 0:
            signal.signal(signal.SIGINT, st.previous or signal.default_int_handler)
            if st.pending:
                st.pending = False
                raise KeyboardInterrupt
