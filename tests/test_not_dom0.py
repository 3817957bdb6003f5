"""Bad input "a host that is not a Xen dom0", against a real one: this machine, over a real sshd.

The fixture starts OpenSSH's sshd as a child process on a free port of 127.0.0.1 with its
own config, a fresh host key, a fresh client key and a known_hosts file holding that host
key for [127.0.0.1]:PORT (host keys are checked as always; nothing is auto-accepted). An
inventory entry points at it. This machine has no /proc/xen/capabilities, so:

- the API (`deploy.not_dom0_reason`, `deploy.preflight`) returns the reason, read over SSH;
- `invoke verify` builds the module (headers mode, no lab: `headers: auto` reads the release
  the last lab build recorded, else takes the newest installed linux-headers-*-amd64), then
  refuses the host before taking its lock: exit 72, one line, deploy `skipped`;
- nothing was written to the "host": no lock directory (/run/pciback-verify), no staging
  directory, xen_pciback neither loaded nor unloaded.

As root, sshd needs its privilege-separation directory /run/sshd (compiled in); the fixture
creates it when missing, as Debian's init script does, and leaves it.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline import PROJECT_ROOT
from pipeline.config import HostConfig
from pipeline.deploy import MARKER_DIR, STAGING, SYS_MODULE, not_dom0_reason, preflight
from pipeline.errors import HostError
from pipeline.host import Host
from pipeline.hostlock import LOCK_PARENT
from pipeline.results import BuildResult

SSHD = Path("/usr/sbin/sshd")
DEBIAN = PROJECT_ROOT / ".cache" / "debian-linux.git"
HOST = "notdom0"
KERNEL = "debian-6.1"
REASON = f"{HOST} is not a Xen dom0 (/proc/xen/capabilities has no control_d)"
NOT_DOM0_EXIT = 72  # docs/bad-input.md


def _in_ci() -> bool:
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


def _start_sshd(d: Path, port: int) -> tuple[subprocess.Popen, Path]:
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


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> SshServer:
    if not SSHD.is_file():
        msg = f"{SSHD} missing: apt-get install openssh-server (deps/apt.txt)"
        if _in_ci():
            pytest.fail(msg + "; CI must run this test")
        pytest.skip(msg)
    caps = Path("/proc/xen/capabilities")
    if caps.is_file() and "control_d" in caps.read_text():
        pytest.skip("this machine is a Xen dom0: it cannot stand for a host that is not one")
    d = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(d / "ssh_host_ed25519_key", "pv-test-host")
    client_pub = _keygen(d / "id_ed25519", "pv-test-client")
    (d / "authorized_keys").write_text(client_pub + "\n")
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        Path("/run/sshd").mkdir(mode=0o755)  # sshd's compiled-in privsep dir, as Debian's init creates it
    for _ in range(3):  # the free port may be taken between probe and bind: another one then
        port = _free_port()
        proc, log = _start_sshd(d, port)
        if _wait_listening(proc, port, log):
            break
    else:
        pytest.fail(f"sshd would not start: {log.read_text()[-2000:]}")
    known_hosts = d / "known_hosts"
    key_type, key_b64 = host_pub.split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    hc = HostConfig(
        name=HOST,
        address="127.0.0.1",
        port=port,
        user=pwd.getpwuid(os.geteuid()).pw_name,
        key=str(d / "id_ed25519"),
        known_hosts=str(known_hosts),
        pf_bdf="0000:01:00.0",
        max_vfs=3,
    )
    try:
        yield SshServer(proc=proc, port=port, log=log, host_config=hc)
    finally:
        _stop(proc)


def _host_state() -> dict:
    """What a deploy to this machine would change: lock/marker dir, staging dir, loaded xen_pciback."""
    lsmod = subprocess.run(["lsmod"], capture_output=True, text=True, check=False).stdout
    return {
        "lock_dir": Path(LOCK_PARENT).exists(),
        "marker_dir": Path(MARKER_DIR).exists(),
        "staging": Path(STAGING).exists(),
        "sys_module": Path(SYS_MODULE).exists(),
        "lsmod_xen_pciback": [line for line in lsmod.splitlines() if line.split()[:1] == ["xen_pciback"]],
    }


@pytest.fixture
def untouched_host():
    """This machine as the host: nothing of a deploy may be there before (else skip) or after the test."""
    for path in sorted({LOCK_PARENT, MARKER_DIR, STAGING}):
        if Path(path).exists():
            pytest.skip(f"{path} exists on this machine already (another run's lock or staging?); not touching it")
    before = _host_state()
    yield
    after = _host_state()
    assert after == before, f"the host changed: {before} -> {after}"
    assert not Path(LOCK_PARENT).exists() and not Path(STAGING).exists()


# ---------------------------------------------------------------- API


def test_host_key_is_checked(sshd, tmp_path):
    """The fixture's host is reached with strict host-key checking: without its key, no connection."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    hc = HostConfig(**{**sshd.host_config.__dict__, "known_hosts": str(empty)})
    with pytest.raises(HostError, match=rf"Server '\[127\.0\.0\.1\]:{sshd.port}' not found in known_hosts"):
        Host(hc).connect()


def test_not_dom0_reason_and_preflight_over_ssh(sshd, tmp_path, untouched_host):
    with Host(sshd.host_config) as host:
        assert host.out(["uname", "-r"]) == os.uname().release  # really this machine, over SSH
        assert not_dom0_reason(host) == REASON
        ko = tmp_path / "xen-pciback.ko"  # preflight checks the host before it looks inside the module
        ko.write_bytes(b"")
        build = BuildResult(status="ok", mode="headers", module=str(ko), vermagic="6.1.0-56-amd64 SMP mod_unload")
        assert preflight(host, build, 3) == REASON
    log = sshd.log_text()
    assert "Accepted publickey for" in log and "Starting session: subsystem 'sftp'" in log, log[-2000:]
    pid = sshd.log.parent / "sshd.pid"  # the server's own files stay in its temporary folder
    assert int(pid.read_text().split()[0]) == sshd.proc.pid


# ---------------------------------------------------------------- CLI


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(
        INVOKE_PV_RESULTS_ROOT=str(tmp_path / "runs"),
        HOME=str(tmp_path / "home"),  # no ~/.invoke.yaml of whoever runs the tests
        PYTHONUNBUFFERED="1",
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@pytest.mark.kernel
@pytest.mark.build
def test_verify_refuses_a_host_that_is_not_a_dom0(sshd, tmp_path, untouched_host):
    if not (DEBIAN / "HEAD").exists():
        pytest.skip("Debian 6.1 source not imported: `invoke source.import`")
    hc = sshd.host_config
    host_entry = {k: getattr(hc, k) for k in ("address", "port", "user", "key", "known_hosts", "pf_bdf", "max_vfs")}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "pv": {
                    "hosts": {HOST: host_entry},
                    "matrices": {
                        "default": [
                            {
                                "name": KERNEL,
                                "remote": ".cache/debian-linux.git",
                                "ref": "debian-6.1",
                                "build": {"mode": "headers", "headers": "auto"},
                                "hosts": [HOST],
                            }
                        ]
                    },
                }
            }
        )
    )
    log_start = len(sshd.log_text())
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(cfg), "verify", "--kernel", KERNEL],
        cwd=PROJECT_ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == NOT_DOM0_EXIT, (proc.returncode, out[-3000:])
    assert "Traceback" not in out
    final = f"{KERNEL}: not deployed to {HOST}: {REASON}"
    assert proc.stderr.strip().splitlines()[-1] == final, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith(f"{KERNEL}: not deployed")] == [final]
    assert f"{KERNEL} on {HOST}: skipped: {REASON}" in proc.stderr.splitlines()

    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    res = json.loads((run / "results.json").read_text())
    (k,) = res["kernels"]
    assert k["name"] == KERNEL and k["build"]["status"] == "ok", k["build"]
    (dep,) = k["deploy"]
    assert (dep["status"], dep["host"], dep["detail"]) == ("skipped", HOST, REASON), dep
    assert k["error_code"] == NOT_DOM0_EXIT and not k["tests"]
    assert res["status"] == "complete" and res["hosts"] == [HOST]  # the lab was not part of the run
    # it did ask this machine, over SSH; the refusal read one file (SFTP) and ran no command on the
    # host: no `mkdir` of the lock, no upload, no modprobe (sshd logs every exec request)
    log = sshd.log_text()[log_start:]
    assert "Accepted publickey for" in log and "Starting session: subsystem 'sftp'" in log, log
    assert "Starting session: command" not in log, log
