"""What the lab image is made of: the Debian suite, packages and units, the apt sources taken from
the host, the templates under templates/lab/, and the input hash over all of them (a changed hash
means a rebuild: see image.build)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from typing import Any

from .. import TEMPLATES, util
from ..aptfetch import DISTS, AptDir, mirrors
from ..aptsources import SUITE, AptEntry, host_apt_entries, resolve_mirror
from ..config import Settings
from ..errors import FetchError, LabError
from ..labsuites import Suite, suite_of

# Bump when the build recipe changes in a way the templates and package list do not show.
RECIPE_VERSION = 1
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


def debootstrap_packages(s: Suite) -> list[str]:
    """DEBOOTSTRAP_PACKAGES with the suite's Xen; another suite than the host's also gets
    linux-base, which the host suite's kernel .deb depends on (minbase lacks it)."""
    xen = {"xen-utils-4.17": s.utils_package, "xen-hypervisor-4.17-amd64": s.hypervisor_package}
    pkgs = [xen.get(p, p) for p in DEBOOTSTRAP_PACKAGES]
    return [*pkgs, "linux-base"] if s.foreign_kernel else pkgs


def versioned_packages(s: Suite) -> list[str]:
    xen = {"xen-utils-4.17": s.utils_package, "xen-hypervisor-4.17-amd64": s.hypervisor_package}
    return [xen.get(p, p) for p in VERSIONED_PACKAGES]


# from the host suite whatever the lab's suite: the dom0 kernel (the variable held fixed) and the
# guest's busybox; the rest is the lab suite's
HOST_VERSIONED = (KERNEL_PACKAGE, "busybox-static")

# Xen: smap=0 avoids the dom0 #PF crash loop under TCG's -cpu max (lab README, traps).


def render(template: str, **ctx: Any) -> str:
    return util.render("lab", template, **ctx)


def chroot_apt_entries(settings: Settings, entries: list[AptEntry]) -> list[AptEntry]:
    """The dom0's apt sources: the host's bookworm suites; an explicit mirror replaces the main archive.
    A lab of another suite: that suite's (main and security, as the project's private apt has them)
    on the host's mirrors."""
    s = suite_of(settings)
    if s.name != SUITE:
        main, security, keyring = mirrors(settings)
        dist = DISTS[s.name]
        return [
            AptEntry(main, list(dist.suites), ["main"], keyring),
            AptEntry(security, list(dist.security), ["main"], keyring),
        ]
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


def suite_candidates(settings: Settings) -> dict[str, str]:
    """The candidate version of every package the image's content depends on: the host's apt for the
    host suite, the project's private apt state (aptfetch) for another suite; the dom0 kernel and the
    guest's busybox always from the host's."""
    s = suite_of(settings)
    pkgs = versioned_packages(s)
    if s.name == SUITE:
        return apt_candidates(pkgs)

    apt = AptDir(settings, s.name)
    out = apt_candidates([p for p in pkgs if p in HOST_VERSIONED])
    for p in pkgs:
        if p not in HOST_VERSIONED:
            try:
                out[p] = apt.candidate(p).version
            except FetchError as e:
                raise LabError(f"lab suite {s.name}: {e.message}") from None
    return {p: out[p] for p in pkgs}


def collect_inputs(settings: Settings, key_pub: str) -> dict[str, Any]:
    entries = host_apt_entries()
    s = suite_of(settings)
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": s.name,
        "debootstrap_packages": debootstrap_packages(s),
        "kernel_package": KERNEL_PACKAGE,
        "units": {"enabled": ENABLED_UNITS, "masked": MASKED_UNITS},
        "templates": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in recipe_files().items()},
        "mirror": resolve_mirror(settings, entries),
        "apt_sources": [dataclasses.asdict(e) for e in chroot_apt_entries(settings, entries)],
        "candidates": suite_candidates(settings),
        "image_size": IMAGE_SIZE,
        "authorized_key": key_pub.strip(),
    }
