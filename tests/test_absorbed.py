"""Every absorbed fault on record (issue 13): a retry around a lab fault leaves an AbsorbedFault that
results.json lists (`faults_absorbed`) and the summaries count, and the run's verdicts stand.

The faults are real ones of the pipeline's own code paths, against the local sshd: a command killed
by a signal once, a handshake damaged in transit once."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_sshd import SshServer, damaging_proxy, serve
from sample_runs import sample_run, series

from pipeline import absorbed, report, verdict
from pipeline.host import Host
from pipeline.results import AbsorbedFault, Outcome, RunResult, load_results, write_results
from pipeline.statuses import FaultKind

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"


@pytest.fixture(autouse=True)
def _not_the_sessions_faults(monkeypatch):
    """The faults these tests cause on purpose stay out of the session's total (conftest's journal)."""
    monkeypatch.delenv(absorbed.JOURNAL_ENV, raising=False)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    with serve(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _crash_once(flag: Path) -> list[str]:
    return ["sh", "-c", f'if [ -e {flag} ]; then echo answer; else touch {flag}; kill -SEGV "$$"; fi']


def test_a_query_killed_once_is_recorded_by_the_host(sshd, tmp_path):
    with absorbed.collect() as got, Host(sshd.host_config) as host:
        assert host.out(_crash_once(tmp_path / "flag")) == "answer"
        assert host.out(["echo", "calm"]) == "calm"  # an answer is no fault
    (f,) = got
    assert f.what is FaultKind.QUERY_KILLED
    assert f.host == sshd.host_config.name
    assert f.step.startswith("sh -c 'if [ -e ")  # the command, as data
    assert f.evidence == "no exit status (killed by a signal)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", f.at)


def test_a_handshake_damaged_once_is_recorded_with_the_transport_error(sshd, tmp_path):
    known = tmp_path / "known_hosts_proxy"
    with damaging_proxy(sshd.port, damage=1) as proxy:
        entry = Path(sshd.host_config.known_hosts).read_text().split(maxsplit=1)[1]
        known.write_text(f"[127.0.0.1]:{proxy.port} {entry}")
        cfg = dataclasses.replace(sshd.host_config, port=proxy.port, known_hosts=str(known))
        with absorbed.collect() as got, Host(cfg) as host:
            assert host.out(["echo", "through"]) == "through"
    (f,) = got
    assert (f.what, f.step) == (FaultKind.HANDSHAKE_BROKEN, "ssh handshake")
    # where the handshake went and the transport's own words ("Signature verification (ssh-ed25519) failed.")
    assert f.evidence.startswith(f"root@127.0.0.1:{proxy.port}: SSHException: "), f.evidence


def test_collectors_nest_and_the_journal_gets_every_record(tmp_path, monkeypatch):
    journal = tmp_path / "faults.jsonl"
    monkeypatch.setenv(absorbed.JOURNAL_ENV, str(journal))
    with absorbed.collect() as outer:
        with absorbed.collect() as inner, absorbed.about(kernel="k", case="vf-boot-1 [series]"):
            absorbed.record(FaultKind.DESTROY_REISSUED, "h", "xl destroy pvtest-1", "still listed")
        absorbed.record(FaultKind.LAB_RESTARTED, "h", "lab restart", "ssh connection lost")
    assert [f.what for f in inner] == [FaultKind.DESTROY_REISSUED]
    assert (inner[0].kernel, inner[0].case) == ("k", "vf-boot-1 [series]")
    assert [f.what for f in outer] == [FaultKind.DESTROY_REISSUED, FaultKind.LAB_RESTARTED]
    assert outer[1].kernel == "" and absorbed.read_journal(journal) == outer
    absorbed.record(FaultKind.SFTP_RETRY, "h", "sftp read /x", "EOFError")  # no collector: journal only
    assert len(absorbed.read_journal(journal)) == 3


def test_evidence_is_short_and_never_a_secret(monkeypatch):
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-s3cr3t-value")
    f = absorbed.record(FaultKind.STREAM_BROKEN, "h", "x" * 500, "token glpat-s3cr3t-value\n" + "y" * 500)
    assert "s3cr3t" not in f.evidence and "[redacted:GITLAB_TOKEN]" in f.evidence
    assert len(f.step) <= 160 and len(f.evidence) <= 240 and "\n" not in f.evidence
    assert absorbed.of_exit(139, "one\nSegmentation fault\n") == "exit 139 (SIGSEGV): Segmentation fault"
    assert absorbed.of_error(OSError("Socket is closed\nmore")) == "OSError: Socket is closed"


def test_a_case_that_absorbed_faults_is_in_results_json_and_the_summary_and_keeps_its_verdict(sshd, tmp_path):
    """The runner's own re-run of an errored case, around a query that crashed once inside it."""
    from pipeline.runner import _Run

    run = sample_run()
    before = {k.name: k.verdict for k in run.kernels}
    kr = next(k for k in run.kernels if k.name == "debian-6.1-prefix")
    good = kr.tests.pop(2)  # vf-boot-3 [series]: what the second attempt observes
    attempts = []

    def case(host):
        attempts.append(host.out(_crash_once(tmp_path / "flag")))
        if len(attempts) == 1:  # the first attempt lost its guest's result (a broken stream)
            return dataclasses.replace(good, outcome=Outcome.ERROR, reason="error: ssh connection lost")
        return good

    ctx = _Run(None, run, tmp_path, None, "report", lambda msg: None)
    with absorbed.collect(run.faults_absorbed), Host(sshd.host_config) as host:  # as runner.verify does
        with absorbed.about(kernel=kr.name):
            ctx.run_test(host, kr, "vf-boot-3", "series", lambda: case(host))
    verdict.apply_verdicts(run.kernels)
    report.write_reports(run, tmp_path)
    write_results(tmp_path, run)

    assert {k.name: k.verdict for k in run.kernels} == before  # absorbed: the verdicts stand
    saved = json.loads((tmp_path / "results.json").read_text())["faults_absorbed"]
    assert [(f["what"], f["host"], f["kernel"], f["case"]) for f in saved] == [
        ("query-killed", "local", "debian-6.1-prefix", "vf-boot-3 [series]"),
        ("case-rerun", "local", "debian-6.1-prefix", "vf-boot-3 [series]"),
    ]
    assert saved[1]["step"] == "vf-boot-3 [series]" and saved[1]["evidence"] == "error: ssh connection lost"
    assert load_results(tmp_path).faults_absorbed == run.faults_absorbed  # typed on the way back
    md = (tmp_path / "summary.md").read_text()
    assert "), 2 faults absorbed." in md and "## 2 faults absorbed" in md
    assert "- `query-killed` on local: `sh -c " in md and "- `case-rerun` on local: `vf-boot-3 [series]`" in md
    assert "2 faults absorbed (case-rerun, query-killed)" in report.format_table(run)


def _faulty_run() -> RunResult:
    run = sample_run()
    run.faults_absorbed = [  # what, host, step, evidence, at, kernel, case
        AbsorbedFault("query-killed", "lab", "xl list", "no exit status (killed by a signal)", "", "debian-6.1"),
        AbsorbedFault("lab-restarted", "lab", "lab restart", "ssh connection lost <EOF>"),
    ]
    return run


def test_a_run_with_two_faults_says_so_in_markdown_html_and_the_terminal():
    run, clean = _faulty_run(), sample_run()
    md, html, table = report.render_markdown(run), report.render_html(run), report.format_table(run)
    assert "2 faults absorbed" in md and "0 faults absorbed" in report.render_markdown(clean)
    assert "- `query-killed` on lab: `xl list` (debian-6.1): no exit status (killed by a signal)\n" in md
    assert '<span id="faults-absorbed">2 faults absorbed</span>' in html
    assert '<li data-what="lab-restarted"><code>lab-restarted</code> on lab: <code>lab restart</code>' in html
    assert "ssh connection lost &lt;EOF&gt;" in html  # escaped like every other field
    assert table.splitlines()[-1] == "2 faults absorbed (lab-restarted, query-killed)"
    assert report.format_table(clean).splitlines()[-1] == "0 faults absorbed"
    # nothing else of the report changes: the verdicts stand
    assert (
        md.replace("2 faults absorbed", "0 faults absorbed").split("## Kernel x host")[1]
        == (report.render_markdown(clean).split("## Kernel x host")[1])
    )


def test_verify_lists_what_was_absorbed_during_the_run_in_results_json(tmp_path, monkeypatch):
    """runner.verify opens the run's collector: a fault recorded anywhere in the run is in its results."""
    from pipeline import runner
    from pipeline.config import KernelConfig, Settings
    from pipeline.runner import verify

    roll_up = verdict.apply_verdicts

    def apply_verdicts(kernels):  # the last step of every run, inside its collector
        absorbed.record(FaultKind.SFTP_RETRY, "lab", "sftp read /x", "SSHException: Garbage packet received")
        roll_up(kernels)

    monkeypatch.setattr(runner, "load_series", lambda path: series())
    monkeypatch.setattr(verdict, "apply_verdicts", apply_verdicts)
    settings = Settings(results_root=str(tmp_path / "runs"), matrices={"default": [KernelConfig("a", "r", "a")]})
    done = verify(settings, until="series", progress=lambda msg: None)
    (f,) = load_results(done.run_dir).faults_absorbed
    assert (f.what, f.step) == (FaultKind.SFTP_RETRY, "sftp read /x")
    assert "1 fault absorbed (sftp-retry)" in done.closing()


def test_every_fault_kind_is_recorded_somewhere_in_the_pipeline():
    """A kind no retry site records is dead vocabulary; a retry site without a kind is silent. (The
    test suite's own rerun of a lab test, tests/conftest.py, records one too.)"""
    sites = [*PIPELINE.rglob("*.py"), Path(__file__).with_name("conftest.py")]
    code = "\n".join(p.read_text() for p in sites)
    unused = [k.name for k in FaultKind if not re.search(rf"\brecord\(\s*FaultKind\.{k.name}\b", code)]
    assert not unused
