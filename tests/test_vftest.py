"""VF-visibility test stage (pipeline/vftest.py): verdicts and backend counts (pure). The guest
protocol it builds on is tested in test_guest.py."""

from __future__ import annotations

import pytest

from pipeline.config import HostConfig
from pipeline.guest import Marker, backend_summary
from pipeline.host import Host
from pipeline.vftest import dev_entries, verdict


def test_verdict_fixed_passes():
    be = {"num_devs": 3, "state-0": 3, "state-1": 3, "state-2": 3}
    ok, why = verdict(3, Marker(1, 3, ["a", "b", "c"]), be)
    assert ok, why
    assert "3 of 3" in why


def test_verdict_control_fails_with_reason():
    be = {"num_devs": 3, "state-0": 3, "state-1": 1, "state-2": 1}
    ok, why = verdict(3, Marker(1, 1, ["a"]), be)
    assert not ok
    assert "guest saw 1 of 3" in why and "state-1=1" in why and "state-2=1" in why


def test_verdict_needs_both_guest_and_backend():
    assert not verdict(3, Marker(1, 3, []), {"state-0": 3, "state-1": 3})[0]  # state-2 missing
    assert not verdict(2, None, {"state-0": 3, "state-1": 3})[0]
    assert not verdict(1, Marker(1, 2, []), {"state-0": 3})[0]  # more than given is wrong too


def test_dev_entries_counts_the_backends_dev_keys():
    be = backend_summary({"dev-0": "0000:01:00.1", "dev-1": "0000:01:00.2", "vdev-0": "x", "num_devs": "2"})
    assert dev_entries(be) == 2


def test_timed_adds_up_also_when_the_step_fails():
    from pipeline.results import timed

    steps: dict[str, float] = {}
    with timed(steps, "x"):
        pass
    with pytest.raises(RuntimeError), timed(steps, "x"):
        raise RuntimeError
    with timed(steps, "y"):
        pass
    assert set(steps) == {"x", "y"} and all(v >= 0 for v in steps.values())


class Dom0WithAStubbornGuest(Host):
    """`xl list` shows the guest until the second `xl destroy`; `xl domid` would have said it was gone."""

    def __init__(self):
        super().__init__(HostConfig(name="scripted", address="127.0.0.1"))
        self.t = 0.0
        self.reads = []
        self.destroys = 0

    def now(self):
        return self.t

    def sleep(self, s):
        self.t += s

    def run(self, argv, timeout=60.0, check=True, stdin=None):
        self.reads.append((self.t, " ".join(argv)))
        if argv[:2] == ["xl", "destroy"]:
            self.destroys += 1
            return 0, "", ""
        if argv[:2] == ["xl", "domid"]:
            return 1, "", "maybe this domain does not exist"
        if argv[:2] == ["xl", "list"]:
            rows = ["Name ID Mem VCPUs State Time(s)", "Domain-0 0 1024 2 r----- 9.0"]
            if self.destroys < 2:
                rows.append("pvtest-x 8 256 1 -b---- 1.0")
            return 0, "\n".join(rows) + "\n", ""
        return 0, "", ""


def test_destroy_goes_by_xl_list_and_destroys_again(monkeypatch):
    from pipeline.dom0 import destroy_domain

    host = Dom0WithAStubbornGuest()
    monkeypatch.setattr("pipeline.dom0.time.monotonic", host.now)
    monkeypatch.setattr("pipeline.dom0.time.sleep", host.sleep)
    destroy_domain(host, "pvtest-x")
    assert host.destroys == 2  # the first destroy did not take; 10 s later it was sent again
    assert host.reads[-1][1] == "xl list" and not any("domid" in r for _, r in host.reads)
