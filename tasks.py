"""Invoke front of pciback-verify: parse arguments, call pipeline/, print, set the exit code.

`invoke --list` shows the tasks; `invoke --help TASK` explains one.
"""

from __future__ import annotations

import functools
import os
import sys

from invoke import Collection, Exit, task

from pipeline import clihook
from pipeline.config import int_option, load_settings
from pipeline.errors import PipelineError

# invoke reads `-f FILE` and the project's invoke.yaml after importing this file: a file that
# does not parse becomes one line and exit code 31 instead of a traceback (~/.invoke.yaml is read
# earlier; the venv's .pth hook covers it, see pipeline/clihook.py)
clihook.install()


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli(fn):
    """Turn a PipelineError into one line on stderr and its exit code; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(c, *args, **kwargs):
        try:
            return fn(c, *args, **kwargs)
        except Exit:
            raise
        except PipelineError as e:
            raise Exit(f"error: {e.message}", code=e.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except BrokenPipeError:
            # `invoke config.show | head`: the reader left; say nothing more (stdout is gone)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=141) from None
        except Exception as e:  # a bug of ours: one line, the traceback in a file, never exit 0
            from pipeline.errors import InternalError

            where = _save_traceback()
            raise Exit(
                f"internal error: {type(e).__name__}: {e} (traceback in {where})", code=InternalError.exit_code
            ) from None

    return wrapper


def _save_traceback() -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="pciback-verify-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(traceback.format_exc())
    return path


def _fail_on(settings, value: str | None) -> list[str]:
    """--fail-on VERDICT[,VERDICT...] (default pv.fail_on); each must be a verdict name."""
    from pipeline.verdict import parse_fail_on

    return parse_fail_on(value, "--fail-on") if value is not None else list(settings.fail_on)


def _settings(c, matrix: str | None = None):
    return load_settings(c.config, matrix=matrix)


def _print_json(data) -> None:
    import json as jsonlib

    print(jsonlib.dumps(data, indent=2, default=str))


# ------------------------------------------------------------------ verify


@task(
    help={
        "matrix": "kernel matrix from the config (default: pv.matrix, 'default'); e.g. 'stable'",
        "kernel": "only this kernel of the matrix (repeatable)",
        "series": "series to verify: a folder with a `series` file, an mbox or one patch file",
        "until": "last stage to run: series, fetch, apply, build, deploy, test, report (default: all)",
        "jobs": "kernels processed side by side (default: pv.jobs)",
        "keep": "leave the series' module loaded on the hosts after the tests",
        "lab_down": "stop the built-in lab after the run (default: leave it running)",
        "fail_on": "exit 10 when a kernel's verdict is one of these, e.g. test-fails,build-fails,error "
        "(default: pv.fail_on, empty: exit 0 whatever the verdicts)",
        "builds": "deploy the modules an earlier run built (a run, or a results root: its newest matching run) instead of building",
        "json": "print the run's results.json on stdout (the table goes to stderr)",
        "no_sandbox": "build without the bubblewrap sandbox (recorded as unconfined in results and summary)",
    },
    iterable=["kernel"],
)
@cli
def verify(
    c,
    matrix=None,
    kernel=None,
    series=None,
    until=None,
    jobs=None,
    keep=False,
    lab_down=False,
    fail_on=None,
    builds=None,
    json=False,
    no_sandbox=False,
):
    """Fetch, apply, build, deploy and test the series on every kernel of the matrix; print a summary."""
    from pipeline.runner import exit_status
    from pipeline.runner import verify as run_verify
    from pipeline.verdict import gate_status

    settings = _settings(c, matrix)
    jobs = int_option("--jobs", jobs)
    gate = _fail_on(settings, fail_on)
    if no_sandbox:
        settings.sandbox.enabled = False
    done = run_verify(
        settings,
        kernels=kernel or None,
        series_path=series,
        until=until,
        jobs=jobs,
        keep=keep,
        lab_down=lab_down,
        progress=_progress,
        builds=builds,
    )
    (_progress if json else print)(done.closing())  # stdout carries only the JSON with --json
    done.raise_if_stopped()
    if json:
        _print_json(done.run.to_dict())
    code, reason = exit_status(done.run)
    if not code:
        code, reason = gate_status(done.run.kernels, gate)
    if code:
        raise Exit(reason, code=code)


# ------------------------------------------------------------------ config


@task(help={"matrix": "show this matrix instead of the configured one", "json": "print the settings as JSON"})
@cli
def config_show(c, matrix=None, json=False):
    """Print the effective kernel matrix and host inventory after all config files are merged."""
    from pipeline.hostcheck import format_config

    settings = _settings(c, matrix)
    if json:
        _print_json(settings.to_dict())
        return
    print(format_config(settings))


# ------------------------------------------------------------------ hosts


@task(
    help={
        "host": "check only this inventory host (default: every host)",
        "json": "print the checks as JSON",
        "matrix": "which matrix's rows to match against the hosts",
    }
)
@cli
def hosts_check(c, host=None, json=False, matrix=None):
    """Per host: SSH (ssh_config, jump hosts), host key, Xen dom0, Xen/xl versions, kernel, PF and its
    driver, VFs, lock, test guest, and which matrix rows would run there. Reads only; exit 7 if one is not ready."""
    import json as json_mod

    from pipeline.hostcheck import check_hosts, format_check

    checks = check_hosts(_settings(c, matrix), host)
    if json:
        print(json_mod.dumps([ck.to_dict() for ck in checks], indent=2))
    else:
        print("\n".join(format_check(ck) for ck in checks))
    bad = [ck.name for ck in checks if not ck.ok]
    if bad:
        raise Exit(f"not ready: {', '.join(bad)}", code=7)


@task(
    iterable=["put"],
    help={
        "host": "the inventory host (e.g. lab)",
        "put": "LOCAL:/REMOTE/PATH, a file to copy there first (repeatable)",
        "c": "the command to run there (its shell); none: only the copies",
    },
)
@cli
def hosts_run(c, host, put=None, c_=None):
    """Copy files to an inventory host and run one command there, over the pipeline's SSH (the
    reproduce recipes' `xl create` line). Exits with the command's exit code."""
    from pipeline.hostcmd import parse_put, run_on_host

    puts = [parse_put(p) for p in put or []]
    ran = run_on_host(_settings(c), host, puts, c_ or "", progress=_progress)
    sys.stdout.write(ran.stdout)
    sys.stderr.write(ran.stderr)
    if ran.rc:
        raise Exit(code=ran.rc)


# ------------------------------------------------------------------ source


@task(
    help={
        "line": "Debian kernel line to import (5.10, 6.1, 6.12, 7.2; repeatable; default 6.1)",
        "all": "every known line",
        "refresh": "ask the archive whether a newer package version exists",
        "force": "re-import even if the local repository already has this version",
    },
    iterable=["line"],
)
@cli
def source_import(c, line=None, all=False, refresh=False, force=False):
    """Import Debian's linux-source-X (downloaded, never installed) into the local git remote."""
    from pipeline.kernelsrc import DEFAULT_LINE, LINES, import_line

    settings = _settings(c)
    for name in list(LINES) if all else line or [DEFAULT_LINE]:
        info = import_line(settings, name, force=force, refresh=refresh, progress=_progress)
        print(
            f"{info.repo}: tag {info.tag} ({info.package} {info.package_version}), branches {', '.join(info.branches)}"
        )


# ------------------------------------------------------------------ series


@task(help={"path": "series folder, mbox or patch file (default: pv.series)", "json": "print the series as JSON"})
@cli
def series_show(c, path=None, json=False):
    """Parse a series and print its patches (subject, author, revision, patch-id)."""
    from pipeline.series import load_series, series_dict

    settings = _settings(c)
    s = load_series(settings.path(path or settings.series))
    if json:
        _print_json(series_dict(s))
        return
    print(f"{s.name} v{s.revision} ({len(s.patches)} patches) from {s.source}")
    for p in s.patches:
        print(f"  {p.patch_id[:12]}  {p.subject}  <{p.author}>")


# ------------------------------------------------------------------ tests


@task(
    help={
        "quick": "only the fast unit tests (not kernel/build/lab)",
        "k": "pytest -k expression",
        "m": "pytest -m marker expression",
        "download": "also the tests that import the other Debian kernel lines (5.10, 6.12, 7.2; ~25 min on a cold cache)",
    }
)
def test(c, quick=False, k=None, m=None, download=False):
    """Run the test suite: every test, the kernel/build/lab ones included, unless --quick.

    The lab tests run in a second pytest beside the others (pipeline/suite.py); each prints its
    slowest tests (the suite's time is budgeted: CI <= 30 min). The `download` tests (three more
    kernel lines downloaded, imported and built) add ~25 min on a fresh clone, which that budget
    does not have: they run with --download (cheap on a runner whose .cache persists, see the
    README's CI section)."""
    from pipeline import PROJECT_ROOT, suite

    halves = suite.plan(PROJECT_ROOT, quick=quick, k=k, m=m, download=download)
    result = suite.run(halves, PROJECT_ROOT, _progress)
    if len(halves) > 1:
        print(suite.describe(result), flush=True)
    if result.rc:
        raise Exit(code=result.rc)


# ------------------------------------------------------------------ lab


LAB_HOST_HELP = "the inventory lab host (default lab; lab-xen4.14, lab-xen4.20: other Xen, see config.show)"


def _lab_settings(c, host: str):
    """The settings of inventory lab host `host` (its suite and folder: pipeline/labsuites.py)."""
    from pipeline.labsuites import for_name

    return for_name(_settings(c), host or "lab")


@task(help={"force": "rebuild even if the recipe and package versions are unchanged", "host": LAB_HOST_HELP})
@cli
def lab_build(c, force=False, host="lab"):
    """Build a Xen lab (default the Xen 4.17 one): dom0 image, boot files, test guest (no-op when inputs are unchanged)."""
    from pipeline import lab

    info = lab.build(_lab_settings(c, host), progress=_progress, force=force)
    m = info.manifest
    print(
        f"{'built' if info.rebuilt else 'up to date'}: dom0 {m['dom0_kernel_release']}, Xen {m['xen_version']}, {m['image']}"
    )


@task(help={"host": LAB_HOST_HELP})
@cli
def lab_up(c, host="lab"):
    """Boot the lab under QEMU (or return the running one) and wait until SSH and `xl info` answer."""
    from pipeline import lab

    h = lab.up(_lab_settings(c, host), progress=_progress, name=host or "lab")
    print(f"lab up: ssh {h.user}@{h.address} -p {h.port} (dom0 {h.kernel_release}); `invoke lab.ssh`")


@task(help={"host": LAB_HOST_HELP})
@cli
def lab_down(c, host="lab"):
    """Power the lab off; kills only the lab's own QEMU (by its pid file) if it does not stop."""
    from pipeline import lab

    lab.down(_lab_settings(c, host), progress=_progress)


@task(help={"probe": "ask dom0 over SSH whether it answers (default on)", "host": LAB_HOST_HELP})
@cli
def lab_status(c, probe=True, host="lab"):
    """Whether the lab runs, its SSH port, uptime and dom0 kernel release."""
    from pipeline import lab

    s = lab.status(_lab_settings(c, host), probe=probe)
    if s.running:
        print(
            f"running: pid {s.pid} (QEMU {s.qemu}), port {s.port}, up {s.uptime_s:.0f}s, kernel {s.kernel_release}, ssh {'ok' if s.ssh_ok else 'no'} {s.detail}".rstrip()
        )
    else:
        print(
            f"not running ({'built' if s.built else 'not built'}{', dom0 ' + s.kernel_release if s.kernel_release else ''}) {s.detail}".rstrip()
        )
        raise Exit(code=1)


@task(help={"c": "run this command in dom0 instead of an interactive shell", "host": LAB_HOST_HELP})
@cli
def lab_ssh(c, c_=None, host="lab"):
    """Open a shell in the lab's dom0, or run one command there (-c CMD)."""
    import subprocess

    from pipeline import lab

    settings = _lab_settings(c, host)
    if not lab.status(settings, probe=False).running:
        raise Exit("error: the lab is not running: `invoke lab.up`", code=8)
    host = lab.host_config(settings, host)
    argv = lab.ssh_argv(host, tty=c_ is None and sys.stdin.isatty())
    rc = subprocess.call(argv + ([c_] if c_ else []))
    if rc:
        raise Exit(code=rc)


@task(
    help={
        "lines": "how many lines (default 40)",
        "follow": "keep printing new lines (Ctrl-C ends)",
        "host": LAB_HOST_HELP,
    }
)
@cli
def lab_console(c, lines=None, follow=False, host="lab"):  # untyped: Invoke would cast `--lines x` with a traceback
    """Print the end of the lab's serial console log (Xen and dom0 boot messages)."""
    from pipeline import lab
    from pipeline.util import follow as follow_file

    settings = _lab_settings(c, host)
    print(lab.console_tail(settings, int_option("--lines", lines) or 40))
    if follow:
        for line in follow_file(lab.paths(settings).console):
            print(line, end="", flush=True)


# ------------------------------------------------------------------ report


@task(
    help={
        "run": "run directory or run id (default: latest)",
        "compare": "compare this earlier run (e.g. the series' v1) with --run (default latest, e.g. v2) instead of re-rendering",
        "fail_on": "exit 10 when a kernel's verdict is one of these (default: pv.fail_on), as `verify --fail-on`",
        "merge": "make one run of these runs of one series revision (repeatable; a results root means all its runs)",
        "tested_only": "with --merge: only runs that ran the VF tests (as CI's report job posts)",
        "json": "print the run's results.json on stdout (with --compare: what changed, per kernel)",
    },
    iterable=["merge"],
    positional=[],  # Invoke has no optional positionals: RUN is --run/-r
)
@cli
def report(c, run=None, compare=None, fail_on=None, merge=None, tested_only=False, json=False):
    """Re-render the reports of an earlier run (--run), compare two (`--compare RUN_A --run RUN_B`),
    or merge per-kernel runs into one (`--merge RUN --merge RUN`)."""
    from pipeline.report import compare as compare_runs
    from pipeline.report import comparison, format_table
    from pipeline.runs import load_run, merged_or_loaded, rerender
    from pipeline.verdict import gate_status

    settings = _settings(c)
    gate = _fail_on(settings, fail_on)
    run_dir, result = merged_or_loaded(settings, run, merge, tested_only, _progress)
    if compare:
        earlier = load_run(settings, compare)[1]
        if json:
            _print_json(comparison(earlier, result))
        else:
            print(compare_runs(earlier, result), end="")
        return
    rerender(settings, run_dir, result, _progress, reports=not merge)
    if json:
        _print_json(result.to_dict())
    else:
        print(format_table(result), end="")
        _progress(f"summary: {run_dir / 'summary.html'}")
    code, reason = gate_status(result.kernels, gate)
    if code:
        raise Exit(reason, code=code)


@task(
    help={"out": "folder for index.html (default: the results root)", "root": "results root (default: pv.results_root)"}
)
@cli
def dashboard(c, out=None, root=None):
    """A static site over every run under the results root: per series a kernels x revisions grid of verdicts."""
    from pipeline.dashboard import write_dashboard

    settings = _settings(c)
    path = write_dashboard(settings.path(root or settings.results_root), settings.path(out) if out else None)
    print(path)


@task(
    help={
        "run": "run directory or run id (default: latest)",
        "patchwork": "patchwork URL (default: $PATCHWORK_URL); token from $PATCHWORK_TOKEN",
        "patch": "patchwork patch id to post checks on (repeatable)",
        "series_id": "patchwork series id: post on each of its patches (default: $PATCHWORK_SERIES)",
        "gitlab": "GitLab API URL (default: $CI_API_V4_URL); token from $GITLAB_TOKEN or $CI_JOB_TOKEN",
        "project": "GitLab project id or path (default: $CI_PROJECT_ID)",
        "sha": "commit to set statuses on (default: $CI_COMMIT_SHA)",
        "target_url": "link of each check; {kernel} and {run_id} are substituted (default: $CI_JOB_URL)",
        "pending": "post `pending` (verification started) instead of the results",
    },
    iterable=["patch"],
    positional=[],
)
@cli
def post(
    c,
    run=None,
    patchwork=None,
    patch=None,
    series_id=None,
    gitlab=None,
    project=None,
    sha=None,
    target_url=None,
    pending=False,
):
    """Post the run's per-kernel verdicts as patchwork checks and/or GitLab commit statuses."""
    from pipeline.post import post_checks, post_statuses, targets
    from pipeline.runs import load_run

    _, result = load_run(_settings(c), run)
    to = targets(patchwork, patch or [], series_id, gitlab, project, sha, target_url)
    if to.patchwork:
        print(post_checks(result, to, pending, _progress))
    if to.gitlab:
        print(post_statuses(result, to, pending, _progress))


@task(
    help={
        "msgid": "lore message-id of any patch of the series (b4 fetches the thread, picks the newest revision)",
        "patchwork": "patchwork URL, with --series-id",
        "series_id": "patchwork series id",
        "out": "directory for the mbox (default: .cache/intake/<id>)",
        "midmask": "b4.midmask for another public-inbox, e.g. https://lore.kernel.org/all/%s",
    }
)
@cli
def intake_fetch(c, msgid=None, patchwork=None, series_id=None, out=None, midmask=None):
    """Fetch a series from lore (b4) or patchwork into an mbox; print its path for `invoke verify --series`."""
    from pipeline.intake import fetch_series

    got = fetch_series(_settings(c), msgid, patchwork, series_id, out, midmask)
    _progress(got.summary())
    print(got.mbox)


@task(
    help={
        "patchwork": "patchwork URL (default: $PATCHWORK_URL)",
        "project": "patchwork project link name (default: $PATCHWORK_PROJECT)",
        "state": "file remembering verified revisions (default: .cache/ci-poll.json; keep it in the CI cache)",
        "trigger": "start a GitLab pipeline per new revision (needs $CI_API_V4_URL, $CI_PROJECT_ID, a trigger token)",
    }
)
@cli
def ci_poll(c, patchwork=None, project=None, state=None, trigger=False):
    """Find series revisions on patchwork not verified yet; print them (and start a pipeline for each) once.

    A revision counts as polled once a patch of it has a pciback-verify check on patchwork (poll posts
    `pending: queued` when it starts one): losing the local state file triggers nothing again."""
    from pipeline.poll import poll_ci

    for p in poll_ci(_settings(c), patchwork, project, state, trigger, progress=_progress):
        if p.new:
            print(p.line())


ns = Collection(verify, test)
ns.add_collection(Collection("config", show=config_show))
ns.add_collection(Collection("hosts", check=hosts_check, run=hosts_run))
ns.add_collection(Collection("source", **{"import": source_import}))
ns.add_collection(Collection("series", show=series_show))
ns.add_collection(
    Collection("lab", build=lab_build, up=lab_up, down=lab_down, status=lab_status, ssh=lab_ssh, console=lab_console)
)
ns.add_task(report)
ns.add_task(post)
ns.add_task(dashboard)
ns.add_collection(Collection("intake", fetch=intake_fetch))
ns.add_collection(Collection("ci", poll=ci_poll))
