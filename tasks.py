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


ns = Collection(verify, test)
ns.add_collection(Collection("config", show=config_show))
ns.add_collection(Collection("source", **{"import": source_import}))
ns.add_collection(Collection("series", show=series_show))
