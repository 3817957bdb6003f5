"""Ctrl-C held back over host steps that must not be cut in half (pipeline.interrupt)."""

from __future__ import annotations

import os
import signal

import pytest

from pipeline import interrupt


@pytest.fixture(autouse=True)
def _default_sigint():
    """Python's own Ctrl-C handler for each test, as in a terminal: a pytest started in the
    background by a shell (`cmd &`) inherits SIGINT ignored, and Python then leaves it so."""
    was = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, was)


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread before os.kill returns


def test_ctrl_c_inside_a_deferred_block_is_raised_when_the_block_ends():
    said, done = [], []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.deferred_sigint(said.append):
            _ctrl_c()
            _ctrl_c()  # a second Ctrl-C does not cut the cleanup short either
            done.append("cleanup finished")
    assert done == ["cleanup finished"]
    assert said == ["Ctrl-C: finishing the host step in progress, then stopping"]  # said once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_blocks_defer_to_the_outermost():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.deferred_sigint(lambda m: None):
            with interrupt.deferred_sigint(lambda m: None):
                _ctrl_c()
                steps.append("inner")
            steps.append("outer")
    assert steps == ["inner", "outer"]


def test_a_block_without_ctrl_c_changes_nothing():
    with interrupt.deferred_sigint(lambda m: None):
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_watch_remembers_a_ctrl_c_that_a_cleanup_error_replaced():
    with interrupt.watch_sigint():
        assert not interrupt.requested()
        with pytest.raises(RuntimeError):
            try:
                _ctrl_c()
            finally:
                raise RuntimeError("restore failed")  # hides the KeyboardInterrupt
        assert interrupt.requested()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_after_the_first_ctrl_c_more_only_say_that_the_run_is_stopping(capsys):
    cleaned = []
    with interrupt.watch_sigint():
        with pytest.raises(KeyboardInterrupt):
            try:
                _ctrl_c()
            finally:
                _ctrl_c()  # during cleanup: must not raise again
                cleaned.append("host put back")
    assert cleaned == ["host put back"]
    assert "already stopping, putting the host back first" in capsys.readouterr().err


def test_the_first_ctrl_c_outside_a_host_step_is_acknowledged_at_once(capsys):
    with interrupt.watch_sigint():
        with pytest.raises(KeyboardInterrupt):
            _ctrl_c()
    assert capsys.readouterr().err == "Ctrl-C: stopping, putting back what the run changed first\n"
