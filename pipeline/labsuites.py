"""The Debian suites a built-in lab can be made of, one Xen (toolstack) each, and the per-host
settings of a lab built from one.

The toolstack axis (DESIGN.md, "Two axes"): the bug needs libxl writing the PCI backend one device
per transaction, which began in Xen 4.15. One lab per suite isolates that variable: every image
boots the SAME dom0 kernel (the host suite's, bookworm's 6.1, whose headers the modules are built
against), only the root filesystem and Xen differ. Data only; no lab code (config.py validates
names against it, and lab/ imports config).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import KERNEL_LINES, HostConfig, Settings, dom0_kernel_line
from .errors import ConfigError

# The suite of the machine's own apt sources: the lab's dom0 kernel always comes from it.
HOST_SUITE = "bookworm"


@dataclass(frozen=True)
class Suite:
    name: str
    xen: str  # the Xen (and libxl) release the suite ships, as in its package names

    @property
    def hypervisor_package(self) -> str:
        return f"xen-hypervisor-{self.xen}-amd64"

    @property
    def utils_package(self) -> str:
        return f"xen-utils-{self.xen}"

    @property
    def foreign_kernel(self) -> bool:
        """The dom0 kernel is another suite's (HOST_SUITE): installed from its .deb, not from apt here."""
        return self.name != HOST_SUITE


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("bullseye", "4.14"),  # libxl writes all PCI devices in one transaction (up to 4.14)
        Suite("bookworm", "4.17"),  # one transaction per device (since 4.15, 0fdb48ffe7)
        Suite("trixie", "4.20"),
    )
}
DEFAULT_SUITE = HOST_SUITE


def suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ConfigError(f"unknown lab suite {name!r}; expected one of {', '.join(SUITES)}") from None


def suite_of(settings: Settings) -> Suite:
    """The suite of the lab these settings describe (`pv.lab.suite`, or a host's, derived by for_host)."""
    return suite(settings.lab.suite)


def host_suite(settings: Settings, config: HostConfig) -> Suite:
    """The suite of a lab host: its `lab_suite`, else `pv.lab.suite`."""
    return suite(config.lab_suite or settings.lab.suite)


# the folder of a suite's lab whose hosts boot extra dom0 kernels (`dom0_kernel`): its own image
# (the suite's plus every extra kernel the inventory asks for), so that the default image does not grow
KERNELS_SUFFIX = "-kernels"


def lab_dir(settings: Settings, s: Suite, extra_kernels: bool = False) -> str:
    """The folder of the lab built from `s`: `pv.lab.dir` for the default suite (today's lab keeps
    its folder and cache), else a sibling named by its Xen (`.cache/lab-xen4.14`); with
    `extra_kernels` (hosts with a `dom0_kernel`) that name and `-kernels` (`.cache/lab-kernels`)."""
    base = settings.lab.dir.rstrip("/").removesuffix(KERNELS_SUFFIX)
    if not (s.name == DEFAULT_SUITE or base.endswith(f"-xen{s.xen}")):  # else already derived: the same folder
        base = f"{base}-xen{s.xen}"
    return base + KERNELS_SUFFIX if extra_kernels else base


def for_host(settings: Settings, config: HostConfig) -> Settings:
    """The settings every lab function gets for the lab host `config`: its suite and its own folder
    (image, QEMU state, port, key) and the dom0 kernel it boots, the rest shared."""
    s = host_suite(settings, config)
    kernel = config.dom0_kernel
    d = lab_dir(settings, s, bool(kernel))
    if s.name == settings.lab.suite and d == settings.lab.dir and kernel == settings.lab.dom0_kernel:
        return settings
    lab = dataclasses.replace(settings.lab, suite=s.name, dir=d, dom0_kernel=kernel)
    return dataclasses.replace(settings, lab=lab)


# ---------------------------------------------------------------- extra dom0 kernels

# What a dom0 kernel of another Debian line needs from its own distribution besides its image:
# 7.2's linux-image pre-depends on linux-base >= 4.17 (sid's, arch all; bookworm has 4.9).
ALSO_FROM_DIST = {"sid": ("linux-base",)}


@dataclass(frozen=True)
class Dom0Kernel:
    """An extra dom0 kernel of a lab image (a host's `dom0_kernel`): Debian's linux-image-<release>
    of an imported kernel line, from the private apt distribution that has that line."""

    release: str  # 6.12.117+deb12-amd64
    line: str  # 6.12
    dist: str  # bookworm (its security suite), bullseye, sid

    @property
    def package(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def also(self) -> tuple[str, ...]:
        return ALSO_FROM_DIST.get(self.dist, ())


def dom0_kernel(release: str) -> Dom0Kernel:
    """The extra dom0 kernel `release` (ConfigError: not a release of an imported Debian line)."""
    line = dom0_kernel_line(release)
    return Dom0Kernel(release, line, KERNEL_LINES[line])


def image_kernels(settings: Settings) -> list[str]:
    """The extra dom0 kernels the inventory asks of the image in `settings.lab.dir`: those of the lab
    hosts of that folder (and the one these settings boot), in release order; none for a default folder."""
    want = {settings.lab.dom0_kernel} if settings.lab.dom0_kernel else set()
    for h in settings.hosts.values():
        if h.lab and h.dom0_kernel and lab_dir(settings, host_suite(settings, h), True) == settings.lab.dir:
            want.add(h.dom0_kernel)
    return sorted(want)


def for_name(settings: Settings, name: str) -> Settings:
    """`invoke lab.* --host NAME`: the settings of inventory lab host NAME (one-line error otherwise)."""
    config = settings.hosts.get(name)
    if config is None and name == "lab":
        return settings  # an inventory without the entry: the built-in lab as pv.lab describes it
    if config is None or not config.lab:
        labs = [n for n, h in settings.hosts.items() if h.lab]
        raise ConfigError(f"--host {name!r}: not a lab host of the inventory; have {', '.join(labs) or 'none'}")
    return for_host(settings, config)
