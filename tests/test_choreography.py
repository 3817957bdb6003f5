"""The runner's host choreography, fast: `runner.verify` against the scripted dom0 (tests/fakedom0)
behind the real local sshd — lock, recover, deploy the series' module, vf-boot-3, the control
module, vf-hotplug, the stock module back — and the same with a failure, and with a Ctrl-C, at
each step: the host is put back every time and the row says what happened.

The modules are small stand-ins (fakedom0.module) handed to verify as the builds of an earlier
run (`--builds`, as CI's test job gets them), so nothing is fetched or built. The host is a plain
inventory entry (no lab): the run makes its test guest (provision.py) as for any host.
"""

from __future__ import annotations

import dataclasses
import json
import marshal
import re
import time
import types
from pathlib import Path

import pytest
from conftest import host_state
from fake_guestkernel import fake_tarball
from fakedom0 import RELEASE, FakeDom0, fake_dom0, module

from pipeline import dom0 as dom0_mod
from pipeline import guest, guestkernel, providers, provision
from pipeline.config import KernelConfig, Settings
from pipeline.errors import Interrupted
from pipeline.host import Host
from pipeline.kcidb import patchset_hash
from pipeline.results import (
    ApplyResult,
    BuildResult,
    FetchResult,
    KernelResult,
    RunResult,
    write_results,
)
from pipeline.runner import exit_status, verify
from pipeline.series import load_series

SERIES_SRC = "0A1B2C3D4E5F60718293A4B"
CONTROL_SRC = "F0E1D2C3B4A5968778695A4"
KERNEL = "fake-6.1"
STEPS = ("deploy", "vf-create", "guest", "control", "hotplug", "restore")
# the command of each step (how its line starts and ends; a sysfs write is `tee PATH = VALUE`) and
# how many of its matches come before the one meant: the series' insmod is the first, the control's
# the second; the first `modprobe xen-pciback` is the restore after the series' vf-boot-3
AT = {
    "deploy": ("insmod ", "", 0),
    "vf-create": ("tee ", "/sriov_numvfs = 3", 0),
    "guest": ("xl create ", "", 0),
    "control": ("insmod ", "", 1),
    "hotplug": ("xl pci-attach ", "", 0),
    "restore": ("modprobe xen-pciback", "", 0),
}
# what may follow a Ctrl-C on the host: the command it came in, then only putting the host back
CLEANUP = re.compile(r"^(destroy |assignable - |vfs 0$|autoprobe 1$|unload$|load stock$)")


@pytest.fixture
def dom0(tmp_path, monkeypatch):
    # the guest's count is final at once here: no need to hold it for seconds as on a real host
    monkeypatch.setattr(guest, "FINAL_HOLD_S", 0.2)
    monkeypatch.setattr(guest, "POLL_S", 0.05)
    # nor to wait half a second before asking whether an `xl destroy` took
    fast = types.SimpleNamespace(monotonic=time.monotonic, sleep=lambda s: time.sleep(min(s, 0.05)))
    monkeypatch.setattr(dom0_mod, "time", fast)
    # the tiny guest kernel (pv.guest_kernel's default) from a fake source tree: the real builder
    # and cache in a second, and a "kernel" the fake xl never boots
    monkeypatch.setattr(guestkernel, "TARBALL", fake_tarball(tmp_path / "fake-kernel"))
    with fake_dom0(tmp_path / "dom0") as d:
        yield d


def _built(tmp_path: Path, settings: Settings) -> Path:
    """An earlier run whose build made the series' module and the control (stand-ins)."""
    series = load_series(settings.path(settings.series))
    series.patchset_hash = patchset_hash(series)
    run_dir = tmp_path / "built" / "r-built"
    mods = run_dir / "build" / KERNEL
    build = BuildResult(
        status="ok",
        mode="headers",
        module=str(module(mods / "xen-pciback.ko", "series", SERIES_SRC, publishes="all")),
        srcversion=SERIES_SRC,
        vermagic=f"{RELEASE} SMP preempt mod_unload modversions ",
        kernel_release=RELEASE,
        control_module=str(module(mods / "control" / "xen-pciback.ko", "control", CONTROL_SRC, publishes="first")),
        control_srcversion=CONTROL_SRC,
        control_detail="the series' base commit as is",
    )
    k = KernelResult(
        name=KERNEL,
        ref="v6.1",
        remote="fake-remote",
        fetch=FetchResult(status="ok", commit="c" * 40),
        apply=ApplyResult(status="applied"),
        build=build,
    )
    write_results(run_dir, RunResult(run_id="r-built", status="complete", series=series, kernels=[k]))
    return run_dir


def _settings(tmp_path: Path, d: FakeDom0, guest_kernel: str = "tiny") -> Settings:
    kcfg = KernelConfig(name=KERNEL, remote="fake-remote", ref="v6.1", hosts=[d.host_config.name])
    return Settings(
        results_root=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        jobs=1,
        vf_counts=[3],
        hotplug=True,
        hotplug_cycles=1,
        matrix="here",
        matrices={"here": [kcfg]},
        hosts={d.host_config.name: d.host_config},
        guest_kernel=guest_kernel,
    )


def _as_found(d: FakeDom0) -> dict:
    with Host(d.host_config) as h:
        state = host_state(h)
        state["guest_dirs"] = provision.leftovers(h)
        state["autoprobe"] = h.read_text(f"/sys/bus/pci/devices/{d.host_config.pf_bdf}/sriov_drivers_autoprobe")
    return state


def _verify(tmp_path: Path, d: FakeDom0, guest_kernel: str = "tiny"):
    settings = _settings(tmp_path, d, guest_kernel)
    built = _built(tmp_path, settings)
    said: list[str] = []
    done = verify(settings, builds=str(built), progress=said.append)
    return done, said


def phases(events: list[str]) -> list[str]:
    """The host's events as the steps of the choreography: a module loaded (`deploy series`), a guest
    made (`test vf-boot-3 sees 3`), the stock module back (`restore`)."""
    out: list[str] = []
    for e in events:
        if m := re.match(r"load (series|control) ", e):
            out.append(f"deploy {m.group(1)}")
        elif m := re.match(r"create pvtest-(\S+) \d+ vfs, guest sees (\d+)", e):
            out.append(f"test {m.group(1)} sees {m.group(2)}")
        elif e == "load stock":
            out.append("restore")
    return out


def _row(done) -> KernelResult:
    (k,) = done.run.kernels
    return k


def _tests(k: KernelResult) -> list[tuple]:
    return [(t.name, t.module, str(t.outcome), t.seen) for t in k.tests]


@pytest.mark.parametrize("guest_kernel", ["tiny", "host"])
def test_a_full_host_stage_deploys_tests_controls_hotplugs_and_restores(tmp_path, dom0, guest_kernel):
    before = _as_found(dom0)
    assert before["module"] == ("stock", "") and before["numvfs"] == 0 and before["domids"] == [0]
    done, said = _verify(tmp_path, dom0, guest_kernel)
    done.raise_if_stopped()
    k = _row(done)
    assert phases(dom0.events()) == [
        "deploy series",
        "test vf-boot-3 sees 3",
        "restore",
        "deploy control",
        "test vf-boot-3 sees 1",
        "restore",
        "deploy series",
        "test vf-hotplug sees 1",
        "restore",
    ]
    # every guest is gone and its VFs removed before the module goes back
    ev = dom0.events()
    for i, e in enumerate(ev):
        if e == "load stock":
            last_create = max((j for j in range(i) if ev[j].startswith("create ")), default=-1)
            between = ev[last_create:i]
            assert any(x.startswith("destroy ") for x in between) and "vfs 0" in between, between
    assert _tests(k) == [
        ("vf-boot-3", "series", "pass", 3),
        ("vf-boot-3", "control", "fail", 1),
        ("vf-hotplug", "series", "pass", 3),
    ]
    assert [(str(dep.status), dep.restored) for dep in k.deploy] == [("ok", True)] * 3
    # each step put the host back itself: no deploy had to recover what an earlier one left
    assert not [m for m in said if "left the host modified" in m]
    assert k.verdict == "ready", k.verdict_detail
    assert "negative control fails as expected" in k.verdict_detail
    assert str(done.run.status) == "complete" and exit_status(done.run) == (0, "")
    # the run made its guest for this host and took it away again; the host is as found
    assert all(t.metrics["guest"]["host"] == dom0.host_config.name for t in k.tests)
    # tiny: the run's own kernel uploaded beside the initramfs; host: the host's /boot kernel
    kernels = {(t.metrics["guest"]["kernel_source"], t.metrics["guest"]["kernel"]) for t in k.tests}
    guest_dir = provision.guest_dir(done.run.run_id)
    assert (
        kernels == {("tiny", f"{guest_dir}/vmlinuz")}
        if guest_kernel == "tiny"
        else {("host", f"/boot/vmlinuz-{RELEASE}")}
    )
    assert _as_found(dom0) == before


# a failure at each step: how often the command fails -> the row's verdict, its tests, the exit code
FAILURES = {
    # the series' module does not load: nothing is tested with it; the control still runs, hot-plug
    # not; a deploy that failed is the row's verdict, not the run's exit status
    "deploy": (1, "error", [("vf-boot-3", "control", "fail", 1)], 0),
    # VFs cannot be made (twice: the runner tries an errored case once more)
    "vf-create": (
        2,
        "test-inconclusive",
        [("vf-boot-3", "series", "error", 0), ("vf-boot-3", "control", "fail", 1), ("vf-hotplug", "series", "pass", 3)],
        0,
    ),
    "guest": (
        2,
        "test-inconclusive",
        [("vf-boot-3", "series", "error", 0), ("vf-boot-3", "control", "fail", 1), ("vf-hotplug", "series", "pass", 3)],
        0,
    ),
    "control": (1, "error", [("vf-boot-3", "series", "pass", 3), ("vf-hotplug", "series", "pass", 3)], 0),
    "hotplug": (
        2,
        "test-inconclusive",
        [("vf-boot-3", "series", "pass", 3), ("vf-boot-3", "control", "fail", 1), ("vf-hotplug", "series", "error", 1)],
        0,
    ),
    # the stock module does not come back once: the row fails (HostError's exit code) and its host is
    # restored (host_row_failed) before anything else
    "restore": (1, "error", [("vf-boot-3", "series", "pass", 3)], 7),
}


# the failure's reproduce recipe: (its stage, the --until of its invoke line, the xl config kept)
RECIPES = {
    "deploy": ("deploy", "deploy", None),
    "vf-create": ("test", "test", None),  # no VFs, no guest configured
    "guest": ("test", "test", "repro/fake-6.1/vf-boot-3-series.cfg"),
    "control": ("deploy", "deploy", None),
    "hotplug": ("test", "test", "repro/fake-6.1/vf-hotplug-series.cfg"),
    "restore": ("error", "deploy", None),
}


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_each_step_still_restores_the_host(tmp_path, dom0, step):
    before = _as_found(dom0)
    start, end, skip = AT[step]
    times, verdict, tests, code = FAILURES[step]
    dom0.fail(start, end, skip=skip, times=times, stderr=f"scripted failure at {step}")
    done, said = _verify(tmp_path, dom0)
    done.raise_if_stopped()  # a host failure is the row's, never the run's
    k = _row(done)
    ev = dom0.events()
    assert sum(e.startswith("fail ") for e in ev) == times, ev
    assert phases(ev)[-1] == "restore", phases(ev)
    assert _tests(k) == tests
    assert k.verdict == verdict, k.verdict_detail
    assert str(done.run.status) == "complete"
    assert all(dep.restored for dep in k.deploy), k.deploy
    assert exit_status(done.run)[0] == code
    if step == "restore":  # a deploy-stage failure, the host named once
        assert str(k.failed_stage) == "deploy" and k.error.startswith("deploy: host fakedom0: "), k.error
        assert "fakedom0: host fakedom0" not in k.error and "fakedom0: fakedom0" not in k.error, k.error
    # a reproduce recipe for the failure, with the invoke line up to its stage; a case whose
    # guest was configured keeps its xl config (also when `xl create` itself failed)
    stage, until, cfg = RECIPES[step]
    (rp,) = k.reproduce
    assert (rp.stage, rp.files) == (stage, [cfg] if cfg else []), rp
    assert f"scripted failure at {step}" in rp.what, rp.what
    assert rp.commands[0] == f"invoke verify --kernel {KERNEL} --series {done.run.series.source} --until {until}"
    if cfg:
        guest_name = "pvtest-" + cfg.rsplit("/", 1)[1].removesuffix("-series.cfg")
        assert f'name = "{guest_name}"' in (done.run_dir / cfg).read_text().splitlines(), cfg
        assert rp.commands[1].startswith(f"invoke hosts.run --host fakedom0 --put {done.run_dir}/{cfg}:/tmp/")
    assert _as_found(dom0) == before


# a Ctrl-C at each step -> what the row says was cut short
INTERRUPTED = {
    "deploy": "deploy to fakedom0",
    "vf-create": "vf-boot-3@fakedom0 [series]",
    "guest": "vf-boot-3@fakedom0 [series]",
    "control": "deploy to fakedom0",
    "hotplug": "vf-hotplug@fakedom0 [series]",
    "restore": "deploy to fakedom0",  # the restore between two steps: the steps after it never ran
}


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_at_each_step_restores_the_host_and_stops(tmp_path, dom0, step):
    before = _as_found(dom0)
    start, end, skip = AT[step]
    dom0.interrupt(start, end, skip=skip)
    done, said = _verify(tmp_path, dom0)
    assert isinstance(done.stopped, Interrupted)
    assert str(done.run.status) == "interrupted"
    k = _row(done)
    ev = dom0.events()
    (at,) = [i for i, e in enumerate(ev) if e.startswith("sigint at ")]
    # the command the Ctrl-C came in ends; after it, nothing new starts: the host is only put back
    after = ev[at + 2 :]
    assert all(CLEANUP.match(e) for e in after), after
    assert phases(ev)[-1] == "restore", phases(ev)
    assert all(dep.restored for dep in k.deploy), k.deploy
    assert _as_found(dom0) == before
    assert k.verdict == "untested", k.verdict_detail
    assert f"interrupted during {INTERRUPTED[step]}" in k.verdict_detail, k.verdict_detail


def test_a_guest_gone_from_the_host_is_uploaded_again(tmp_path, dom0):
    """The guest lives in the host's /run (tmpfs): after a reboot (the lab restarted when QEMU died)
    the run gives it again instead of starting every later guest from files that are gone."""
    said: list[str] = []
    guests = provision.RunGuests(_settings(tmp_path, dom0), "regone", {}, said.append)
    with Host(dom0.host_config) as h:
        first = guests.make(h)
        assert h.exists(first.kernel) and h.exists(first.initrd)
        assert guests.make(h) is first and not [m for m in said if "again" in m]  # still there: kept
        h.run(["rm", "-rf", "--", first.dir])  # what the reboot did to /run
        again = guests.make(h)
        assert h.exists(again.kernel) and h.exists(again.initrd)
        assert (again.kernel, again.kernel_sha256) == (first.kernel, first.kernel_sha256)
        assert [m for m in said if "uploading it again" in m]
        guests.remove(h)
        assert provision.leftovers(h) == []


def test_a_host_that_reboots_under_a_case_gets_its_module_and_guest_again(tmp_path, dom0):
    """The host reboots under the series' xl create: /run (our module's stage, its marker, the test
    guest) and the module are gone. The case's one rerun loads the module and the guest again
    first, so it tests the series, not the stock module; the reboot is on record."""
    before = _as_found(dom0)
    dom0.reboot("xl create ", skip=0)
    done, said = _verify(tmp_path, dom0)
    done.raise_if_stopped()
    k = _row(done)
    ev = dom0.events()
    assert phases(ev)[:3] == ["deploy series", "deploy series", "test vf-boot-3 sees 3"], phases(ev)
    rebooted = next(i for i, e in enumerate(ev) if e.startswith("reboot at xl create"))
    loads = [i for i, e in enumerate(ev) if e == f"load series {SERIES_SRC}"]
    assert loads[0] < rebooted < loads[1], ev  # loaded again after the reboot, before the rerun
    assert _tests(k) == [
        ("vf-boot-3", "series", "pass", 3),
        ("vf-boot-3", "control", "fail", 1),
        ("vf-hotplug", "series", "pass", 3),
    ]
    assert k.verdict == "ready", k.verdict_detail
    kinds = [str(f.what) for f in done.run.faults_absorbed]
    assert "host-rebooted" in kinds and "case-rerun" in kinds, kinds
    assert any("the host rebooted under the case" in m for m in said), said
    assert _as_found(dom0) == before


def test_a_staged_module_that_changes_before_the_load_is_uploaded_again_and_on_record(tmp_path, dom0):
    """The staged copy's bytes change on the host between the upload and the load (seen once in the
    lab): the byte that changed is on record, the module is uploaded again, checked, then loaded."""
    before = _as_found(dom0)
    dom0.scribble("rmmod ")  # the first deploy's unload of the stock module
    done, said = _verify(tmp_path, dom0)
    done.raise_if_stopped()
    k = _row(done)
    ev = dom0.events()
    scribbled = next(i for i, e in enumerate(ev) if e.startswith("scribble "))
    loads = [i for i, e in enumerate(ev) if e == f"load series {SERIES_SRC}"]
    assert scribbled < loads[0], ev  # the changed copy was never loaded
    assert k.verdict == "ready", k.verdict_detail
    (fault,) = [f for f in done.run.faults_absorbed if str(f.what) == "staged-changed"]
    assert fault.evidence.startswith("1 byte(s) differ, offsets "), fault.evidence
    assert any("staged module changed since the upload" in m for m in said), said
    assert _as_found(dom0) == before


# ------------------------------------------------ one machine, several dom0 kernels (issue 16)

OTHER = "6.12.0-99-amd64"


class _OneMachineManyKernels(providers.HostProvider):
    """Inventory names of one machine (the scripted dom0) that boot different kernels, as the
    lab's `dom0_kernel` hosts do: the host's `kernel_release` is the kernel it boots; starting it
    for a host whose kernel is not the running one is a reboot into it (put on record)."""

    kind = "one-machine"
    boots: list[str] = []
    dom0: FakeDom0 | None = None

    @property
    def machine(self) -> str:
        return "fakedom0"

    @property
    def boot(self) -> str:
        return self.config.kernel_release

    def ensure_running(self, progress=None, steps=None):
        d = self.dom0
        st = d.state()
        if st["release"] != self.config.kernel_release:
            st["release"] = self.config.kernel_release
            (d.root / "fakedom0" / "state").write_bytes(marshal.dumps(st))
            n = len(self.boots) + 2
            (d.root / "proc/sys/kernel/random/boot_id").write_text(f"00000000-0000-4000-8000-{n:012d}\n")
            self.boots.append(self.config.kernel_release)
            if steps is not None:
                steps["lab_ready_s"] = 1.5  # a boot, as the lab records it
        return self.config


def test_rows_are_grouped_by_dom0_kernel_and_the_machine_reboots_only_for_another(tmp_path, dom0, monkeypatch):
    """Three rows on three inventory names of one machine, the first and third booting the same
    kernel, the second another: the run visits the two of one kernel together and reboots once."""
    names = {"fk-a": RELEASE, "fk-b": OTHER, "fk-a2": RELEASE}
    hosts = {n: dataclasses.replace(dom0.host_config, name=n, kernel_release=r) for n, r in names.items()}
    _OneMachineManyKernels.boots, _OneMachineManyKernels.dom0 = [], dom0
    original = providers.provider_for
    monkeypatch.setattr(
        providers,
        "provider_for",
        lambda s, c: _OneMachineManyKernels(s, c) if c.name in names else original(s, c),
    )
    kcfgs = [KernelConfig(name=f"k-{n}", remote="fake-remote", ref="v6.1", hosts=[n]) for n in names]
    settings = dataclasses.replace(
        _settings(tmp_path, dom0), vf_counts=[3], hotplug=False, matrices={"here": kcfgs}, hosts=hosts
    )
    series = load_series(settings.path(settings.series))
    series.patchset_hash = patchset_hash(series)
    run_dir = tmp_path / "built" / "r-built"
    rows = []
    for release, kcfg in zip(names.values(), kcfgs, strict=True):
        mods = run_dir / "build" / kcfg.name
        src, csrc = f"{SERIES_SRC[:-2]}{len(rows):02d}", f"{CONTROL_SRC[:-2]}{len(rows):02d}"
        build = BuildResult(
            status="ok",
            mode="headers",
            module=str(module(mods / "xen-pciback.ko", "series", src, publishes="all", release=release)),
            srcversion=src,
            vermagic=f"{release} SMP preempt mod_unload modversions ",
            kernel_release=release,
            control_module=str(module(mods / "control/xen-pciback.ko", "control", csrc, "first", release=release)),
            control_srcversion=csrc,
            control_detail="the series' base commit as is",
        )
        rows.append(
            KernelResult(
                name=kcfg.name,
                ref="v6.1",
                remote="fake-remote",
                fetch=FetchResult(status="ok", commit="c" * 40),
                apply=ApplyResult(status="applied"),
                build=build,
            )
        )
    write_results(run_dir, RunResult(run_id="r-built", status="complete", series=series, kernels=rows))
    said: list[str] = []
    done = verify(settings, builds=str(run_dir), progress=said.append)
    done.raise_if_stopped()
    assert _OneMachineManyKernels.boots == [OTHER], _OneMachineManyKernels.boots
    # the hosts of the running kernel first (fk-a, fk-a2), then the one that needed the reboot:
    # the modules loaded, by the row their srcversion belongs to
    row_of = {r.build.srcversion: r.name for r in rows} | {r.build.control_srcversion: r.name for r in rows}
    loaded = [row_of[e.split()[2]] for e in dom0.events() if re.match(r"load (series|control) \S", e)]
    assert loaded == ["k-fk-a", "k-fk-a", "k-fk-a2", "k-fk-a2", "k-fk-b", "k-fk-b"], loaded
    by_row = {k.name: k for k in done.run.kernels}
    for n, release in names.items():
        k = by_row[f"k-{n}"]
        assert _tests(k) == [("vf-boot-3", "series", "pass", 3), ("vf-boot-3", "control", "fail", 1)], (n, _tests(k))
        assert {d.host for d in k.deploy} == {n} and k.build.kernel_release == release
    # the host stages on record in the order they ran, the one boot among them (the benchmark's
    # "lab boots per run"), also as results.json has them
    visits = [(v.host, v.rows, v.booted, v.boot_s) for v in done.run.host_visits]
    assert visits == [
        ("fk-a", ["k-fk-a"], False, 0.0),
        ("fk-a2", ["k-fk-a2"], False, 0.0),
        ("fk-b", ["k-fk-b"], True, 1.5),
    ], visits
    assert all(v.stages_s > 0 for v in done.run.host_visits)
    assert done.run.steps["lab_ready_s"] == 1.5
    saved = json.loads((done.run_dir / "results.json").read_text())
    assert [(v["host"], v["booted"]) for v in saved["host_visits"]] == [
        ("fk-a", False),
        ("fk-a2", False),
        ("fk-b", True),
    ]


def test_a_host_the_pipeline_starts_begins_booting_before_the_rows_and_is_waited_for_after(tmp_path, dom0, monkeypatch):
    """runner.prepare_hosts: a host whose provider starts it (the built-in lab) is started as the run
    begins, beside the source import and the builds, and the host stage then waits for it."""
    events: list[str] = []

    class Booting(providers.SshProvider):  # a host the pipeline boots, reached like the plain one
        kind = "booting"

        def start(self, progress, steps=None):
            events.append("start")
            progress("booting: QEMU started, dom0 not waited for")

        def ensure_running(self, progress, steps=None):
            events.append("wait")
            return super().ensure_running(progress, steps)

    monkeypatch.setitem(providers.KINDS, "booting", Booting)
    settings = _settings(tmp_path, dom0)
    name = dom0.host_config.name
    settings.hosts[name] = dataclasses.replace(dom0.host_config, kind="booting")
    said: list[str] = []
    done = verify(settings, builds=str(_built(tmp_path, settings)), progress=said.append)
    assert events == ["start", "wait"]
    started = said.index("booting: QEMU started, dom0 not waited for")
    row_done = next(i for i, m in enumerate(said) if m.startswith(f"{KERNEL}: build of run "))
    deployed = next(i for i, m in enumerate(said) if "insmod" in m)
    assert started < row_done < deployed, said
    assert {"prepare_wait", "hosts"} <= set(done.run.steps)
    assert [t.passed for t in _row(done).tests if t.module == "series"] == [True, True]
