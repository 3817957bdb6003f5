"""pipeline.host.Host against a real OpenSSH server on 127.0.0.1 (tests/local_sshd.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from local_sshd import SshServer, serve

from pipeline.errors import HostError
from pipeline.host import Host


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    with serve(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def test_a_command_killed_by_a_signal_is_told_apart_from_an_exit_code(sshd):
    with Host(sshd.host_config) as host:
        # OpenSSH reports a signal death as exit-signal, not exit-status: paramiko leaves rc at -1
        rc, _, _ = host.run(["sh", "-c", 'kill -SEGV "$$"'], check=False)
        assert rc == -1
        with pytest.raises(HostError, match=r"ended without an exit status \(killed by a signal\?\)"):
            host.run(["sh", "-c", 'kill -SEGV "$$"'])
        assert host.run(["sh", "-c", "exit 3"], check=False)[0] == 3


def test_ctrl_c_waits_for_the_remote_command_in_flight(sshd, tmp_path):
    """A Ctrl-C while a host command runs lets it finish (nothing half-done on the host), then stops."""
    done = tmp_path / "done"
    script = f"""
import os, signal, sys, threading
sys.path.insert(0, {str(os.getcwd())!r})
from pipeline.config import HostConfig
from pipeline.host import Host
hc = HostConfig(**{sshd.host_config.__dict__!r})
h = Host(hc).connect()
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    h.run(["sh", "-c", "sleep 3; touch {done}"], timeout=30)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted after the command", os.path.exists({str(done)!r}))
"""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.stdout.strip() == "interrupted after the command True", proc.stdout + proc.stderr
    assert "Ctrl-C: finishing the host step in progress, then stopping" in proc.stderr
    assert 3 <= elapsed < 30
