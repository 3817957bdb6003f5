"""Shared fixtures. `lab_host`: the built-in Xen lab, built and booted once per test session.

`lab_modules`: xen-pciback.ko with and without the fix for the lab's kernel, built once per session.
`host_state`: what a lab host runs, for "the host is left as found" checks (`from conftest import host_state`).

A lab test that fails may leave its guest, its module or its VFs behind; the next tests would then
fail for that reason alone (seen in CI: one crashed `xl list`, then five failures). After a failed
lab test the host is put back the way the pipeline's next run would do it: test guests destroyed,
the deploy marker's recovery run. What was done is printed.

Absorbed faults (pipeline/absorbed.py): every process of the session, `invoke verify` runs included,
appends its records to one journal (PV_FAULTS_JOURNAL); the terminal summary gives the total on the
lab, per test, with the LAB FAULT lines of the lab revivals.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.tmpdir import TempPathFactory


def _traversable(path: Path) -> Path:
    """Let the build sandbox's uid pass through pytest's 0700 temporary directories (x, not r):
    bwrap resolves what it binds as that uid, so builds in tmp_path would be refused otherwise."""
    for d in [path, *path.parents]:
        if str(d) in ("/", "/tmp"):
            break
        try:
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH and d.owner() == "root":
                os.chmod(d, stat.S_IMODE(mode) | 0o011)
        except (OSError, KeyError):
            break
    return path


_LAB_FAULTS: list[str] = []  # the LAB FAULT lines of this session, repeated in the terminal summary
_FAULTS_BY_TEST: dict[str, int] = {}  # test id -> journal lines its run added


def pytest_configure(config):
    from pipeline.absorbed import JOURNAL_ENV

    config.pluginmanager.register(_LabRerun(), "pv-lab-rerun")
    if not os.environ.get(JOURNAL_ENV):  # a caller's journal (CI's) is kept, and left to it
        fd, path = tempfile.mkstemp(prefix="pv-faults-", suffix=".jsonl")
        os.close(fd)
        os.environ[JOURNAL_ENV] = config.pv_own_journal = path
    # /tmp/pytest-of-root is shared with every other pytest session of root, and each resets it to
    # 0700 when it starts: this checkout's temporaries live apart (cleared by pytest per session)
    if not config.option.basetemp:
        here = Path(__file__).resolve().parent.parent
        config.option.basetemp = f"/tmp/pytest-pv-{here.name}"


_mktemp = TempPathFactory.mktemp
TempPathFactory.mktemp = lambda self, *a, **k: _traversable(_mktemp(self, *a, **k))


@pytest.fixture
def tmp_path(tmp_path):
    return _traversable(tmp_path)


def _journal_lines() -> int:
    from pipeline.absorbed import JOURNAL_ENV

    try:
        return len(Path(os.environ.get(JOURNAL_ENV, "")).read_text(encoding="utf-8").splitlines())
    except OSError:
        return 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = _journal_lines()
    yield
    if _journal_lines() > before:
        _FAULTS_BY_TEST[item.nodeid] = _journal_lines() - before


def pytest_terminal_summary(terminalreporter):
    """How many faults the pipeline absorbed in this session: on the lab (what CI's total is for; a
    lab getting worse shows here), and elsewhere (the local sshd tests cause theirs on purpose)."""
    from pipeline.absorbed import JOURNAL_ENV, describe, read_journal, summary

    faults = read_journal(Path(os.environ.get(JOURNAL_ENV, "")))
    lab_names = {h.name for h in _lab_hosts()}
    on_lab = [f for f in faults if f.host in lab_names]
    tr = terminalreporter
    tr.write_sep("-", f"{summary(on_lab)} on the lab during the test run, {len(faults) - len(on_lab)} elsewhere")
    for f in on_lab:
        tr.write_line(f"  {describe(f)}")
    for nodeid, n in _FAULTS_BY_TEST.items():
        tr.write_line(f"  {n} in {nodeid}")
    for line in _LAB_FAULTS:
        tr.write_line(line)


def _lab_hosts() -> list:
    try:
        from pipeline import providers
        from pipeline.config import project_settings

        return [h for h in project_settings().hosts.values() if providers.kind_of(h) == providers.LabProvider.kind]
    except Exception:  # noqa: BLE001 - a summary line must not fail the session
        return []


def pytest_unconfigure(config):
    own = getattr(config, "pv_own_journal", None)
    if own:
        Path(own).unlink(missing_ok=True)


def _lab_boots() -> tuple[int, int] | None:
    """(QEMU pid, how often Xen has booted on its console) of the running lab, None without one: a
    machine reset under a test shows as more boots on the same QEMU, a QEMU death as another pid."""
    from pipeline import lab
    from pipeline.config import project_settings
    from pipeline.lab.qemu import our_pid

    settings = project_settings()
    pid = our_pid(lab.paths(settings))
    return (pid, lab.xen_boots(settings)) if pid else None


def lab_change(before: tuple[int, int], after: tuple[int, int] | None) -> str:
    """What happened to the lab between two `_lab_boots` readings, "" for nothing."""
    if after is None:
        return "the lab's QEMU is gone"
    if after[0] != before[0]:
        return f"the lab's QEMU was replaced (pid {before[0]} -> {after[0]})"
    if after[1] != before[1]:
        return f"the lab's machine reset under it (Xen booted {after[1] - before[1]} more time(s), same QEMU)"
    return ""


def _failed(reports) -> str:
    bad = next((r for r in reports if r.failed), None)
    if bad is None:
        return ""
    crash = getattr(bad.longrepr, "reprcrash", None)
    return f"{bad.when}: {crash.message.splitlines()[0] if crash and crash.message else bad.outcome}"


def _lab_back() -> None:
    """Wait until the lab answers again (a reset dom0 boots anew) and update `lab_host` in place."""
    from pipeline import lab
    from pipeline.config import project_settings

    host = lab.up(project_settings(), _lab_progress)
    if _LabBoot.host is not None:
        for f in dataclasses.fields(host):
            setattr(_LabBoot.host, f.name, getattr(host, f.name))


class _LabRerun:
    """A plugin (conftest can hold one pytest_runtest_protocol only: the journal count's)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        """A lab test that failed while the lab's machine reset under it (seen in CI on a loaded machine:
        dom0 gone during an `xl destroy` of a guest holding VFs, SSH refused until it had booted again)
        or its QEMU died runs once more, on record: a fault absorbed (test-rerun) and a LAB FAULT line in
        the summary. The lab itself is issue 13's; the rerun keeps one reset from failing the suite.
        Not for the session's last test (its teardown powers the lab off)."""
        if not item.get_closest_marker("lab") or nextitem is None or (before := _lab_boots()) is None:
            return None
        from _pytest.runner import runtestprotocol

        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        why, after = _failed(reports), _lab_boots()
        if why and after != before:
            how = lab_change(before, after)
            from pipeline.absorbed import record
            from pipeline.statuses import FaultKind

            line = f"LAB FAULT in {item.nodeid}: {how}; it failed ({why}); running it once more"
            print(f"\n{line}", file=sys.stderr, flush=True)
            _LAB_FAULTS.append(line)
            record(FaultKind.TEST_RERUN, getattr(_LabBoot.host, "name", "lab"), f"test {item.name}", f"{how}; {why}")
            _lab_back()
            item.pv_failed = False
            reports = runtestprotocol(item, nextitem=nextitem, log=False)
        for r in reports:
            item.ihook.pytest_runtest_logreport(report=r)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        item.pv_failed = True


def _revive_the_lab(request, when: str) -> None:
    """A lab whose QEMU died (issue 13: QEMU 7.2 segfaults now and then) is booted again, said
    loudly, so one crash fails the test it happened in and not every lab test after it."""
    if "lab_host" not in request.fixturenames or _LabBoot.host is None:
        return
    from pipeline import lab

    settings = request.getfixturevalue("lab_settings")
    if lab.status(settings, probe=False).running:
        return
    qemu_log = lab.paths(settings).qemu_log
    last = qemu_log.read_text(errors="replace").strip().splitlines()[-3:] if qemu_log.exists() else []
    line = (
        f"LAB FAULT {when} {request.node.nodeid}: QEMU is gone (qemu.log: {' | '.join(last) or '-'}; "
        f"console: {lab.console_tail(settings, 2)!r}); booting it again"
    )
    print(f"\n{line}", file=sys.stderr, flush=True)
    _LAB_FAULTS.append(line)
    from pipeline.absorbed import record
    from pipeline.statuses import FaultKind

    where = f"lab boot ({when} {request.node.name})"
    record(FaultKind.LAB_RESTARTED, _LabBoot.host.name, where, "QEMU is gone" + (f": {last[-1]}" if last else ""))
    _lab_back()


@pytest.fixture(autouse=True)
def _put_the_lab_back_after_a_failure(request):
    _revive_the_lab(request, "before")
    yield
    _revive_the_lab(request, "after")
    if "lab_host" not in request.fixturenames or not getattr(request.node, "pv_failed", False):
        return
    from pipeline import deploy as D
    from pipeline.host import Host

    def say(msg: str) -> None:
        print(f"after the failure of {request.node.name}: {msg}", file=sys.stderr, flush=True)

    try:
        with Host(request.getfixturevalue("lab_host")) as h:
            D.destroy_test_domains(h, say)  # also without a marker (a test that made a guest by hand)
            D.recover(h, say)
    except Exception as e:  # noqa: BLE001 - the failure itself is what the report must show
        say(f"could not put the lab back: {e}")


@pytest.fixture(scope="session")
def lab_settings():
    from pipeline.config import project_settings

    return project_settings()


class _LabBoot:
    """The lab built and booted in a thread from the end of collection, beside the tests that come
    before the first lab test (builds, CLI checks): CI's time is tight. `lab_host` waits for it."""

    thread: threading.Thread | None = None
    guest_thread: threading.Thread | None = None
    extra_thread: threading.Thread | None = None
    extra: tuple[str, ...] = ()  # inventory labs besides `lab` the tests name (`@pytest.mark.labs`)
    host = None
    error: BaseException | None = None
    was_running = True
    used = False  # lab_host took it over (and powers it off at its teardown)

    @classmethod
    def start(cls) -> None:
        from pipeline import lab
        from pipeline.config import project_settings

        settings = project_settings()
        cls.was_running = lab.status(settings, probe=False).running

        def boot() -> None:
            try:
                lab.build(settings, _lab_progress)
                if cls.extra:
                    cls.extra_thread = threading.Thread(target=extra_images, name="extra-labs", daemon=True)
                    cls.extra_thread.start()
                cls.host = lab.up(settings, _lab_progress)
            except BaseException as e:  # noqa: BLE001 - re-raised in the test that needs the lab
                cls.error = e

        def extra_images() -> None:
            # the other labs' images (debootstrap: mostly downloads and dpkg) while the lab boots and
            # the first tests run; their test boots them. An error is that test's to report (it builds again)
            from pipeline import kernelsrc, labsuites

            for name in cls.extra:
                try:
                    extra = labsuites.for_name(settings, name)
                    lab.build(extra, _lab_progress)
                    if extra.lab.dom0_kernel:  # a host of another dom0 kernel: its line's source, whose rows it runs
                        kernelsrc.import_line(
                            settings, labsuites.dom0_kernel(extra.lab.dom0_kernel).line, progress=_lab_progress
                        )
                except Exception as e:  # noqa: BLE001
                    _lab_progress(f"{name}: image build or source import beside the lab failed: {e}")

        def guest_kernel() -> None:
            # the run's tiny guest kernel (minutes on a fresh machine) beside the image build, which
            # mostly downloads and unpacks: the first verify finds it cached (an error is the run's to report)
            from pipeline import provision

            provision.RunGuests(settings, "lab-boot", {}, _lab_progress).prepare()

        cls.thread = threading.Thread(target=boot, name="lab-boot", daemon=True)
        cls.thread.start()
        cls.guest_thread = threading.Thread(target=guest_kernel, name="guest-kernel", daemon=True)
        cls.guest_thread.start()

    @classmethod
    def wait(cls):
        # not the guest kernel: most lab tests use the lab's own guest, and they run while it builds
        cls.thread.join()
        if cls.error is not None:
            raise cls.error
        return cls.host

    @classmethod
    def wait_guest(cls) -> None:
        if cls.guest_thread is not None:
            cls.guest_thread.join()


def _lab_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


LAB_SETUP_TIMEOUT_S = 3600


def pytest_collection_modifyitems(session, config, items):
    # the lab tests that run `invoke verify` (the tiny guest kernel) after the other lab tests, which
    # then run while that kernel still builds beside them: on a fresh machine it is ready minutes
    # after the lab is (CI's time is tight); stable otherwise
    items.sort(key=lambda item: "tiny_guest" in getattr(item, "fixturenames", ()))
    # the first lab test's setup waits for the lab image build and boot, which a busy machine slows
    # 2-3x (CI2 here: build 603 s, boot past 587 s): its own limit; the per-test one stays the hang guard
    first_lab = next((item for item in items if item.get_closest_marker("lab")), None)
    if first_lab is not None and not first_lab.get_closest_marker("timeout"):
        first_lab.add_marker(pytest.mark.timeout(LAB_SETUP_TIMEOUT_S))


def pytest_collection_finish(session):
    if session.config.option.collectonly or not any(i.get_closest_marker("lab") for i in session.items):
        return
    _LabBoot.extra = tuple(dict.fromkeys(n for i in session.items for m in i.iter_markers("labs") for n in m.args))
    _LabBoot.start()


def pytest_sessionfinish(session):
    if _LabBoot.extra_thread is not None:  # never a debootstrap cut off by the interpreter's exit
        _LabBoot.extra_thread.join()
    # a session that ended before its first lab test still powers off the lab it booted
    if _LabBoot.thread is None or _LabBoot.used:
        return
    _LabBoot.thread.join()
    _LabBoot.guest_thread.join()
    if not _LabBoot.was_running and _LabBoot.error is None:
        from pipeline import lab
        from pipeline.config import project_settings

        lab.down(project_settings(), _lab_progress)


@pytest.fixture(scope="session")
def lab_host(lab_settings):
    """HostConfig of the running lab: built if its inputs changed, booted, powered off at session end.

    The object is updated in place if a test restarts the lab, so holders of it stay valid.
    """
    from pipeline import lab

    if _LabBoot.thread is None:  # (a lab test selected in a way collection did not see)
        _LabBoot.start()
    _LabBoot.used = True
    host = _LabBoot.wait()
    yield host
    if not _LabBoot.was_running:  # a lab someone started by hand stays up
        lab.down(lab_settings, _lab_progress)


@pytest.fixture(scope="session")
def lab_modules(lab_host, lab_settings, tmp_path_factory):
    """xen-pciback.ko for the lab's kernel, with the fix ("series") and without ("control"), built once
    by the pipeline's build stage as `invoke verify` builds the lab's line (tests/labmodules.py)."""
    from labmodules import build_pair

    mods = build_pair(lab_settings, tmp_path_factory.mktemp("modules"), _lab_progress)
    for label, b in mods.items():
        assert b.status == "ok", f"{label}: {b.detail}; {b.errors}; see {b.log}"
        assert b.srcversion, f"{label} built without srcversion"
    assert mods["series"].kernel_release == lab_host.kernel_release, "not built for the lab's kernel"
    assert mods["series"].srcversion != mods["control"].srcversion
    return mods


@pytest.fixture(scope="session")
def tiny_guest(lab_host) -> None:
    """The tiny test-guest kernel `invoke verify` boots (pipeline/guestkernel.py), built beside the
    lab boot: a test that runs verify on the lab waits for it (a run would wait on its lock anyway)."""
    _LabBoot.wait_guest()


@dataclass
class VerifyRun:
    proc: subprocess.CompletedProcess
    results: dict | None  # results.json, None when the run wrote none
    before: dict  # host_state of the lab before and after the run
    after: dict


@pytest.fixture(scope="session")
def default_verify(lab_host, tiny_guest, tmp_path_factory) -> VerifyRun:
    """`invoke verify` of the default matrix on the lab (the README's main job), run once per session:
    test_verify_e2e judges it, test_plain_host compares a plain-host run with it (CI's time is tight)."""
    import json

    from pipeline import PROJECT_ROOT
    from pipeline.host import Host

    with Host(lab_host) as h:
        before = host_state(h)
    root = tmp_path_factory.mktemp("default-verify")
    env = {**os.environ, "INVOKE_PV_RESULTS_ROOT": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "verify"], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env
    )
    with Host(lab_host) as h:
        after = host_state(h)
    res = root / "latest" / "results.json"
    return VerifyRun(proc, json.loads(res.read_text()) if res.exists() else None, before, after)


def host_state(h, keys=None) -> dict:
    """What must be the same before and after a deploy/test/restore; `keys` reads only those (default all).

    module: the loaded xen-pciback (`deploy.loaded_state`: stock / none / srcversion); taint: its taint
    flags (None when not loaded); domids and domains: `xl list` by id and by name; numvfs: the PF's
    sriov_numvfs; assignable: `xl pci-assignable-list`; marker: the deploy marker exists; staged: what
    is left in the module staging directory; lock: the host lock exists.
    """
    from pipeline import deploy as D
    from pipeline.hostlock import LOCK_DIR

    readers = {
        "module": lambda: D.loaded_state(h),
        "taint": lambda: D.loaded_taint(h) if D.is_loaded(h) else None,
        "domids": lambda: sorted(D.live_domids(h)),
        "domains": lambda: sorted(line.split()[0] for line in h.out(["xl", "list"]).splitlines()[1:]),
        "numvfs": lambda: D.pf_numvfs(h),
        "assignable": lambda: sorted(D.assignable_devices(h)),
        "marker": lambda: h.exists(D.MARKER),
        "staged": lambda: D.staged_entries(h),
        "lock": lambda: h.exists(LOCK_DIR),
    }
    return {k: readers[k]() for k in (keys or readers)}
