"""Project-private apt: Debian packages of other suites downloaded into the cache, never installed.

One apt state per Debian distribution under `<cache>/apt-<dist>/` (its own
sources.list, lists, archive cache and an empty dpkg status), so `apt-get`
resolves and verifies against that distribution's signed Release files without
reading or changing the system's sources or package database. The mirror is
the host's (its apt configuration's bookworm entries, as the lab recipe picks
its mirror); the system's apt.conf.d still applies (proxies, timeouts).

Nothing here installs: packages are downloaded (`apt-get download`) and
extracted by the caller with `dpkg-deb`. Lists are fetched only when missing
or when a refresh is asked for, so a warm cache needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .aptsources import host_apt_entries, resolve_mirror
from .config import Settings
from .errors import FetchError
from .util import Progress, noprogress

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_SECURITY = "http://security.debian.org/debian-security"


@dataclass(frozen=True)
class Dist:
    name: str  # bullseye, bookworm, sid
    suites: tuple[str, ...]  # suites of the main archive
    security: tuple[str, ...] = ()  # suites of the security archive


DISTS = {
    "bullseye": Dist("bullseye", ("bullseye",), ("bullseye-security",)),
    "bookworm": Dist("bookworm", ("bookworm", "bookworm-updates"), ("bookworm-security",)),
    "bookworm-backports": Dist("bookworm-backports", ("bookworm-backports",)),  # the lab's QEMU 10
    "trixie": Dist("trixie", ("trixie", "trixie-updates"), ("trixie-security",)),  # the Xen 4.20 lab
    "sid": Dist("sid", ("sid",)),
}


def mirrors(settings: Settings) -> tuple[str, str, str]:
    """(main archive, security archive, keyring) from the host's apt configuration, as the lab picks them."""
    entries = host_apt_entries()
    main = resolve_mirror(settings, entries).rstrip("/")
    security = next((e.uri for e in entries if any(s.endswith("-security") for s in e.suites)), DEFAULT_SECURITY)
    keyring = next((e.signed_by for e in entries if e.signed_by.startswith("/")), KEYRING)
    return main, security.rstrip("/"), keyring


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    size: int  # bytes of the .deb


class AptDir:
    """The private apt state of one distribution."""

    def __init__(self, settings: Settings, dist: str):
        if dist not in DISTS:
            raise FetchError(f"unknown Debian distribution {dist!r} (known: {', '.join(DISTS)})")
        self.settings = settings
        self.dist = DISTS[dist]
        self.root = settings.path(settings.cache_dir) / f"apt-{dist}"
        self.archives = self.root / "archives"

    # ---------------------------------------------------------------- config

    def sources_text(self) -> str:
        main, security, keyring = mirrors(self.settings)
        lines = [f"deb [signed-by={keyring}] {main} {s} main" for s in self.dist.suites]
        lines += [f"deb [signed-by={keyring}] {security} {s} main" for s in self.dist.security]
        return "\n".join(lines) + "\n"

    def _options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::SourceList": r / "sources.list",
            "Dir::Etc::SourceParts": r / "sources.list.d",
            "Dir::Etc::Preferences": r / "preferences",
            "Dir::Etc::PreferencesParts": r / "preferences.d",
            "Dir::State": r / "state",
            "Dir::State::Lists": r / "lists",
            "Dir::State::status": r / "status",
            "Dir::Cache": r / "cache",
            "Dir::Cache::Archives": self.archives,
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
            # downloads land in our own cache; the _apt user need not read it
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else os.environ.get("USER", ""),
        }
        out: list[str] = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def _prepare(self) -> None:
        for d in ("sources.list.d", "preferences.d", "state", "lists/partial", "cache", "archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        status = self.root / "status"
        if not status.exists():
            status.write_text("")
        text = self.sources_text()
        src = self.root / "sources.list"
        # written only when it changes: a warm cache is left untouched
        if not src.exists() or src.read_text() != text:
            src.write_text(text)
            shutil.rmtree(self.root / "lists", ignore_errors=True)
            (self.root / "lists/partial").mkdir(parents=True)

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run(
            [tool, *self._options(), *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
        if proc.returncode:
            err = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.startswith(("E:", "W:"))]
            raise FetchError(f"{tool} {args[0]} ({self.root.name}) failed: {(err or [proc.stderr.strip()])[-1][-300:]}")
        return proc.stdout

    def has_lists(self) -> bool:
        lists = self.root / "lists"
        return lists.is_dir() and any("_Packages" in p.name for p in lists.iterdir())  # maybe compressed

    def update(self, progress: Progress = print) -> None:
        self._prepare()
        progress(f"apt-{self.dist.name}: fetching package lists ({' '.join(self.dist.suites + self.dist.security)})")
        self._run("apt-get", "update")

    def ensure_lists(self, refresh: bool = False, progress: Progress = print) -> None:
        self._prepare()
        if refresh or not self.has_lists():
            self.update(progress)

    # ---------------------------------------------------------------- queries

    def versions(self, package: str) -> list[Package]:
        """Every version of a package in the lists, newest first (empty when unknown)."""
        self.ensure_lists(progress=noprogress)
        proc = subprocess.run(
            ["apt-cache", *self._options(), "show", package],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        pkgs = []
        for block in proc.stdout.split("\n\n"):
            fields = dict(re.findall(r"^([\w-]+): (.*)$", block, re.M))
            if fields.get("Package") == package and "Version" in fields:
                pkgs.append(Package(package, fields["Version"], int(fields.get("Size", 0))))
        return pkgs

    def candidate(self, package: str) -> Package:
        pkgs = self.versions(package)
        if not pkgs:
            raise FetchError(f"{package}: not in {' '.join(self.dist.suites + self.dist.security)} ({self.root})")
        return pkgs[0]  # apt-cache show lists the candidate first

    def find(self, package: str, version: str) -> Package:
        for p in self.versions(package):
            if p.version == version:
                return p
        raise FetchError(f"{package} {version}: not in the {self.dist.name} lists ({self.root}); it left the archive")

    def depends_of(self, package: str, version: str) -> str:
        """The Depends field of one version of a package, from the lists."""
        proc = subprocess.run(
            ["apt-cache", *self._options(), "show", f"{package}={version}"],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        m = re.search(r"^Depends: (.*)$", proc.stdout, re.M)
        return m.group(1) if m else ""

    # ---------------------------------------------------------------- download

    def cached(self, package: str, version: str) -> Path | None:
        hits = sorted(self.archives.glob(f"{package}_{urllib.parse.quote(version, safe='~+.-')}_*.deb"))
        return hits[0] if hits else None

    def download(self, package: str, version: str | None = None, progress: Progress = print) -> Path:
        """The .deb of package (at version, else the candidate) in the archive cache; downloaded when missing."""
        if version:
            hit = self.cached(package, version)
            if hit:
                return hit
            pkg = self.find(package, version)
        else:
            pkg = self.candidate(package)
            hit = self.cached(package, pkg.version)
            if hit:
                return hit
        progress(f"apt-{self.dist.name}: downloading {package} {pkg.version} ({pkg.size / 2**20:.0f} MiB)")
        partial = self.archives / "partial"
        partial.mkdir(parents=True, exist_ok=True)
        # apt-get download writes into the working directory and checks the Packages hash;
        # moved into the cache only once complete, so a cut download is never taken for a cached one
        before = set(partial.glob("*.deb"))
        self._run("apt-get", "download", f"{package}={pkg.version}", cwd=partial)
        new = [p for p in partial.glob("*.deb") if p not in before and p.name.startswith(f"{package}_")]
        if not new:
            raise FetchError(f"apt-get download {package}={pkg.version}: no .deb written")
        dest = self.archives / new[0].name
        new[0].rename(dest)
        return dest


def extract(deb: Path, dest: Path) -> None:
    """Unpack a .deb's files (not its scripts) under dest."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise FetchError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()[-300:]}")


def depends(deb: Path) -> str:
    proc = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()
