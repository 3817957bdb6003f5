"""A real OpenSSH server on 127.0.0.1 for tests: this machine, reached over SSH like a host.

`serve(dir, name)` starts `/usr/sbin/sshd` as a child process on a free port with its own
config, a fresh host key, a fresh client key and a known_hosts file holding that host key for
[127.0.0.1]:PORT (host keys are checked as always; nothing is auto-accepted), and yields an
`SshServer` whose `host_config` is an inventory entry for it. As root, sshd needs its
privilege-separation directory /run/sshd (compiled in); it is created when missing, as
Debian's init script does, and left.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import HostConfig

SSHD = Path("/usr/sbin/sshd")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclass
class SshServer:
    proc: subprocess.Popen
    port: int
    log: Path
    host_config: HostConfig

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start_sshd(d: Path, port: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    cfg = d / f"sshd_config.{port}"
    cfg.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'ssh_host_ed25519_key'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                *extra,
                "",
            ]
        )
    )
    log = d / f"sshd.{port}.log"
    with log.open("w") as fh:
        # own session: teardown ends sshd and the per-connection children it forked, nothing else
        proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 20) -> bool:
    """True once sshd answers with its banner; False when it exited (port taken: try another)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    _stop(proc)
    pytest.fail(f"sshd did not answer on 127.0.0.1:{port} within {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def serve(d: Path, name: str = "local", extra: tuple[str, ...] = ()) -> Iterator[SshServer]:
    """sshd on a free port of 127.0.0.1, its files in `d`; skipped (failed in CI) without sshd.
    `extra`: more sshd_config lines (tests/fakedom0: a ForceCommand)."""
    if not SSHD.is_file():
        msg = f"{SSHD} missing: apt-get install openssh-server (deps/apt.txt)"
        if in_ci():
            pytest.fail(msg + "; CI must run this test")
        pytest.skip(msg)
    host_pub = _keygen(d / "ssh_host_ed25519_key", "pv-test-host")
    client_pub = _keygen(d / "id_ed25519", "pv-test-client")
    (d / "authorized_keys").write_text(client_pub + "\n")
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        Path("/run/sshd").mkdir(mode=0o755)  # sshd's compiled-in privsep dir, as Debian's init creates it
    for _ in range(3):  # the free port may be taken between probe and bind: another one then
        port = _free_port()
        proc, log = _start_sshd(d, port, extra)
        if _wait_listening(proc, port, log):
            break
    else:
        pytest.fail(f"sshd would not start: {log.read_text()[-2000:]}")
    known_hosts = d / "known_hosts"
    key_type, key_b64 = host_pub.split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    hc = HostConfig(
        name=name,
        address="127.0.0.1",
        port=port,
        user=pwd.getpwuid(os.geteuid()).pw_name,
        key=str(d / "id_ed25519"),
        known_hosts=str(known_hosts),
        ssh_config="none",
        pf_bdf="0000:01:00.0",
        max_vfs=3,
    )
    try:
        yield SshServer(proc=proc, port=port, log=log, host_config=hc)
    finally:
        _stop(proc)


@dataclass
class DamagingProxy:
    """A TCP relay in front of a server that flips one byte of the server's key exchange.

    The first `damage` connections get the byte after the server's banner at `offset` (inside
    the KEXINIT cookie) flipped, as a damaged network path would: the client and the server then
    hash different transcripts and the client refuses the server's signature. `connections`
    counts the connections seen.
    """

    port: int
    connections: int = 0


@contextmanager
def damaging_proxy(target_port: int, damage: int, offset: int = 10) -> Iterator[DamagingProxy]:
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    proxy = DamagingProxy(port=listener.getsockname()[1])
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket, flip: bool) -> None:
        seen = b""
        flipped = not flip
        try:
            while data := src.recv(65536):
                if not flipped:
                    seen += data
                    end = seen.find(b"\r\n")  # the banner line ends the text part
                    at = end + 2 + offset if end >= 0 else -1
                    if 0 <= at < len(seen):
                        i = at - (len(seen) - len(data))
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                        flipped = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            proxy.connections += 1
            server = socket.create_connection(("127.0.0.1", target_port))
            damaged = proxy.connections <= damage
            threading.Thread(target=pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=pump, args=(server, client, damaged), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield proxy
    finally:
        stop.set()
        listener.close()
        t.join(timeout=5)
