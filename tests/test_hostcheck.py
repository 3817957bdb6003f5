"""pipeline/hostcheck.py without a host: which hosts `invoke hosts.check` checks."""

from __future__ import annotations

import pytest

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.hostcheck import check_hosts


def test_unknown_host_names_the_inventory():
    with pytest.raises(ConfigError, match=r"^unknown host 'nope'; inventory has none$"):
        check_hosts(Settings(), "nope")


def test_empty_inventory_checks_nothing():
    assert check_hosts(Settings()) == []


def test_a_lab_that_is_down_is_ready_unless_a_row_needs_it(tmp_path):
    from pipeline.config import HostConfig, KernelConfig, LabConfig

    lab = HostConfig(name="lab-x", lab=True)
    base = dict(cache_dir=str(tmp_path / "cache"), lab=LabConfig(dir=str(tmp_path / "lab")), hosts={"lab-x": lab})
    (idle,) = check_hosts(Settings(**base, matrices={"default": [KernelConfig("k", "r", "k")]}))
    assert idle.ok and idle.idle and not idle.reachable and "not running" in idle.error
    row = KernelConfig("k", "r", "k", hosts=["lab-x"])
    (needed,) = check_hosts(Settings(**base, matrices={"default": [row]}))
    assert not needed.ok and not needed.idle
