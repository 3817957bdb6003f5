"""Invoke front of pciback-verify: parse arguments, call pipeline/, print, set the exit code.

`invoke --list` shows the tasks; `invoke --help TASK` explains one.
"""

from __future__ import annotations

import functools
import sys

from invoke import Collection, Exit, task

from pipeline.config import load_settings
from pipeline.errors import PipelineError


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli(fn):
    """Turn a PipelineError into one line on stderr and its exit code; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(c, *args, **kwargs):
        try:
            return fn(c, *args, **kwargs)
        except PipelineError as e:
            raise Exit(f"error: {e.message}", code=e.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


def _settings(c, matrix: str | None = None):
    return load_settings(c.config, matrix=matrix)


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
    },
    iterable=["kernel"],
)
@cli
def verify(c, matrix=None, kernel=None, series=None, until=None, jobs=None, keep=False, lab_down=False):
    """Fetch, apply, build, deploy and test the series on every kernel of the matrix; print a summary."""
    from pipeline.runner import verify as run_verify

    settings = _settings(c, matrix)
    run = run_verify(
        settings,
        kernels=kernel or None,
        series_path=series,
        until=until,
        jobs=jobs,
        keep=keep,
        lab_down=lab_down,
        progress=_progress,
    )
    from pipeline.runner import exit_status

    code, reason = exit_status(run)
    if code:
        raise Exit(reason, code=code)


# ------------------------------------------------------------------ config


@task(help={"matrix": "show this matrix instead of the configured one"})
@cli
def config_show(c, matrix=None):
    """Print the effective kernel matrix and host inventory after all config files are merged."""
    from pipeline.runner import format_config

    print(format_config(_settings(c, matrix)))


# ------------------------------------------------------------------ source


@task(help={"force": "re-import even if the local repository already has this version"})
@cli
def source_import(c, force=False):
    """Install Debian's linux-source-6.1 if needed and import it into the local git remote."""
    from pipeline.kernelsrc import import_debian_source

    settings = _settings(c)
    info = import_debian_source(settings, force=force, progress=_progress)
    print(f"{info.repo}: tag {info.tag}, branches {', '.join(info.branches)}")


# ------------------------------------------------------------------ series


@task(help={"path": "series folder, mbox or patch file (default: pv.series)"})
@cli
def series_show(c, path=None):
    """Parse a series and print its patches (subject, author, revision, patch-id)."""
    from pipeline.series import load_series

    settings = _settings(c)
    s = load_series(settings.path(path or settings.series))
    print(f"{s.name} v{s.revision} ({len(s.patches)} patches) from {s.source}")
    for p in s.patches:
        print(f"  {p.patch_id[:12]}  {p.subject}  <{p.author}>")


# ------------------------------------------------------------------ tests


@task(
    help={
        "quick": "only the fast unit tests (not kernel/build/lab)",
        "k": "pytest -k expression",
        "m": "pytest -m marker expression",
    }
)
def test(c, quick=False, k=None, m=None):
    """Run the test suite: every test, the kernel/build/lab ones included, unless --quick."""
    args = [sys.executable, "-m", "pytest"]
    if quick:
        args += ["-m", "not kernel and not build and not lab"]
    elif m:
        args += ["-m", m]
    if k:
        args += ["-k", k]
    import subprocess

    rc = subprocess.call(args)
    if rc:
        raise Exit(code=rc)


# ---- lab ----


@task(help={"force": "rebuild even if the recipe and package versions are unchanged"})
@cli
def lab_build(c, force=False):
    """Build the Xen 4.17 lab: dom0 image, boot files, test guest (no-op when inputs are unchanged)."""
    from pipeline import lab

    info = lab.build(_settings(c), progress=_progress, force=force)
    m = info.manifest
    print(
        f"{'built' if info.rebuilt else 'up to date'}: dom0 {m['dom0_kernel_release']}, Xen {m['xen_version']}, {m['image']}"
    )


@task
@cli
def lab_up(c):
    """Boot the lab under QEMU (or return the running one) and wait until SSH and `xl info` answer."""
    from pipeline import lab

    host = lab.up(_settings(c), progress=_progress)
    print(f"lab up: ssh {host.user}@{host.address} -p {host.port} (dom0 {host.kernel_release}); `invoke lab.ssh`")


@task
@cli
def lab_down(c):
    """Power the lab off; kills only the lab's own QEMU (by its pid file) if it does not stop."""
    from pipeline import lab

    lab.down(_settings(c), progress=_progress)


@task(help={"probe": "ask dom0 over SSH whether it answers (default on)"})
@cli
def lab_status(c, probe=True):
    """Whether the lab runs, its SSH port, uptime and dom0 kernel release."""
    from pipeline import lab

    s = lab.status(_settings(c), probe=probe)
    if s.running:
        print(
            f"running: pid {s.pid}, port {s.port}, up {s.uptime_s:.0f}s, kernel {s.kernel_release}, ssh {'ok' if s.ssh_ok else 'no'} {s.detail}".rstrip()
        )
    else:
        print(
            f"not running ({'built' if s.built else 'not built'}{', dom0 ' + s.kernel_release if s.kernel_release else ''}) {s.detail}".rstrip()
        )
        raise Exit(code=1)


@task(help={"c": "run this command in dom0 instead of an interactive shell"})
@cli
def lab_ssh(c, c_=None):
    """Open a shell in the lab's dom0, or run one command there (-c CMD)."""
    import subprocess

    from pipeline import lab

    settings = _settings(c)
    if not lab.status(settings, probe=False).running:
        raise Exit("error: the lab is not running: `invoke lab.up`", code=8)
    host = lab.host_config(settings)
    argv = lab.ssh_argv(host, tty=c_ is None and sys.stdin.isatty())
    rc = subprocess.call(argv + ([c_] if c_ else []))
    if rc:
        raise Exit(code=rc)


@task(help={"lines": "how many lines (default 40)", "follow": "keep printing new lines (Ctrl-C ends)"})
@cli
def lab_console(c, lines=40, follow=False):
    """Print the end of the lab's serial console log (Xen and dom0 boot messages)."""
    import time

    from pipeline import lab

    settings = _settings(c)
    print(lab.console_tail(settings, int(lines)))
    path = lab.paths(settings).console
    if follow and path.exists():
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.seek(0, 2)
            while True:
                line = fh.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.5)


# ---- end lab ----


ns = Collection(verify, test)
ns.add_collection(Collection("config", show=config_show))
ns.add_collection(Collection("source", **{"import": source_import}))
ns.add_collection(Collection("series", show=series_show))
ns.add_collection(
    Collection("lab", build=lab_build, up=lab_up, down=lab_down, status=lab_status, ssh=lab_ssh, console=lab_console)
)
