"""Fetch and apply on the real Debian 6.1 kernel source (marked `kernel`)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import PROJECT_ROOT
from pipeline.apply import apply_series
from pipeline.config import load_settings
from pipeline.errors import FetchError
from pipeline.fetch import _object_count, cache_repo, fetch_kernel, remove_worktree
from pipeline.kernelsrc import import_debian_source
from pipeline.series import load_series

pytestmark = pytest.mark.kernel
XENBUS = "drivers/xen/xen-pciback/xenbus.c"
SEED = (
    PROJECT_ROOT / "patches/xen-pciback-reconfigure/0001-xen-pciback-reconfigure-also-from-backend-watch-handler.patch"
)


@pytest.fixture(scope="session")
def project_settings():
    return load_settings(data=yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())["pv"])


@pytest.fixture(scope="session")
def debian_source(project_settings):
    return import_debian_source(project_settings, progress=lambda m: print(m, file=sys.stderr))


@pytest.fixture(scope="session")
def cold_settings(project_settings, debian_source, tmp_path_factory):
    """The default matrix with an empty object cache of its own, fetching from the imported repo."""
    cache = tmp_path_factory.mktemp("cache")
    kernels = [dataclasses.replace(k, remote=str(debian_source.repo)) for k in project_settings.matrices["default"]]
    return dataclasses.replace(project_settings, cache_dir=str(cache), matrices={"default": kernels})


@pytest.fixture(scope="session")
def fetched(cold_settings):
    """Each kernel fetched twice into the fresh cache: (first, second) FetchResults."""
    out = {}
    for k in cold_settings.kernels:
        first = fetch_kernel(cold_settings, k, "t1", progress=print)
        second = fetch_kernel(cold_settings, k, "t2", progress=print)
        out[k.name] = (first, second)
    yield out
    for first, second in out.values():
        remove_worktree(cold_settings, first.worktree)
        remove_worktree(cold_settings, second.worktree)


def test_second_fetch_transfers_nothing(fetched, debian_source, cold_settings):
    first, second = fetched["debian-6.1"]
    assert first.commit == second.commit == debian_source.commit
    assert first.objects_received > 50_000  # a whole kernel tree
    assert second.objects_received == 0
    # the -prefix ref only adds the revert commit's objects on top of a warm cache
    pfirst, psecond = fetched["debian-6.1-prefix"]
    assert 0 < pfirst.objects_received < 20 and psecond.objects_received == 0
    # shallow: the cache holds no history beyond the configured refs
    assert (Path(cache_repo(cold_settings).git_dir) / "shallow").exists()


def test_bundled_series_already_applied_on_debian_and_applies_on_prefix(fetched):
    series = load_series(PROJECT_ROOT / "patches/xen-pciback-reconfigure")
    res = apply_series(fetched["debian-6.1"][0], series, "t1")
    assert res.status == "already-applied"
    assert res.patches[0].status == "already-applied"
    assert "matched by content" in res.patches[0].detail  # the imported tree has no history
    pres = apply_series(fetched["debian-6.1-prefix"][0], series, "t1")
    assert pres.status == "applied" and pres.patches[0].status in ("applied", "applied-offset")
    wt = fetched["debian-6.1-prefix"][0].worktree
    # the fix is really in the tree now: the watch handler reconfigures in Initialised
    assert "xen_pcibk_reconfigure(pdev, XenbusStateInitialised);" in (Path(wt) / XENBUS).read_text()
    log = subprocess.run(["git", "-C", wt, "log", "-1", "--format=%an|%s"], capture_output=True, text=True).stdout
    assert log.strip() == "Jan Beulich|xen-pciback: reconfigure also from backend watch handler"


def test_changed_context_is_a_conflict_and_leaves_the_tree_clean(fetched, tmp_path):
    broken = tmp_path / "broken.patch"
    # a context line of the first hunk that the tree does not have
    broken.write_text(SEED.read_text().replace(" \tint num_devs;\n", " \tint num_devices_total;\n", 1))
    series = load_series(broken)
    fetch = fetched["debian-6.1-prefix"][1]
    res = apply_series(fetch, series, "t2-conflict")
    (p,) = res.patches
    assert res.status == "conflict" and p.status == "conflict"
    assert p.files == [XENBUS]
    assert p.hunks and p.hunks[0].startswith(f"{XENBUS}: @@ -359,7 +359,8 @@")
    wt = fetch.worktree
    status = subprocess.run(["git", "-C", wt, "status", "--porcelain"], capture_output=True, text=True).stdout
    head = subprocess.run(["git", "-C", wt, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert status == "" and head == fetch.commit
    # no `git am` left half-way (in a worktree .git is a file; ask git where its rebase-apply would be)
    am_dir = subprocess.run(
        ["git", "-C", wt, "rev-parse", "--git-path", "rebase-apply"], capture_output=True, text=True
    ).stdout.strip()
    assert not (Path(wt) / am_dir).exists()


def test_unknown_ref_and_unreachable_remote(cold_settings):
    repo = cache_repo(cold_settings)
    before = _object_count(repo)
    k = dataclasses.replace(cold_settings.kernels[0], name="bogus", ref="v9.9.999")
    with pytest.raises(FetchError, match=r"ref 'v9\.9\.999' not found in remote"):
        fetch_kernel(cold_settings, k, "t3")
    k2 = dataclasses.replace(k, remote="file:///nonexistent/linux.git", ref="master")
    with pytest.raises(FetchError, match="unreachable"):
        fetch_kernel(cold_settings, k2, "t3")
    k3 = dataclasses.replace(k, remote="/nonexistent/linux.git")
    with pytest.raises(FetchError, match="no such path"):
        fetch_kernel(cold_settings, k3, "t3")
    assert _object_count(repo) == before
    assert not (Path(cold_settings.cache_dir) / "worktrees" / "t3").exists()


def _invoke(*args, env_extra=None, config=None):
    env = {**os.environ, **(env_extra or {})}
    pre = ["-f", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "invoke", *pre, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env
    )


def test_verify_until_apply_writes_results(tmp_path, debian_source):
    proc = _invoke("verify", "--until", "apply", env_extra={"INVOKE_PV_RESULTS_ROOT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert data["schema"] == 1 and data["status"] == "complete"
    by = {k["name"]: k for k in data["kernels"]}
    assert by["debian-6.1"]["apply"]["status"] == "already-applied"
    assert by["debian-6.1"]["verdict"] == "already-upstream"
    assert by["debian-6.1-prefix"]["apply"]["patches"][0]["status"] in ("applied", "applied-offset")
    assert by["debian-6.1-prefix"]["fetch"]["commit"] == debian_source.prefix_commit
    assert "debian-6.1-prefix" in proc.stdout  # the summary table
    # the reports of a real run of the default matrix
    run_dir = (tmp_path / "latest").resolve()
    junit = (run_dir / "junit.xml").read_text()
    assert "debian-6.1-prefix" in junit and "debian-6.1" in junit
    kcidb = json.loads((run_dir / "kcidb.json").read_text())
    assert {b["checkout_id"] for b in kcidb.get("builds", [])} <= {c["id"] for c in kcidb["checkouts"]}
    assert len(kcidb["checkouts"]) == 2
    md = (run_dir / "summary.md").read_text()
    assert "debian-6.1-prefix" in md and "already-upstream" in md
    assert "debian-6.1-prefix" in (run_dir / "summary.html").read_text()
    # a second run never overwrites the first
    first = (tmp_path / "latest").resolve()
    proc2 = _invoke(
        "verify", "--until", "fetch", "--kernel", "debian-6.1", env_extra={"INVOKE_PV_RESULTS_ROOT": str(tmp_path)}
    )
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert (tmp_path / "latest").resolve() != first and (first / "results.json").exists()


@pytest.mark.parametrize(
    "kind,expect_code,expect",
    [
        ("bad-series", 4, "not a patch"),
        ("unknown-ref", 51, "ref 'v0.0.0-nope' not found"),  # errors.UnknownRef
        ("unreachable", 5, "unreachable"),
        ("wrong-type", 3, "pv.jobs"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, kind, expect_code, expect, debian_source):
    args = ["verify", "--until", "apply"]
    config = None
    if kind == "bad-series":
        bad = tmp_path / "bad.patch"
        bad.write_text("nothing to see\n")
        args += ["--series", str(bad)]
    else:
        config = tmp_path / "cfg.yaml"
        kernel = {"name": "k", "remote": str(debian_source.repo), "ref": "v0.0.0-nope", "hosts": []}
        if kind == "unreachable":
            kernel.update(remote="file:///nonexistent/repo.git", ref="master")
        pv = {"matrices": {"default": [kernel]}}
        if kind == "wrong-type":
            pv = {"jobs": "two"}
        config.write_text(yaml.safe_dump({"pv": pv}))
    proc = _invoke(*args, env_extra={"INVOKE_PV_RESULTS_ROOT": str(tmp_path / "runs")}, config=config)
    assert proc.returncode == expect_code, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert expect in last and "Traceback" not in proc.stderr
