"""lab.qemu.is_our_qemu on a real process: the same image reached through a symlinked cache is still ours."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import lab
from pipeline.lab import qemu


def test_a_qemu_started_through_a_symlinked_cache_is_ours_from_both_paths(tmp_path):
    real = tmp_path / "main" / ".cache" / "lab"
    real.mkdir(parents=True)
    (real / "dom0.img").write_bytes(b"")
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".cache").symlink_to(tmp_path / "main" / ".cache")
    # a process whose argv[0] is QEMU's name, started with the image path through the symlink
    exe = tmp_path / lab.QEMU
    exe.symlink_to(os.path.realpath(sys.executable))
    via_link = wt / ".cache" / "lab" / "dom0.img"
    proc = subprocess.Popen(
        [str(exe), "-c", "import time; time.sleep(60)", "-drive", f"file={via_link},if=virtio,format=raw"]
    )
    try:
        deadline = time.monotonic() + 10
        while b"-drive" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)

        class Paths:
            image = real / "dom0.img"

        class LinkPaths:
            image = via_link

        class Other:
            image = tmp_path / "other.img"

        assert qemu.is_our_qemu(proc.pid, Paths)
        assert qemu.is_our_qemu(proc.pid, LinkPaths)
        assert not qemu.is_our_qemu(proc.pid, Other)
    finally:
        proc.kill()
        proc.wait()


def _lab_settings(tmp_path, **lab_kw):
    from pipeline.config import LabConfig, Settings

    return Settings(cache_dir=str(tmp_path / "cache"), lab=LabConfig(dir=str(tmp_path / "lab"), **lab_kw))


def test_the_machine_change_names_what_differs(tmp_path):
    base = qemu.machine(_lab_settings(tmp_path, qemu="system"))
    assert qemu.machine_change(base, _lab_settings(tmp_path, qemu="system")) == ""
    assert qemu.machine_change(base, _lab_settings(tmp_path, qemu="10.0")) == "QEMU 'system' -> '10.0'"
    assert (
        qemu.machine_change(base, _lab_settings(tmp_path, qemu="system", device="igb", vfs=7))
        == "device 'nvme' -> 'igb', VFs '3' -> '7'"
    )
    # a lab booted before the eager-FPU setting: its Xen line lacked it
    older = base.replace(" spec-ctrl=eager-fpu", "")
    assert qemu.machine_change(older, _lab_settings(tmp_path, qemu="system")) == "Xen command line +spec-ctrl=eager-fpu"
    assert qemu.machine_change(None, _lab_settings(tmp_path)) == "no machine recorded (booted by an older pipeline)"


def test_up_restarts_a_running_lab_once_naming_what_differs(tmp_path, monkeypatch):
    """One check in lab.up: a lab running as another machine is stopped (and booted again), the
    same machine is used as it is."""
    from pipeline.config import HostConfig
    from pipeline.lab import lifecycle

    class Stop(Exception):
        pass

    said: list[str] = []
    booted_as = qemu.machine(_lab_settings(tmp_path, qemu="system"))
    monkeypatch.setattr(lifecycle, "is_built", lambda s: True)
    monkeypatch.setattr(lifecycle, "our_pid", lambda p: 4242)
    monkeypatch.setattr(lifecycle, "read_state", lambda p: {"port": 2222, "qemu": "system", "machine": booted_as})
    monkeypatch.setattr(lifecycle, "host_config", lambda s: HostConfig(name="lab", port=2222, lab=True))
    monkeypatch.setattr(lifecycle, "write_known_hosts", lambda s, port: None)
    monkeypatch.setattr(lifecycle, "_ready", lambda host: "6.1.0-57-amd64")

    def down(settings, progress):
        raise Stop  # the boot after it is lab.up's own path, not this test's

    monkeypatch.setattr(lifecycle, "_down", down)
    assert lifecycle._up(_lab_settings(tmp_path, qemu="system"), said.append).port == 2222
    assert said == ["lab: already running (pid 4242, port 2222)"]
    said.clear()
    with pytest.raises(Stop):
        lifecycle._up(_lab_settings(tmp_path, qemu="10.0", device="igb"), said.append)
    assert said == ["lab: running as another machine (QEMU 'system' -> '10.0', device 'nvme' -> 'igb'): restarting"]


def test_the_dom0_kernel_is_a_qemu_argument_and_part_of_the_machine(tmp_path):
    """Which dom0 kernel boots is the vmlinuz and initrd handed to Xen as multiboot modules; a lab
    running another kernel is another machine (restarted), and a machine recorded before the field
    existed is the image's own kernel (the labs running then are not restarted for it)."""
    own = _lab_settings(tmp_path, qemu="system")
    other = _lab_settings(tmp_path, qemu="system", dom0_kernel="6.12.117+deb12-amd64")
    boot = tmp_path / "lab" / "boot"
    argv = qemu.qemu_argv(own, 2222)
    assert argv[argv.index("-initrd") + 1] == f"{boot}/vmlinuz {qemu.DOM0_ARGS.replace(',', ',,')},{boot}/initrd.img"
    argv = qemu.qemu_argv(other, 2222)
    assert argv[argv.index("-initrd") + 1] == (
        f"{boot}/vmlinuz-6.12.117+deb12-amd64 {qemu.DOM0_ARGS.replace(',', ',,')},{boot}/initrd.img-6.12.117+deb12-amd64"
    )
    assert qemu.machine_change(qemu.machine(own), other) == "dom0 kernel '' -> '6.12.117+deb12-amd64'"
    assert qemu.machine_change(qemu.machine(other), own) == "dom0 kernel '6.12.117+deb12-amd64' -> ''"
    before = " | ".join(qemu._machine_fields(own)[:-1])  # recorded by a pipeline without the field
    assert qemu.machine_change(before, own) == ""
    assert qemu.machine_change(before, other) == "dom0 kernel '' -> '6.12.117+deb12-amd64'"
    assert lab.kernel_release(other) == "6.12.117+deb12-amd64"  # known without a build or a boot
