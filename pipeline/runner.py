"""The matrix run behind `invoke verify`: every kernel is one row of stages, rows side by side within a bound.

A stage that cannot run records why; nothing raised inside a row escapes it.
Host stages (deploy, test) run after the builds, one host at a time, because
they change the host's loaded module.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import absorbed, build, deploy, interrupt, kernelsrc, providers, provision, report, reuse, sriov, verdict, vftest
from .apply import apply_series
from .config import HostConfig, KernelConfig, Settings
from .dom0 import boot_id
from .errors import ConfigError, HostError, InternalError, Interrupted, PipelineError, without_host
from .fetch import HEADERS_MODE_PATHS, fetch_kernel, remove_worktree, sweep_run
from .host import Host
from .hostlock import HostLock
from .hostprep import HostPrep
from .interrupt import stop_children
from .mails import git_dirs, write_mails
from .redact import redact_tree
from .report import patchset_hash
from .results import (
    ApplyStatus,
    BuildResult,
    BuildStatus,
    DeployResult,
    DeployStatus,
    FaultKind,
    FetchStatus,
    HostVisit,
    KernelResult,
    Outcome,
    Refusal,
    RunDir,
    RunResult,
    RunStatus,
    SeriesInfo,
    Stage,
    TestResult,
    now_iso,
    timed,
    write_results,
)
from .runlog import RunLog
from .series import load_series

STAGES = ["series", "fetch", "apply", "build", "deploy", "test", "report"]
# exit codes of a row that never reached a defined status, by the stage that failed
_STAGE_EXIT = {Stage.FETCH: 5, Stage.APPLY: 5, Stage.BUILD: 6, Stage.DEPLOY: 7, Stage.TEST: 7}
# what a stage's record says when a PipelineError stopped it (a build that could not run: setup)
_STAGE_FAILED = {"fetch": FetchStatus.FAILED, "apply": ApplyStatus.FAILED, "build": BuildStatus.SETUP_FAILED}


def _wants(until: str, stage: str) -> bool:
    return STAGES.index(stage) <= STAGES.index(until)


class _Run:
    def __init__(self, settings: Settings, run: RunResult, run_dir: Path, series: SeriesInfo, until: str, progress):
        self.settings, self.run, self.run_dir, self.series, self.until = settings, run, run_dir, series, until
        self.progress = progress
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.host_step: tuple[str, str] | None = None  # (deploy | restore | test name, module) on a host now
        self.reused: dict[str, KernelResult] = {}  # `--builds`: rows whose build an earlier run made
        self.guests = provision.RunGuests(settings, run.run_id, run.steps, progress)
        self.booted: dict[str, str] = {}  # host -> boot id when its module was last loaded

    def save(self) -> None:
        with self.lock:
            write_results(self.run_dir, self.run)

    # ------------------------------------------------------------ per-kernel rows

    def row(self, kcfg: KernelConfig, kr: KernelResult) -> None:
        p = self.progress
        stage = "fetch"  # the stage running now: a PipelineError is put on its record
        try:
            if self.stop.is_set():
                return
            if kcfg.name in self.reused:
                done = self.reused[kcfg.name]
                kr.fetch, kr.apply, kr.build = done.fetch, done.apply, done.build
                p(f"{kcfg.name}: build of run {kr.build.reused_from} ({kr.build.srcversion}), not rebuilt")
                self.save()
                return
            kr.fetch.status = FetchStatus.RUNNING
            kr.fetch = fetch_kernel(self.settings, kcfg, self.run.run_id, progress=p, sparse=self.sparse_paths(kcfg))
            self.interrupted_during(kr.fetch)
            self.save()
            if not _wants(self.until, "apply") or self.stop.is_set():
                return
            stage = "apply"
            revert = kernelsrc.control_revert(self.settings, kcfg)  # the line's revert: evidence of its form of the fix
            kr.apply = apply_series(
                kr.fetch, self.series, self.run.run_id, progress=p, label=kcfg.name, control_revert=revert
            )
            self.interrupted_during(kr.apply)
            self.save()
            if not _wants(self.until, "build") or self.stop.is_set():
                return
            if kr.apply.status is ApplyStatus.CONFLICT:
                kr.build = BuildResult(status=BuildStatus.SKIPPED, detail="the series does not apply")
                return
            stage = "build"
            kr.build = self.build(kcfg, kr)
            self.interrupted_during(kr.build)
            self.save()
        except PipelineError as e:
            if self.interrupted_during(_stage_obj(kr, stage)):
                return
            _stage_obj(kr, stage).status = _STAGE_FAILED[stage]
            _stage_obj(kr, stage).detail = e.message
            kr.error = f"{stage}: {e.message}"
            kr.error_code = e.exit_code
            kr.failed_stage = Stage(stage)
            p(f"{kcfg.name}: {stage} failed: {e.message}")
        except Exception as e:  # a bug of ours: the row says so, the other rows go on
            if self.interrupted_during(_stage_obj(kr, stage)):
                return
            kr.error = f"internal error: {type(e).__name__}: {e}"
            kr.failed_stage = Stage(stage)
            kr.error_code = InternalError.exit_code
            (self.run_dir / f"{kcfg.name}.traceback.txt").write_text(traceback.format_exc())
            p(f"{kcfg.name}: internal error, see {self.run_dir / (kcfg.name + '.traceback.txt')}")

    def interrupted_during(self, stage) -> bool:
        """After Ctrl-C, a stage that ended (its processes were stopped) says `interrupted`, not failed."""
        if not self.stop.is_set():
            return False
        stage.status = "interrupted"  # every stage status enum has INTERRUPTED
        stage.detail = ("interrupted; " + (stage.detail or "")).rstrip("; ")
        return True

    def sparse_paths(self, kcfg: KernelConfig) -> list[str] | None:
        """What a headers-mode row reads from its tree: the driver, scripts/ (checkpatch) and the series' files."""
        if kcfg.build.mode != "headers":
            return None
        files = {f for p in self.series.patches for f in p.files}
        return sorted({*HEADERS_MODE_PATHS} | {f"/{f}" for f in files})

    def build(self, kcfg: KernelConfig, kr: KernelResult) -> BuildResult:
        return build.build_kernel(
            self.settings,
            kcfg,
            Path(kr.fetch.worktree),
            kr.fetch.commit,
            self.series.patches,
            self.run_dir,
            self.progress,
        )

    # ------------------------------------------------------------ hosts

    def host_config(self, name: str, visit: HostVisit | None = None) -> HostConfig:
        """The inventory host's config to connect with, its provider having started it if need be;
        `visit` gets whether it booted and how long that took."""
        steps: dict[str, float] = {}  # this host's own: lab_ready_s says it booted now
        t0 = time.monotonic()
        try:
            return providers.of_host(self.settings, name).ensure_running(self.progress, steps)
        finally:
            for key, secs in steps.items():  # summed: a matrix boots one lab per dom0 kernel
                self.run.steps[key] = round(self.run.steps.get(key, 0.0) + secs, 2)
            if visit is not None:
                visit.wait_s, visit.booted = round(time.monotonic() - t0, 2), "lab_ready_s" in steps
                visit.boot_s = steps.get("lab_ready_s", 0.0)

    def host_stages(self, pairs: list[tuple[KernelConfig, KernelResult]], keep: bool) -> None:
        by_host: dict[str, list[tuple[KernelConfig, KernelResult]]] = {}
        for kcfg, kr in pairs:
            for h in kcfg.hosts:
                by_host.setdefault(h, []).append((kcfg, kr))
        if _wants(self.until, "test") and by_host:
            self.guests.prepare()
        # a machine's hosts together, those of one dom0 kernel together: the lab reboots only for another kernel
        order = [p.name for p in providers.boot_order([providers.of_host(self.settings, h) for h in by_host])]
        for hname in order:
            rows = by_host[hname]
            ready = [(k, r) for k, r in rows if r.build.status is BuildStatus.OK and r.build.module]
            if not ready or self.stop.is_set():
                continue
            visit = HostVisit(host=hname, rows=[k.name for k, _ in ready])
            self.run.host_visits.append(visit)
            try:
                host = Host(self.host_config(hname, visit))
                # before the lock: a host that is no dom0 must not get even a lock directory written
                why = deploy.not_dom0_reason(host)
                if why:
                    self.refuse_host(host, ready, why)
                    host.close()
                    continue
                # held on the host from deploy to restore: other runs (any machine) wait; then undo leftovers
                with timed(self.run.steps, "host_lock"):
                    lock = HostLock(host, self.run.run_id, self.progress).acquire()
                try:
                    with timed(self.run.steps, "host_recover"):
                        deploy.recover(host, self.progress)
                    provision.remove_leftovers(host, self.progress)
                except PipelineError:
                    lock.release()
                    raise
            except PipelineError as e:
                for _, kr in ready:
                    kr.deploy.append(DeployResult(status=DeployStatus.FAILED, host=hname, detail=e.message))
                    kr.error = f"deploy: host {hname}: {without_host(e, hname)}"
                    kr.error_code = e.exit_code
                    kr.failed_stage = Stage.DEPLOY
                continue
            t0 = time.monotonic()
            with host, lock:
                try:
                    self.rows_on_host(host, ready, keep)
                finally:
                    visit.stages_s = round(time.monotonic() - t0, 2)
                    if _wants(self.until, "test"):
                        with interrupt.deferred_sigint(self.progress):
                            self.guests.remove(host)

    def rows_on_host(self, host, ready, keep: bool) -> None:
        for kcfg, kr in ready:
            if self.stop.is_set():
                return
            try:
                with absorbed.about(kernel=kcfg.name):
                    self.kernel_on_host(host, kcfg, kr, keep)
            except KeyboardInterrupt:
                self.interrupted_on_host(host, kr)
                raise
            except Exception as e:  # noqa: BLE001 - one kernel's host failure never ends the run
                self.host_row_failed(host, kcfg, kr, e)
                if interrupt.requested():  # a cleanup error hid the Ctrl-C: still stop
                    self.interrupted_on_host(host, kr)
                    raise KeyboardInterrupt from e
            self.save()

    def guest_image(self, host):
        """The test guest the host's provider gives this run (the one the run makes, or the lab
        image's own with `pv.guest_kernel: host`). HostError/BuildSetupError when it cannot be made."""
        return providers.run_guest(self.guests, host)

    def interrupted_on_host(self, host, kr: KernelResult) -> None:
        """Ctrl-C: the step in progress (its cleanup already ran on the way out) goes on record."""
        self.stop.set()
        step, module = self.host_step or ("", "")
        if step in ("deploy", "restore"):  # restore: the steps after it never ran
            detail = f"interrupted ({module})" if step == "deploy" else f"interrupted restoring stock after {module}"
            kr.deploy.append(
                DeployResult(status=DeployStatus.INTERRUPTED, host=host.name, restored=True, detail=detail)
            )
        elif step:
            kr.tests.append(
                TestResult(name=step, host=host.name, module=module, outcome=Outcome.INTERRUPTED, reason="interrupted")
            )
        self.progress(f"{kr.name} on {host.name}: interrupted during {step or 'the host stage'}")
        self.save()

    def refuse_host(self, host, rows, refusal: Refusal) -> None:
        """Preflight said no: the rows keep their verdict (untested there); the command still says why,
        with the refusal's own exit code."""
        for kcfg, kr in rows:
            kr.deploy.append(DeployResult(status=DeployStatus.SKIPPED, host=host.name, detail=str(refusal)))
            self.progress(f"{kcfg.name} on {host.name}: skipped: {refusal}")
            if not kr.error_code:
                kr.error_code = refusal.code
                kr.failed_stage = Stage.DEPLOY

    def run_test(self, host, kr: KernelResult, name: str, module: str, run, built=None) -> None:
        """Run one VF test case and save it; once more, on a fresh connection, when it errored (no
        guest result: a lost SSH stream, a stuck xl create) rather than failed. `built`: the module's
        (path, srcversion), loaded again first if the host rebooted under the case."""
        self.host_step = (name, module)
        with absorbed.about(case=f"{name} [{module}]"):
            t = run()
            if t.outcome is Outcome.ERROR and not self.stop.is_set():
                self.progress(f"{name} [{module}]: errored ({t.reason}); one more attempt on a fresh connection")
                absorbed.record(FaultKind.CASE_RERUN, host.name, f"{name} [{module}]", t.reason)
                host.close()
                if built is not None:
                    self.reload_after_reboot(host, module, *built)
                first, t = t, run()
                t.warnings.append(f"first attempt errored: {first.reason}")
        if guest := self.guests.record(host.name):  # where the guest came from: made by this run for this host
            t.metrics["guest"] = guest
        kr.tests.append(t)
        self.host_step = None
        self.save()

    def reload_after_reboot(self, host, module: str, path: str, srcversion: str) -> None:
        """A host that rebooted since the deploy lost the module, its marker and the test guest (all
        under /run): load the module and the guest again so the case's rerun tests what it should;
        the row's restore still puts back what the first deploy found."""
        self.ensure_host(host)
        was, now = self.booted.get(host.name, ""), boot_id(host)
        if not (was and now and now != was):
            return
        absorbed.record(FaultKind.HOST_REBOOTED, host.name, f"deploy {module}", f"boot id {was} -> {now}")
        self.progress(f"{host.name}: the host rebooted under the case (new boot id); loading the {module} module again")
        self.booted[host.name] = now
        d = deploy.deploy(host, Path(path), srcversion, self.progress)
        if d.status is not DeployStatus.OK:
            raise HostError(f"after the host rebooted: {d.detail}", host=host.name)
        self.guest_image(host)  # uploads the guest's files again when they are gone

    def host_row_failed(self, host, kcfg: KernelConfig, kr: KernelResult, e: Exception) -> None:
        """Record the failure on the row and put the host back (fresh connection) before the next kernel."""
        msg = without_host(e, host.name) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
        stage = Stage.DEPLOY if (self.host_step or ("",))[0] in ("deploy", "restore") else Stage.TEST
        kr.error = f"{stage}: host {host.name}: {msg}"
        kr.error_code = getattr(e, "exit_code", 7)
        kr.failed_stage = stage
        self.progress(f"{kcfg.name} on {host.name}: failed: {msg}; restoring the host")
        if not isinstance(e, PipelineError):
            (self.run_dir / f"{kcfg.name}.host-traceback.txt").write_text(traceback.format_exc())
        host.close()
        for dep in reversed(kr.deploy):
            if dep.status is DeployStatus.OK and not dep.restored:
                try:
                    deploy.restore(host, dep, self.progress)
                except Exception as re:  # noqa: BLE001 - the marker file lets the next run finish the job
                    self.progress(f"{host.name}: restore failed ({re}); the next run restores from the host's marker")

    def kernel_on_host(self, host, kcfg, kr: KernelResult, keep: bool) -> None:
        """Series module: vf-boot-N; control module: vf-boot-3; series again: vf-hotplug, last,
        because hot-plug is the step that has crashed the emulated lab (QEMU's NVMe VFs).
        `host_step` names what runs, so that a Ctrl-C can be put on record (interrupted_on_host)."""
        p = self.progress
        b = kr.build
        self.host_step = None
        self.ensure_host(host)
        need = max(self.settings.vf_counts, default=1)
        # an explicit max_vfs is a promise about the host; without one, counts above the PF's are skipped
        cap = host.config.max_vfs
        reason = deploy.preflight(host, b, min(need, cap) if cap else 1)
        if reason:
            self.refuse_host(host, [(kcfg, kr)], reason)
            return
        self.use_pf_limit(host)
        testing = _wants(self.until, "test")
        image = None
        if testing:
            try:
                image = self.guest_image(host)
            except PipelineError as e:
                why = without_host(e, host.name)  # the refusal is printed and recorded with the host's name
                self.refuse_host(host, [(kcfg, kr)], Refusal(f"cannot make the test guest: {why}", e.exit_code))
                return

        def deploy_module(module: str, path: str, srcversion: str):
            self.host_step = ("deploy", module)
            d = deploy.deploy(host, Path(path), srcversion, p)
            if module == "control":
                d.detail = ("control module; " + d.detail).strip("; ")
            kr.deploy.append(d)
            self.booted[host.name] = boot_id(host)  # the host's boot this module was loaded in
            self.host_step = None
            self.save()
            return d

        def restore(d, module: str) -> None:
            # a Ctrl-C here still cuts the row's later steps; one that came in a test (unwinding
            # through this restore) stays that test's
            outer = self.host_step
            self.host_step = outer or ("restore", module)
            deploy.restore(host, d, p)
            self.host_step = outer

        # the series' module (for an already-applied kernel: the tree's own module, the fix included)
        dep = deploy_module("series", b.module, b.srcversion)
        if dep.status is DeployStatus.OK:
            try:
                if testing:
                    for n, skip in vftest.boot_counts(host, self.settings, "series"):
                        if skip:
                            kr.tests.append(skip)
                            continue
                        case = lambda n=n: vftest.vf_boot(host, n, "series", image, p)  # noqa: E731
                        self.run_test(host, kr, f"vf-boot-{n}", "series", case, (b.module, b.srcversion))
            finally:
                restore(dep, "series")
        if not testing or self.stop.is_set():
            return
        # negative control: the module without the fix must fail vf-boot-3
        n = min(3, host.config.max_vfs)
        if not b.control_module:
            reason = f"skipped: no control module ({b.control_detail or b.detail or 'not built'})"
            kr.tests.append(
                TestResult(
                    name=f"vf-boot-{n}", host=host.name, module="control", outcome=Outcome.SKIPPED, reason=reason
                )
            )
        else:
            cdep = deploy_module("control", b.control_module, b.control_srcversion)
            if cdep.status is DeployStatus.OK:
                try:
                    case = lambda: vftest.vf_boot(host, n, "control", image, p)  # noqa: E731
                    self.run_test(host, kr, f"vf-boot-{n}", "control", case, (b.control_module, b.control_srcversion))
                finally:
                    restore(cdep, "control")
        n_hot = min(max(self.settings.vf_counts, default=0), host.config.max_vfs)
        if not self.settings.hotplug or n_hot < 2 or dep.status is not DeployStatus.OK or self.stop.is_set():
            return
        self.ensure_host(host)
        image = self.guest_image(host) if image is not None else None  # again if the host restarted
        hdep = deploy_module("series", b.module, b.srcversion)
        if hdep.status is not DeployStatus.OK:
            return
        cycles = self.settings.hotplug_cycles
        try:
            case = lambda: vftest.vf_hotplug(host, n_hot, cycles, "series", image, p)  # noqa: E731
            self.run_test(host, kr, "vf-hotplug", "series", case, (b.module, b.srcversion))
        finally:
            if not keep:
                self.ensure_host(host)
                restore(hdep, "series")

    def use_pf_limit(self, host) -> None:
        """From here on max_vfs is what the PF offers (sriov_totalvfs, or the VFs that exist), capped by
        the inventory's max_vfs: the VF counts above it are skipped, not failed."""
        state = sriov.read_pf(host, host.config.pf_bdf)
        usable = sriov.usable_vfs(state, host.config.max_vfs)
        if usable != host.config.max_vfs:
            host.config = dataclasses.replace(host.config, max_vfs=usable)

    def ensure_host(self, host) -> None:
        """A host whose provider can restart it (the built-in lab: its QEMU died) is started again;
        the marker file on its disk drives recovery."""
        try:
            host.run(["true"], timeout=30)
            return
        except HostError as e:
            hcfg = self.settings.hosts.get(host.name)
            provider = providers.provider_for(self.settings, hcfg) if hcfg else None
            if provider is None or not provider.restartable:
                raise
            why = e.message
            absorbed.record(FaultKind.LAB_RESTARTED, host.name, "lab restart", why)
        host.close()
        host.config = provider.restart(why, self.progress, self.run.steps)
        deploy.recover(host, self.progress)


def _stage_obj(kr: KernelResult, stage: str):
    return {"fetch": kr.fetch, "apply": kr.apply, "build": kr.build}[stage]


def verify(
    settings: Settings,
    kernels: list[str] | None = None,
    series_path: str | None = None,
    until: str | None = None,
    jobs: int | None = None,
    keep: bool = False,
    lab_down: bool = False,
    progress=print,
    builds: str | None = None,
) -> Verified:
    """`builds`: a run (or results root) whose modules to deploy instead of building (reuse.py). Once the run
    has a directory, what cuts it short (Ctrl-C: `Interrupted`, an error) is kept in the `Verified`, not raised."""
    progress = RunLog(progress)

    until = until or "report"
    if kernels and any(not str(k).strip() for k in kernels):
        raise ConfigError(f"--kernel: empty kernel name; have {', '.join(k.name for k in settings.kernels)}")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ConfigError(f"--jobs {jobs!r}: expected an integer >= 1")
    if until not in STAGES:
        raise ConfigError(f"--until {until!r}: expected one of {', '.join(STAGES)}")
    kcfgs = [settings.kernel(n) for n in kernels] if kernels else list(settings.kernels)
    # the series is checked before anything touches a tree
    series = load_series(settings.path(series_path or settings.series))
    progress(f"series: {series.name} v{series.revision}, {len(series.patches)} patch(es)")
    found = {}
    if builds:
        found = reuse.find_builds(settings.path(builds), [k.name for k in kcfgs], patchset_hash(series))

    rd = RunDir(settings.path(settings.results_root))
    progress.open(rd.path / "run.log")
    run = RunResult(run_id=rd.run_id, started=now_iso(), until=until, series=series)
    run.kernels = [KernelResult(name=k.name, ref=k.ref, remote=k.remote) for k in kcfgs]
    run.hosts = sorted({h for k in kcfgs for h in k.hosts})
    ctx = _Run(settings, run, rd.path, series, until, progress)
    if found:
        ctx.reused = {name: reuse.adopt(d, r, k, rd.path) for name, (d, r, k) in found.items()}
    ctx.save()
    rd.point_latest()
    progress(f"run {rd.run_id}: {rd.path}")
    stopped: BaseException | None = None
    # remembers a Ctrl-C that a failing cleanup turned into another exception
    with progress.capture("paramiko"), interrupt.watch_sigint(), absorbed.collect(run.faults_absorbed):
        used: list[providers.HostProvider] = []  # the providers of the hosts the run goes to
        preparing = HostPrep()
        try:
            if until != "series":
                if _wants(until, "deploy"):
                    # in the order the host stages visit them: the first boot started is the one they need first
                    hosts = dict.fromkeys(h for k in kcfgs for h in k.hosts)
                    used = providers.boot_order([providers.of_host(settings, h) for h in hosts])
                    guests = ctx.guests if _wants(until, "test") else None
                    preparing = HostPrep.begin(used, guests, run.steps, progress)
                debian_refs = [
                    k.ref for k in kcfgs if k.name not in ctx.reused and kernelsrc.is_debian_remote(settings, k.remote)
                ]
                if debian_refs:
                    with timed(run.steps, "source_import"):
                        kernelsrc.import_lines(settings, kernelsrc.lines_for_refs(debian_refs), progress=progress)
                pairs = list(zip(kcfgs, run.kernels, strict=True))
                with timed(run.steps, "rows"), ThreadPoolExecutor(max_workers=jobs or settings.jobs) as pool:
                    futures = [pool.submit(ctx.row, k, r) for k, r in pairs]
                    try:
                        for f in futures:
                            while not f.done():
                                time.sleep(0.2)  # keeps the main thread responsive to Ctrl-C
                    except KeyboardInterrupt:
                        ctx.stop.set()
                        stop_children()  # git and make (own session) never saw the Ctrl-C sent to us
                        progress("interrupted: stopping the running stages")
                        raise
                if _wants(until, "deploy"):
                    with timed(run.steps, "prepare_wait"):  # the lab's build and boot start, the guest kernel
                        preparing.wait()
                    with timed(run.steps, "hosts"):
                        ctx.host_stages(pairs, keep)
            run.status = RunStatus.COMPLETE
        except KeyboardInterrupt:
            run.status = RunStatus.INTERRUPTED
            stopped = Interrupted("interrupted; partial results in " + str(rd.path))
        except BaseException as e:  # Verified.raise_if_stopped raises it, after the table is printed
            stopped = e
        finally:
            if preparing.abandon():  # cut short before the host stages: the lab's build, the guest kernel's make
                ctx.stop.set()
            run.finished = now_iso()
            _finish(settings, run, rd.path, progress)
            if run.status is RunStatus.INTERRUPTED:
                sweep_run(settings, run.run_id, progress)  # what a cut-short stage had half-created
            if lab_down:
                for provider in providers.machines(used):
                    provider.stop(progress)
    return Verified(run, rd.path, stopped)


@dataclasses.dataclass
class Verified:
    """How `verify` ended: the run, its directory and, when something cut it short, what did."""

    run: RunResult
    run_dir: Path
    stopped: BaseException | None = None  # Interrupted (Ctrl-C), or the error that ended the run

    def closing(self) -> str:
        """The run's last words on the terminal: the table, where the summary and results are."""
        lines = [report.format_table(self.run)]
        if (self.run_dir / "summary.html").is_file():
            lines.append(f"summary: {self.run_dir / 'summary.html'}")
        lines.append(f"results: {self.run_dir / 'results.json'}")
        return "\n".join(lines)

    def raise_if_stopped(self) -> None:
        if self.stopped is not None:
            raise self.stopped


def _finish(settings: Settings, run: RunResult, run_dir: Path, progress) -> None:
    verdict.apply_verdicts(run.kernels)
    try:
        report.write_reports(run, run_dir)  # before results.json: it fills series.patchset_hash
        for path in write_mails(run, run_dir, git_dirs(settings, run)):
            progress(f"mail for the maintainer: {path}")
    except Exception as e:  # reports are derived; results.json must still be written
        progress(f"report: failed: {e}")
    write_results(run_dir, run)
    for path in redact_tree(run_dir):  # build logs, run.log, mails: whatever a step printed
        progress(f"redacted a secret value from {path}")
    for k in run.kernels:
        if k.fetch.worktree:
            remove_worktree(settings, k.fetch.worktree, k.apply.branch, progress)


def exit_status(run: RunResult) -> tuple[int, str]:
    """0 when every kernel reached a defined status; otherwise the first failing row's code and reason."""
    for k in run.kernels:
        if k.error:
            return k.error_code or _STAGE_EXIT.get(k.failed_stage, 1), f"{k.name}: {k.error}"
    for k in run.kernels:
        if k.error_code:  # a host refused in preflight: the row is untested there
            skipped = [d for d in k.deploy if d.status is DeployStatus.SKIPPED]
            why = skipped[0].detail if skipped else "host refused"
            return k.error_code, f"{k.name}: not deployed to {skipped[0].host if skipped else 'host'}: {why}"
    if run.status is not RunStatus.COMPLETE:
        return 1, f"run {run.status}"
    return 0, ""
