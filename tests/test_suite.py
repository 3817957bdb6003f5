"""pipeline/suite.py: `invoke test` as two pytest processes side by side (lab tests, the rest)."""

from __future__ import annotations

import io
import itertools
import os
import sys
from pathlib import Path

import pytest

from pipeline import suite


def _argv(half: suite.Half, flag: str) -> str:
    """The value of pytest option `flag` (the last one: `python -m pytest` comes first)."""
    for i in reversed(range(len(half.argv))):
        if half.argv[i] == flag:
            return half.argv[i + 1]
        if half.argv[i].startswith(flag + "="):
            return half.argv[i].split("=", 1)[1]
    raise AssertionError(f"{flag} not in {half.argv}")


def test_the_default_suite_is_the_lab_half_and_the_rest_beside_it():
    lab, other = suite.plan(Path("/x/main"), python="py")
    assert (lab.name, other.name) == ("lab", "other")
    assert _argv(lab, "-m") == "(not download) and lab"
    assert _argv(other, "-m") == "(not download) and not lab"
    # apart: their own temporary roots, and the lab half's output in a log beside them
    assert _argv(lab, "--basetemp") != _argv(other, "--basetemp")
    assert lab.log is not None and other.log is None
    assert "--durations=25" in lab.argv and "--durations=25" in other.argv
    assert (lab.nice, other.nice) == (0, suite.OTHER_NICE) and suite.OTHER_NICE > 0  # the lab's QEMU first


def test_options_reach_both_halves():
    lab, other = suite.plan(Path("/x/main"), python="py", k="deploy", m="kernel or lab", download=True)
    assert _argv(lab, "-m") == "(kernel or lab) and lab" and _argv(other, "-m") == "(kernel or lab) and not lab"
    assert _argv(lab, "-k") == _argv(other, "-k") == "deploy"
    (dl_lab, dl_other) = suite.plan(Path("/x/main"), python="py", download=True)
    assert (_argv(dl_lab, "-m"), _argv(dl_other, "-m")) == ("lab", "not lab")


def test_quick_is_one_process_without_kernel_build_or_lab():
    (only,) = suite.plan(Path("/x/main"), python="py", quick=True)
    assert _argv(only, "-m") == suite.QUICK and only.log is None


@pytest.mark.parametrize("rcs", list(itertools.product([0, 1, 2, 5], repeat=2)))
def test_combined_exit_code_over_every_pair(rcs):
    rc = suite.combined_rc(list(rcs))
    if rcs == (5, 5):
        assert rc == 5  # nothing ran at all: a failure, as CI counts it
    elif any(r not in (0, 5) for r in rcs):
        assert rc == next(r for r in rcs if r not in (0, 5))
    else:
        assert rc == 0  # one half ran and passed, the other had nothing selected


def test_both_halves_run_at_once_and_the_logged_one_is_shown_after(tmp_path, capfd):
    """Order of events, not time: the logged half has started before the live half is allowed to
    finish (the live one waits for its mark), and its output follows the live one's, whole."""
    mark = tmp_path / "lab-started"
    logged = (
        f"import pathlib,sys; print('lab line 1', flush=True); pathlib.Path({str(mark)!r}).touch();"
        "print('lab line 2'); sys.exit(1)"
    )
    live = (
        f"import pathlib,time\nfor _ in range(600):\n    if pathlib.Path({str(mark)!r}).exists(): break\n"
        "    time.sleep(0.1)\nprint('other saw lab start:', pathlib.Path(" + repr(str(mark)) + ").exists())"
    )
    halves = [
        suite.Half("lab", [sys.executable, "-c", logged], log=tmp_path / "lab.log"),
        suite.Half("other", [sys.executable, "-c", live]),
    ]
    said: list[str] = []
    out = io.StringIO()
    result = suite.run(halves, tmp_path, said.append, out=out)
    assert [(h.name, h.rc) for h in result.halves] == [("other", 0), ("lab", 1)]
    assert result.rc == 1
    assert "other saw lab start: True" in capfd.readouterr().out  # the live half, on the terminal
    assert out.getvalue() == "lab line 1\nlab line 2\n"
    assert (tmp_path / "lab.log").read_text() == "lab line 1\nlab line 2\n"  # kept
    assert any("output in" in m for m in said) and said[-1].endswith("output follows")
    assert "lab tests" in suite.describe(result) and "exit 1" in suite.describe(result)


def test_a_niced_half_runs_at_that_niceness(tmp_path, capfd):
    """The half beside the lab's runs niced (its builds yield to the lab's QEMU); the other does not."""
    show = "import os; print('nice', os.nice(0))"
    halves = [
        suite.Half("lab", [sys.executable, "-c", show], log=tmp_path / "lab.log"),
        suite.Half("other", [sys.executable, "-c", show], nice=3),
    ]
    out = io.StringIO()
    assert suite.run(halves, tmp_path, lambda m: None, out=out).rc == 0
    base = os.nice(0)
    assert f"nice {min(base + 3, 19)}" in capfd.readouterr().out
    assert out.getvalue() == f"nice {base}\n"
