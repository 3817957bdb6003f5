"""bench/load_matrix.py, the parts that need no lab: config entries, host-stage intervals and the
lock-wait parser (fed the real hostlock messages), the overlap check and the verdict comparison."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import sys

import pytest
import yaml

from pipeline import PROJECT_ROOT, hostlock
from pipeline.config import HostConfig, load_settings


def _load():
    spec = importlib.util.spec_from_file_location("load_matrix", PROJECT_ROOT / "bench" / "load_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["load_matrix"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


lm = _load()


def _merge(base: dict, over: dict) -> dict:
    """Invoke's merge of an `-f` file over the project file: mappings key by key, the rest replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------ config


def test_entries_alternate_between_the_two_refs_on_the_lab():
    entries = lm.make_entries(8, ".cache/debian-linux.git")
    assert [e["name"] for e in entries] == [f"load-{i}" for i in range(1, 9)]
    assert [e["ref"] for e in entries] == ["debian-6.1", "debian-6.1-prefix"] * 4
    assert all(e["build"] == {"mode": "headers", "headers": "auto"} and e["hosts"] == ["lab"] for e in entries)
    halves = lm.split_halves([e["name"] for e in entries])
    assert halves == [["load-1", "load-2", "load-3", "load-4"], ["load-5", "load-6", "load-7", "load-8"]]
    assert lm.split_halves(["a", "b", "c"]) == [["a", "b"], ["c"]]


def test_generated_config_validates_over_the_project_file():
    entries = lm.make_entries(8, ".cache/debian-linux.git")
    project = yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())["pv"]
    over = lm.make_config(entries, lock_timeout_s=7200, hotplug_cycles=0)["pv"]
    settings = load_settings(data=_merge(project, over))
    assert settings.matrix == "load" and [k.name for k in settings.kernels] == [e["name"] for e in entries]
    assert settings.vf_counts == [1, 2, 3] and settings.hotplug_cycles == 0
    lab = settings.hosts["lab"]
    assert lab.lab and lab.lock_timeout_s == 7200 and lab.max_vfs == 3  # merged, not replaced
    assert "hotplug" not in over  # left out unless asked: the project's setting stands
    assert lm.make_config(entries, hotplug=False)["pv"]["hotplug"] is False
    over = lm.make_config(entries, hotplug=False)["pv"]  # what the bench writes by default
    assert load_settings(data=_merge(project, over)).hotplug is False


def test_baseline_distinct_compares_with_the_first_entry_of_each_ref():
    entries = lm.make_entries(6, "r")
    assert lm.baseline_of(entries, "all") == {e["name"]: e["name"] for e in entries}
    got = lm.baseline_of(entries, "distinct")
    assert got == {f"load-{i}": ("load-1" if i % 2 else "load-2") for i in range(1, 7)}


# ------------------------------------------------------------------ serialization


class _FakeHost:
    """Enough of pipeline.host.Host for HostLock: the lock directory is held by `holder` for `busy` polls."""

    def __init__(self, holder: dict, busy: int):
        self.name = "lab"
        self.config = HostConfig(name="lab", lab=True)
        self.files = {hostlock.OWNER: json.dumps(holder)} if busy else {}
        self.busy = busy

    def run(self, argv, check=True, timeout=None):
        if argv[0] == "mkdir":
            if self.busy:
                self.busy -= 1
                return 1, "", "mkdir: cannot create directory: File exists"
            return 0, "", ""
        if argv[0] == "sh":  # the lock's age: young
            return 0, "100 105", ""
        return 0, "", ""

    def read_text(self, path):
        return self.files.get(path)

    def write_text(self, path, text):
        self.files[path] = text

    def mkdir_p(self, path):
        pass

    def exists(self, path):
        return True


def _lock_messages(monkeypatch, holder_run: str, busy: int) -> list[str]:
    """What a run prints while it takes the host lock, from pipeline/hostlock.py itself."""
    monkeypatch.setattr(hostlock, "POLL_S", 0.0)
    holder = {"run_id": holder_run, "hostname": socket.gethostname(), "pid": os.getpid(), "started": "t"}
    msgs: list[str] = []
    hostlock.HostLock(_FakeHost(holder, busy), "me", msgs.append).acquire()
    return msgs


def _lines(*texts: str, t0: float = 0.0, step: float = 1.0) -> list[tuple[float, str]]:
    return [(t0 + i * step, t) for i, t in enumerate(texts)]


HOST_WORK = (
    "lab: loaded now: stock; uploading module 1234",
    "lab: vf-boot-3 [series]: PASS: guest saw 3 of 3",
    "lab: xen_pciback back to stock (srcversion ABCD)",
)


def test_host_interval_leaves_out_lab_management_and_waiting():
    lines = _lines(
        "run R1: /tmp/x/R1",
        "lab: already running (pid 5, port 2222)",
        "host lab: locked by run R0 (machine m, pid 1, since t); waiting (up to 7200 s, 0 s so far)",
        "host lab: lock acquired after 40 s",
        *HOST_WORK,
        "debian-6.1  ...  ready",
        "results: /tmp/x/R1/results.json",
    )
    assert lm.host_interval(lines) == (3.0, 6.0)
    assert lm.host_interval(_lines("lab: already running (pid 5, port 2222)", "series: s v1")) is None
    assert lm.host_interval(_lines("lab: booting, 5s: x", *HOST_WORK)) == (1.0, 3.0)


def test_lock_wait_parser_reads_the_real_hostlock_messages(monkeypatch):
    msgs = _lock_messages(monkeypatch, "20260101T000000-1", busy=3)
    assert any("waiting" in m for m in msgs) and "lock acquired after" in msgs[-1]
    (wait,) = lm.lock_waits(_lines(*msgs))
    assert wait.holders == ["20260101T000000-1"] and wait.acquired_after_s == 0
    assert lm.host_interval(_lines(*msgs)) == (float(len(msgs) - 1),) * 2
    assert _lock_messages(monkeypatch, "x", busy=0) == []  # a free lock: nothing printed
    assert lm.lock_waits([]) == []


def test_overlaps_touching_is_fine_sharing_is_not():
    assert lm.find_overlaps({"A": (0, 10), "B": (10, 20)}) == []
    assert lm.find_overlaps({"A": (0, 10), "B": (9.5, 20), "C": None}) == [("A", "B", 0.5)]
    assert lm.find_overlaps({"A": (0, 30), "B": (10, 20)}) == [("A", "B", 10)]


def _concurrent_pair(b_start: float):
    a = _lines("run RA: /tmp/RA", *HOST_WORK, t0=0.0, step=10.0)  # host work 10–30 s
    b = _lines("run RB: /tmp/RB", t0=0.0) + _lines(
        "host lab: locked by run RA (machine m, pid 1, since t); waiting (up to 7200 s, 0 s so far)",
        "host lab: lock acquired after 30 s",
        *HOST_WORK,
        t0=b_start,
    )
    return {"A": a, "B": b}, {"A": "RA", "B": "RB"}


def test_serialized_runs_pass_and_overlapping_ones_fail():
    runs, ids = _concurrent_pair(b_start=30.5)  # waits from 30.5, acquires at 31.5, after A's 30
    problems, seen = lm.serialization_problems(runs, ids)
    assert problems == [] and seen["waited_for"] == [("B", "A")]
    runs, ids = _concurrent_pair(b_start=20.0)  # B "acquires" at 21 while A works until 30
    problems, _ = lm.serialization_problems(runs, ids)
    assert problems == ["host stages of A and B overlap by 3.0 s"]


def test_lock_anomalies_are_problems():
    # nobody waited: the soak did not exercise the lock
    a = _lines(*HOST_WORK, t0=0)
    b = _lines(*HOST_WORK, t0=10)
    problems, _ = lm.serialization_problems({"A": a, "B": b}, {"A": "RA", "B": "RB"})
    assert problems == ["no run waited for the other: the lock was not exercised"]
    # a stale-lock break, a second wait and a give-up
    runs, ids = _concurrent_pair(b_start=30.5)
    runs["B"] += _lines(
        "host lab: breaking the stale lock of run RA (machine m, pid 1, since t): its process 1 on this machine is gone",
        "host lab: lock acquired after 3 s",
        "error: host lab: locked by run RX (machine m, pid 2, since t); gave up after 7200 s (lock_timeout_s 7200)",
        t0=100,
    )
    problems, _ = lm.serialization_problems(runs, ids)
    assert any("waited for the lock 2 times" in p for p in problems)
    assert any("broke a lock as stale" in p for p in problems)
    assert any("gave up waiting" in p for p in problems)
    # a run that never got the host at all
    problems, _ = lm.serialization_problems({"A": a, "B": _lines("series: s v1")}, {"A": "RA", "B": "RB"})
    assert "B: no host stage seen in its output" in problems


# ------------------------------------------------------------------ verdicts


def _kernel(verdict: str, control_seen: int = 1, boot3_seen: int = 3) -> dict:
    def t(name, module, expected, seen, passed):
        return {"name": name, "module": module, "expected": expected, "seen": seen, "passed": passed}

    return {
        "name": "k",
        "verdict": verdict,
        "tests": [
            t("vf-boot-1", "series", 1, 1, True),
            t("vf-boot-2", "series", 2, 2, True),
            t("vf-boot-3", "series", 3, boot3_seen, boot3_seen == 3),
            t("vf-boot-3", "control", 3, control_seen, control_seen == 3),
        ],
    }


def test_comparison_same_and_different():
    same = _kernel("ready")
    assert lm.differences(same, _kernel("ready")) == []
    assert lm.format_tests(same) == "vf-boot-1 1/1, vf-boot-2 2/2, vf-boot-3 3/3, control 1/3"
    assert lm.differences(_kernel("test-fails", boot3_seen=1), same) == [
        "verdict test-fails vs ready",
        "vf-boot-3 fail 1/3 vs pass 3/3",
    ]
    assert lm.differences(_kernel("ready", control_seen=2), same) == ["control fail 2/3 vs fail 1/3"]
    fewer = _kernel("ready")
    fewer["tests"] = fewer["tests"][:2]
    assert lm.differences(fewer, same) == ["vf-boot-3 only alone", "control only alone"]
    assert lm.differences(None, same) == ["no result concurrent"]


@pytest.mark.parametrize("mode", ["all", "distinct"])
def test_compare_table_flags_mismatches(mode):
    entries = lm.make_entries(4, "r")
    concurrent = {e["name"]: _kernel(lm.REFS[e["ref"]]) for e in entries}
    concurrent["load-3"] = _kernel("test-fails", boot3_seen=1)
    baseline = lm.baseline_of(entries, mode)
    alone = {n: _kernel(lm.REFS[e["ref"]]) for e in entries for n in [e["name"]] if baseline[n] == n}
    rows = lm.compare(entries, concurrent, alone, baseline)
    assert [r.entry for r in rows if r.diffs] == ["load-3"]
    table = lm.format_table(rows)
    assert "load-3: verdict test-fails vs already-upstream" in table
    assert [line.split()[-1] for line in table.splitlines()[1:5]] == ["yes", "yes", "NO", "yes"]
    assert ("(via load-1)" in table) == (mode == "distinct")
