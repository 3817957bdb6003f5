"""`invoke hosts.run`: files put on an inventory host, then one command run there, over the
pipeline's own SSH (pipeline.host.Host: the entry's address, user, key, known_hosts, ssh_config
and jump hosts; the built-in lab's port and key from its state). The reproduce recipes use it, so
a maintainer types the same line for the lab and for a real host, by its inventory name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import providers
from .config import Settings
from .errors import ConfigError, HostError
from .host import Host
from .util import Progress
from .util import noprogress as _quiet


@dataclass(frozen=True)
class Put:
    local: Path
    remote: str


def parse_put(spec: str) -> Put:
    """`LOCAL:/REMOTE/PATH` (the last colon splits: a local name may hold one, a remote path is absolute)."""
    local, sep, remote = spec.rpartition(":")
    if not sep or not local or not remote.startswith("/"):
        raise ConfigError(f"--put {spec!r}: expected LOCAL:/ABSOLUTE/REMOTE/PATH")
    if not Path(local).is_file():
        raise ConfigError(f"--put {spec!r}: no file {local}")
    return Put(Path(local), remote)


@dataclass
class Ran:
    rc: int
    stdout: str
    stderr: str


def run_on_host(
    settings: Settings,
    name: str,
    puts: list[Put],
    command: str = "",
    timeout: float = 600.0,
    progress: Progress = _quiet,
) -> Ran:
    """Put the files, then run `command` with the host's shell (what a user typed: a string, never data)."""
    if name not in settings.hosts:
        raise ConfigError(f"--host {name!r}: not in the inventory; have {', '.join(settings.hosts) or 'none'}")
    provider = providers.of_host(settings, name)
    cfg = provider.running_config()  # never starts anything: a lab that is down says so
    if cfg is None:
        raise HostError(provider.not_running, host=name)
    with Host(cfg) as h:
        for p in puts:
            h.put(p.local, p.remote)
            progress(f"{name}: put {p.local} -> {p.remote}")
        if not command:
            return Ran(0, "", "")
        rc, out, err = h.run(["sh", "-c", command], timeout=timeout, check=False)
    return Ran(rc, out, err)
