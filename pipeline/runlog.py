"""`run.log` in each run directory: every progress line of the run, timestamped (UTC).

The terminal shows the same lines without the stamp; the log is what a CI job's artifacts keep
and what a maintainer reads after the fact. Lines said before the run directory existed (the
series line) are written first, with the time they were said.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


def stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunLog:
    """A progress callable that appends `<UTC time> <line>` to a file, then passes the line on."""

    def __init__(self, progress=None):
        self.inner = progress
        self.path: Path | None = None
        self.pending: list[str] = []
        self.lock = threading.Lock()  # rows report from worker threads

    def open(self, path: Path) -> None:
        with self.lock:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(self.pending)
            self.pending = []

    def __call__(self, msg: str) -> None:
        self.write_only(msg)
        if self.inner is not None:
            self.inner(msg)

    def write_only(self, msg: str) -> None:
        """Into the log file, not to the terminal."""
        lines = "".join(f"{stamp()} {line}\n" for line in str(msg).splitlines() or [""])
        with self.lock:
            if self.path is None:
                self.pending.append(lines)
            else:
                # a line per write, flushed at once: a killed run keeps what it said
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(lines)

    @contextmanager
    def capture(self, logger_name: str) -> Iterator[None]:
        """A library's log records (paramiko's transport thread prints a traceback when a stream
        breaks, which the host code already turns into a retry or a HostError) go to this log only."""
        handler = _ToRunLog(self, logger_name)
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)


class _ToRunLog(logging.Handler):
    def __init__(self, log: RunLog, prefix: str):
        super().__init__(logging.INFO)
        self.log, self.prefix = log, prefix

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write_only(f"{self.prefix}: {record.levelname.lower()}: {record.getMessage()}")
        except Exception:  # a log line never stops a run
            self.handleError(record)
