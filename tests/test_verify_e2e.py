"""`invoke verify` end to end on the built-in Xen lab, judged from results.json (marked `lab`, `kernel`, `build`).

The default matrix: debian-6.1 (the fix is upstream) and debian-6.1-prefix (the series applied on
the tree without it). For both the guest must see every VF it was given at boot, the negative
control (the module without the fix) must not, and the lab must be left as it was found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import host_state

from pipeline import PROJECT_ROOT

pytestmark = [pytest.mark.lab, pytest.mark.kernel, pytest.mark.build]


def _host_state(host) -> dict:
    return host_state(host, ("module", "domids", "numvfs", "assignable"))


def test_verify_default_matrix_on_the_lab(lab_host, lab_settings, tmp_path):
    from pipeline.host import Host

    with Host(lab_host) as h:
        before = _host_state(h)
    assert before["domids"] == [0]

    env = {**os.environ, "INVOKE_PV_RESULTS_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "verify"], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert data["status"] == "complete"
    by = {k["name"]: k for k in data["kernels"]}

    for name, verdict in (("debian-6.1", "already-upstream"), ("debian-6.1-prefix", "ready")):
        k = by[name]
        assert k["verdict"] == verdict, (name, k["verdict_detail"])
        lab_release = lab_host.kernel_release
        assert k["build"]["vermagic"].split()[0] == lab_release
        series = {t["name"]: t for t in k["tests"] if t["module"] == "series"}
        for n in (1, 2, 3):
            t = series[f"vf-boot-{n}"]
            assert t["passed"] and t["seen"] == n, (name, t)
            assert all(t["backend"][f"state-{i}"] == 3 for i in range(n)), (name, t["backend"])
            assert t["xs_creation"]["num_devs"] == list(range(1, n + 1)), (name, t["xs_creation"])
            assert t["toolstack"]["xen_version"].startswith("4.17"), (name, t["toolstack"])
        hot = series["vf-hotplug"]
        assert hot["passed"], (name, hot["reason"])
        assert hot["metrics"]["num_devs"][:3] == [1, 2, 3]  # num_devs grows with each attach
        (control,) = [t for t in k["tests"] if t["module"] == "control"]
        # without the fix the guest misses devices and their backend entries stay Initialising (1)
        assert not control["passed"] and control["seen"] < 3, (name, control)
        assert control["xs_creation"]["num_devs"] == [1, 2, 3], (name, control["xs_creation"])
        assert any(control["backend"].get(f"state-{i}") == 1 for i in (1, 2)), (name, control["backend"])
        # the series' module really was the one loaded: srcversion on the host equals the built one
        series_deploys = [d for d in k["deploy"] if not d["detail"].startswith("control")]
        assert series_deploys and all(d["srcversion"] == k["build"]["srcversion"] for d in series_deploys)
        assert all(d["restored"] for d in k["deploy"])
        # every host and build step is timed (bench/bench_verify.py reads these)
        assert {"prepare", "series", "control"} <= set(k["build"]["steps"]), k["build"]["steps"]
        for d in k["deploy"]:
            assert {"upload", "unload", "load", "check", "restore"} <= set(d["steps"]), d["steps"]
        for t in k["tests"]:
            want = {"vf_create", "assignable", "xl_create", "marker_wait", "backend_read", "teardown"}
            assert want <= set(t["steps"]), (t["name"], t["steps"])
    assert {"rows", "hosts", "lab_boot", "host_lock"} <= set(data["steps"]), data["steps"]

    # the host is left as found: stock module, no guest, no VF, nothing assignable
    with Host(lab_host) as h:
        assert _host_state(h) == before
    assert "debian-6.1-prefix" in proc.stdout and "ready" in proc.stdout
