"""VF-visibility test stage: fast unit tests (marker and xenstore parsing, verdicts, guest config),
and lab tests that run the real tests against the built-in Xen lab."""

from __future__ import annotations

import pytest

from pipeline.vftest import (
    Marker,
    backend_summary,
    dev_entries,
    parse_markers,
    parse_xenstore_ls,
    render_guest_config,
    verdict,
)

CONSOLE = (
    "[2026-11-26 05:50:01] PVLAB_BOOT\r\n"
    "[2026-11-26 05:50:03] [    1.2] pcifront pci-0: Installing PCI frontend\r\n"
    "[2026-11-26 05:50:21] PVLAB_MARKER seq=1 count=1 bdfs=0000:00:00.0\r\n"
    "[2026-11-26 05:50:40] PVLAB_MARKER seq=2 count=3 bdfs=0000:00:00.0,0000:00:00.1,0000:00:00.2\n"
    "PVLAB_MARKER seq=3 count=0 bdfs=\n"
)

XS_FIXED = """/local/domain/0/backend/pci/4/0 = ""
/local/domain/0/backend/pci/4/0/frontend = "/local/domain/4/device/pci/0"
/local/domain/0/backend/pci/4/0/frontend-id = "4"
/local/domain/0/backend/pci/4/0/online = "1"
/local/domain/0/backend/pci/4/0/key-0 = "0000:01:00.1"
/local/domain/0/backend/pci/4/0/dev-0 = "0000:01:00.1"
/local/domain/0/backend/pci/4/0/opts-0 = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
/local/domain/0/backend/pci/4/0/state-0 = "3"
/local/domain/0/backend/pci/4/0/dev-1 = "0000:01:00.2"
/local/domain/0/backend/pci/4/0/state-1 = "3"
/local/domain/0/backend/pci/4/0/dev-2 = "0000:01:00.3"
/local/domain/0/backend/pci/4/0/state-2 = "3"
/local/domain/0/backend/pci/4/0/num_devs = "3"
/local/domain/0/backend/pci/4/0/state = "4"
/local/domain/0/backend/pci/4/0/vdev-0 = "0000:00:00.0"
/local/domain/0/backend/pci/4/0/vdev-1 = "0000:00:00.1"
/local/domain/0/backend/pci/4/0/vdev-2 = "0000:00:00.2"
/local/domain/0/backend/pci/4/0/root-0 = "0000:00"
/local/domain/0/backend/pci/4/0/root_num = "1"
/local/domain/0/backend/pci/4/0/sub/deeper = "x"
"""


def test_parse_markers_timestamps_and_cr():
    ms = parse_markers(CONSOLE)
    assert [m.seq for m in ms] == [1, 2, 3]
    assert ms[0] == Marker(seq=1, count=1, bdfs=["0000:00:00.0"])
    assert ms[1].count == 3 and ms[1].bdfs[-1] == "0000:00:00.2"
    assert ms[2].count == 0 and ms[2].bdfs == []
    assert parse_markers("PVLAB_BOOT\n") == []


def test_parse_xenstore_and_summary():
    entries = parse_xenstore_ls(XS_FIXED, "/local/domain/0/backend/pci/4/0")
    assert entries["num_devs"] == "3" and entries["dev-1"] == "0000:01:00.2"
    assert "sub/deeper" not in entries and "deeper" not in entries
    be = backend_summary(entries)
    assert be["num_devs"] == 3 and be["state"] == 4
    assert be["state-0"] == be["state-1"] == be["state-2"] == 3
    assert be["vdev-2"] == "0000:00:00.2"
    assert "frontend" not in be and "key-0" not in be
    assert dev_entries(be) == 3
    # natural order: state-10 after state-2
    keys = list(backend_summary({"state-10": "1", "state-2": "3", "num_devs": "11"}))
    assert keys.index("state-2") < keys.index("state-10")


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


def test_guest_config_template():
    text = render_guest_config(
        "pvtest-vf-boot-2",
        "/boot/vmlinuz-x",
        "/root/pvlab/guest-initrd.gz",
        ["0000:01:00.1", "0000:01:00.2"],
        2,
        "vf-boot-2",
    )
    assert 'name = "pvtest-vf-boot-2"' in text
    assert 'type = "pv"' in text
    assert 'pci = [ "0000:01:00.1", "0000:01:00.2" ]' in text
    assert "pvlab.expect=2" in text
    assert 'ramdisk = "/root/pvlab/guest-initrd.gz"' in text


def test_guest_config_refuses_quotes():
    with pytest.raises(ValueError):
        render_guest_config('x"; evil', "/k", "/r", [], 1, "t")
    with pytest.raises(ValueError):
        render_guest_config("x", "/k", "/r", ["01:00.1'"], 1, "t")


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
