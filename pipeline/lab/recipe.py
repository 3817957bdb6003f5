"""What the lab image is made of: the Debian suite, packages and units, the apt sources taken from
the host, the templates under templates/lab/, and the input hash over all of them (a changed hash
means a rebuild: see image.build)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import TEMPLATES, util
from ..config import Settings
from ..errors import LabError

# Bump when the build recipe changes in a way the templates and package list do not show.
RECIPE_VERSION = 1
SUITE = "bookworm"
HOSTNAME = "xen-dom0"
IMAGE_SIZE = "3G"
LAB_TEMPLATES = TEMPLATES / "lab"

# debootstrap --include; the kernel comes afterwards from the host's suites (version skew)
DEBOOTSTRAP_PACKAGES = [
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "openssh-server",
    "pciutils",
    "procps",
    "less",
    "busybox",
    "xz-utils",
    "xen-utils-4.17",
    "xenstore-utils",
    "xen-hypervisor-4.17-amd64",
    "initramfs-tools",
    "ca-certificates",
]
KERNEL_PACKAGE = "linux-image-amd64"
# Boot time under TCG is precious: no udev-settle networking, timers, VT gettys or e2scrub.
ENABLED_UNITS = ["systemd-networkd.service"]
MASKED_UNITS = [
    "systemd-networkd-wait-online.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "getty-static.service",
    "getty@tty1.service",
    "systemd-binfmt.service",
]
# Host-side apt candidates that decide what the image contains: part of the input hash.
VERSIONED_PACKAGES = [
    KERNEL_PACKAGE,
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "openssh-server",
    "systemd",
    "busybox-static",  # the guest's busybox comes from the host
]

# Xen: smap=0 avoids the dom0 #PF crash loop under TCG's -cpu max (lab README, traps).


@dataclass
class AptEntry:
    uri: str
    suites: list[str]
    components: list[str] = field(default_factory=lambda: ["main"])
    signed_by: str = ""


def render(template: str, **ctx: Any) -> str:
    return util.render("lab", template, **ctx)


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


def chroot_apt_entries(settings: Settings, entries: list[AptEntry]) -> list[AptEntry]:
    """The dom0's apt sources: the host's bookworm suites; an explicit mirror replaces the main archive."""
    out = []
    for e in entries:
        e = dataclasses.replace(e, suites=[s for s in e.suites if s == SUITE or s.startswith(SUITE + "-")])
        if settings.lab.mirror != "auto" and not any(s.endswith("-security") for s in e.suites):
            e = dataclasses.replace(e, uri=settings.lab.mirror)
        out.append(e)
    return out


def apt_candidates(packages: Sequence[str]) -> dict[str, str]:
    """Host apt's candidate version per package ("" when unknown)."""
    out = subprocess.run(
        ["apt-cache", "policy", *packages],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    ).stdout
    result = {p: "" for p in packages}
    cur = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            cur = line[:-1]
        elif cur and line.strip().startswith("Candidate:"):
            v = line.split(":", 1)[1].strip()
            result[cur] = "" if v == "(none)" else v
    return result


def recipe_files() -> dict[str, str]:
    """Every template of the lab, by relative path, with its content."""
    return {
        str(p.relative_to(LAB_TEMPLATES)): p.read_text(encoding="utf-8")
        for p in sorted(LAB_TEMPLATES.rglob("*"))
        if p.is_file()
    }


def input_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def collect_inputs(settings: Settings, key_pub: str) -> dict[str, Any]:
    entries = host_apt_entries()
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": SUITE,
        "debootstrap_packages": DEBOOTSTRAP_PACKAGES,
        "kernel_package": KERNEL_PACKAGE,
        "units": {"enabled": ENABLED_UNITS, "masked": MASKED_UNITS},
        "templates": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in recipe_files().items()},
        "mirror": resolve_mirror(settings, entries),
        "apt_sources": [dataclasses.asdict(e) for e in chroot_apt_entries(settings, entries)],
        "candidates": apt_candidates(VERSIONED_PACKAGES),
        "image_size": IMAGE_SIZE,
        "authorized_key": key_pub.strip(),
    }
