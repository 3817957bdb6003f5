"""The host's own apt sources (its Debian suite's entries): the mirror the labs and the project's
private apt state (aptfetch) fetch from. Read only; nothing here changes the system's apt."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .errors import LabError
from .labsuites import HOST_SUITE

# the suite of the host's apt sources: the mirror and the dom0 kernel come from it, whatever a lab's suite
SUITE = HOST_SUITE


@dataclass
class AptEntry:
    uri: str
    suites: list[str]
    components: list[str] = field(default_factory=lambda: ["main"])
    signed_by: str = ""


def parse_apt_sources(files: dict[str, str]) -> list[AptEntry]:
    """Debian `deb` entries of the given apt source files (deb822 `.sources` and one-line `.list`)."""
    entries: list[AptEntry] = []
    for name, text in sorted(files.items()):
        if name.endswith(".sources"):
            for block in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in block.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    entries.append(
                        AptEntry(
                            uri,
                            fields.get("suites", "").split(),
                            fields.get("components", "main").split(),
                            fields.get("signed-by", ""),
                        )
                    )
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                parts = line.split()
                if len(parts) < 3 or parts[0] != "deb":
                    continue
                opts = ""
                if parts[1].startswith("["):
                    end = next(i for i, p in enumerate(parts) if p.endswith("]"))
                    opts, parts = " ".join(parts[1 : end + 1]), [parts[0], *parts[end + 1 :]]
                m = re.search(r"signed-by=(\S+?)\]?(\s|$)", opts)
                entries.append(AptEntry(parts[1], [parts[2]], parts[3:] or ["main"], m.group(1) if m else ""))
    # only Debian's own suites of the release the lab uses
    return [e for e in entries if any(s == SUITE or s.startswith(SUITE + "-") for s in e.suites)]


def host_apt_entries() -> list[AptEntry]:
    files: dict[str, str] = {}
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.is_file() and (p.name.endswith(".list") or p.name.endswith(".sources")):
            files[str(p)] = p.read_text(encoding="utf-8", errors="replace")
    return parse_apt_sources(files)


def resolve_mirror(settings: Settings, entries: list[AptEntry] | None = None) -> str:
    if settings.lab.mirror != "auto":
        return settings.lab.mirror
    for e in entries if entries is not None else host_apt_entries():
        if SUITE in e.suites:
            return e.uri
    raise LabError(f"lab.mirror is auto but the host's apt configuration has no `{SUITE}` suite; set pv.lab.mirror")
