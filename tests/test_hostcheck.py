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
