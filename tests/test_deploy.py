"""Deploy stage and VF tests against the built-in Xen lab (marked `lab`), plus fast unit tests.

The lab tests build the fixed and the reverted (control) module from Debian's source against
the lab dom0's headers (pipeline.labmod), load them with deploy(), run the real tests and
check that the host is left exactly as found.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import host_state

from pipeline.deploy import vermagic_release
from pipeline.results import BuildResult


def test_vermagic_release():
    assert vermagic_release("6.1.0-56-amd64 SMP preempt mod_unload modversions ") == "6.1.0-56-amd64"
    assert vermagic_release("") == ""


# ------------------------------------------------------------------ lab


def _edit_ko(src: Path, dst: Path, old: bytes, new: bytes) -> None:
    """Copy a module, replacing one same-length string in it (its .modinfo vermagic)."""
    assert len(old) == len(new)
    data = src.read_bytes()
    assert data.count(old) >= 1, f"{old!r} not in {src}"
    dst.write_bytes(data.replace(old, new))


@pytest.fixture
def host(lab_host):
    from pipeline.host import Host

    with Host(lab_host) as h:
        yield h


def _host_state(h) -> dict:
    """What must be the same before and after a deploy/test/restore."""
    return host_state(h, ("module", "taint", "domids", "numvfs", "assignable", "marker"))


@pytest.mark.lab
def test_host_key_is_checked(lab_host, tmp_path):
    """A known_hosts file without the lab's key: the connection is refused, not trusted on first use."""
    import dataclasses

    from pipeline.errors import HostError
    from pipeline.host import Host

    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostError, match="ssh to"):
        Host(dataclasses.replace(lab_host, known_hosts=str(empty))).connect()


@pytest.mark.lab
def test_preflight_ok_and_other_release_refused(host, lab_modules, tmp_path):
    from pipeline.deploy import preflight

    series = lab_modules["series"]
    assert preflight(host, series, 3) is None
    assert "offers" in (preflight(host, series, 64) or "")
    # the same module as if built for another release: refused, nothing loaded
    release = series.kernel_release
    other = ("9" if release[0] != "9" else "8") + release[1:]
    assert other != release and len(other) == len(release)
    ko = tmp_path / "xen-pciback.ko"
    _edit_ko(Path(series.module), ko, release.encode() + b" ", other.encode() + b" ")
    from pipeline.labmod import _modinfo

    foreign = BuildResult(status="ok", module=str(ko), vermagic=_modinfo(ko, "vermagic"), srcversion=series.srcversion)
    assert vermagic_release(foreign.vermagic) == other
    before = _host_state(host)
    reason = preflight(host, foreign, 3)
    assert reason and f"module built for {other}" in reason and "not loaded" in reason
    assert _host_state(host) == before


@pytest.mark.lab
def test_deploy_failure_restores_original(host, lab_modules, tmp_path):
    """insmod fails after the original was unloaded: deploy must put the original back."""
    from pipeline.deploy import deploy

    series = lab_modules["series"]
    ko = tmp_path / "xen-pciback.ko"
    _edit_ko(Path(series.module), ko, b"mod_unload", b"mod_unlo4d")  # vermagic mismatch: insmod refuses
    before = _host_state(host)
    res = deploy(host, ko, series.srcversion, print)
    assert res.status == "failed"
    assert "insmod" in res.detail
    assert res.restored
    assert _host_state(host) == before


@pytest.mark.lab
def test_series_passes_and_host_restored(host, lab_settings, lab_modules):
    from pipeline.deploy import deploy, loaded_srcversion, restore
    from pipeline.vftest import run_vf_tests

    series = lab_modules["series"]
    before = _host_state(host)
    d = deploy(host, Path(series.module), series.srcversion, print)
    try:
        assert d.status == "ok", d.detail
        assert loaded_srcversion(host) == series.srcversion == d.srcversion
        assert host.exists("/run/pciback-verify/modified.json")
        results = run_vf_tests(host, lab_settings, "series", print)
    finally:
        restore(host, d, print)
    assert _host_state(host) == before
    assert d.restored

    by_name = {r.name: r for r in results}
    for n in lab_settings.vf_counts:
        r = by_name[f"vf-boot-{n}"]
        assert r.passed, r.reason
        assert r.seen == n and len(r.seen_bdfs) == n
        assert r.backend["num_devs"] == n
        assert all(r.backend[f"state-{i}"] == 3 for i in range(n)), r.backend
        assert all(f"vdev-{i}" in r.backend for i in range(n))
        # observed in oxenstored's access log: libxl 4.17 commits num_devs once per device
        assert (r.xs_creation.transactions, r.xs_creation.num_devs) == (n, list(range(1, n + 1))), r.xs_creation
        assert r.toolstack.xen_version.startswith("4.17") and r.toolstack.dom0_kernel == host.out(["uname", "-r"])
    hot = by_name["vf-hotplug"]
    assert hot.passed, hot.reason
    assert len(hot.metrics["num_devs"]) == len(hot.metrics["steps"]) == 3 + 2 * lab_settings.hotplug_cycles
    assert [s["seen"] for s in hot.metrics["steps"]][:3] == [1, 2, 3]


@pytest.mark.lab
def test_control_fails_one_of_three(host, lab_modules, lab_settings):
    from pipeline.deploy import deploy, restore
    from pipeline.vftest import default_guest, vf_boot

    control = lab_modules["control"]
    before = _host_state(host)
    d = deploy(host, Path(control.module), control.srcversion, print)
    try:
        assert d.status == "ok", d.detail
        r = vf_boot(host, 3, "control", default_guest(host, lab_settings), print)
    finally:
        restore(host, d, print)
    assert _host_state(host) == before
    assert not r.passed
    assert r.seen == 1, r.reason
    assert r.backend["state-0"] == 3
    assert r.backend["state-1"] == 1 and r.backend["state-2"] == 1, r.backend
    assert "vdev-1" not in r.backend and "vdev-2" not in r.backend
    # the race, observed live: three commits wrote num_devs 1, 2, 3 (Xen 4.17's libxl, one per device)
    assert r.xs_creation.observed and r.xs_creation.num_devs == [1, 2, 3], r.xs_creation
    assert r.toolstack.xen_version.startswith("4.17") and r.toolstack.xl_version.startswith("4.17"), r.toolstack


def test_edit_ko_helper(tmp_path):
    src = tmp_path / "a"
    src.write_bytes(b"xx vermagic=6.1.0-56-amd64 SMP mod_unload yy")
    _edit_ko(src, tmp_path / "b", b"mod_unload", b"mod_unlo4d")
    assert b"mod_unlo4d" in (tmp_path / "b").read_bytes()


@pytest.mark.lab
def test_staging_path_made_by_another_user_is_refused(host, lab_modules):
    """/run/pciback-verify/stage already there, owned by a non-root user: nothing uploaded or loaded."""
    from pipeline import deploy as D

    series = lab_modules["series"]
    before = _host_state(host)
    assert not host.exists(D.STAGING), "a staging directory is left from an earlier run"
    host.run(["mkdir", "-p", D.MARKER_DIR])
    # as user nobody would have made it (root makes it and gives it away: the same directory)
    host.run(["mkdir", "-m", "0777", "--", D.STAGING])
    host.run(["chown", "65534:65534", "--", D.STAGING])
    try:
        res = D.deploy(host, Path(series.module), series.srcversion)
        assert res.status == "failed", res
        assert "refused" in res.detail and "uid 65534" in res.detail, res.detail
        assert host.out(["ls", "-A", D.STAGING]) == ""  # nothing was put in it
        assert host.out(["stat", "-c", "%u %a", "--", D.STAGING]) == "65534 777"  # and it is left as found
        assert _host_state(host) == before
    finally:
        host.run(["rm", "-rf", "--", D.STAGING])
