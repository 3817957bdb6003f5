"""Shared fixtures. `lab_host`: the built-in Xen lab, built and booted once per test session."""

from __future__ import annotations

import sys

import pytest


def _lab_settings():
    from invoke import Config

    from pipeline import PROJECT_ROOT
    from pipeline.config import load_settings

    # the project's invoke.yaml plus INVOKE_PV_* overrides, as `invoke` itself would read them
    cfg = Config(project_location=str(PROJECT_ROOT))
    cfg.load_project()
    cfg.load_shell_env()
    return load_settings(cfg)


@pytest.fixture(scope="session")
def lab_settings():
    return _lab_settings()


@pytest.fixture(scope="session")
def lab_host(lab_settings):
    """HostConfig of the running lab: built if its inputs changed, booted, powered off at session end.

    The object is updated in place if a test restarts the lab, so holders of it stay valid.
    """
    from pipeline import lab

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    was_running = lab.status(lab_settings, probe=False).running
    lab.build(lab_settings, progress)
    host = lab.up(lab_settings, progress)
    yield host
    if not was_running:  # a lab someone started by hand stays up
        lab.down(lab_settings, progress)
