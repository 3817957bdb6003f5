import json
import xml.etree.ElementTree as ET

import pytest
from sample_runs import k_prefix, sample_run, vf_tests

from pipeline.kcidb import patchset_hash, validate_kcidb
from pipeline.report import compare, format_table, write_reports
from pipeline.results import RunResult, load_results, write_results


@pytest.fixture
def run_dir(tmp_path):
    run = sample_run()
    d = tmp_path / run.run_id
    d.mkdir()
    (d / "debian-6.1").mkdir()
    (d / "debian-6.1" / "build.log").write_text("make -C /lib/modules/6.1.0-31-amd64/build M=...\n")
    paths = write_reports(run, d)  # first: it records series.patchset_hash while the texts are known
    write_results(d, run)
    return run, d, paths


def test_writes_the_four_reports(run_dir):
    run, d, paths = run_dir
    assert sorted(p.name for p in paths) == ["junit.xml", "kcidb.json", "summary.html", "summary.md"]
    assert not list(d.glob(".*"))  # no temp files left behind


def test_junit_one_case_per_kernel_and_stage(run_dir):
    _, d, _ = run_dir
    root = ET.parse(d / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["debian-6.1", "debian-6.1-prefix", "5.4.y", "5.10.y"]
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert ("debian-6.1", "test vf-boot-3[series]@lab") in cases
    assert cases[("debian-6.1", "negative-control")].find("failure") is None
    conflict = cases[("5.4.y", "apply")].find("failure")
    assert conflict is not None and "xenbus.c" in conflict.get("message")
    assert cases[("5.10.y", "build")].find("failure") is not None
    assert cases[("5.4.y", "build")].find("skipped") is not None
    assert suites["5.10.y"].get("failures") == "1"
    # the control's own failures are expected: not a JUnit failure
    assert cases[("debian-6.1", "test vf-boot-3[control]@lab")].find("failure") is None


def test_junit_marks_inconclusive_control_as_failure(tmp_path):
    run = sample_run()
    run.kernels[1].tests = vf_tests("lab", "series", 3) + vf_tests("lab", "control", 3)
    write_reports(run, tmp_path)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    case = [
        c
        for c in root.iter("testcase")
        if c.get("classname") == "debian-6.1-prefix" and c.get("name") == "negative-control"
    ][0]
    assert "cannot show the fix matters" in case.find("failure").get("message")


def test_kcidb_is_valid_and_linked(run_dir):
    run, d, _ = run_dir
    data = json.loads((d / "kcidb.json").read_text())
    how = validate_kcidb(data)
    assert how.startswith("kcidb-io") or "minimal" in how
    assert data["version"]["major"] == 5
    assert len(data["checkouts"]) == 4
    assert {c["patchset_hash"] for c in data["checkouts"]} == {patchset_hash(run.series)}
    assert all(c["id"].startswith("pciback_verify:") for c in data["checkouts"])
    # stable remote is https: carried; the local cache path is not a URL
    by = {c["tree_name"]: c for c in data["checkouts"]}
    assert by["5.4.y"]["git_repository_url"].startswith("https://")
    assert "git_repository_url" not in by["debian-6.1"]
    assert by["5.4.y"]["valid"] is False
    builds = {b["checkout_id"].split(":")[-1]: b for b in data["builds"]}
    assert builds["5.10.y"]["status"] == "FAIL" and builds["debian-6.1"]["status"] == "PASS"
    assert "5.4.y" not in builds  # never built
    paths = {(t["build_id"].split(":")[-2], t["path"], t["status"]) for t in data["tests"]}
    assert ("debian-6.1", "xen-pciback.vf-boot-3", "PASS") in paths
    assert ("debian-6.1", "xen-pciback.negative-control.vf-boot-3", "FAIL") in paths


def test_patchset_hash_survives_rerender(run_dir, tmp_path):
    run, d, _ = run_dir
    again = load_results(d)  # patch texts are not in results.json
    assert again.series.patches[0].text == ""
    assert patchset_hash(again.series) == patchset_hash(run.series) != ""


def test_summary_md_greg_section_and_rows(run_dir):
    _, d, _ = run_dir
    md = (d / "summary.md").read_text()
    for name, v in [
        ("debian-6.1", "already-upstream"),
        ("debian-6.1-prefix", "ready"),
        ("5.4.y", "needs-backport"),
        ("5.10.y", "build-fails"),
    ]:
        assert f"| {name} |" in md and f"**{v}**" in md
    assert "## The patch below does not apply to the 5.4-stable tree." in md
    assert "does not apply to the 5.10-stable tree" not in md  # it applies; its build fails
    assert "git fetch https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git linux-5.4.y" in md
    assert "git checkout 1234567890abcdef1234567890abcdef12345678" in md
    assert "git am -3 patches/xen-pciback-reconfigure/0001-" in md
    assert "- `drivers/xen/xen-pciback/xenbus.c`" in md
    assert "upstream commit c81d3d246025" in md


def test_summary_html_links_logs(run_dir):
    _, d, _ = run_dir
    html = (d / "summary.html").read_text()
    assert 'href="debian-6.1/build.log"' in html
    assert 'td class="stage build fail"' in html


def test_build_log_text_gets_a_file(tmp_path):
    run = sample_run()
    run.kernels[3].build.log = "CC drivers/xen/xen-pciback/xenbus.o\nerror: implicit declaration\n"
    write_reports(run, tmp_path)
    assert (tmp_path / "logs/5.10.y/build.log").read_text().startswith("CC drivers")
    assert 'href="logs/5.10.y/build.log"' in (tmp_path / "summary.html").read_text()


def test_summary_html_in_headless_chromium(run_dir, tmp_path):
    from chromium import headless

    _, d, _ = run_dir
    dom = headless(tmp_path / "profile", "--dump-dom", (d / "summary.html").as_uri())
    for name in ["debian-6.1", "debian-6.1-prefix", "5.4.y", "5.10.y"]:
        assert f'<tr class="kernel" id="kernel-{name}" data-kernel="{name}"' in dom
    assert dom.count('<tr class="kernel"') == 4
    assert 'data-verdict="needs-backport"' in dom


def test_format_table():
    out = format_table(sample_run())
    lines = out.splitlines()
    assert lines[0].startswith("xen-pciback-reconfigure v1")
    assert lines[1].split() == ["KERNEL", "REF@COMMIT", "APPLY", "BUILD", "TESTS", "VFS", "VERDICT"]
    row = {line.split()[0]: line for line in lines[2:]}
    assert row["debian-6.1"].split()[-1] == "already-upstream"
    assert "3/3 ctl:fail" in row["debian-6.1-prefix"]
    assert "linux-5.4.y@1234567890ab" in row["5.4.y"]
    assert row["5.10.y"].split()[-1] == "build-fails"


def test_a_test_cut_short_by_ctrl_c_is_not_counted_as_run():
    from pipeline.results import TestResult

    run = sample_run()
    k = run.kernels[1]
    k.tests = vf_tests("lab", "series", 3, counts=(1,)) + [
        TestResult(
            name="vf-boot-2", host="lab", module="series", expected=2, outcome="interrupted", reason="interrupted"
        ),
        TestResult(
            name="vf-boot-3", host="lab", module="control", expected=3, outcome="interrupted", reason="interrupted"
        ),
    ]
    row = {line.split()[0]: line.split() for line in format_table(run).splitlines()[2:]}
    assert row["debian-6.1-prefix"][4:6] == ["1/1", "1/1"]  # TESTS, VFS: no "ctl:" for a cut-short control


def test_compare_v1_v2():
    from pipeline.verdict import apply_verdicts

    v1 = sample_run(1, run_id="r1")
    v2 = sample_run(2, run_id="r2")
    v2.kernels[3].build.status = "ok"  # v2 fixed the 5.10 build
    v2.kernels[3].build.errors = []
    v2.kernels[1].tests = vf_tests("lab", "series", 1) + vf_tests("lab", "control", 1)  # and broke the test
    v2.kernels = [k for k in v2.kernels if k.name != "5.4.y"] + [k_prefix()]
    v2.kernels[-1].name = "6.6.y"
    apply_verdicts(v2.kernels)
    out = compare(v1, v2)
    assert out.splitlines()[0] == "xen-pciback-reconfigure v1 (r1) -> xen-pciback-reconfigure v2 (r2)"
    assert "BETTER  5.10.y: build-fails -> ready-untested" in out
    assert "WORSE   debian-6.1-prefix: ready -> test-fails" in out
    assert "SAME    debian-6.1: already-upstream -> already-upstream" in out
    assert "GONE    5.4.y" in out and "NEW     6.6.y" in out


def test_reports_for_unrendered_run(tmp_path):
    # a run that stopped after fetch: every row untested, reports still written
    run = RunResult(run_id="x", kernels=[k_prefix()])
    run.kernels[0].apply.status = "not-run"
    paths = write_reports(run, tmp_path)
    assert len(paths) == 4
    assert "untested" in (tmp_path / "summary.md").read_text()


def test_readiness_line_per_branch_in_md_and_html(run_dir):
    _, d, _ = run_dir
    md = (d / "summary.md").read_text()
    html = (d / "summary.html").read_text()
    section = md.split("## Readiness per branch", 1)[1].split("\n## ", 1)[0]
    lines = {ln[2:].split(": ", 1)[0]: ln[2:].split(": ", 1)[1] for ln in section.splitlines() if ln.startswith("- ")}
    print(lines)
    assert lines["debian-6.1"].startswith("already upstream")
    assert lines["5.4.y"].startswith("needs backport: drivers/xen/xen-pciback/xenbus.c")
    assert "build fails" in lines["5.10.y"]
    assert any("VF tests" in v and " pass on " in v and "Xen " in v for v in lines.values())
    assert "<h2>Readiness per branch</h2>" in html
    assert '<li class="branch needs-backport" data-kernel="5.4.y" data-state="needs-backport">' in html
    assert '<b>5.4.y</b>: <span class="apply">needs backport: drivers/xen/xen-pciback/xenbus.c' in html
