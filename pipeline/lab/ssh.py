"""The OpenSSH command line to the lab's dom0 (strict host keys, the lab's own key), for the
interactive `invoke lab.ssh` only: everything the pipeline and its tests do on a host goes
through pipeline.host.Host (paramiko), one SSH stack with one set of retry rules."""

from __future__ import annotations

from ..config import HostConfig


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
