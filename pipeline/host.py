"""SSH access to a Xen host from its inventory entry, with strict host-key checking.

Commands are argument lists; the remote side runs them through the login shell,
so every argument is quoted with `shlex.join` — no shell string is ever built
from data. Host keys are checked against the host's known_hosts file
(paramiko's RejectPolicy): an unknown or changed key is an error, never added.
"""

from __future__ import annotations

import functools
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import paramiko

from .config import HostConfig
from .errors import HostError
from .interrupt import deferred_sigint

P = ParamSpec("P")
R = TypeVar("R")

EXEC_ANSWER_S = 60.0  # how long sshd may take to answer an exec request, even on a loaded TCG host
QUERY_TRIES = 3  # a read-only command killed by a signal is run again (xl crashes now and then in the lab)
CONNECT_TRIES = 3  # a handshake broken in transit is tried again; a refused key or login never is
# how a command killed by a signal ends: no exit status (-1) or, via a shell, 128 + SIGILL/ABRT/BUS/SEGV
_SIGNAL_DEATH = {-1, 132, 134, 135, 139}


def killed_by_signal(rc: int) -> bool:
    """Whether a remote command's rc says it crashed rather than answered."""
    return rc in _SIGNAL_DEATH


class _NoAnswer(Exception):
    """The host never answered an exec request."""


class _UnknownHostKey(paramiko.SSHException):
    """The host's key is not in known_hosts (never retried, never added)."""


class _RejectUnknown(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, with an error type `connect` can tell from a damaged handshake."""

    def missing_host_key(self, client, hostname, key) -> None:
        try:
            super().missing_host_key(client, hostname, key)
        except paramiko.SSHException as e:
            raise _UnknownHostKey(str(e)) from None


def _whole(method: Callable[P, R]) -> Callable[P, R]:
    """Ctrl-C waits until the host operation ends: a command abandoned half-way on the host (an
    `xl create`, an `insmod`) leaves state the cleanup cannot see, and an SFTP request cut
    short leaves the session out of step for the cleanup's own requests."""

    @functools.wraps(method)
    def whole(*args: P.args, **kwargs: P.kwargs) -> R:
        with deferred_sigint():
            return method(*args, **kwargs)

    return whole


class Host:
    """One SSH connection to a host; `run` executes an argument list and returns (rc, out, err)."""

    def __init__(self, config: HostConfig, connect_timeout: float = 15.0):
        self.config = config
        self.name = config.name
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # ------------------------------------------------------------ connection

    def connect(self) -> Host:
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self
            self.close()
        cfg = self.config
        if not cfg.known_hosts or not Path(cfg.known_hosts).expanduser().is_file():
            raise HostError(
                f"host {cfg.name}: known_hosts file {cfg.known_hosts or '(not set)'} missing; host keys are always checked"
            )
        kwargs: dict = dict(
            hostname=cfg.address,
            port=cfg.port,
            username=cfg.user,
            timeout=self.connect_timeout,
            banner_timeout=self.connect_timeout,
            auth_timeout=self.connect_timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        if cfg.key:
            kwargs["key_filename"] = str(Path(cfg.key).expanduser())
        for attempt in range(1, CONNECT_TRIES + 1):
            client = paramiko.SSHClient()
            client.load_host_keys(str(Path(cfg.known_hosts).expanduser()))
            client.set_missing_host_key_policy(_RejectUnknown())  # strict: an unknown key is an error
            try:
                client.connect(**kwargs)
                break
            except paramiko.BadHostKeyException as e:
                client.close()
                raise HostError(
                    f"host {cfg.name}: host key of {cfg.address}:{cfg.port} does not match {cfg.known_hosts}: {e}"
                ) from None
            except (paramiko.AuthenticationException, _UnknownHostKey) as e:
                client.close()
                raise HostError(f"host {cfg.name}: ssh to {cfg.user}@{cfg.address}:{cfg.port} failed: {e}") from None
            except paramiko.SSHException as e:
                # a handshake damaged in transit ("Signature verification (ssh-ed25519) failed",
                # "Error reading SSH protocol banner", seen in the lab under load): every attempt
                # checks the host key again, so trying again trusts nothing new
                client.close()
                if attempt == CONNECT_TRIES:
                    raise HostError(
                        f"host {cfg.name}: ssh to {cfg.user}@{cfg.address}:{cfg.port} failed: {e}"
                    ) from None
                time.sleep(attempt)
            except OSError as e:
                client.close()
                raise HostError(f"host {cfg.name}: cannot reach {cfg.address}:{cfg.port}: {e}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self._client = client
        return self

    def close(self) -> None:
        self._reset_sftp()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connected(self) -> paramiko.SSHClient:
        """The live SSH client, (re)connecting first if needed: commands and SFTP both start here."""
        self.connect()
        assert self._client is not None
        return self._client

    def _reset_sftp(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - closing a dead or broken session
                pass
            self._sftp = None

    def __enter__(self) -> Host:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ commands

    @_whole
    def run(
        self,
        argv: list[str],
        timeout: float = 60.0,
        check: bool = True,
        stdin: str | None = None,
    ) -> tuple[int, str, str]:
        """Run argv on the host. rc 124 on timeout (when check is False); HostError when check and rc != 0.

        A Ctrl-C waits for the command to end (at most `timeout`): see `_whole`.
        """
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a non-empty list of str, got {argv!r}")
        client = self._connected()
        command = shlex.join(argv)
        transport = client.get_transport()
        if transport is None:
            raise HostError(f"host {self.name}: ssh connection lost")
        try:
            chan = self._start(transport, command, stdin)
        except _NoAnswer:
            self.close()  # the command may have started: never run it twice
            raise HostError(
                f"host {self.name}: no answer to `{command}` within {EXEC_ANSWER_S:.0f} s; connection reset"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            # a transport that died under load ("Invalid packet blocking", "Garbage packet"):
            # the command did not start, so one fresh connection is safe to try
            self.close()
            try:
                chan = self._start(self._connected().get_transport(), command, stdin)
            except (paramiko.SSHException, OSError, EOFError, HostError):
                raise HostError(f"host {self.name}: cannot run {argv[0]}: {e}") from None
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        timed_out = False
        while True:
            progressed = False
            while chan.recv_ready():
                out += chan.recv(65536)
                progressed = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                progressed = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if not chan.get_transport().is_active():
                self.close()
                raise HostError(f"host {self.name}: ssh connection lost while running `{command}`")
            if time.monotonic() > deadline:
                timed_out = True
                break
            if not progressed:
                time.sleep(0.05)
        rc = 124 if timed_out else chan.recv_exit_status()
        chan.close()
        sout, serr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and (timed_out or rc != 0):
            raise self.failed(argv, rc, sout, serr, timeout if timed_out else None)
        return rc, sout, serr

    def failed(self, argv: list[str], rc: int, out: str, err: str, timed_out_after: float | None = None) -> HostError:
        """The error for a command that did not succeed, naming it, how it ended and its last line."""
        if timed_out_after is not None:
            what = f"timed out after {timed_out_after:.0f} s"
        elif rc == -1:  # OpenSSH reports a signal death as exit-signal, which paramiko leaves at -1
            what = "ended without an exit status (killed by a signal?)"
        else:
            what = f"exited {rc}"
        detail = (err.strip() or out.strip()).splitlines()
        return HostError(f"host {self.name}: `{shlex.join(argv)}` {what}" + (f": {detail[-1]}" if detail else ""))

    def _start(self, transport, command: str, stdin: str | None) -> paramiko.Channel:
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("ssh connection lost")
        # paramiko waits for the answer to an exec request without a time limit; a reply lost
        # on a damaged stream (seen in the lab under load) would hang the run for good
        fired = threading.Event()

        def reset() -> None:
            fired.set()
            transport.close()

        watchdog = threading.Timer(EXEC_ANSWER_S, reset)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.settimeout(1.0)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin.encode())
            chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError):
            if fired.is_set():
                raise _NoAnswer() from None
            raise
        finally:
            watchdog.cancel()
        return chan

    def query(self, argv: list[str], timeout: float = 60.0, check: bool = False) -> tuple[int, str, str]:
        """Run a read-only command (`xl list`, `xenstore-ls`): one killed by a signal is run again.

        The toolstack crashes now and then (xl segfaults in libc, seen in the emulated lab); a query
        changes nothing, so running it again is safe. A command that changes the host never goes here.
        """
        for attempt in range(1, QUERY_TRIES + 1):
            rc, out, err = self.run(argv, timeout=timeout, check=False)
            if not killed_by_signal(rc) or attempt == QUERY_TRIES:
                break
            time.sleep(0.5 * attempt)
        if check and rc != 0:
            raise self.failed(argv, rc, out, err, timeout if rc == 124 else None)
        return rc, out, err

    def out(self, argv: list[str], timeout: float = 60.0) -> str:
        """stdout of a read-only command that must succeed, stripped (see `query`)."""
        return self.query(argv, timeout=timeout, check=True)[1].strip()

    # ------------------------------------------------------------ files

    def sftp(self) -> paramiko.SFTPClient:
        client = self._connected()
        if self._sftp is None:
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(120)  # no SFTP call may hang the run
        return self._sftp

    @_whole
    def put(self, local: Path | str, remote: str) -> None:
        try:
            self.sftp().put(str(local), remote)
        except (OSError, paramiko.SSHException) as e:
            raise HostError(f"host {self.name}: upload of {local} to {remote} failed: {e}") from None

    @_whole
    def get(self, remote: str, local: Path | str) -> None:
        try:
            self.sftp().get(remote, str(local))
        except (OSError, paramiko.SSHException) as e:
            raise HostError(f"host {self.name}: download of {remote} failed: {e}") from None

    @_whole
    def read_text(self, remote: str) -> str | None:
        """Contents of a remote file, None if it does not exist.

        One retry on a fresh SFTP session: a long-lived session occasionally fails with
        "Garbage packet received" on a file that is being appended to (guest console logs).
        """
        for attempt in (1, 2):
            try:
                with self.sftp().open(remote, "r") as fh:
                    return fh.read().decode(errors="replace")
            except FileNotFoundError:
                return None
            except (OSError, paramiko.SSHException, paramiko.sftp.SFTPError, EOFError) as e:
                self._reset_sftp()
                if attempt == 2:
                    raise HostError(f"host {self.name}: cannot read {remote}: {e}") from None
        return None

    @_whole
    def write_text(self, remote: str, text: str) -> None:
        try:
            with self.sftp().open(remote, "w") as fh:
                fh.write(text.encode())
        except (OSError, paramiko.SSHException) as e:
            raise HostError(f"host {self.name}: cannot write {remote}: {e}") from None

    def write_sysfs(self, path: str, value: str) -> None:
        """Write a value to a sysfs/proc file (through `tee`, the value on stdin).

        Once seen in the lab (CI): `tee: standard input: Bad file descriptor`, the value never read,
        so never written; that one case gets a second try. Our values (sriov_numvfs, autoprobe) are
        idempotent, so even a write that did land is safe to repeat."""
        argv = ["tee", path]
        rc, out, err = self.run(argv, stdin=f"{value}\n", timeout=120, check=False)
        if rc != 0 and "tee: standard input:" in err:
            rc, out, err = self.run(argv, stdin=f"{value}\n", timeout=120, check=False)
        if rc != 0:
            raise self.failed(argv, rc, out, err, 120 if rc == 124 else None)

    @_whole
    def exists(self, remote: str) -> bool:
        try:
            self.sftp().stat(remote)
            return True
        except FileNotFoundError:
            return False
        except (OSError, paramiko.SSHException, paramiko.sftp.SFTPError, EOFError) as e:
            self._reset_sftp()
            raise HostError(f"host {self.name}: cannot stat {remote}: {e}") from None

    def mkdir_p(self, remote: str) -> None:
        self.run(["mkdir", "-p", remote])
