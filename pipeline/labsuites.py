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

from .config import HostConfig, Settings
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


def lab_dir(settings: Settings, s: Suite) -> str:
    """The folder of the lab built from `s`: `pv.lab.dir` for the default suite (today's lab keeps
    its folder and cache), else a sibling named by its Xen (`.cache/lab-xen4.14`)."""
    base = settings.lab.dir.rstrip("/")
    if s.name == DEFAULT_SUITE or base.endswith(f"-xen{s.xen}"):  # already derived: the same folder
        return base
    return f"{base}-xen{s.xen}"


def for_host(settings: Settings, config: HostConfig) -> Settings:
    """The settings every lab function gets for the lab host `config`: its suite and its own folder
    (image, QEMU state, port, key), the rest shared."""
    s = host_suite(settings, config)
    if s.name == settings.lab.suite and lab_dir(settings, s) == settings.lab.dir:
        return settings
    return dataclasses.replace(settings, lab=dataclasses.replace(settings.lab, suite=s.name, dir=lab_dir(settings, s)))


def for_name(settings: Settings, name: str) -> Settings:
    """`invoke lab.* --host NAME`: the settings of inventory lab host NAME (one-line error otherwise)."""
    config = settings.hosts.get(name)
    if config is None and name == "lab":
        return settings  # an inventory without the entry: the built-in lab as pv.lab describes it
    if config is None or not config.lab:
        labs = [n for n, h in settings.hosts.items() if h.lab]
        raise ConfigError(f"--host {name!r}: not a lab host of the inventory; have {', '.join(labs) or 'none'}")
    return for_host(settings, config)
