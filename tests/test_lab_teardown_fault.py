"""On the lab: the VF teardown fails after the guest's count was read (issue 11).

The dom0's `tee` (the program Host.write_sysfs writes sysfs through) is shadowed for this test by
/usr/local/sbin/tee, which makes the next N writes of `0` to sriov_numvfs fail with "Bad file
descriptor", the lab fault that turned a passing case into `test-fails`. Only teardown writes 0
(setup writes N), so the fault hits after the observation. N = 1, then 2: the case keeps its
observed pass, the teardown error is on record, the VFs and the module are put back, the verdict
is not test-fails, and the runner did not re-run the case (it was no error).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import host_state
from sample_runs import k_prefix

pytestmark = pytest.mark.lab

FAKE = "/usr/local/sbin/tee"
COUNT = "/run/pv-fault-tee"
SCRIPT = """#!/bin/sh
# pciback-verify test fault (tests/test_lab_teardown_fault.py): the next N writes of 0 to sriov_numvfs fail
case "$1" in
*/sriov_numvfs)
  v=$(cat)
  n=$(cat /run/pv-fault-tee 2>/dev/null || echo 0)
  if [ "$v" = 0 ] && [ "$n" -gt 0 ]; then
    echo $((n - 1)) > /run/pv-fault-tee
    echo "tee: $1: Bad file descriptor" >&2
    exit 1
  fi
  printf '%s\\n' "$v" | /usr/bin/tee "$@"
  exit $?;;
esac
exec /usr/bin/tee "$@"
"""


def test_teardown_fault_after_the_observation_keeps_the_pass(lab_host, lab_settings, lab_modules, tmp_path):
    from pipeline import vftest
    from pipeline.deploy import deploy, restore
    from pipeline.host import Host
    from pipeline.providers import default_guest
    from pipeline.results import KernelResult, Outcome, RunResult
    from pipeline.runner import _Run
    from pipeline.verdict import verdict

    series = lab_modules["series"]
    with Host(lab_host) as host:
        before = host_state(host)
        host.write_text(FAKE, SCRIPT)
        host.run(["chmod", "755", FAKE])
        try:
            assert host.out(["sh", "-c", "command -v tee"]) == FAKE  # what write_sysfs will run
            d = deploy(host, Path(series.module), series.srcversion, print)
            assert d.status == "ok", d.detail
            kr = KernelResult(name="debian-6.1-prefix")
            ctx = _Run(lab_settings, RunResult(run_id="fault", kernels=[kr]), tmp_path, None, "report", print)
            image = default_guest(host, lab_settings)
            try:
                for failures in (1, 2):
                    host.write_text(COUNT, f"{failures}\n")
                    ctx.run_test(
                        host, kr, "vf-boot-1", "series", lambda: vftest.vf_boot(host, 1, "series", image, print)
                    )
                    t = kr.tests[-1]
                    assert t.outcome is Outcome.PASS and t.seen == 1, (t.reason, t.teardown_error)
                    assert "Bad file descriptor" in t.teardown_error, t.teardown_error
                    assert t.teardown_error.count("(attempt ") == failures, t.teardown_error
                    assert "VFs restored on a later attempt" in t.teardown_error
                    assert host.read_text(COUNT).strip() == "0"  # every injected failure was hit
                    assert host_state(host, ["numvfs", "assignable", "domains"]) == {
                        k: before[k] for k in ("numvfs", "assignable", "domains")
                    }
                    assert not t.warnings  # not re-run: it did not error
            finally:
                restore(host, d, print)
        finally:
            host.run(["rm", "-f", FAKE, COUNT], check=False)
        assert host_state(host) == before  # the host as found
    assert len(kr.tests) == 2
    k = k_prefix()
    k.tests = kr.tests
    v, detail = verdict(k)
    assert v != "test-fails" and v == "ready", detail
    assert "teardown error after the result was observed" in detail
