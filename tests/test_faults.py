"""Fault injection against the built-in Xen lab (marked `lab`): the host lock, and "the host is
left as found" after a failed load, a cut SSH connection, a run that died with a guest running,
and a guest that never reports.

"As found" is conftest's `host_state`: the loaded xen-pciback (stock, by srcversion and taint), `xl list`,
sriov_numvfs, `xl pci-assignable-list`, no marker, nothing staged, no lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import host_state

from pipeline import PROJECT_ROOT

pytestmark = pytest.mark.lab


@pytest.fixture
def host(lab_host):
    from pipeline.host import Host

    with Host(lab_host) as h:
        yield h


def _clean(h) -> dict:
    s = host_state(h)
    assert s["module"][0] == "stock", s
    assert s["domains"] == ["Domain-0"], s
    assert not s["marker"] and not s["staged"] and not s["lock"], s
    return s


# ------------------------------------------------------------------ host lock

_HOLDER = """
import json, sys, time
from pipeline.config import HostConfig
from pipeline.host import Host
from pipeline.hostlock import HostLock
with Host(HostConfig(**json.loads(sys.argv[1]))) as h:
    lock = HostLock(h, sys.argv[2], timeout_s=0).acquire()
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
"""


def _holder(lab_host, run_id: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, json.dumps(dataclasses.asdict(lab_host)), run_id],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_second_run_waits_then_fails(host, lab_host):
    from pipeline.errors import HostLocked
    from pipeline.hostlock import HostLock

    _clean(host)
    holder = _holder(lab_host, "run-A")
    try:
        msgs: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(HostLocked) as ei:
            HostLock(host, "run-B", msgs.append, timeout_s=6).acquire()
        waited = time.monotonic() - t0
        assert ei.value.exit_code == 71
        msg = ei.value.message
        assert f"locked by run run-A (machine {os.uname().nodename}, pid {holder.pid}" in msg, msg
        assert re.search(
            r"gave up after \d+ s \(lock_timeout_s 6\); if that run is gone, remove /run/pciback-verify/lock", msg
        )
        assert waited >= 6, waited  # it waited out its lock_timeout_s before giving up (no upper bound: a slow machine)
        assert msgs and "locked by run run-A" in msgs[0] and "waiting (up to 6 s" in msgs[0], msgs
        # the holder releases while we wait: the second run gets the lock
        msgs.clear()
        holder.stdin.write("\n")
        holder.stdin.flush()
        lock = HostLock(host, "run-B", msgs.append, timeout_s=60).acquire()
        assert lock.held and json.loads(host.read_text("/run/pciback-verify/lock/owner.json"))["run_id"] == "run-B"
        lock.release()
        assert holder.wait(30) == 0
    except BaseException:
        holder.kill()
        holder.wait(30)
        host.run(["rm", "-rf", "/run/pciback-verify/lock"], check=False)
        raise
    _clean(host)


def test_stale_lock_of_dead_process_is_broken(host, lab_host):
    from pipeline.hostlock import HostLock

    holder = _holder(lab_host, "run-dead")
    holder.send_signal(signal.SIGKILL)  # died holding the lock: no release
    holder.wait(30)
    assert host.exists("/run/pciback-verify/lock")
    msgs: list[str] = []
    lock = HostLock(host, "run-next", msgs.append, timeout_s=30).acquire()
    assert not any("waiting" in m for m in msgs), msgs  # broken at once, not waited out
    assert any("breaking the stale lock of run run-dead" in m and f"process {holder.pid}" in m for m in msgs), msgs
    lock.release()
    _clean(host)


def test_old_foreign_lock_is_broken_young_one_is_not(host, lab_host):
    from pipeline.errors import HostLocked
    from pipeline.host import Host
    from pipeline.hostlock import LOCK_DIR, OWNER, HostLock

    owner = {"run_id": "run-far", "hostname": "other-machine", "pid": 1, "started": "x", "token": "t"}
    host.mkdir_p(LOCK_DIR)
    host.write_text(OWNER, json.dumps(owner))
    short = Host(dataclasses.replace(lab_host, lock_stale_s=3600))
    try:
        # young: another machine's pid cannot be checked, so it is waited for
        with pytest.raises(HostLocked, match="locked by run run-far .machine other-machine, pid 1"):
            HostLock(short, "run-me", timeout_s=3).acquire()
        host.run(["touch", "-d", "2 hours ago", LOCK_DIR])
        msgs: list[str] = []
        lock = HostLock(short, "run-me", msgs.append, timeout_s=10).acquire()
        assert any("breaking the stale lock of run run-far" in m and "lock_stale_s 3600" in m for m in msgs), msgs
        lock.release()
    finally:
        short.close()
        host.run(["rm", "-rf", LOCK_DIR], check=False)
    _clean(host)


# ------------------------------------------------------------------ host left as found


def test_module_that_fails_to_load_leaves_host_as_found(host, lab_modules, tmp_path):
    from pipeline.deploy import deploy

    series = lab_modules["series"]
    before = _clean(host)
    # 1. vermagic edited: uploaded and checked, the stock module unloaded, insmod refuses it
    bad = tmp_path / "vermagic" / "xen-pciback.ko"
    bad.parent.mkdir()
    data = Path(series.module).read_bytes()
    bad.write_bytes(data.replace(b"mod_unload", b"mod_unlo4d"))
    res = deploy(host, bad, series.srcversion, print)
    assert res.status == "failed" and "insmod" in res.detail and res.restored, res.detail
    assert host_state(host) == before
    # 2. a corrupted (truncated) module: refused before the host is touched, upload removed
    cut = tmp_path / "cut" / "xen-pciback.ko"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 3])
    res = deploy(host, cut, series.srcversion, print)
    assert res.status == "failed" and res.restored, res.detail
    assert host_state(host) == before


def test_ssh_cut_mid_deploy_next_run_recovers(host, lab_host, lab_modules):
    """The connection dies after the stock module was unloaded, before insmod; the host is unreachable for
    the restore. The next run finds the marker and puts the host back before anything else."""
    from pipeline.deploy import MARKER, deploy, loaded_srcversion, recover
    from pipeline.host import Host

    series = lab_modules["series"]
    before = _clean(host)
    victim = Host(dataclasses.replace(lab_host))
    victim.connect()

    def progress(msg: str) -> None:
        print(msg)
        if ": insmod " in msg:  # between upload and reload: cut the link and keep the host unreachable
            victim.config = dataclasses.replace(victim.config, port=1)
            victim._client.get_transport().close()

    res = deploy(victim, Path(series.module), series.srcversion, progress)
    victim.close()
    assert res.status == "failed" and not res.restored, res.detail
    # the address as ssh_config resolved it: user@host:port
    assert "cannot reach root@127.0.0.1:1" in res.detail and "restore failed too" in res.detail, res.detail
    # what the dead run left: no xen_pciback at all, the marker, the staged module
    assert loaded_srcversion(host) is None
    assert host.exists(MARKER)
    marker = json.loads(host.read_text(MARKER))
    assert marker["original"] == "stock" and marker["deployed"] == series.srcversion
    msgs: list[str] = []
    assert recover(host, msgs.append)
    assert any("an earlier run left the host modified" in m for m in msgs), msgs
    assert host_state(host) == before
    assert recover(host) is None  # idempotent: nothing left to do


def test_run_dead_with_guest_running_next_run_recovers(host, lab_host, lab_settings, lab_modules):
    """A run killed while its test guest holds 2 VFs under our module: recovery destroys the guest,
    sets sriov_numvfs back, reloads the stock module."""
    from pipeline.deploy import deploy, loaded_srcversion, recover
    from pipeline.guest import Guest
    from pipeline.host import Host
    from pipeline.providers import default_guest
    from pipeline.vftest import VfPool

    series = lab_modules["series"]
    before = _clean(host)
    dead = Host(dataclasses.replace(lab_host)).connect()
    d = deploy(dead, Path(series.module), series.srcversion, print)
    assert d.status == "ok", d.detail
    pool = VfPool(dead, 2, print)
    pool.setup()
    guest = Guest(dead, "pvtest-vf-boot-2", default_guest(dead, lab_settings), pool.bdfs, 2, "vf-boot-2")
    guest.create()
    dead.close()  # the process is gone: no teardown, no restore
    s = host_state(host)
    assert "pvtest-vf-boot-2" in s["domains"] and s["numvfs"] == 2 and s["marker"], s
    assert loaded_srcversion(host) == series.srcversion
    assert recover(host, print)
    assert host_state(host) == before


def test_guest_without_marker_fails_with_reason_and_tears_down(host, lab_settings, lab_modules):
    from pipeline import lab
    from pipeline.deploy import deploy, restore
    from pipeline.guest import GuestImage
    from pipeline.vftest import vf_boot

    series = lab_modules["series"]
    before = _clean(host)
    files = lab.guest_files(lab_settings)
    d = deploy(host, Path(series.module), series.srcversion, print)
    try:
        assert d.status == "ok", d.detail
        during = host_state(host)
        # the real guest kernel with a ramdisk that is not one: it boots, finds no init, never reports
        crash = vf_boot(
            host, 2, "series", GuestImage(kernel=files.kernel, ramdisk="/etc/hostname"), print, marker_timeout=20
        )
        # a kernel that does not exist: xl create fails, the reason says so
        gone = vf_boot(host, 2, "series", GuestImage(kernel="/boot/no-such-kernel", ramdisk=files.initrd), print)
        after_tests = host_state(host)
    finally:
        restore(host, d, print)
    assert not crash.passed and "guest printed no PVLAB_MARKER" in crash.reason, crash.reason
    assert crash.seen == 0
    assert not gone.passed and "error:" in gone.reason and "xl create" in gone.reason, gone.reason
    assert after_tests == during  # teardown complete after each: no domain, numvfs and assignable as before
    assert host_state(host) == before


# ------------------------------------------------------------------ bad host input (docs/bad-input.md)


def test_wrong_ssh_key_is_one_clear_error(lab_host, tmp_path):
    from pipeline.errors import HostError
    from pipeline.host import Host

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(HostError) as ei:
        Host(dataclasses.replace(lab_host, key=str(key))).connect()
    assert ei.value.exit_code == 7
    assert ei.value.message == (
        f"host {lab_host.name}: ssh to root@127.0.0.1:{lab_host.port} failed: Authentication failed."
    )


def test_unknown_and_changed_host_key_refused(lab_host, tmp_path):
    import paramiko

    from pipeline.errors import HostError
    from pipeline.host import Host

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(HostError) as ei:
        Host(dataclasses.replace(lab_host, known_hosts=str(empty))).connect()
    assert ei.value.message == (
        f"host {lab_host.name}: ssh to root@127.0.0.1:{lab_host.port} failed: "
        f"Server '[127.0.0.1]:{lab_host.port}' not found in known_hosts"
    )
    other = tmp_path / "other_known_hosts"
    hk = paramiko.HostKeys()
    hk.add(f"[127.0.0.1]:{lab_host.port}", "ssh-ed25519", paramiko.Ed25519Key.from_private_key_file(lab_host.key))
    hk.save(str(other))
    with pytest.raises(HostError) as ei:
        Host(dataclasses.replace(lab_host, known_hosts=str(other))).connect()
    assert ei.value.message.startswith(
        f"host {lab_host.name}: host key of 127.0.0.1:{lab_host.port} does not match {other}: "
    ), ei.value.message


def test_pf_without_sriov_and_too_many_vfs_refused(host, lab_host, lab_modules):
    from pipeline.deploy import preflight
    from pipeline.host import Host

    series = lab_modules["series"]
    before = host_state(host)
    nic = host.out(["sh", "-c", "grep -l ^0x0200 /sys/bus/pci/devices/*/class"]).split()[0].split("/")[-2]
    with Host(dataclasses.replace(lab_host, pf_bdf=nic)) as h:
        assert preflight(h, series, 1) == f"{nic} on {lab_host.name} is not SR-IOV capable (no sriov_totalvfs)"
    total = int(host.read_text(f"/sys/bus/pci/devices/{lab_host.pf_bdf}/sriov_totalvfs").strip())
    assert preflight(host, series, total + 1) == (
        f"PF {lab_host.pf_bdf} on {lab_host.name} offers {total} VFs, tests need {total + 1}"
    )
    assert host_state(host) == before
