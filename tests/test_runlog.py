"""run.log: progress lines stamped into the run directory; a library's log records go there only."""

from __future__ import annotations

import subprocess
import sys

from pipeline import PROJECT_ROOT
from pipeline.runlog import RunLog


def test_lines_said_before_the_directory_existed_are_written_first(tmp_path):
    said = []
    log = RunLog(said.append)
    log("series: x v1")
    log.open(tmp_path / "run.log")
    log("run 1: here")
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["series: x v1", "run 1: here"]
    assert said == ["series: x v1", "run 1: here"]


_TRANSPORT_THREAD = """
import logging, sys, threading
from pipeline import host
from pipeline.runlog import RunLog

def transport_thread():  # how paramiko.Transport.run reports a broken stream
    t = logging.getLogger("paramiko.transport")
    t.error("Exception (client): Invalid packet blocking")
    t.error("Traceback (most recent call last):")

log = RunLog(print)
log.open(sys.argv[1])
with log.capture("paramiko"):
    th = threading.Thread(target=transport_thread)
    th.start()
    th.join()
transport_thread()  # outside a run: dropped (the caller's HostError says what broke)
"""


def test_a_transport_thread_traceback_goes_to_the_log_not_the_terminal(tmp_path):
    # in a process of its own: pytest's log capture would hide what Python prints without a handler
    proc = subprocess.run(
        [sys.executable, "-c", _TRANSPORT_THREAD, str(tmp_path / "run.log")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    text = (tmp_path / "run.log").read_text()
    assert text.count("paramiko: error: Exception (client): Invalid packet blocking") == 1
    assert "paramiko: error: Traceback (most recent call last):" in text
