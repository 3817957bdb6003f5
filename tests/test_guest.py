"""The guest protocol (pipeline/guest.py): marker and xenstore parsing, when a wait for the guest's
devices or marker ends (on a scripted dom0, fake time: early exits, the stall timeout, the ceiling),
the xl config template."""

from __future__ import annotations

import pytest

from pipeline import guest
from pipeline.config import HostConfig
from pipeline.errors import HostError
from pipeline.guest import (
    Guest,
    GuestImage,
    Marker,
    backend_summary,
    devices_final,
    parse_markers,
    parse_xenstore_ls,
    render_guest_config,
)
from pipeline.host import Host

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
    # natural order: state-10 after state-2
    keys = list(backend_summary({"state-10": "1", "state-2": "3", "num_devs": "11"}))
    assert keys.index("state-2") < keys.index("state-10")


BUG_END = {"num_devs": 3, "state": 4, "state-0": 3, "state-1": 1, "state-2": 1, "vdev-0": "0000:00:00.0"}


def test_devices_final_all_seen_or_the_bugs_end_state():
    assert devices_final(3, Marker(2, 3, []), {})  # all seen: nothing more to wait for
    assert not devices_final(3, None, BUG_END)
    assert devices_final(3, Marker(1, 1, ["a"]), BUG_END)  # pciback published 1, the guest sees 1
    assert not devices_final(3, Marker(1, 0, []), BUG_END)  # pcifront has not found vdev-0 yet
    assert not devices_final(3, Marker(1, 1, ["a"]), {**BUG_END, "num_devs": 2})  # libxl still writing
    assert not devices_final(3, Marker(1, 1, ["a"]), {**BUG_END, "state": 7})  # reconfiguring
    assert not devices_final(3, Marker(1, 1, ["a"]), {**BUG_END, "vdev-1": "0000:00:00.1"})  # more to find
    assert not devices_final(3, Marker(1, 1, ["a"]), {})  # no backend read


class ScriptedDom0(Host):
    """A Host whose console and xenstore answers follow a script over (fake) time, no SSH."""

    def __init__(self, script):
        super().__init__(HostConfig(name="scripted", address="127.0.0.1"))
        self.script = script  # [(from t, console text, backend `xenstore-ls -f` text)]
        self.t = 0.0
        self.reads = []

    def now(self):
        return self.t

    def sleep(self, s):
        self.t += s

    def _at(self):
        return [x for x in self.script if x[0] <= self.t][-1]

    def run(self, argv, timeout=60.0, check=True, stdin=None):
        self.reads.append((self.t, argv[0]))
        _, console, xs = self._at()
        return 0, console if argv[0] == "cat" else xs, ""


def _xs(lines):
    return "".join(f'/local/domain/0/backend/pci/7/0/{k} = "{v}"\n' for k, v in lines.items())


def _guest(monkeypatch, script, expected):
    host = ScriptedDom0(script)
    monkeypatch.setattr(guest.time, "monotonic", host.now)
    monkeypatch.setattr(guest.time, "sleep", host.sleep)
    g = Guest(host, "pvtest-x", GuestImage("k", "r"), [], expected, "x")
    g.domid = 7
    return g, host


def _waited(monkeypatch, script, expected):
    g, host = _guest(monkeypatch, script, expected)
    return g.wait_devices(expected, timeout=90), host


def test_wait_ends_when_all_are_seen(monkeypatch):
    m1 = "PVLAB_MARKER seq=1 count=0 bdfs=\n"
    m2 = m1 + "PVLAB_MARKER seq=2 count=1 bdfs=0000:00:00.0\n"
    m3 = m2 + "PVLAB_MARKER seq=3 count=3 bdfs=0000:00:00.0,0000:00:00.1,0000:00:00.2\n"
    fixed = _xs({"num_devs": 3, "state": 4, "vdev-0": "x", "vdev-1": "y", "vdev-2": "z"})
    m, host = _waited(monkeypatch, [(0, "", ""), (5, m1, fixed), (6, m2, fixed), (6.5, m3, fixed)], 3)
    assert (m.seq, m.count) == (3, 3)
    assert host.t == 6.5  # the first poll that saw all three


def test_wait_ends_soon_after_the_bugs_end_state_holds(monkeypatch):
    m1 = "PVLAB_MARKER seq=1 count=0 bdfs=\n"
    m2 = m1 + "PVLAB_MARKER seq=2 count=1 bdfs=0000:00:00.0\n"
    bug = _xs({"num_devs": 3, "state": 4, "state-1": 1, "state-2": 1, "vdev-0": "0000:00:00.0"})
    m, host = _waited(monkeypatch, [(0, "", ""), (5, m1, bug), (6, m2, bug)], 3)
    assert (m.seq, m.count) == (2, 1)
    # held for FINAL_HOLD_S from the first poll that saw it, then ended: no fixed wait
    assert 6 + guest.FINAL_HOLD_S <= host.t <= 6 + guest.FINAL_HOLD_S + guest.POLL_S


def test_wait_goes_on_while_pciback_reconfigures(monkeypatch):
    m1 = "PVLAB_MARKER seq=1 count=1 bdfs=0000:00:00.0\n"
    m2 = m1 + "PVLAB_MARKER seq=2 count=3 bdfs=0000:00:00.0,0000:00:00.1,0000:00:00.2\n"
    one = _xs({"num_devs": 3, "state": 4, "vdev-0": "x"})
    reconf = _xs({"num_devs": 3, "state": 7, "vdev-0": "x"})
    full = _xs({"num_devs": 3, "state": 4, "vdev-0": "x", "vdev-1": "y", "vdev-2": "z"})
    # the bug's end state for 1.5 s (less than the hold), then a reconfiguration brings the rest
    m, host = _waited(monkeypatch, [(0, m1, one), (1.5, m1, reconf), (3, m1, full), (4, m2, full)], 3)
    assert m.count == 3 and host.t == 4


def test_wait_without_a_marker_times_out_with_none(monkeypatch):
    m, host = _waited(monkeypatch, [(0, "PVLAB_BOOT\n", "")], 2)
    assert m is None and host.t >= 90


def _growing(until, every=10.0, then=None):
    """A console that gains a kernel line every `every` s, the last at `until` (with `then` after it)."""
    script, text, t = [(0.0, "PVLAB_BOOT\n", "")], "PVLAB_BOOT\n", 0.0
    while t < until:
        t += every
        text += f"[ {t:.1f}] pcifront pci-0: still probing\n"
        script.append((t, text, ""))
    if then is not None:
        script[-1] = (t, text + then, "")
    return script


def _marker_waited(monkeypatch, script, count):
    g, host = _guest(monkeypatch, script, 1)
    return g.wait_marker(count=count, timeout=90), host


M1 = "PVLAB_MARKER seq=1 count=1 bdfs=0000:00:00.0\n"


def test_a_guest_that_keeps_printing_is_waited_for_past_the_stall_timeout(monkeypatch):
    # a slow boot: the console grows every 10 s, the marker comes at 200 s, more than twice the 90 s
    m, host = _waited(monkeypatch, _growing(200, then=M1), 1)
    assert m is not None and (m.seq, m.count) == (1, 1)
    assert host.t == 200  # the first poll that saw it
    m, host = _marker_waited(monkeypatch, _growing(200, then=M1), count=1)
    assert m is not None and m.count == 1 and host.t == 200


def test_a_console_that_stops_growing_ends_the_wait_one_stall_timeout_later(monkeypatch):
    # it grows until 50 s and is still from then on; the marker at 300 s would come too late
    script = _growing(50) + [(300, _growing(50)[-1][1] + M1, "")]
    m, host = _waited(monkeypatch, script, 1)
    assert m is None
    assert 50 + 90 < host.t < 300  # after the stall timeout counted from the last growth, not from the start
    assert host.t <= 50 + 90 + guest.POLL_S
    m, host = _marker_waited(monkeypatch, script, count=1)
    assert m is None and 50 + 90 < host.t <= 50 + 90 + guest.POLL_S


def test_a_new_marker_is_progress_and_the_last_one_is_kept(monkeypatch):
    m0 = "PVLAB_MARKER seq=1 count=0 bdfs=\n"
    script = [(0, "PVLAB_BOOT\n", ""), (80, "PVLAB_BOOT\n" + m0, "")]  # still after the marker at 80 s
    m, host = _waited(monkeypatch, script, 2)
    assert m is not None and (m.seq, m.count) == (1, 0)
    assert 80 + 90 < host.t <= 80 + 90 + guest.POLL_S


def test_the_ceiling_ends_a_guest_that_prints_forever(monkeypatch):
    ceiling = guest.CEILING_FACTOR * 90
    script = _growing(ceiling * 3, every=5)  # never a marker, never still
    m, host = _waited(monkeypatch, script, 1)
    assert m is None and ceiling < host.t <= ceiling + guest.POLL_S
    m, host = _marker_waited(monkeypatch, script, count=1)
    assert m is None and ceiling < host.t <= ceiling + guest.POLL_S
    # with a marker of another count than asked for, the ceiling still ends it
    m, host = _marker_waited(monkeypatch, [(t, M1 + text, xs) for t, text, xs in script], count=3)
    assert m is None and host.t <= ceiling + guest.POLL_S


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


class HungCreate(Host):
    """A dom0 whose `xl create` never returns (the SSH command times out: rc 124)."""

    def __init__(self):
        super().__init__(HostConfig(name="hung", address="127.0.0.1"))
        self.commands: list[list[str]] = []

    def run(self, argv, timeout=60.0, check=True, stdin=None):
        self.commands.append(list(argv))
        if argv[:2] == ["xl", "create"]:
            return 124, "Parsing config from x", ""
        if argv[:2] == ["xl", "list"]:
            return 0, "Name ID Mem VCPUs State Time(s)\nDomain-0 0 1024 2 r----- 1.0\n", ""
        return 0, "", ""

    def mkdir_p(self, path):
        pass

    def write_text(self, path, text):
        pass


def test_a_create_that_timed_out_leaves_no_xl_running_on_the_host():
    """rc 124: the create fails as before, and the xl processes of that config are killed after it."""
    host = HungCreate()
    g = Guest(host, "pvtest-vf-boot-3", GuestImage("/k", "/r"), ["0000:01:00.1"], 1, "vf-boot-1")
    with pytest.raises(HostError):
        g.create()
    create = host.commands.index(["xl", "create", g.cfg])
    kill = ["pkill", "-KILL", "-f", f"[x]l create {g.cfg}"]
    assert kill in host.commands[create + 1 :], host.commands
