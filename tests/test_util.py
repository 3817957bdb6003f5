"""pipeline/util.py: following a growing file, the HTTP retry policy's helpers."""

from __future__ import annotations

import requests

from pipeline.util import RETRY_AFTER_MAX_S, follow, origin, retry_after


def test_follow_yields_only_lines_appended_after_it_started(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("old line\n")
    waits: list[float] = []

    def sleep(s: float) -> None:  # the file grows while the follower waits
        waits.append(s)
        with open(log, "a") as fh:
            fh.write(f"new {len(waits)}\n")

    lines = follow(log, sleep=sleep)
    assert [next(lines), next(lines)] == ["new 1\n", "new 2\n"]
    assert waits == [0.5, 0.5]


def test_follow_of_a_missing_file_yields_nothing(tmp_path):
    assert list(follow(tmp_path / "none.log", sleep=lambda s: None)) == []


def test_origin_makes_the_default_port_explicit():
    assert origin("HTTPS://Patchwork.Example.org/api/") == ("https", "patchwork.example.org", 443)
    assert origin("http://127.0.0.1:8080/x") == ("http", "127.0.0.1", 8080)


def test_retry_after_is_bounded_and_falls_back():
    resp = requests.Response()
    resp.headers["Retry-After"] = "2"
    assert retry_after(resp, 1.0) == 2.0
    resp.headers["Retry-After"] = "3600"
    assert retry_after(resp, 1.0) == RETRY_AFTER_MAX_S
    resp.headers["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after(resp, 1.5) == 1.5


def test_file_lock_makes_a_second_holder_wait_and_says_so_once(tmp_path):
    import threading

    from pipeline.util import file_lock

    lock = tmp_path / "sub" / "x.lock"  # its folder is made
    events, said = [], []
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with file_lock(lock, lambda: said.append("waiting")):
            events.append("second in")

    t = threading.Thread(target=second)
    t.start()
    with file_lock(lock):
        inside.set()
        while not said:  # the second holder found the lock taken
            threading.Event().wait(0.01)
        events.append("first out")
    t.join()
    assert events == ["first out", "second in"] and said == ["waiting"]
    with file_lock(lock, lambda: said.append("again")):  # free now: no waiting said
        pass
    assert said == ["waiting"]
