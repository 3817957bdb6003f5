"""Headless Debian Chromium for the HTML tests: a fresh profile, nothing reaching the network."""

from __future__ import annotations

import shutil
import subprocess

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Debian chromium not installed (deps/apt.txt installs it: apt-get install chromium)")
    return found


def headless(profile, *args: str) -> str:
    """Run Chromium with `args` (e.g. --dump-dom URL, --screenshot=FILE URL); its stdout."""
    proc = subprocess.run(
        [browser(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
