"""Errors that end a command with a one-line message and a distinct exit code."""

from __future__ import annotations


class PipelineError(Exception):
    """A user-facing failure: printed as one line, never as a traceback."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(PipelineError):
    exit_code = 3


class SeriesError(PipelineError):
    exit_code = 4


class FetchError(PipelineError):
    exit_code = 5


class BuildSetupError(PipelineError):
    """The toolchain or headers are missing (not a build failure of the series)."""

    exit_code = 6


class HostError(PipelineError):
    exit_code = 7


class LabError(PipelineError):
    exit_code = 8


class RunIncomplete(PipelineError):
    """Some kernel did not reach a defined status."""

    exit_code = 1


class Interrupted(PipelineError):
    exit_code = 130
