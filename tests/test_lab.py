"""The built-in Xen lab: fast checks of its command lines and records, then the real lab (marked `lab`)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import types
from pathlib import Path

import pytest
from fakedom0 import RELEASE, fake_dom0
from local_sshd import damaging_proxy

from pipeline import absorbed, dom0, guest, lab, providers
from pipeline.aptsources import parse_apt_sources, resolve_mirror
from pipeline.config import HostConfig, LabConfig, Settings
from pipeline.errors import LabError
from pipeline.host import Host
from pipeline.lab import lifecycle
from pipeline.statuses import FaultKind

# ------------------------------------------------------------------ unit (no QEMU)


def _settings(tmp_path: Path, **lab_kw) -> Settings:
    return Settings(lab=LabConfig(dir=str(tmp_path / "lab"), **lab_kw))


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_qemu_argv_has_the_working_recipe(tmp_path):
    s = _settings(tmp_path)
    argv = lab.qemu_argv(s, 2345)
    assert argv[0] == "qemu-system-x86_64"
    assert _opt(argv, "-accel") == ["tcg,thread=multi"] and _opt(argv, "-cpu") == ["max"]
    assert _opt(argv, "-machine") == ["q35"] and _opt(argv, "-m") == ["3G"]
    devices = _opt(argv, "-device")
    assert "intel-iommu,intremap=on" in devices
    assert "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1" in devices
    nvme = next(d for d in devices if d.startswith("nvme,"))
    assert "bus=rp1" in nvme and "sriov_max_vfs=3" in nvme
    assert "sriov_vq_flexible=6" in nvme and "sriov_vi_flexible=3" in nvme
    assert "max_ioqpairs=10" in nvme and "msix_qsize=8" in nvme
    assert _opt(argv, "-netdev") == ["user,id=n0,hostfwd=tcp:127.0.0.1:2345-:22"]
    xen_args = _opt(argv, "-append")[0]
    assert "smap=0" in xen_args.split() and "iommu=1,verbose,debug" in xen_args
    p = lab.paths(s)
    assert _opt(argv, "-pidfile") == [str(p.pidfile)] and "-daemonize" in argv
    assert _opt(argv, "-qmp") == [f"unix:{p.qmp},server=on,wait=off"]
    assert _opt(argv, "-serial") == [f"file:{p.console}"]


def test_qmp_socket_of_a_deep_lab_folder_is_short_and_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    assert lab.paths(_settings(tmp_path)).qmp == tmp_path / "lab" / "qmp.sock"  # short: beside the lab
    deep = tmp_path / ".gitlab-ci-local" / "builds" / ("test-debian-6.1-prefix-" * 4) / ".cache"
    p = lab.paths(Settings(lab=LabConfig(dir=str(deep / "lab"))))
    assert len(str(p.qmp)) < 100 and p.qmp.parent == tmp_path / "run" / f"pciback-verify-{os.getuid()}"
    assert p.qmp == lab.paths(Settings(lab=LabConfig(dir=str(deep / "lab")))).qmp  # the same lab, the same one
    assert p.qmp != lab.paths(Settings(lab=LabConfig(dir=str(deep / "lab2")))).qmp
    assert p.qmp.parent.stat().st_mode & 0o777 == 0o700
    p.qmp.parent.chmod(0o777)  # anyone could plant a socket there: refused
    with pytest.raises(LabError, match="not a private folder"):
        _ = p.qmp


def test_qemu_argv_scales_sriov_and_escapes_initrd_commas(tmp_path):
    argv = lab.qemu_argv(_settings(tmp_path, vfs=5), 2222)
    nvme = next(d for d in _opt(argv, "-device") if d.startswith("nvme,"))
    assert "sriov_max_vfs=5,sriov_vq_flexible=10,sriov_vi_flexible=5,max_ioqpairs=14,msix_qsize=10" in nvme
    initrd = _opt(argv, "-initrd")[0]
    kernel_part, initrd_part = initrd.rsplit(",", 1)
    # a comma inside the dom0 arguments is doubled, the one separating modules is single
    assert initrd_part.endswith("boot/initrd.img")
    assert "console=hvc0" in kernel_part and ",," not in initrd_part
    assert "root=/dev/vda" in kernel_part


def test_ssh_argv_checks_host_keys_strictly():
    host = HostConfig(
        name="lab", address="127.0.0.1", user="root", port=2400, key="/k/id", known_hosts="/k/known_hosts"
    )
    argv = lab.ssh_argv(host)
    assert "StrictHostKeyChecking=yes" in argv
    assert not any(a.lower().endswith("=no") and "stricthostkey" in a.lower() for a in argv)
    assert "UserKnownHostsFile=/k/known_hosts" in argv and "GlobalKnownHostsFile=/dev/null" in argv
    assert argv[argv.index("-p") + 1] == "2400" and argv[-1] == "root@127.0.0.1"


def test_parse_apt_sources_deb822_and_one_line():
    files = {
        "/etc/apt/sources.list.d/debian.sources": (
            "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
        ),
        "/etc/apt/sources.list": "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n"
        "deb http://other.example/ubuntu jammy main\n",
    }
    entries = parse_apt_sources(files)
    assert [(e.uri, e.suites) for e in entries] == [
        ("http://m.example/debian", ["bookworm"]),
        ("http://deb.debian.org/debian", ["bookworm", "bookworm-updates"]),
        ("http://deb.debian.org/debian-security", ["bookworm-security"]),
    ]
    assert entries[0].signed_by == "/k.gpg" and entries[0].components == ["main", "contrib"]
    s = Settings()
    assert resolve_mirror(s, entries) == "http://m.example/debian"
    s.lab.mirror = "http://mirror.local/debian"
    chroot = lab.chroot_apt_entries(s, entries)
    assert [e.uri for e in chroot] == [
        "http://mirror.local/debian",
        "http://mirror.local/debian",
        "http://deb.debian.org/debian-security",
    ]


def test_input_hash_follows_templates_and_versions():
    files = lab.recipe_files()
    assert "guest-init.sh.j2" in files and "guest.cfg.j2" not in files  # the xl config is guest.py's
    base = {"recipe_version": 1, "templates": {"a": "1"}, "candidates": {"linux-image-amd64": "6.1.192-2"}}
    h = lab.input_hash(base)
    assert h == lab.input_hash(json.loads(json.dumps(base)))
    assert h != lab.input_hash({**base, "templates": {"a": "2"}})
    assert h != lab.input_hash({**base, "candidates": {"linux-image-amd64": "6.1.193-1"}})


def test_guest_templates_follow_the_protocol(tmp_path):
    init = lab.render("guest-init.sh.j2", poll_s="0.25")
    assert init.startswith("#!/bin/busybox sh\n")
    assert 'echo "PVLAB_BOOT"' in init and "PVLAB_MARKER seq=$seq count=$count bdfs=$bdfs" in init
    assert "sleep 0.25" in init and "insmod /xen-pcifront.ko" in init and "poweroff" not in init
    s = _settings(tmp_path)
    p = lab.paths(s)
    p.dir.mkdir(parents=True)
    p.manifest.write_text(json.dumps({"guest": {"kernel": "/boot/vmlinuz-6.1.0-56-amd64", "initrd": lab.GUEST_INITRD}}))
    assert lab.guest_files(s) == lab.GuestFiles("/boot/vmlinuz-6.1.0-56-amd64", lab.GUEST_INITRD)
    lab_host = lab.host_config(s)
    image = providers.default_guest(Host(lab_host), s)  # what the runner gives the lab's test cases
    assert image == guest.GuestImage("/boot/vmlinuz-6.1.0-56-amd64", lab.GUEST_INITRD)


def test_host_config_and_kernel_release_from_state(tmp_path):
    s = _settings(tmp_path)
    assert lab.kernel_release(s) is None and not lab.is_built(s)
    p = lab.paths(s)
    p.dir.mkdir(parents=True)
    p.manifest.write_text(json.dumps({"dom0_kernel_release": "6.1.0-56-amd64"}))
    p.state.write_text(json.dumps({"port": 2444, "pid": 1}))
    assert lab.kernel_release(s) == "6.1.0-56-amd64"
    h = lab.host_config(s)
    assert (h.name, h.address, h.port, h.user, h.lab) == ("lab", "127.0.0.1", 2444, "root", True)
    assert h.key == str(p.key) and h.known_hosts == str(p.known_hosts)
    assert h.kernel_release == "6.1.0-56-amd64" and h.max_vfs == 3 and h.pf_bdf == "0000:01:00.0"
    # pid 1 is not our QEMU: not running, whatever the pid file says
    p.pidfile.write_text("1\n")
    assert not lab.status(s, probe=False).running


def test_known_hosts_entry_for_the_chosen_port(tmp_path):
    s = _settings(tmp_path)
    p = lab.paths(s)
    p.dir.mkdir(parents=True)
    p.host_key_pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey root@xen-dom0\n")
    lab.write_known_hosts(s, 2501)
    assert p.known_hosts.read_text() == "[127.0.0.1]:2501 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey\n"


def test_free_port_prefers_the_previous_one():
    port = lab.free_port()
    assert not lab.port_in_use(port)
    assert lab.free_port(port) == port


def test_the_readiness_probe_asks_dom0_over_the_pipelines_ssh(tmp_path, monkeypatch):
    """lifecycle._ready, polled while dom0 boots: `uname -r` once `xl info` works (the scripted
    dom0); a broken handshake or a refused connection is "not yet", never a fault absorbed."""
    monkeypatch.delenv(absorbed.JOURNAL_ENV, raising=False)
    with fake_dom0(tmp_path / "dom0") as d, absorbed.collect() as faults:
        assert lifecycle._ready(d.host_config) == RELEASE
        entry = Path(d.host_config.known_hosts).read_text().split(maxsplit=1)[1]
        with damaging_proxy(d.server.port, damage=99) as proxy:
            known = tmp_path / "known_hosts_proxy"
            known.write_text(f"[127.0.0.1]:{proxy.port} {entry}")
            via = dataclasses.replace(d.host_config, port=proxy.port, known_hosts=str(known))
            assert lifecycle._ready(via) is None and proxy.connections == 1
        assert lifecycle._ready(dataclasses.replace(d.host_config, port=lab.free_port())) is None
    assert faults == []


def test_a_missed_probe_on_a_lab_booted_long_ago_waits_afresh(tmp_path, monkeypatch):
    """`up` on a running lab whose probe misses once (a loaded machine): a fresh wait that ends when
    dom0 answers again. It used to wait until started + boot_timeout, a deadline long past, and
    killed the lab (seen under load in a toolstacks verify: the 4.14 lab, up for 30 min)."""
    s = _settings(tmp_path, boot_timeout_s=60)
    p = lab.paths(s)
    p.dir.mkdir(parents=True)
    killed = []
    with fake_dom0(tmp_path / "dom0") as d:
        real_ready, probes = lifecycle._ready, []

        def ready(host):  # the first probe misses, then the real one answers
            probes.append(host.port)
            return None if len(probes) == 1 else real_ready(host)

        monkeypatch.setattr(lifecycle, "_ready", ready)
        monkeypatch.setattr(lifecycle, "is_built", lambda settings: True)
        monkeypatch.setattr(lifecycle, "our_pid", lambda paths: os.getpid())
        monkeypatch.setattr(lifecycle, "is_our_qemu", lambda pid, paths: True)
        monkeypatch.setattr(lifecycle, "kill", lambda pid, paths: killed.append(pid))
        monkeypatch.setattr(lifecycle, "machine_change", lambda recorded, settings: "")
        monkeypatch.setattr(lifecycle, "write_known_hosts", lambda settings, port: None)
        monkeypatch.setattr(lifecycle, "host_config", lambda settings, name="lab": d.host_config)
        started = time.time() - 3600
        p.state.write_text(json.dumps({"pid": os.getpid(), "port": d.server.port, "started_epoch": started}))
        assert lifecycle.up(s) == d.host_config
    assert killed == [] and len(probes) == 2


@pytest.mark.parametrize(("named", "host"), [({}, "lab"), ({"name": "lab-6.12"}, "lab-6.12")])
def test_a_boot_that_stopped_is_booted_once_more_and_on_record(tmp_path, monkeypatch, named, host):
    """A dom0 that hangs while booting (QEMU idle, console still) is given up after HUNG_S, not after
    the 20 min a boot budget allows a machine too busy to run it, and booted again once (absorbed,
    under the inventory host being brought up; "lab" for a caller without an inventory)."""
    s = _settings(tmp_path, boot_timeout_s=300)
    p = lab.paths(s)
    p.dir.mkdir(parents=True)
    p.console.write_text("[    2.337839] xen:balloon: Initialising balloon driver\n")
    clock = [1000.0]
    boots, killed, said = [], [], []
    fake = types.SimpleNamespace(
        time=lambda: clock[0], sleep=lambda sec: clock.__setitem__(0, clock[0] + sec), monotonic=time.monotonic
    )
    monkeypatch.setattr(lifecycle, "time", fake)
    monkeypatch.setattr(lifecycle, "cpu_seconds", lambda pid: 5.0)  # no CPU since the hang
    monkeypatch.setattr(lifecycle, "is_our_qemu", lambda pid, paths: True)
    monkeypatch.setattr(lifecycle, "kill", lambda pid, paths: killed.append(pid))
    monkeypatch.setattr(lifecycle, "host_config", lambda settings, name="lab": HostConfig(name="lab", port=1))

    def up_once(settings, progress, wait, steps):
        boots.append(clock[0])
        if len(boots) == 2:
            return "booted"
        return lifecycle._wait_ready(settings, 4242, clock[0], progress)

    monkeypatch.setattr(lifecycle, "_up_once", up_once)
    monkeypatch.setattr(lifecycle, "_ready", lambda host: None)
    faults = []
    with absorbed.collect(faults):
        assert lifecycle._up(s, said.append, **named) == "booted"
    assert killed == [4242] and len(boots) == 2
    assert lifecycle.HUNG_S < boots[1] - boots[0] < lifecycle.HUNG_S + 10  # not the budget's 1200 s
    assert [(f.what, f.host) for f in faults] == [(FaultKind.LAB_BOOT_HUNG, host)]
    assert "QEMU used 0.0 CPU s" in faults[0].evidence and "balloon" in faults[0].evidence
    assert any(m.endswith("booting again") for m in said)


def test_a_lab_host_brought_up_puts_its_hung_boot_on_record_under_its_inventory_name(tmp_path, monkeypatch):
    """LabProvider.start and ensure_running (the runner's way up) hand the lab their inventory name."""
    hosts = {"lab-6.12": HostConfig(name="lab-6.12", kind="lab", lab=True, dom0_kernel="6.12.117+deb12-amd64")}
    s = Settings(lab=LabConfig(dir=str(tmp_path / "lab")), hosts=hosts)
    boots = []

    def up_once(settings, progress, wait, steps):  # the first boot of each hangs
        boots.append(wait)
        if len(boots) % 2:
            raise lifecycle.BootHung("dom0's boot stopped")
        return HostConfig(name="lab") if wait else None

    monkeypatch.setattr(lifecycle, "_build_unless_running", lambda settings, progress, steps: None)
    monkeypatch.setattr(lifecycle, "_up_once", up_once)
    p = providers.of_host(s, "lab-6.12")
    with absorbed.collect() as faults:
        p.start()
        assert p.ensure_running().name == "lab-6.12"
    assert boots == [False, False, True, True]
    assert [(f.what, f.host) for f in faults] == [(FaultKind.LAB_BOOT_HUNG, "lab-6.12")] * 2


# ------------------------------------------------------------------ the real lab


def _sh(host: HostConfig, cmd: str, timeout: float = 120, check: bool = True) -> str:
    """A fixed test script in dom0's shell, over the pipeline's own SSH (Host)."""
    with Host(host) as h:
        return h.run(["sh", "-c", cmd], timeout=timeout, check=check)[1]


def _our_qemus(settings: Settings) -> list[int]:
    """Every process on the machine that runs QEMU on this lab's image (not other people's QEMUs)."""
    image = f"file={lab.paths(settings).image},".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if image in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.lab
def test_lab_dom0_runs_the_recorded_kernel(lab_host, lab_settings):
    m = lab.read_manifest(lab_settings)
    assert m and m["dom0_kernel_release"] == lab.kernel_release(lab_settings) == lab_host.kernel_release
    assert _sh(lab_host, "uname -r").strip() == m["dom0_kernel_release"]
    # the host's headers are those of the dom0 kernel, so modules built here load there
    assert Path(f"/usr/src/linux-headers-{m['dom0_kernel_release']}").is_dir()
    assert _sh(lab_host, f"test -s {lab.GUEST_INITRD} && test -e {m['guest']['kernel']} && echo ok").strip() == "ok"
    assert _sh(lab_host, "modprobe -n -v nvme >/dev/null && modprobe -n xen-pciback && echo ok").strip() == "ok"
    # QEMU loaded no module of another build (QEMU 10 from the cache probing the system 7.2's audio modules)
    qemu_log = lab.paths(lab_settings).qemu_log.read_text(errors="replace")
    assert "Only modules from the same build" not in qemu_log and "failed to open module" not in qemu_log, qemu_log[
        :500
    ]


@pytest.mark.lab
def test_xl_info_xen_417_with_iommu(lab_host):
    info = dict(line.split(":", 1) for line in _sh(lab_host, "xl info").splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    assert (info["xen_major"], info["xen_minor"]) == ("4", "17")
    assert "directio" in info["virt_caps"], info["virt_caps"]
    dmesg = _sh(lab_host, "xl dmesg")
    assert "I/O virtualisation enabled" in dmesg


@pytest.fixture(scope="module")
def three_vfs(lab_host):
    """3 VFs on the lab's PF, each made assignable; removed again afterwards."""
    pf = f"/sys/bus/pci/devices/{lab_host.pf_bdf}"
    _sh(
        lab_host,
        f"modprobe nvme && modprobe xen-pciback && "
        f"for i in $(seq 30); do [ -e {pf}/driver ] && [ -e {pf}/sriov_numvfs ] && break; sleep 1; done; "
        # as the VF pool binds them: born unbound, then to pciback alone (no nvme probe of a VF)
        f"echo 0 > {pf}/sriov_numvfs && echo 0 > {pf}/sriov_drivers_autoprobe && echo 3 > {pf}/sriov_numvfs && sleep 2",
    )
    vfs = [f"01:00.{f}" for f in (1, 2, 3)]
    try:
        for vf in vfs:
            _sh(
                lab_host, f"echo pciback > /sys/bus/pci/devices/0000:{vf}/driver_override && xl pci-assignable-add {vf}"
            )
        yield vfs
    finally:
        # not checked: a later test of this module restarts the lab, which drops the VFs anyway
        _sh(lab_host, "for d in 01:00.1 01:00.2 01:00.3; do xl pci-assignable-remove -r $d; done", 60, check=False)
        _sh(lab_host, f"echo 0 > {pf}/sriov_numvfs; echo 1 > {pf}/sriov_drivers_autoprobe", 60, check=False)


@pytest.mark.lab
def test_three_vfs_become_assignable(lab_host, three_vfs):
    assert _sh(lab_host, f"cat /sys/bus/pci/devices/{lab_host.pf_bdf}/sriov_numvfs").strip() == "3"
    assignable = _sh(lab_host, "xl pci-assignable-list").split()
    assert sorted(assignable) == ["0000:01:00.1", "0000:01:00.2", "0000:01:00.3"]


@pytest.mark.lab
def test_guest_with_one_vf_prints_its_marker(lab_host, lab_settings, three_vfs):
    """The pipeline's own guest path: guest.Guest with the runner's image for the lab (create with
    its crash retry, the parser, the wait, the teardown)."""
    with Host(lab_host) as h:
        image = providers.default_guest(h, lab_settings)
        with guest.Guest(h, "pvtest-labtest1", image, three_vfs[:1], 1, "labtest1") as g:
            g.create()
            # the guest reports its first listing and every change: wait for the one with the VF
            m = g.wait_marker(count=1, timeout=120)
            text = g.console_text()
            markers = guest.parse_markers(text)
            assert "PVLAB_BOOT" in text
            assert m is not None and markers, f"no marker with the VF in the guest console: {text[-500:]}"
            last = markers[-1]
            assert (last.count, len(last.bdfs)) == (1, 1) and last.seq == len(markers), text[-500:]
        assert "pvtest-labtest1" not in dom0.domains(h)  # destroyed on exit


@pytest.mark.lab
def test_second_build_with_unchanged_inputs_does_nothing(lab_host, lab_settings):
    before = lab.read_manifest(lab_settings)
    image_inode = lab.paths(lab_settings).image.stat().st_ino  # a rebuild replaces the file
    info = lab.build(lab_settings)
    assert not info.rebuilt and info.input_hash == before["input_hash"]
    assert lab.read_manifest(lab_settings) == before
    assert lab.paths(lab_settings).image.stat().st_ino == image_inode
    last = lab.paths(lab_settings).build_log.read_text().splitlines()[-1]
    assert "up to date" in last and "nothing rebuilt" in last


@pytest.mark.lab
def test_down_frees_everything_and_up_recovers_after_kill9(lab_host, lab_settings):
    p = lab.paths(lab_settings)
    port = lab_host.port
    assert lab.down(lab_settings)
    assert _our_qemus(lab_settings) == []
    assert not lab.port_in_use(port)
    assert not p.pidfile.exists() and not p.qmp.exists()
    assert not lab.status(lab_settings, probe=False).running

    host = lab.up(lab_settings)
    pid = lab.status(lab_settings, probe=False).pid
    os.kill(pid, signal.SIGKILL)
    for _ in range(80):
        if not lab.status(lab_settings, probe=False).running:  # gone or a zombie: port and image freed
            break
        time.sleep(0.25)
    assert p.pidfile.exists() and p.qmp.exists()  # stale leftovers of the killed QEMU
    assert not lab.status(lab_settings, probe=False).running

    host2 = lab.up(lab_settings)
    # the session's HostConfig stays valid for the tests that follow
    for f in dataclasses.fields(host2):
        setattr(lab_host, f.name, getattr(host2, f.name))
    assert lab.status(lab_settings, probe=False).pid != pid
    assert host2.port == host.port  # the freed port is taken again: known_hosts entries stay valid
    assert len(_our_qemus(lab_settings)) == 1
    assert "xen_version" in _sh(host2, "xl info")


def test_a_boot_is_given_up_by_qemus_cpu_time_not_by_a_busy_machines_clock():
    from pipeline.lab.lifecycle import WALL_FACTOR, boot_overdue

    assert boot_overdue(cpu_s=100, wall_s=290, budget_s=300, smp=2) == ""
    # a machine busy with other work: 3x the budget in wall time, QEMU had a fraction of it: go on
    assert boot_overdue(cpu_s=150, wall_s=900, budget_s=300, smp=2) == ""
    assert "601 CPU s (300 s x 2 vCPUs)" in boot_overdue(cpu_s=601, wall_s=400, budget_s=300, smp=2)
    # a guest halted for good uses no CPU: the wall-time backstop ends it
    assert f"({WALL_FACTOR} x 300 s" in boot_overdue(cpu_s=20, wall_s=300 * WALL_FACTOR + 1, budget_s=300, smp=2)


def test_cpu_seconds_of_a_process_and_of_one_that_is_gone():
    import subprocess
    import sys

    from pipeline.lab.qemu import cpu_seconds

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(int(gone.stdout)) == 0.0
