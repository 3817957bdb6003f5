"""Another Debian line's kernel as dom0 (issue 16; marked `lab`, `kernel`, `build`): the Xen 4.17
lab booting bookworm-security's 6.12 (inventory host `lab-6.12`, `dom0_kernel`), debian-6.12-prefix
(the series applied on 6.12 without the fix) built against that very release's headers, through
`invoke verify` itself, judged from results.json: the module's vermagic is the dom0's release, its
srcversion is what the host's /sys/module says after the load, the guest sees 3 of 3 VFs; the
control (6.12 without the fix) 1 of 3.

One line in CI, 6.12: bookworm's own compiler, and the cheapest image of the extra kernels. Its
cost there: the `.cache/lab-kernels` image (built beside the default lab's boot, `labs` mark),
one boot of it, the 6.12 headers and modules, two vf-boot-3 cases. 5.10 and 7.2 run the same way
by hand (README, "Other dom0 kernels").
"""

from __future__ import annotations

import pytest
from labverify import verify_matrix

from pipeline import lab, labsuites

HOST = "lab-6.12"
ROW = "debian-6.12-prefix"

pytestmark = [pytest.mark.lab, pytest.mark.kernel, pytest.mark.build, pytest.mark.labs(HOST), pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def dom0_612_run(lab_host, tiny_guest, lab_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("dom0-kernels")
    kernel = next(k for k in lab_settings.matrices["debian"] if k.name == ROW)
    assert kernel.hosts == [HOST]
    row = {"name": kernel.name, "remote": kernel.remote, "ref": kernel.ref, "hosts": [HOST]}
    row["build"] = {"mode": "headers", "headers": kernel.build.headers}
    proc, data = verify_matrix(root, "dom0-612", [row], vf_counts=[3], hotplug=False)
    yield proc, data
    lab.down(labsuites.for_name(lab_settings, HOST))  # whatever the run left up


def test_the_series_on_a_dom0_running_6_12(dom0_612_run, lab_settings):
    proc, data = dom0_612_run
    assert data is not None, proc.stderr[-3000:]
    (k,) = data["kernels"]
    release = labsuites.for_name(lab_settings, HOST).lab.dom0_kernel
    assert release.startswith("6.12.")
    # built for the release the host boots, and that host ran it
    assert k["build"]["vermagic"].split()[0] == release, k["build"]
    cases = {t["module"]: t for t in k["tests"] if t["name"] == "vf-boot-3"}
    series, control = cases["series"], cases["control"]
    assert series["toolstack"]["dom0_kernel"] == release, series["toolstack"]
    assert series["toolstack"]["xen_version"].startswith("4.17"), series["toolstack"]
    # loaded, and the host's /sys/module/xen_pciback/srcversion said what was built
    deploys = {"control" if d["detail"].startswith("control module") else "series": d for d in k["deploy"]}
    assert deploys["series"]["status"] == "ok" and deploys["series"]["srcversion"] == k["build"]["srcversion"]
    assert deploys["control"]["status"] == "ok" and deploys["control"]["srcversion"] == k["build"]["control_srcversion"]
    assert series["passed"] and series["seen"] == 3, series
    assert not control["passed"] and control["seen"] == 1, control
    assert k["verdict"] == "ready", (k["verdict"], k.get("verdict_detail"))
    print(f"{ROW} on {HOST} ({release}): series {series['seen']}/3, control {control['seen']}/3; steps {data['steps']}")
