from sample_runs import UPSTREAM, k_buildfail, k_conflict, k_prefix, k_upstream, vf_tests

from pipeline.results import ApplyResult, BuildResult, DeployResult, FetchResult, KernelResult, PatchApply
from pipeline.verdict import SEVERITY, rank, verdict


def test_already_upstream_with_commit_and_passing_tests():
    v, d = verdict(k_upstream())
    assert v == "already-upstream"
    assert UPSTREAM[:12] in d
    assert "3/3 VF tests pass on lab" in d
    assert "negative control fails as expected" in d


def test_already_upstream_matched_by_content():
    k = k_upstream()
    k.apply.patches[0].upstream_commit = ""
    assert verdict(k) == ("already-upstream", verdict(k)[1])
    assert "matched by content" in verdict(k)[1]


def test_ready():
    v, d = verdict(k_prefix())
    assert v == "ready"
    assert d.startswith("applies clean")


def test_ready_untested_when_no_host_ran_it():
    k = k_prefix()
    k.tests = []
    k.deploy = [DeployResult(status="skipped", host="lab", detail="no host runs 6.1.0-31-amd64")]
    assert verdict(k) == ("ready-untested", "no host runs 6.1.0-31-amd64; applies clean")


def test_needs_backport_names_files_and_hunks():
    v, d = verdict(k_conflict())
    assert v == "needs-backport"
    assert "drivers/xen/xen-pciback/xenbus.c" in d
    assert "@@ -689,6 +689,15 @@" in d


def test_conflict_in_one_patch_wins_over_rollup_status():
    k = k_prefix()
    k.apply.patches.append(PatchApply(subject="second", status="conflict", files=["x.c"]))
    assert verdict(k)[0] == "needs-backport"


def test_build_fails_with_first_error():
    v, d = verdict(k_buildfail())
    assert v == "build-fails"
    assert "implicit declaration" in d


def test_new_warnings():
    k = k_prefix()
    k.tests = []
    k.build.new_warnings = ["xenbus.c:700:5: warning: unused variable 'err' [-Wunused-variable]"]
    v, d = verdict(k)
    assert v == "new-warnings"
    assert "1 new warning: xenbus.c:700" in d


def test_test_failure_not_hidden_by_later_success_or_warnings():
    k = k_prefix()
    k.build.new_warnings = ["w"]
    k.tests = vf_tests("lab", "series", 1) + vf_tests("lab", "control", 1)  # vf-boot-2/3 see 1
    v, d = verdict(k)
    assert v == "test-fails"
    assert "vf-boot-2@lab failed: guest saw 1 of 2 VFs" in d
    assert "+1 more" in d
    assert "new warning" in d  # the lesser finding is still reported


def test_failed_test_then_passing_rerun_still_fails():
    k = k_prefix()
    k.tests = vf_tests("lab", "series", 1, counts=(3,)) + vf_tests("lab", "series", 3, counts=(3,))
    assert verdict(k)[0] == "test-fails"


def test_inconclusive_when_control_passes():
    k = k_upstream()
    k.tests = vf_tests("lab", "series", 3) + vf_tests("lab", "control", 3)
    v, d = verdict(k)
    assert v == "test-inconclusive"
    assert "negative control passed" in d


def test_already_upstream_but_tests_fail():
    k = k_upstream()
    k.tests = vf_tests("lab", "series", 1)
    assert verdict(k)[0] == "test-fails"


def test_errors():
    assert verdict(KernelResult(name="x", error="worker crashed"))[0] == "error"
    k = KernelResult(name="x", fetch=FetchResult(status="failed", detail="remote not found"))
    assert verdict(k) == ("error", "fetch failed: remote not found")
    k = KernelResult(name="x", apply=ApplyResult(status="failed", detail="git am: corrupt patch"))
    assert verdict(k) == ("error", "apply failed: git am: corrupt patch")
    # a build that could not run (headers missing) is a failing build, never skipped nor "error"
    k = k_prefix()
    k.build = BuildResult(status="failed", detail="no headers for 6.1.0-31-amd64")
    k.error, k.failed_stage, k.tests, k.deploy = "build: no headers for 6.1.0-31-amd64", "build", [], []
    assert verdict(k) == ("build-fails", "build could not run (setup): no headers for 6.1.0-31-amd64; applies clean")
    k = k_prefix()
    k.tests = []
    k.deploy = [DeployResult(status="failed", host="lab", detail="srcversion mismatch")]
    assert verdict(k) == ("error", "deploy to lab failed: srcversion mismatch; applies clean")


def test_untested_when_run_stopped_early():
    assert verdict(KernelResult(name="x", fetch=FetchResult(status="ok")))[0] == "untested"
    k = k_prefix()
    k.build = BuildResult(status="not-run")
    k.tests = []
    k.deploy = []
    assert verdict(k)[0] == "untested"


def test_rank_orders_verdicts():
    assert rank("ready") == rank("already-upstream") == 0
    assert rank("ready-untested") < rank("new-warnings") < rank("needs-backport") < rank("error")
    assert rank("nonsense") > rank("error")
    assert set(SEVERITY) >= {"ready", "ready-untested", "already-upstream", "needs-backport", "build-fails"}


def test_control_that_errored_proves_nothing():
    """A control whose guest never ran (an SSH error) must not count as 'fails as expected'."""
    from pipeline.results import TestResult

    k = k_prefix()
    k.tests = [t for t in k.tests if t.module != "control"] + [
        TestResult(
            name="vf-boot-3",
            host="lab",
            module="control",
            expected=3,
            outcome="error",
            reason="error: host lab: ssh lost",
        )
    ]
    v, detail = verdict(k)
    assert v == "test-inconclusive" and "did not run to a result" in detail


def test_ctrl_c_during_a_vf_test_leaves_the_row_untested_not_failed():
    from pipeline.results import TestResult

    k = k_prefix()
    done = [t for t in k.tests if t.name == "vf-boot-1" and t.module == "series"]
    k.tests = done + [
        TestResult(
            name="vf-boot-2", host="lab", module="series", expected=2, outcome="interrupted", reason="interrupted"
        )
    ]
    v, d = verdict(k)
    assert v == "untested"
    assert d.startswith("interrupted during vf-boot-2@lab [series]")


def test_ctrl_c_during_deploy_and_build_leave_the_row_untested():
    k = k_prefix()
    k.tests = []
    k.deploy = [DeployResult(status="interrupted", host="lab", restored=True)]
    assert verdict(k) == ("untested", verdict(k)[1])
    assert "interrupted during deploy to lab" in verdict(k)[1]
    k = k_prefix()
    k.tests, k.deploy = [], []
    k.build = BuildResult(status="interrupted", detail="interrupted; make stopped")
    assert verdict(k) == ("untested", "interrupted; make stopped; applies clean")
