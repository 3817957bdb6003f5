"""The OpenSSH client to the lab's dom0 (strict host keys, the lab's own key), with a retry when
the handshake was damaged in transit."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Sequence

from .. import absorbed
from ..config import HostConfig
from ..errors import LabError
from ..statuses import FaultKind


def ssh_argv(host: HostConfig, *, tty: bool = False) -> list[str]:
    """ssh options for a host: its key, strict checking against its known_hosts only."""
    argv = ["ssh", "-F", "none", "-p", str(host.port)]
    if host.key:
        argv += ["-i", host.key, "-o", "IdentitiesOnly=yes"]
    if host.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    argv += [
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=INFO",  # ERROR hides why a connection died ("incorrect signature" is logged at INFO)
        "-o",
        "ServerAliveInterval=15",
    ]
    argv += ["-t"] if tty else ["-o", "BatchMode=yes", "-T"]
    return [*argv, f"{host.user}@{host.address}"]


SSH_HANDSHAKE_TRIES = 3
# what OpenSSH says when the key exchange failed, before any command could run
_HANDSHAKE_FAILED = re.compile(r"incorrect signature|kex_exchange_identification|banner exchange")


def run_ssh(
    host: HostConfig,
    command: str | Sequence[str],
    *,
    timeout: float = 120,
    check: bool = False,
    input: str | None = None,
    polling: bool = False,
) -> subprocess.CompletedProcess:
    """Run a command in the host's shell; a list is quoted word by word. `polling`: the caller asks
    again anyway (waiting for a booting dom0, whose sshd is not up yet): one try, and a failed
    handshake is the wait, not a fault absorbed."""
    cmd = command if isinstance(command, str) else shlex.join(command)
    for attempt in range(1, 1 + (1 if polling else SSH_HANDSHAKE_TRIES)):
        try:
            proc = subprocess.run(
                [*ssh_argv(host), cmd], capture_output=True, text=True, timeout=timeout, input=input, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise LabError(f"ssh {host.name}: `{cmd}` timed out after {timeout:.0f}s") from e
        # a handshake damaged in transit (seen in the lab under load): the command never started
        if (
            proc.returncode != 255
            or not _HANDSHAKE_FAILED.search(proc.stderr)
            or polling
            or attempt == SSH_HANDSHAKE_TRIES
        ):
            break
        absorbed.record(FaultKind.HANDSHAKE_BROKEN, host.name, f"ssh {cmd}", absorbed.of_exit(255, proc.stderr))
        time.sleep(attempt)
    if check and proc.returncode != 0:
        out = " | ".join(x for x in (proc.stdout.strip(), proc.stderr.strip()) if x).replace("\n", " | ")
        raise LabError(f"ssh {host.name}: `{cmd}` exited {proc.returncode}: {out[-600:]}")
    return proc
