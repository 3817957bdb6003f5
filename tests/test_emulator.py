"""pipeline/lab/emulator.py: the QEMU builds the lab can run (pv.lab.qemu)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.config import LabConfig, Settings
from pipeline.lab import emulator
from pipeline.lab.qemu import qemu_argv


def _settings(tmp_path: Path, **lab_kw) -> Settings:
    return Settings(cache_dir=str(tmp_path / "cache"), lab=LabConfig(dir=str(tmp_path / "lab"), **lab_kw))


def test_the_argv_starts_with_the_selected_binary_and_its_firmware_dirs(tmp_path):
    q = emulator.QemuBin("10.0", "/c/qemu-10/usr/bin/qemu-system-x86_64", ("/c/q/usr/share/qemu", "/c/q/seabios"))
    argv = qemu_argv(_settings(tmp_path), 2222, q)
    assert argv[:5] == [q.binary, "-L", "/c/q/usr/share/qemu", "-L", "/c/q/seabios"]
    assert argv[5] == "-name"
    assert qemu_argv(_settings(tmp_path), 2222)[0] == "qemu-system-x86_64"  # no build given: PATH's


def test_qemu_warnings_go_to_a_log_beside_the_console(tmp_path):
    s = _settings(tmp_path)
    argv = qemu_argv(s, 2222)
    assert argv[argv.index("-D") + 1] == str(tmp_path / "lab" / "qemu.log")
    assert "guest_errors" in argv[argv.index("-d") + 1]


def test_the_system_build_reports_its_version(tmp_path):
    q = emulator.EMULATORS["system"].ensure(_settings(tmp_path), lambda m: None)
    assert q.name == "system" and q.data_dirs == ()
    assert q.version[0].isdigit(), q.version


def test_an_unknown_build_is_a_one_line_config_error(tmp_path):
    cfg = tmp_path / "pv.yaml"
    cfg.write_text("pv:\n  lab:\n    qemu: '9.9'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(cfg), "config.show"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, proc.stderr
    assert "pv.lab.qemu" in lines[0] and "system" in lines[0] and "10.0" in lines[0], lines[0]


@pytest.mark.download
def test_qemu_10_comes_from_bookworm_backports_into_the_cache_only(tmp_path):
    """Downloaded and extracted with the private apt; the system's QEMU stays what it was."""
    before = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    s = _settings(tmp_path)
    said: list[str] = []
    q = emulator.EMULATORS["10.0"].ensure(s, said.append)
    assert q.version.startswith("10.0."), q.version
    assert q.binary.startswith(str(tmp_path / "cache")), q.binary
    assert any(Path(d, "bios-256k.bin").exists() for d in q.data_dirs), q.data_dirs
    assert any("fetching QEMU" in m for m in said), said
    again: list[str] = []
    assert emulator.EMULATORS["10.0"].ensure(s, again.append) == q
    assert not any("download" in m or "fetching" in m for m in again), again  # warm: nothing fetched
    assert subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout == before


def test_the_config_knows_every_build_by_name():
    from pipeline.config import LAB_QEMU_BUILDS

    assert tuple(emulator.EMULATORS) == LAB_QEMU_BUILDS


def test_qemu_10_boots_xen_in_xapic_mode(tmp_path):
    """On 10.0's machine Xen goes x2apic_mixed and loses interrupts (measured, README)."""
    q = emulator.QemuBin("10.0", "/q/qemu-system-x86_64", (), "10.0.2", emulator.EMULATORS["10.0"].xen_args)
    argv = qemu_argv(_settings(tmp_path), 2222, q)
    assert argv[argv.index("-append") + 1].endswith(" x2apic=false")
    plain = qemu_argv(_settings(tmp_path), 2222)
    assert "x2apic" not in plain[plain.index("-append") + 1]  # the system build's line is unchanged


def test_a_single_threaded_build_runs_the_same_binary_with_one_tcg_thread(tmp_path):
    s = _settings(tmp_path)
    one = emulator.EMULATORS["system-1t"].ensure(s, lambda m: None)
    multi = emulator.EMULATORS["system"].ensure(s, lambda m: None)
    assert (one.name, one.binary, one.version) == ("system-1t", multi.binary, multi.version)
    argv = qemu_argv(s, 2222, one)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    assert qemu_argv(s, 2222, multi)[qemu_argv(s, 2222, multi).index("-accel") + 1] == "tcg,thread=multi"


def test_a_one_vcpu_dom0_build_appends_its_xen_argument_after_the_default(tmp_path):
    s = _settings(tmp_path)
    got = emulator.EMULATORS["system-dom0-1cpu"].ensure(s, lambda m: None)
    append = qemu_argv(s, 2222, got)[qemu_argv(s, 2222, got).index("-append") + 1].split()
    # Xen takes the last value of a repeated option: the variant's must come after the default's
    assert [a for a in append if a.startswith("dom0_max_vcpus=")][-1] == "dom0_max_vcpus=1"
    assert got.accel == "tcg,thread=multi"
