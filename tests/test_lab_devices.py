"""pipeline/lab/devices.py: the SR-IOV PF the lab's QEMU gives dom0 (pv.lab.device), and the
machine fingerprint that restarts a lab booted otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.config import LAB_DEVICES, LabConfig, Settings
from pipeline.errors import LabError
from pipeline.lab import devices, emulator
from pipeline.lab.qemu import machine, qemu_argv


def _settings(tmp_path: Path, **lab_kw) -> Settings:
    return Settings(cache_dir=str(tmp_path / "cache"), lab=LabConfig(dir=str(tmp_path / "lab"), **lab_kw))


def _qemu(version: str) -> emulator.QemuBin:
    return emulator.QemuBin("10.0", "/q/qemu-system-x86_64", (), version)


def test_the_config_knows_every_device_by_name():
    assert tuple(devices.DEVICES) == LAB_DEVICES


def test_nvme_is_the_default_pf_on_the_root_port(tmp_path):
    argv = qemu_argv(_settings(tmp_path), 2222, _qemu("10.0.2"))
    ctrl = argv[argv.index("-device", argv.index("nvme-subsys,id=nvmesubsys0,nqn=pvlab")) + 1]
    assert ctrl.startswith("nvme,id=nvme0,bus=rp1,") and "sriov_max_vfs=3" in ctrl
    assert "enable=pci_nvme_err*" in argv and "igb" not in " ".join(argv)


def test_igb_is_a_nic_pf_on_the_root_port_with_a_network_of_its_own(tmp_path):
    argv = qemu_argv(_settings(tmp_path, device="igb"), 2222, _qemu("10.0.2"))
    assert "igb,id=igb0,bus=rp1,netdev=sriov0" in argv
    assert "user,id=sriov0,restrict=on" in argv  # no route out of the lab
    assert not any("nvme" in a for a in argv)


def test_igb_on_qemu_7_and_too_many_vfs_are_one_line_errors(tmp_path):
    with pytest.raises(LabError, match=r"igb needs QEMU >= 8\.0, the lab's is 7\.2\.22"):
        qemu_argv(_settings(tmp_path, device="igb"), 2222, _qemu("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"))
    with pytest.raises(LabError, match=r"pv.lab.vfs 8: igb has 1\.\.7 VFs"):
        qemu_argv(_settings(tmp_path, device="igb", vfs=8), 2222, _qemu("10.0.2"))


def test_a_lab_booted_with_another_device_or_xen_line_is_another_machine(tmp_path):
    base = machine(_settings(tmp_path))
    assert machine(_settings(tmp_path)) == base
    assert machine(_settings(tmp_path, device="igb")) != base
    assert machine(_settings(tmp_path, qemu="system")) != base
    assert "spec-ctrl=eager-fpu" in base  # the FPU fix is part of what a running lab must have


def test_every_lab_runs_xen_with_eager_fpu(tmp_path):
    """TCG's XSAVE family ignores CR0.TS, so Xen's lazy FPU switching leaked registers (README)."""
    for q in (None, _qemu("10.0.2")):  # the system's binary, a downloaded build
        argv = qemu_argv(_settings(tmp_path), 2222, q)
        assert "spec-ctrl=eager-fpu" in argv[argv.index("-append") + 1].split()
    lazy = emulator.EMULATORS["10.0-lazyfpu"].xen_args
    assert lazy[-1] == "spec-ctrl=eager-fpu=0"  # the variant that measures it, last so it wins


def test_an_unknown_device_is_a_one_line_config_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("pv:\n  lab:\n    device: e1000\n")
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(cfg), "config.show"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "pv.lab.device" in lines[0] and "nvme" in lines[0] and "igb" in lines[0], lines[0]
