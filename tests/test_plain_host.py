"""A Xen host that is not the built-in lab, configured as people configure SSH (issue 18).

The running lab is registered a second time as a plain inventory host `plain` (no `lab: true`):
reached through a Host alias of an ssh_config file whose ProxyJump is the real local sshd of
tests/local_sshd.py, both host keys checked strictly from one known_hosts file. Against it the
pipeline takes the path of any real host: the PF's driver from sysfs, VFs up to sriov_totalvfs,
the test guest made by the run (the tiny PV kernel of pipeline/guestkernel.py, this machine's
busybox) and removed afterwards. `invoke verify --kernel debian-6.1-prefix` must give the same
verdict and VF counts as against `lab` and leave nothing on the host.

To keep CI short the plain run uses vf_counts [3] without hot-plug and is compared with the same
kernel's row of the default run against `lab` (conftest's `default_verify`, judged in full by
test_verify_e2e.py), which CI runs once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import host_state
from local_sshd import SshServer, serve

from pipeline import PROJECT_ROOT

DEBIAN = PROJECT_ROOT / ".cache" / "debian-linux.git"
KERNEL = "debian-6.1-prefix"
KERNEL_ENTRY = {
    "name": KERNEL,
    "remote": ".cache/debian-linux.git",
    "ref": "debian-6.1-prefix",
    "build": {"mode": "headers", "headers": "auto"},
}


@pytest.fixture(scope="module")
def jump(tmp_path_factory) -> Iterator[SshServer]:
    with serve(tmp_path_factory.mktemp("jump"), "jump") as server:
        yield server


def _ssh_config(d: Path, jump: SshServer, target_port: int, target_key: str, known: Path) -> Path:
    cfg = d / "ssh_config"
    cfg.write_text(
        f"""# as an operator writes it: the Xen host behind a jump host
Host pv-jump
    HostName 127.0.0.1
    Port {jump.port}
    User {jump.host_config.user}
    IdentityFile {jump.host_config.key}

Host pv-xen
    HostName 127.0.0.1
    Port {target_port}
    User root
    IdentityFile {target_key}
    ProxyJump pv-jump

Host *
    UserKnownHostsFile {known}
    StrictHostKeyChecking yes
"""
    )
    return cfg


def _known_line(known_hosts: str) -> str:
    return Path(known_hosts).read_text().strip() + "\n"


def _config(tmp_path: Path, hosts: dict, matrix_hosts: list[str]) -> Path:
    cfg = tmp_path / "pv.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "pv": {
                    "vf_counts": [3],
                    "hotplug": False,
                    "hosts": hosts,
                    "matrix": "here",
                    "matrices": {"here": [{**KERNEL_ENTRY, "hosts": matrix_hosts}]},
                }
            }
        )
    )
    return cfg


def _invoke(cfg: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INVOKE_PV_RESULTS_ROOT": str(tmp_path / "runs")}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(cfg), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture
def plain(lab_host, jump, tmp_path) -> dict:
    """The lab as a plain host entry: nothing but a Host alias and the ssh_config file."""
    known = tmp_path / "known_hosts"
    known.write_text(_known_line(jump.host_config.known_hosts) + _known_line(lab_host.known_hosts))
    cfg = _ssh_config(tmp_path, jump, lab_host.port, lab_host.key, known)
    return {"address": "pv-xen", "ssh_config": str(cfg), "pf_bdf": lab_host.pf_bdf}


def _nothing_left(h) -> dict:
    from pipeline import provision

    state = host_state(h, ("module", "domains", "numvfs", "assignable", "marker", "staged", "lock"))
    state["guest_dirs"] = provision.leftovers(h)
    return state


@pytest.mark.lab
def test_hosts_check_lab_and_plain_host(lab_host, plain, tmp_path):
    cfg = _config(tmp_path, {"lab": {"lab": True, "pf_bdf": lab_host.pf_bdf, "max_vfs": 3}, "plain": plain}, ["plain"])
    t0 = time.monotonic()
    proc = _invoke(cfg, tmp_path, "hosts.check", "--json")
    print(f"hosts.check lab + plain: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by = {c["name"]: c for c in json.loads(proc.stdout)}
    for name in ("lab", "plain"):
        c = by[name]
        assert c["ok"] and c["reachable"] and c["host_key"] == "known" and c["dom0"], c
        assert c["xen_version"].startswith("4.17") and "xen-utils" in c["xl_version"], c
        assert c["kernel_release"] == lab_host.kernel_release
        assert (c["pf_bdf"], c["pf_driver"], c["sriov_totalvfs"], c["max_vfs"]) == (lab_host.pf_bdf, "nvme", 3, 3), c
        assert c["lock"] == "free" and not c["pf_refusal"]
    assert by["lab"]["lab"] and not by["plain"]["lab"]
    assert by["plain"]["ssh"].startswith(f"root@127.0.0.1:{lab_host.port} via pv-jump (")
    assert by["plain"]["guest"].startswith("made by the run: tiny PV kernel")  # pv.guest_kernel's default
    # the matrix names `plain` only: its row runs there (headers of the lab's release), none on `lab`
    assert [(r["kernel"], r["runs"]) for r in by["plain"]["rows"]] == [(KERNEL, True)]
    assert by["lab"]["rows"] == []
    text = _invoke(cfg, tmp_path, "hosts.check", "--host", "plain")
    assert text.returncode == 0 and "plain: ok" in text.stdout and f"row {KERNEL}" in text.stdout, text.stdout


@pytest.mark.lab
@pytest.mark.kernel
@pytest.mark.build
def test_verify_on_the_lab_as_a_plain_host_matches_the_lab(lab_host, plain, default_verify, tmp_path):
    """The plain run against the lab's own row for the same kernel in the default run (conftest's
    `default_verify`, which test_verify_e2e judges): same verdict, same tests passed, same VF counts."""
    if not (DEBIAN / "HEAD").exists():
        pytest.skip("Debian 6.1 source not imported: `invoke source.import`")
    from pipeline.host import Host

    with Host(lab_host) as h:
        before = _nothing_left(h)
    assert before["guest_dirs"] == [] and not before["lock"]
    cfg = _config(tmp_path, {"plain": plain}, ["plain"])
    t0 = time.monotonic()
    proc = _invoke(cfg, tmp_path, "verify", "--kernel", KERNEL)
    print(f"verify against plain: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {"plain": json.loads((tmp_path / "runs" / "latest" / "results.json").read_text())}
    with Host(lab_host) as h:
        assert _nothing_left(h) == before  # no staging, guest files, lock, VF, module left
    assert default_verify.proc.returncode == 0, default_verify.proc.stderr[-3000:]
    results["lab"] = default_verify.results

    def summary(res: dict) -> tuple:
        (k,) = [k for k in res["kernels"] if k["name"] == KERNEL]
        # the plain run's tests (vf-boot-3 and its control, no hot-plug): the same ones of the lab's row
        tests = [t for t in k["tests"] if t["name"] == "vf-boot-3"]
        return k["verdict"], sorted((t["name"], t["module"], t["passed"], t["seen"]) for t in tests)

    assert summary(results["plain"]) == summary(results["lab"])
    verdict, tests = summary(results["lab"])
    assert verdict == "ready"
    assert tests == [("vf-boot-3", "control", False, tests[0][3]), ("vf-boot-3", "series", True, 3)]
    assert tests[0][3] < 3  # the control misses VFs on both
    (k,) = results["plain"]["kernels"]
    assert sorted(t["name"] for t in k["tests"]) == ["vf-boot-3", "vf-boot-3"]
    for t in k["tests"]:
        g = t["metrics"]["guest"]
        # the tiny guest kernel (pv.guest_kernel's default), uploaded with its initramfs
        guest_dir = f"/run/pciback-verify/guest-{results['plain']['run_id']}"
        assert g["provisioned"] and g["host"] == "plain" and g["kernel_source"] == "tiny"
        assert (g["kernel"], g["initrd"]) == (f"{guest_dir}/vmlinuz", f"{guest_dir}/guest-initrd.gz")
        assert g["pcifront"] == "builtin" and len(g["kernel_sha256"]) == 64
    # the lab runs the same guest, made by its run the same way
    (k_lab,) = [k for k in results["lab"]["kernels"] if k["name"] == KERNEL]
    lab_guests = {
        (t["metrics"]["guest"]["kernel_source"], t["metrics"]["guest"]["kernel_sha256"]) for t in k_lab["tests"]
    }
    assert lab_guests == {("tiny", k["tests"][0]["metrics"]["guest"]["kernel_sha256"])}


@pytest.mark.lab
@pytest.mark.kernel
@pytest.mark.build
def test_a_pf_whose_vf_a_non_test_domain_uses_is_refused_and_nothing_changes(
    lab_host, tiny_guest, lab_settings, tmp_path
):
    if not (DEBIAN / "HEAD").exists():
        pytest.skip("Debian 6.1 source not imported: `invoke source.import`")
    from pipeline import lab
    from pipeline.dom0 import destroy_domain
    from pipeline.guest import render_guest_config
    from pipeline.host import Host

    pf = f"/sys/bus/pci/devices/{lab_host.pf_bdf}"
    files = lab.guest_files(lab_settings)
    vf = ""
    with Host(lab_host) as h:
        h.write_sysfs(f"{pf}/sriov_numvfs", "1")
        try:
            vf = h.out(["readlink", f"{pf}/virtfn0"]).rsplit("/", 1)[-1]
            h.run(["xl", "pci-assignable-add", vf], timeout=120)
            h.write_text(
                "/root/other-vm.cfg", render_guest_config("other-vm", files.kernel, files.initrd, [vf], 1, "other")
            )
            h.run(["xl", "create", "/root/other-vm.cfg"], timeout=180)
            before = host_state(h)
            cfg = _config(tmp_path, {"lab": {"lab": True, "pf_bdf": lab_host.pf_bdf, "max_vfs": 3}}, ["lab"])
            t0 = time.monotonic()
            proc = _invoke(cfg, tmp_path, "verify", "--kernel", KERNEL)
            print(f"verify refused: {time.monotonic() - t0:.1f} s", file=sys.stderr)
            reason = f"VF {vf} of PF {lab_host.pf_bdf} on lab is used by domain other-vm; refusing the host"
            assert proc.returncode == 76, proc.stderr[-3000:]
            assert proc.stderr.strip().splitlines()[-1] == f"{KERNEL}: not deployed to lab: {reason}"
            (k,) = json.loads((tmp_path / "runs" / "latest" / "results.json").read_text())["kernels"]
            assert [(d["status"], d["detail"]) for d in k["deploy"]] == [("skipped", reason)] and not k["tests"]
            assert host_state(h) == before  # module, domains, VFs, assignable, marker, staging, lock
        finally:
            destroy_domain(h, "other-vm")
            h.run(["rm", "-f", "/root/other-vm.cfg"], check=False)
            if vf:
                h.run(["xl", "pci-assignable-remove", vf], check=False, timeout=120)
            h.write_sysfs(f"{pf}/sriov_numvfs", "0")


def test_hosts_check_of_a_host_that_is_no_dom0_and_of_an_unknown_key(jump, tmp_path):
    """This machine through the jump host (itself): reachable, key known, not a Xen dom0 -> exit 7;
    the same alias with its key missing from known_hosts -> `host_key: unknown`, not reachable."""
    caps = Path("/proc/xen/capabilities")
    if caps.is_file() and "control_d" in caps.read_text():
        pytest.skip("this machine is a Xen dom0")
    known = tmp_path / "known_hosts"
    line = _known_line(jump.host_config.known_hosts)
    known.write_text(line)  # jump and target are the same sshd: one key for both
    cfg = _ssh_config(tmp_path, jump, jump.port, jump.host_config.key, known)
    cfg.write_text(cfg.read_text().replace("User root\n", f"User {jump.host_config.user}\n"))
    entry = {"address": "pv-xen", "ssh_config": str(cfg)}
    proc = _invoke(_config(tmp_path, {"plain": entry}, ["plain"]), tmp_path, "hosts.check", "--host", "plain", "--json")
    assert proc.returncode == 7 and proc.stderr.strip() == "not ready: plain", proc.stderr
    (c,) = json.loads(proc.stdout)
    assert c["reachable"] and c["host_key"] == "known" and not c["dom0"] and not c["ok"], c
    assert c["error"] == "plain is not a Xen dom0 (/proc/xen/capabilities has no control_d)"
    assert (
        c["ssh"]
        == f"{jump.host_config.user}@127.0.0.1:{jump.port} via pv-jump ({jump.host_config.user}@127.0.0.1:{jump.port})"
    )
    assert c["kernel_release"] == os.uname().release
    known.write_text("")
    proc = _invoke(_config(tmp_path, {"plain": entry}, ["plain"]), tmp_path, "hosts.check", "--host", "plain", "--json")
    (c,) = json.loads(proc.stdout)
    assert proc.returncode == 7 and not c["reachable"] and c["host_key"] == "unknown (jump host)", c
    assert "not connecting to" in c["error"]
