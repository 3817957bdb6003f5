"""pipeline/fetch.py without git: the shared object cache's lock."""

from __future__ import annotations

import fcntl
import threading

import pytest

from pipeline import fetch, interrupt
from pipeline.config import Settings
from pipeline.errors import FetchError


@pytest.fixture
def ctrl_c():
    interrupt._requested.set()
    yield
    interrupt._requested.clear()


def test_no_fetch_starts_after_ctrl_c_while_another_holds_the_lock(tmp_path, ctrl_c):
    s = Settings(cache_dir=str(tmp_path))
    lock = fetch.cache_path(s).parent / "fetch.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the row ahead, fetching
        with pytest.raises(FetchError, match="interrupted before the fetch started"):
            with fetch._cache_lock(s, timeout_s=3600, starts_work=True):
                pytest.fail("the lock was taken after Ctrl-C")


def test_no_fetch_starts_after_ctrl_c_once_the_lock_is_free(tmp_path, ctrl_c):
    s = Settings(cache_dir=str(tmp_path))
    with pytest.raises(FetchError):
        with fetch._cache_lock(s, starts_work=True):
            pytest.fail("the lock was taken after Ctrl-C")
    # and the lock was not left held: another thread, with no Ctrl-C on record, takes it
    interrupt._requested.clear()
    got = []

    def take():
        with fetch._cache_lock(s, timeout_s=5):
            got.append("taken")

    t = threading.Thread(target=take)
    t.start()
    t.join(10)
    assert got == ["taken"]


def test_cleanup_still_takes_the_lock_after_ctrl_c(tmp_path, ctrl_c):
    # the sweep of an interrupted run removes its worktrees under the lock (a CI run caught the
    # first version refusing it too: exit 5 "interrupted before the fetch started" instead of 130)
    s = Settings(cache_dir=str(tmp_path))
    with fetch._cache_lock(s, timeout_s=5):
        pass
