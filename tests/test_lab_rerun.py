"""The test suite's own rerun of a lab test that failed under a lab fault (conftest._LabRerun):
which changes of the lab count, and that such a rerun is on record and shown."""

from __future__ import annotations

import textwrap

from conftest import lab_change

from pipeline.absorbed import JOURNAL_ENV, read_journal
from pipeline.lab import XEN_BANNER
from pipeline.statuses import FaultKind

pytest_plugins = ["pytester"]


def test_only_a_reset_or_another_qemu_is_a_lab_change():
    assert lab_change((10, 1), (10, 1)) == ""
    assert "reset under it (Xen booted 1 more" in lab_change((10, 1), (10, 2))
    assert "replaced (pid 10 -> 11)" in lab_change((10, 1), (11, 1))
    assert "gone" in lab_change((10, 1), None)


def test_a_lab_test_failing_under_a_reset_runs_again_on_record(pytester, monkeypatch, tmp_path):
    """A lab-marked test fails while the (faked) console shows Xen booting again: it runs once more,
    passes, and the LAB FAULT line and the absorbed fault say so. Failing without a reset: no rerun."""
    import conftest

    console = tmp_path / "console.log"
    console.write_text(XEN_BANNER + "4.17\n")
    monkeypatch.setattr(conftest, "_lab_boots", lambda: (1, console.read_text().count(XEN_BANNER)))
    monkeypatch.setattr(conftest, "_lab_back", lambda: None)
    monkeypatch.setenv(JOURNAL_ENV, str(tmp_path / "faults.jsonl"))
    monkeypatch.setattr(conftest, "_LAB_FAULTS", [])
    pytester.makepyfile(
        test_x=textwrap.dedent(f"""
            import pathlib, pytest
            ran = pathlib.Path({str(tmp_path / "ran")!r})

            @pytest.mark.lab
            def test_reset_once():
                n = int(ran.read_text()) if ran.exists() else 0
                ran.write_text(str(n + 1))
                if n == 0:
                    with open({str(console)!r}, "ab") as f:
                        f.write({XEN_BANNER.encode()!r} + b"4.17\\n")
                    assert False, "ssh banner"

            @pytest.mark.lab
            def test_real_failure():
                assert False, "a real one"

            @pytest.mark.lab
            def test_last():
                pass
        """)
    )
    pytester.makeini("[pytest]\nmarkers =\n    lab: x\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[conftest._LabRerun()])
    result.assert_outcomes(passed=2, failed=1)
    assert (tmp_path / "ran").read_text() == "2"
    (fault,) = read_journal(tmp_path / "faults.jsonl")
    assert (fault.what, fault.step) == (FaultKind.TEST_RERUN, "test test_reset_once")
    assert "ssh banner" in fault.evidence and "reset under it" in fault.evidence
    assert any("LAB FAULT in test_x.py::test_reset_once: the lab's machine reset" in x for x in conftest._LAB_FAULTS)
