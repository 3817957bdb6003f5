"""The last line of defence: values of secret variables never land in an artifact or leave the machine.

Secret variables: PATCHWORK_TOKEN, GITLAB_TOKEN, every CI_*TOKEN* (CI_JOB_TOKEN,
CI_TRIGGER_TOKEN, ...) and the names in `pv.secret_env`. Their values (read from
the environment when redacting, so a token set later counts too) are replaced
by `[redacted:NAME]` in everything `results.atomic_write_text` writes
(results.json, summaries, JUnit, KCIDB), in the files of a finished run
directory (build logs, run.log, mails) and in what post.py sends.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

NAMES = ["PATCHWORK_TOKEN", "GITLAB_TOKEN"]
PATTERNS = ["CI_*TOKEN*"]
MIN_LEN = 6  # shorter values would redact ordinary words; no real token is that short

_extra: set[str] = set()


def register(names: list[str]) -> None:
    """Names of `pv.secret_env` (called when the settings are loaded)."""
    _extra.update(n for n in names if n)


def secrets(env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, value) of every secret variable set, longest value first (a value inside another)."""
    env = os.environ if env is None else env
    found = []
    for name, value in env.items():
        if len(value) < MIN_LEN:
            continue
        if name in NAMES or name in _extra or any(fnmatch.fnmatchcase(name, p) for p in PATTERNS):
            found.append((name, value))
    return sorted(found, key=lambda nv: -len(nv[1]))


def redact(text: str, pairs: list[tuple[str, str]] | None = None) -> str:
    for name, value in secrets() if pairs is None else pairs:
        if value in text:
            text = text.replace(value, f"[redacted:{name}]")
    return text


def redact_bytes(data: bytes, pairs: list[tuple[str, str]] | None = None) -> bytes:
    for name, value in secrets() if pairs is None else pairs:
        v = value.encode()
        if v in data:
            data = data.replace(v, f"[redacted:{name}]".encode())
    return data


def redact_tree(top: Path) -> list[Path]:
    """Redact every regular file under `top` in place (never through a symlink); returns those changed."""
    pairs = secrets()
    changed: list[Path] = []
    if not pairs:
        return changed
    for root, _, files in os.walk(top):
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            clean = redact_bytes(data, pairs)
            if clean != data:
                tmp = path.with_name(f".{name}.redact")
                tmp.write_bytes(clean)
                os.replace(tmp, path)
                changed.append(path)
    return changed
