"""Debian packages: installed automatically when running as root, otherwise named in the error."""

from __future__ import annotations

import os
import shutil
import subprocess

from .errors import BuildSetupError


def dpkg_version(package: str) -> str | None:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True, check=False
    )
    if proc.returncode or not proc.stdout.startswith("install ok installed"):
        return None
    return proc.stdout.split("\t", 1)[1]


def apt_install(packages: list[str]) -> None:
    """Install packages (name or name=version) or raise naming the exact apt-get line."""
    line = "apt-get install -y " + " ".join(packages)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BuildSetupError(f"missing Debian packages; as root run: {line}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        # a stale package list is the usual cause on a fresh machine
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise BuildSetupError(f"`{line}` failed: {last[0]}")
