"""Shared fixtures. `lab_host`: the built-in Xen lab, built and booted once per test session.

`host_state`: what a lab host runs, for "the host is left as found" checks (`from conftest import host_state`).
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="session")
def lab_settings():
    from pipeline.config import project_settings

    return project_settings()


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
