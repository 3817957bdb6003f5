"""Errors that end a command with a one-line message and a distinct exit code."""

from __future__ import annotations


class PipelineError(Exception):
    """A user-facing failure: printed as one line, never as a traceback."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(PipelineError):
    """A configuration value of the wrong type or out of range (and the family of config errors)."""

    exit_code = 3


class ConfigSyntaxError(ConfigError):
    """A config file that is not valid YAML/JSON (pipeline/clihook.py uses the same code)."""

    exit_code = 31


class UnknownConfigKey(ConfigError):
    exit_code = 32


class SeriesError(PipelineError):
    """Malformed, empty or binary series input (and the family of series errors)."""

    exit_code = 4


class UnsafePatchPath(SeriesError):
    """A patch naming a path outside the tree (absolute, '..', .git/)."""

    exit_code = 41


class PatchTooLarge(SeriesError):
    exit_code = 42


class FetchError(PipelineError):
    """Remote unreachable or fetch failed (and the family of fetch errors)."""

    exit_code = 5


class UnknownRef(FetchError):
    exit_code = 51


class BuildSetupError(PipelineError):
    """The toolchain or headers are missing (not a build failure of the series)."""

    exit_code = 6


class HostError(PipelineError):
    """A host operation failed. `host` names the host it is about (rendered once, as the message's
    `host NAME: ` prefix), `reason` is the message without it: a line that names the host itself
    takes `without_host`, never the prefix parsed back out."""

    exit_code = 7

    def __init__(self, message: str, host: str = ""):
        super().__init__(f"host {host}: {message}" if host else message)
        self.host, self.reason = host, message


def without_host(e: PipelineError, host: str) -> str:
    """The words of `e` for a line that already names `host`."""
    return e.reason if isinstance(e, HostError) and e.host == host else e.message


class HostLocked(HostError):
    """Another run holds the host's lock and did not release it within lock_timeout_s."""

    exit_code = 71


class LabError(PipelineError):
    exit_code = 8


class ResultsError(PipelineError):
    """A run directory without a readable results.json: none there, not JSON, truncated, another schema."""

    exit_code = 9


class VerdictGate(PipelineError):
    """`--fail-on` (pv.fail_on): a kernel's verdict is one the caller asked to fail on (CI gating)."""

    exit_code = 10


class InternalError(PipelineError):
    """A bug of ours reached the command line: one line naming the saved traceback, never exit 0."""

    exit_code = 1


class Interrupted(PipelineError):
    exit_code = 130
