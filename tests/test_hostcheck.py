"""pipeline/hostcheck.py without a host: which hosts `invoke hosts.check` checks, and what it says
of a lab that is down."""

from __future__ import annotations

import json

import pytest

from pipeline import lab
from pipeline.config import BuildConfig, HostConfig, KernelConfig, LabConfig, Settings
from pipeline.errors import ConfigError
from pipeline.hostcheck import check_hosts, format_check


def test_unknown_host_names_the_inventory():
    with pytest.raises(ConfigError, match=r"^unknown host 'nope'; inventory has none$"):
        check_hosts(Settings(), "nope")


def test_empty_inventory_checks_nothing():
    assert check_hosts(Settings()) == []


def test_a_lab_that_is_down_is_ready_unless_a_row_needs_it(tmp_path):
    host = HostConfig(name="lab-x", lab=True)
    base = dict(cache_dir=str(tmp_path / "cache"), lab=LabConfig(dir=str(tmp_path / "lab")), hosts={"lab-x": host})
    (idle,) = check_hosts(Settings(**base, matrices={"default": [KernelConfig("k", "r", "k")]}))
    assert idle.ok and idle.idle and not idle.reachable and "not running" in idle.error
    row = KernelConfig("k", "r", "k", hosts=["lab-x"])
    (needed,) = check_hosts(Settings(**base, matrices={"default": [row]}))
    assert not needed.ok and not needed.idle


def _headers(path, release):
    """A prepared headers directory of `release` (what resolve_headers and kernel_release_of read)."""
    (path / "include" / "generated").mkdir(parents=True)
    (path / "Makefile").write_text("")
    (path / "include" / "generated" / "utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    return str(path)


def test_a_lab_that_is_down_is_judged_on_the_dom0_kernel_it_would_boot(tmp_path):
    """Nothing is booted: the release comes from the host's dom0_kernel, else the lab's last build
    (its manifest); a lab never built has none."""
    r612, r61 = "6.12.117+deb12-amd64", "6.1.0-99-amd64"
    hosts = {
        "lab-6.12": HostConfig(name="lab-6.12", kind="lab", lab=True, dom0_kernel=r612),
        "lab": HostConfig(name="lab", kind="lab", lab=True),
    }
    every = ["lab-6.12", "lab"]
    rows = [
        KernelConfig("k-6.12", "r", "k", BuildConfig(headers=_headers(tmp_path / "h612", r612)), hosts=every),
        KernelConfig("k-6.1", "r", "k", BuildConfig(headers=_headers(tmp_path / "h61", r61)), hosts=every),
    ]
    s = Settings(
        cache_dir=str(tmp_path / "cache"),
        lab=LabConfig(dir=str(tmp_path / "lab")),
        hosts=hosts,
        matrices={"default": rows},
    )

    never_built, other = check_hosts(s)  # name order: lab, lab-6.12
    assert not never_built.reachable and not other.reachable  # both down, neither started
    assert [(r.kernel, r.runs) for r in other.rows] == [("k-6.12", True), ("k-6.1", False)]
    assert other.rows[0].why == f"module built for {r612} (headers); lab-6.12 is down; would boot {r612}"
    assert other.rows[1].why == f"module built for {r61} (headers); lab-6.12 is down; would boot {r612}"
    assert f"row k-6.12               runs here: module built for {r612}" in format_check(other)
    assert [r.runs for r in never_built.rows] == [False, False]
    assert never_built.rows[0].why.endswith("; lab is down; the release it would boot is unknown")

    lab.paths(s).dir.mkdir(parents=True)  # the default lab, built: its manifest names its dom0 kernel
    lab.paths(s).manifest.write_text(json.dumps({"dom0_kernel_release": r61}))
    (built,) = check_hosts(s, "lab")
    assert not built.reachable
    assert [(r.kernel, r.runs) for r in built.rows] == [("k-6.12", False), ("k-6.1", True)]
    assert built.rows[1].why == f"module built for {r61} (headers); lab is down; would boot {r61}"
