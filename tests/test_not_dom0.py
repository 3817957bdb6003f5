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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from local_sshd import SshServer, serve

from pipeline import PROJECT_ROOT
from pipeline.config import HostConfig
from pipeline.deploy import MARKER_DIR, STAGING, SYS_MODULE, not_dom0_reason, preflight
from pipeline.errors import HostError
from pipeline.host import Host
from pipeline.hostlock import LOCK_PARENT
from pipeline.results import BuildResult

DEBIAN = PROJECT_ROOT / ".cache" / "debian-linux.git"
HOST = "notdom0"
KERNEL = "debian-6.1"
REASON = f"{HOST} is not a Xen dom0 (/proc/xen/capabilities has no control_d)"
NOT_DOM0_EXIT = 72  # docs/bad-input.md


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    caps = Path("/proc/xen/capabilities")
    if caps.is_file() and "control_d" in caps.read_text():
        pytest.skip("this machine is a Xen dom0: it cannot stand for a host that is not one")
    with serve(tmp_path_factory.mktemp("sshd"), HOST) as server:
        yield server


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
