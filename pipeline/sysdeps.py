"""Debian packages of this machine: the version dpkg has installed. Nothing here installs (./pv does,
as root); a stage that misses a package names the apt-get line in its error."""

from __future__ import annotations

import subprocess


def dpkg_version(package: str) -> str | None:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True, check=False
    )
    if proc.returncode or not proc.stdout.startswith("install ok installed"):
        return None
    return proc.stdout.split("\t", 1)[1]
