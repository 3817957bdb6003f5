"""The `debian` matrix on the real imported lines (marked `kernel`; `download` on a fresh clone).

7.2-prefix (sid's 7.2 with the fix reverted): the bundled 2021 series cannot
apply, 7.x changed xenbus_read_driver_state()'s arguments; the conflict is named
by file and hunk, nothing is left half-applied and no build is attempted.
7.2 as shipped has the fix in that 7.x form: already-upstream, shown by the
line's revert applying (evidence control-revert).
Cost on a warm cache: one shallow fetch of 7.2 (about 1 min here); on a fresh
clone the 7.2 import first (linux-source-7.2, 157 MiB, about 6 min here).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import PROJECT_ROOT
from pipeline.apply import apply_series
from pipeline.config import load_settings
from pipeline.fetch import fetch_kernel, remove_worktree
from pipeline.runner import verify
from pipeline.series import load_series

pytestmark = [pytest.mark.kernel, pytest.mark.download]
XENBUS = "drivers/xen/xen-pciback/xenbus.c"


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    s = load_settings(data=yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())["pv"])
    return dataclasses.replace(s, matrix="debian", results_root=str(tmp_path_factory.mktemp("runs")))


def test_7_2_prefix_needs_a_backport_named_by_file_and_hunk(settings):
    said: list[str] = []
    done = verify(settings, kernels=["debian-7.2-prefix"], until="build", progress=said.append)
    done.raise_if_stopped()
    run = done.run
    (k,) = run.kernels
    print("\n".join(said), file=sys.stderr)
    assert k.apply.status == "conflict"
    (p,) = k.apply.patches
    assert p.status == "conflict" and p.files == [XENBUS]
    # the hunk is in xen_pcibk_reconfigure, where 7.x reads the driver state with the device
    assert any(h.startswith(f"{XENBUS}: @@ ") and "xen_pcibk_reconfigure" in h for h in p.hunks), p.hunks
    # no build attempted: no build step ran, nothing said it built
    assert k.build.status in ("skipped", "not-run")
    assert not any("debian-7.2-prefix: build:" in m for m in said)
    assert k.verdict == "needs-backport"
    # stable-style reproduce commands: check out the tree, git am -3 the series, the invoke line
    (rp,) = [r for r in k.reproduce if r.stage == "apply"]
    assert any(c.startswith("git am -3 ") for c in rp.commands), rp.commands
    assert (
        rp.commands[-1].startswith("invoke verify --kernel debian-7.2-prefix ") and "--until apply" in rp.commands[-1]
    )


def test_7_2_as_shipped_is_already_upstream_in_its_own_form(settings):
    """The fix is in sid's 7.2 as 7.x has it; the series does not apply, the line's revert does."""
    done = verify(settings, kernels=["debian-7.2"], until="apply", progress=lambda m: None)
    done.raise_if_stopped()
    (k,) = done.run.kernels
    (p,) = k.apply.patches
    assert k.apply.status == "already-applied" and p.evidence == "control-revert", p.detail
    assert p.adapted.revert == "patches/controls/revert-c81d3d246025-7.2.patch"
    assert p.adapted.reverts_commit == "c81d3d246025" and p.adapted.lines_verbatim == 8
    assert p.adapted.tree_lines == ["if (xenbus_read_driver_state(pdev->xdev, pdev->xdev->nodename) != state)"]
    assert k.verdict == "already-upstream" and "in this line's form" in k.verdict_detail


def test_7_2_prefix_conflict_leaves_the_tree_as_fetched(settings):
    """The apply stage on its own worktree: after the conflict, the -prefix commit, clean, no `git am` left."""
    kcfg = next(k for k in settings.kernels if k.name == "debian-7.2-prefix")
    fetch = fetch_kernel(settings, kcfg, "t-debian-matrix", progress=print)
    try:
        res = apply_series(fetch, load_series(PROJECT_ROOT / settings.series), "t-debian-matrix")
        assert res.status == "conflict"
        wt = Path(fetch.worktree)
        git = ["git", "-C", str(wt)]
        assert subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True).stdout == ""
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        assert head.strip() == fetch.commit
        am = subprocess.run([*git, "rev-parse", "--git-path", "rebase-apply"], capture_output=True, text=True).stdout
        assert not (wt / am.strip()).exists()
    finally:
        remove_worktree(settings, fetch.worktree)
