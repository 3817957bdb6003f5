"""Deploy stage and VF tests against the built-in Xen lab (marked `lab`), plus fast unit tests.

The lab tests build the fixed and the reverted (control) module with the pipeline's build stage
for the lab dom0's kernel (conftest `lab_modules`), load them with deploy(), run the real tests and
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
    from pipeline.buildmodule import modinfo

    foreign = BuildResult(status="ok", module=str(ko), vermagic=modinfo(ko, "vermagic"), srcversion=series.srcversion)
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


# The series' and the control's VF tests on the lab are judged through the runner's own path in
# tests/test_verify_e2e.py (the guest saw 3 of 3 with the fix, 1 of 3 without; the backend entries,
# the xenstore transactions, the toolstack): no second copy of them here.


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


def test_changed_bytes_says_how_many_where_and_in_which_pages():
    from pipeline.deploy import changed_bytes

    built = bytes(3 * 4096)
    staged = bytearray(built)
    staged[5] = staged[4096 + 7] = staged[4096 + 9] = 1
    assert changed_bytes(built, bytes(staged)) == "3 byte(s) differ, offsets 0x5..0x1009, in 2 page(s) (0x0, 0x1)"
    assert changed_bytes(built, built[:-1]).startswith("size 12287 on the host")
    assert changed_bytes(built, built) == "no byte differs (the checksum itself was wrong)"
