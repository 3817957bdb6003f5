"""Small helpers several modules share: the progress callback type and its no-op, the Jinja2
environment for pipeline/templates, the host's state directory, XML-safe text, following a growing
file, the HTTP retry policy, an exclusive file lock between processes."""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import requests

from . import TEMPLATES

# on a host: the deploy marker, staging, lock and test guests of this pipeline (tmpfs: a reboot clears it)
STATE_DIR = "/run/pciback-verify"

# a stage's progress messages: one line each, for the terminal
Progress = Callable[[str], None]


def noprogress(msg: str) -> None:
    """The progress callback of a caller that wants no messages."""


@contextlib.contextmanager
def file_lock(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive flock on `path` (made with its folder when missing) until the block ends, between
    processes and between threads (each open is its own lock); `waiting` is called once when another
    holder makes this one wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                waiting()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def templates(folder: str = "", autoescape: Any = False) -> jinja2.Environment:
    """The environment for pipeline/templates/<folder>: undefined names fail, block tags take their line."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES / folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=autoescape,  # off by default: shell scripts, xl configs, mails, Markdown
    )


def render(folder: str, template: str, **ctx: Any) -> str:
    return templates(folder).get_template(template).render(**ctx)


_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def xmlsafe(value: Any) -> str:
    """The text without the control characters XML 1.0 cannot carry (junit.xml, KCIDB log excerpts)."""
    return _CTRL.sub("", str(value))


def follow(
    path: Path,
    sleep: Callable[[float], None] = time.sleep,
    every_s: float = 0.5,
    from_start: bool = False,
    until: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """The lines appended to `path` from now on (`from_start`: from its first line), as they come
    (`tail -f`). Ends when the caller stops (e.g. Ctrl-C), or once `until()` is true and what was
    written before it has been read. Nothing when the file does not exist."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        if not from_start:
            fh.seek(0, 2)
        while True:
            line = fh.readline()
            if line:
                yield line
            elif until is not None and until():
                yield from iter(fh.readline, "")  # written between the last read and the end
                return
            else:
                sleep(every_s)


# HTTP to patchwork and GitLab (intake.py, post.py)
RETRIES = 4  # attempts on 429 / 5xx / connection errors, with backoff
BACKOFF_S = 1.0  # first wait; doubles; a Retry-After up to RETRY_AFTER_MAX_S is honoured instead
RETRY_AFTER_MAX_S = 30.0


def origin(url: str) -> tuple[str, str, int]:
    """scheme, host, port of a URL (the default port made explicit)."""
    u = urllib.parse.urlsplit(url)
    port = u.port or {"http": 80, "https": 443}.get(u.scheme, 0)
    return u.scheme.lower(), (u.hostname or "").lower(), port


def retry_after(resp: requests.Response, default: float) -> float:
    """The wait a 429/5xx answer asks for (Retry-After, at most RETRY_AFTER_MAX_S), else `default`."""
    try:
        return min(float(resp.headers.get("Retry-After", "")), RETRY_AFTER_MAX_S)
    except ValueError:
        return default
