"""The maintainer side: stable-style .eml mails, reproduce recipes, the dashboard across revisions
(screenshot in headless Chromium), `--json` outputs, run.log, ci.poll state on patchwork and
`invoke post` without a series."""

from __future__ import annotations

import copy
import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from chromium import browser, headless
from sample_runs import SUBJECT, k_buildfail, k_conflict, sample_run, vf_tests
from test_post import PW_TOKEN, FakePatchwork

from pipeline import PROJECT_ROOT
from pipeline.mails import write_mails
from pipeline.report import write_reports
from pipeline.results import load_results, write_results
from pipeline.verdict import apply_verdicts

MSGID = "<2a3bb8c3-4b4e-1c6a-4bd2-1c5b8d4a0d3b@suse.com>"


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def stable_tree(tmp_path):
    """A tree with history: an import, then a commit changing the lines the series' hunk needs."""
    repo = tmp_path / "linux"
    path = repo / "drivers/xen/xen-pciback/xenbus.c"
    path.parent.mkdir(parents=True)
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "T")
    path.write_text("".join(f"line {i}\n" for i in range(1, 31)))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "Linux 5.4 import")
    text = path.read_text().replace("line 12\n", "\tcase XenbusStateReconfiguring:\n")
    path.write_text(text)
    _git(repo, "commit", "-qam", "xen-pciback: handle Reconfiguring in the backend watch")
    return repo, _git(repo, "rev-parse", "HEAD")


def _mail(path):
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def test_stable_mails_parse_with_the_right_headers(tmp_path, stable_tree):
    repo, head = stable_tree
    run = sample_run()
    conflict = run.kernels[2]
    conflict.remote, conflict.fetch.commit = str(repo), head
    conflict.apply.patches[0].hunks = ["@@ -10,6 +10,15 @@ static void xen_pcibk_be_watch"]
    failing = copy.deepcopy(run.kernels[1])
    failing.name, failing.ref = "6.6.y", "linux-6.6.y"
    failing.tests = vf_tests("lab", "series", 1) + vf_tests("lab", "control", 1)
    failing.tests[1].xl_config = 'name = "pvtest-vf-boot-2"\npci = [ "0000:01:00.1", "0000:01:00.2" ]\n'
    run.kernels.append(failing)
    apply_verdicts(run.kernels)
    write_reports(run, tmp_path)
    paths = {p.stem: p for p in write_mails(run, tmp_path, [repo])}
    assert sorted(paths) == ["5.10.y", "5.4.y", "6.6.y"]  # the ready/upstream rows need no mail

    m = _mail(paths["5.4.y"])
    assert m["Subject"] == f'FAILED: patch "[PATCH] {SUBJECT}" failed to apply to 5.4-stable tree'
    assert m["In-Reply-To"] == MSGID and m["References"] == MSGID
    assert m["Cc"] == "stable@vger.kernel.org" and m["To"] == "Jan Beulich <jbeulich@suse.com>"
    assert m["Message-Id"].startswith("<") and m["Date"]
    body = m.get_content()
    for line in (
        f"git fetch {repo} linux-5.4.y",
        f"git checkout {head}",
        "b4 am -o . 2a3bb8c3-4b4e-1c6a-4bd2-1c5b8d4a0d3b@suse.com",
        "git am -3 ./*.mbx",
        "invoke verify --kernel 5.4.y --series patches/xen-pciback-reconfigure --until apply",
    ):
        assert line in body.splitlines(), line
    deps = body.split("Possible dependencies:", 1)[1]
    assert f'{head[:12]} ("xen-pciback: handle Reconfiguring in the backend watch")' in deps
    assert "Linux 5.4 import" not in deps  # the root commit is an import, not a dependency
    assert "+\t\txen_pcibk_reconfigure(pdev, XenbusStateInitialised);" in body  # the original patch

    b = _mail(paths["5.10.y"])
    assert b["Subject"] == f'FAILED: patch "[PATCH] {SUBJECT}" fails to build on 5.10-stable tree'
    assert "implicit declaration of function 'xen_pcibk_reconfigure'" in b.get_content()
    assert "invoke verify --kernel 5.10.y --series patches/xen-pciback-reconfigure --until build" in b.get_content()

    t = _mail(paths["6.6.y"])
    assert t["Subject"] == f'FAILED: patch "[PATCH] {SUBJECT}" fails its VF test on 6.6'
    tb = t.get_content()
    assert "vf-boot-2 [series] on lab: saw 1 of 2" in tb
    assert "--until test" in tb and "repro/6.6.y/vf-boot-2-series.cfg" in tb
    assert (tmp_path / "repro/6.6.y/vf-boot-2-series.cfg").read_text().startswith('name = "pvtest-vf-boot-2"')


def test_a_reproduce_recipe_for_every_failure_of_any_stage(tmp_path):
    run = sample_run()
    k = copy.deepcopy(run.kernels[1])
    k.name = "deploy-fails"
    k.deploy[0].status, k.deploy[0].detail = "failed", "insmod: ERROR: could not insert module"
    k.tests = []
    fetch_fails = copy.deepcopy(k_conflict())
    fetch_fails.name = "fetch-fails"
    fetch_fails.fetch.status, fetch_fails.fetch.detail = "failed", "unknown ref linux-9.9.y"
    fetch_fails.apply.status, fetch_fails.apply.patches = "not-run", []
    run.kernels += [k, fetch_fails]
    apply_verdicts(run.kernels)
    write_reports(run, tmp_path)
    write_results(tmp_path, run)
    data = json.loads((tmp_path / "results.json").read_text())
    stages = {kk["name"]: [r["stage"] for r in kk["reproduce"]] for kk in data["kernels"]}
    assert stages == {
        "debian-6.1": [],
        "debian-6.1-prefix": [],
        "5.4.y": ["apply"],
        "5.10.y": ["build"],
        "deploy-fails": ["deploy"],
        "fetch-fails": ["fetch"],
    }
    md = (tmp_path / "summary.md").read_text()
    assert "invoke verify --kernel deploy-fails --series patches/xen-pciback-reconfigure --until deploy" in md
    assert "git ls-remote" in md


# ---------------------------------------------------------------- dashboard


def _revision(root, rev, run_id, mutate):
    run = sample_run(rev, run_id=run_id)
    mutate(run)
    apply_verdicts(run.kernels)
    d = root / run_id
    d.mkdir(parents=True)
    write_reports(run, d)
    write_results(d, run)
    return run


def _three_revisions(root):
    def v1(run):
        pass

    def v2(run):  # the 5.10 build fixed, the 6.1-prefix test broken
        run.kernels[3].build.status, run.kernels[3].build.errors = "ok", []
        run.kernels[1].tests = vf_tests("lab", "series", 1) + vf_tests("lab", "control", 1)

    def v3(run):  # everything fixed but 5.4, and a new kernel
        run.kernels[3].build.status, run.kernels[3].build.errors = "ok", []
        k = copy.deepcopy(run.kernels[1])
        k.name = "6.6.y"
        run.kernels.append(k)

    for rev, (run_id, fn) in enumerate(
        [("20250101T000000-1", v1), ("20250102T000000-2", v2), ("20250103T000000-3", v3)], start=1
    ):
        _revision(root, rev, run_id, fn)


def test_dashboard_over_three_revisions_screenshot(tmp_path):
    browser()  # skips without Debian chromium
    root = tmp_path / "runs"
    _three_revisions(root)
    env = {**os.environ, "INVOKE_PV_RESULTS_ROOT": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "dashboard"], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = root / "index.html"
    assert proc.stdout.strip() == str(index)

    dom = headless(tmp_path / "p1", "--dump-dom", index.as_uri())
    cells = dict(_cells(dom))
    assert cells[("5.10.y", 1)] == ("build-fails", "")
    assert cells[("5.10.y", 2)] == ("ready-untested", "better")
    assert cells[("debian-6.1-prefix", 2)] == ("test-fails", "worse")
    assert cells[("debian-6.1-prefix", 3)] == ("ready", "better")
    assert cells[("5.4.y", 3)] == ("needs-backport", "same")
    assert cells[("6.6.y", 3)] == ("ready", "new")
    assert ("6.6.y", 1) not in cells and dom.count('class="cell none"') == 2
    assert "BETTER 5.10.y: build-fails -&gt; ready-untested" in dom and "NEW 6.6.y: ready" in dom
    assert 'href="20250102T000000-2/summary.html#kernel-debian-6.1-prefix"' in dom
    # the links land: each run's summary has the row the cell points at
    assert 'id="kernel-debian-6.1-prefix"' in (root / "20250102T000000-2" / "summary.html").read_text()

    shot = tmp_path / "dashboard.png"
    headless(tmp_path / "p2", f"--screenshot={shot}", "--window-size=1200,800", index.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
    out = os.environ.get("PV_SCREENSHOT_DIR")
    if out:  # keep it for a person to look at
        shutil.copy(shot, out)


def _cells(dom):
    """(kernel, revision) -> (verdict, change) from the grid's rows."""
    out = {}
    for row in re.findall(r'<tr class="kernel" data-kernel="([^"]+)">(.*?)</tr>', dom, re.S):
        name, body = row
        for rev, verdict, change in re.findall(
            r'data-revision="(\d+)" data-verdict="([^"]+)" data-change="([^"]*)"', body
        ):
            out[(name, int(rev))] = (verdict, change)
    return out.items()


# ---------------------------------------------------------------- --json and run.log


def _invoke(*args, env=None, ok=True):
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_json_outputs_parse(tmp_path):
    cfg = json.loads(_invoke("config.show", "--json").stdout)
    assert cfg["kernels"] == ["debian-6.1", "debian-6.1-prefix"] and "lab" in cfg["hosts"]
    ser = json.loads(_invoke("series.show", "--json").stdout)
    assert ser["patches"][0]["subject"].startswith("xen-pciback: reconfigure") and len(ser["patchset_hash"]) == 64
    assert "text" not in ser["patches"][0]

    run = sample_run()
    d = tmp_path / run.run_id
    d.mkdir()
    write_reports(run, d)
    write_results(d, run)
    rep = json.loads(_invoke("report", "--run", str(d), "--json").stdout)
    assert [k["verdict"] for k in rep["kernels"]] == [k.verdict for k in run.kernels]
    # report re-renders the mails too
    assert sorted(p.name for p in (d / "mails").iterdir()) == ["5.10.y.eml", "5.4.y.eml"]

    # --compare --json: what changed from v1 to v2, per kernel (the text form says the same)
    v2 = tmp_path / "runs"
    _revision(v2, 2, "20250102T000000-2", lambda r: setattr(r.kernels[3].build, "status", "ok"))
    cmp = json.loads(_invoke("report", "--compare", str(d), "--run", str(v2 / "20250102T000000-2"), "--json").stdout)
    assert (cmp["from"]["revision"], cmp["to"]["revision"]) == (1, 2)
    assert [(k["kernel"], k["change"], k["before"], k["after"]) for k in cmp["kernels"]] == [
        ("debian-6.1", "same", "already-upstream", "already-upstream"),
        ("debian-6.1-prefix", "same", "ready", "ready"),
        ("5.4.y", "same", "needs-backport", "needs-backport"),
        ("5.10.y", "better", "build-fails", "ready-untested"),
    ]
    assert cmp["counts"] == {"better": 1, "worse": 0, "same": 3, "new": 0, "gone": 0}


def test_verify_json_run_log_and_summary_path(tmp_path):
    root = tmp_path / "runs"
    proc = _invoke("verify", "--until", "series", "--json", env={"INVOKE_PV_RESULTS_ROOT": str(root)})
    data = json.loads(proc.stdout)
    run_dir = root / data["run_id"]
    assert data["until"] == "series" and [k["verdict"] for k in data["kernels"]] == ["untested", "untested"]
    assert f"summary: {run_dir / 'summary.html'}" in proc.stderr.splitlines()
    log = (run_dir / "run.log").read_text().splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 series: xen-pciback-reconfigure v1", log[0])
    assert any(line.endswith(f"run {data['run_id']}: {run_dir}") for line in log)
    # without --json the table and the summary's path are on stdout
    plain = _invoke("verify", "--until", "series", env={"INVOKE_PV_RESULTS_ROOT": str(root)})
    assert re.search(r"^summary: .*/summary\.html$", plain.stdout, re.M)


# ---------------------------------------------------------------- patchwork: poll state, post without a series


def _series(base, sid, version, patch_ids):
    return {
        "id": sid,
        "url": f"{base}/api/1.2/series/{sid}/",
        "name": "xen-pciback: reconfigure also from backend watch handler",
        "version": version,
        "received_all": True,
        "mbox": f"{base}/series/{sid}/mbox/",
        "patches": [{"id": p, "msgid": f"<{p}@x>"} for p in patch_ids],
    }


def test_ci_poll_state_survives_on_patchwork(httpserver, monkeypatch, tmp_path):
    from pipeline.poll import poll

    monkeypatch.setenv("PATCHWORK_TOKEN", PW_TOKEN)
    pw = FakePatchwork(httpserver)
    listing = [_series(pw.base, 4711, 2, [12345]), _series(pw.base, 4600, 1, [12000])]
    httpserver.expect_request("/api/1.2/series/").respond_with_json(listing)
    # v1 was verified by an earlier pipeline: its check is on patchwork, not in any local file
    pw.checks[12000] = [{"id": 1, "context": "pciback-verify/debian-6.1", "state": "success", "date": "2025"}]
    started = []

    def trigger(item):
        started.append(item["id"])
        return 900 + len(started)

    state = tmp_path / "ci-poll.json"
    first = poll(pw.base, "xen-devel", state, ["debian-6.1", "debian-6.1-prefix"], trigger, progress=lambda m: None)
    assert [(p.series_id, p.action) for p in first] == [(4711, "triggered"), (4600, "already-polled")]
    assert started == [4711]
    queued = [(pid, b["context"], b["state"], b["description"]) for pid, b, _ in pw.posts]
    assert queued == [
        (12345, "pciback-verify/debian-6.1", "pending", "queued: pipeline 901"),
        (12345, "pciback-verify/debian-6.1-prefix", "pending", "queued: pipeline 901"),
    ]
    state.unlink()  # GitLab's cache is best-effort: lost
    again = poll(pw.base, "xen-devel", state, ["debian-6.1"], trigger, progress=lambda m: None)
    assert [p.action for p in again] == ["already-polled", "already-polled"] and started == [4711]
    assert sorted(json.loads(state.read_text())) == ["4600:v1", "4711:v2"]


def test_post_with_patchwork_url_and_no_series_says_so(tmp_path, httpserver):
    run = sample_run()
    d = tmp_path / run.run_id
    d.mkdir()
    write_reports(run, d)
    write_results(d, run)
    env = {"PATCHWORK_URL": httpserver.url_for("/"), "PATCHWORK_TOKEN": PW_TOKEN, "PATCHWORK_SERIES": ""}
    proc = _invoke("post", "--run", str(d), env=env, ok=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "patchwork: skipped: no patch to post on (give --patch or --series-id, or set PATCHWORK_SERIES)"
    )
    assert httpserver.log == []  # nothing asked of patchwork
    assert load_results(d).run_id == run.run_id


def test_build_failure_recipe_links_its_log(tmp_path):
    run = sample_run()
    run.kernels = [k_buildfail()]
    apply_verdicts(run.kernels)
    write_reports(run, tmp_path)
    (rp,) = run.kernels[0].reproduce
    assert rp.stage == "build" and rp.files == ["5.10.y/build.log"]
    assert rp.commands[-1] == "invoke verify --kernel 5.10.y --series patches/xen-pciback-reconfigure --until build"


def test_a_mail_holds_no_secret_value(tmp_path, monkeypatch):
    """A GitLab runner's remote carries the job token (CI_REPOSITORY_URL's form); `invoke report` writes
    mails outside any verify run, so the mail itself is redacted, before its body is encoded."""
    token = "glcbt-64-s3cr3t-job-token-value"
    monkeypatch.setenv("CI_JOB_TOKEN", token)
    run = sample_run()
    run.kernels[2].remote = f"https://gitlab-ci-token:{token}@gitlab.example.org/xen/linux.git"
    run.series.patches[0].author = "Jürgen Groß <jgross@suse.com>"  # non-ASCII: the body may be encoded
    (path,) = [p for p in write_mails(run, tmp_path) if p.stem == "5.4.y"]
    assert token.encode() not in path.read_bytes()
    body = _mail(path).get_content()
    assert "git fetch https://gitlab-ci-token:[redacted:CI_JOB_TOKEN]@gitlab.example.org/xen/linux.git" in body
    assert token not in body
