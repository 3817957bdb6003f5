"""pipeline.host.Host against a real OpenSSH server on 127.0.0.1 (tests/local_sshd.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_sshd import SshServer, _free_port, _keygen, damaging_proxy, serve

from pipeline import absorbed
from pipeline.config import HostConfig
from pipeline.errors import HostError
from pipeline.host import Host, resolve


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


def test_output_that_comes_after_the_exit_status_is_read(sshd):
    """sshd sends exit-status when the command's process exits; output still in flight (here a child
    that holds stdout, as a loaded host's pipe can) follows it. All of it is read, up to the EOF."""
    with Host(sshd.host_config) as host:
        rc, out, err = host.run(["sh", "-c", "(sleep 1; echo late; echo late-err >&2) & echo early"])
        assert (rc, out.split(), err.split()) == (0, ["early", "late"], ["late-err"])
        assert host.out(["sh", "-c", "(sleep 1; readlink /proc/self/exe) &"]).endswith("readlink")


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
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    # order, not time: the command's own last step (touch) happened before the interrupt surfaced
    assert proc.stdout.strip() == "interrupted after the command True", proc.stdout + proc.stderr
    assert "Ctrl-C: finishing the host step in progress, then stopping" in proc.stderr


def test_a_query_killed_by_a_signal_runs_again_a_change_never(sshd, tmp_path):
    """`query`/`out` run a read-only command again when it crashed (xl in the lab); `run` does not."""
    flag = tmp_path / "crashed-once"
    crash_once = ["sh", "-c", f'if [ -e {flag} ]; then echo answer; else touch {flag}; kill -SEGV "$$"; fi']
    with Host(sshd.host_config) as host:
        assert host.out(crash_once) == "answer"
        flag.unlink()
        assert host.run(crash_once, check=False)[0] == -1  # run: once, as asked
        runs = tmp_path / "runs"
        always = ["sh", "-c", f'echo x >> {runs}; kill -SEGV "$$"']
        with pytest.raises(HostError, match=r"killed by a signal"):
            host.out(always)
        assert runs.read_text().count("x") == 3
        assert host.query(["sh", "-c", "exit 1"])[0] == 1  # a plain failure is an answer: not repeated


def _via(sshd, proxy_port: int, tmp_path) -> Host:
    known = tmp_path / "known_hosts_proxy"
    entry = (Path(sshd.host_config.known_hosts).read_text().split(maxsplit=1))[1]
    known.write_text(f"[127.0.0.1]:{proxy_port} {entry}")
    return Host(dataclasses.replace(sshd.host_config, port=proxy_port, known_hosts=str(known)))


def test_a_handshake_damaged_in_transit_is_tried_again(sshd, tmp_path):
    """One flipped byte in the server's key exchange (what CI saw from the lab: "Signature
    verification (ssh-ed25519) failed") costs one more handshake, not the run."""
    with damaging_proxy(sshd.port, damage=1) as proxy, _via(sshd, proxy.port, tmp_path) as host:
        assert host.out(["echo", "through"]) == "through"
        assert proxy.connections == 2
    with damaging_proxy(sshd.port, damage=99) as proxy:
        with pytest.raises(HostError, match=r"ssh to .* failed: .*(Signature verification|Negotiation|Incompatible)"):
            _via(sshd, proxy.port, tmp_path).connect()
        assert proxy.connections == 3


def test_a_refused_key_or_login_is_not_tried_again(sshd, tmp_path):
    with damaging_proxy(sshd.port, damage=0) as proxy:
        host = _via(sshd, proxy.port, tmp_path)
        Path(host.config.known_hosts).write_text("")
        with pytest.raises(HostError, match="not found in known_hosts"):
            host.connect()
        assert proxy.connections == 1
    with damaging_proxy(sshd.port, damage=0) as proxy:
        host = _via(sshd, proxy.port, tmp_path)
        _keygen(tmp_path / "other_key", "not-authorized")
        host.config = dataclasses.replace(host.config, key=str(tmp_path / "other_key"))
        with pytest.raises(HostError, match="Authentication failed"):
            host.connect()
        assert proxy.connections == 1


def test_a_probe_tries_once_and_records_nothing(sshd, tmp_path, monkeypatch, caplog):
    """`probe` (the lab's readiness poll while dom0 boots): a damaged handshake or a refused
    connection is the wait, one connection each, no fault on record and no paramiko traceback
    for run.log; an answer is an answer."""
    monkeypatch.delenv(absorbed.JOURNAL_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="paramiko")
    with absorbed.collect() as faults:
        with damaging_proxy(sshd.port, damage=1) as proxy:
            host = _via(sshd, proxy.port, tmp_path)
            with pytest.raises(HostError, match=r"ssh to .* failed"):
                host.probe(["echo", "through"])
            # what RunLog.capture("paramiko") would put in run.log
            assert proxy.connections == 1 and not [r for r in caplog.records if r.name.startswith("paramiko")]
            assert host.probe(["echo", "through"]) == (0, "through\n", "")  # the next poll
            assert host.probe(["sh", "-c", "exit 3"])[0] == 3 and proxy.connections == 2
            host.close()
        with pytest.raises(HostError, match="cannot reach"):
            Host(dataclasses.replace(sshd.host_config, port=_free_port())).probe(["true"])
    assert faults == []


# ---------------------------------------------------------------- ssh_config, ProxyJump, ssh-agent


def _host_key_line(sshd, port: int) -> str:
    """The sshd's host key as a known_hosts line for 127.0.0.1:port."""
    entry = Path(sshd.host_config.known_hosts).read_text().split(maxsplit=1)[1]
    return f"[127.0.0.1]:{port} {entry}"


def _jump_config(sshd, target_port: int, tmp_path, known: str) -> Path:
    """An ssh_config as people write it: the target is an alias reached through a jump-host alias."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"""Host pv-jump
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.host_config.user}
    IdentityFile {sshd.host_config.key}

Host pv-target
    HostName 127.0.0.1
    Port {target_port}
    User {sshd.host_config.user}
    IdentityFile {sshd.host_config.key}
    ProxyJump pv-jump

Host *
    UserKnownHostsFile {known}
"""
    )
    return cfg


def _aliased(name: str, cfg: Path) -> HostConfig:
    # nothing but the alias and the file: address, port, user, key, known_hosts and the jump all come from it
    return HostConfig(name=name, address="pv-target", ssh_config=str(cfg))


def test_resolve_reads_ssh_config_like_openssh(tmp_path):
    known = tmp_path / "kh"
    known.write_text("")
    cfg = tmp_path / "cfg"
    cfg.write_text(
        f"""Host t
    HostName 10.0.0.5
    Port 2201
    User admin
    IdentityFile ~/keys/t
    IdentitiesOnly yes
    ProxyJump ops@bastion:2222,j2
Host j2
    HostName 10.0.0.2
Host *
    User nobody-default
    UserKnownHostsFile {known}
"""
    )
    j1, j2, t = resolve(HostConfig(name="x", address="t", ssh_config=str(cfg)))
    assert (t.hostname, t.port, t.user, t.agent) == ("10.0.0.5", 2201, "admin", False)
    assert t.keys == [str(Path("~/keys/t").expanduser())] and t.known_hosts == [str(known)]
    assert (j1.alias, j1.hostname, j1.port, j1.user) == ("bastion", "bastion", 2222, "ops")
    assert (j2.hostname, j2.port, j2.user) == ("10.0.0.2", 22, "nobody-default")
    # the inventory's own values win over the file; "none" turns the jump off
    (t,) = resolve(HostConfig(name="x", address="t", port=22, user="root", proxy_jump="none", ssh_config=str(cfg)))
    assert (t.hostname, t.port, t.user) == ("10.0.0.5", 22, "root")
    with pytest.raises(HostError, match=r"known_hosts file /nonexistent missing for t; host keys are always checked"):
        resolve(HostConfig(name="x", address="t", ssh_config=str(cfg), known_hosts="/nonexistent"))


def test_an_ssh_config_alias_through_a_proxyjump_host(sshd, tmp_path):
    """Target and jump host both named only in an ssh_config; both host keys checked; the target is
    reached over the jump host's direct-tcpip channel (the counting relay sits in front of it)."""
    with damaging_proxy(sshd.port, damage=0) as target:
        known = tmp_path / "known_hosts"
        known.write_text(_host_key_line(sshd, sshd.port) + _host_key_line(sshd, target.port))
        cfg = _jump_config(sshd, target.port, tmp_path, known)
        with Host(_aliased("via-jump", cfg)) as host:
            assert host.out(["echo", "through the jump"]) == "through the jump"
            assert len(host._jumps) == 1
        assert target.connections == 1


@pytest.mark.parametrize("jump_key", ["unknown", "changed"])
def test_a_jump_host_key_unknown_or_changed_is_one_line_and_the_target_is_never_contacted(sshd, tmp_path, jump_key):
    with damaging_proxy(sshd.port, damage=0) as target:
        known = tmp_path / "known_hosts"
        lines = _host_key_line(sshd, target.port)  # the target's key is known and right
        if jump_key == "changed":
            other = _keygen(tmp_path / "other_host_key", "another-host").split()
            lines = f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n" + lines
        known.write_text(lines)
        cfg = _jump_config(sshd, target.port, tmp_path, known)
        with pytest.raises(HostError) as err:
            Host(_aliased("via-jump", cfg)).connect()
        msg = err.value.message
        assert "\n" not in msg
        assert msg.startswith(f"host via-jump: jump host pv-jump ({sshd.host_config.user}@127.0.0.1:{sshd.port})")
        want = "host key not found in" if jump_key == "unknown" else "host key does not match"
        assert f"): {want} {known}" in msg and msg.endswith(f"; not connecting to 127.0.0.1:{target.port}"), msg
        assert target.connections == 0  # never contacted


def test_keys_from_ssh_agent(sshd, tmp_path, monkeypatch):
    """No key in the inventory or ssh_config: the running ssh-agent's key logs in."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", sshd.host_config.key], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        hc = dataclasses.replace(sshd.host_config, key="")
        with Host(hc) as host:
            assert host.out(["echo", "agent"]) == "agent"
    finally:
        agent.terminate()
        agent.wait(timeout=10)
