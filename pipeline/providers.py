"""What kind of host an inventory entry is, and what only that kind knows: its host provider.

Every host has a provider, chosen from its config's `kind` (`provider_for`): `kind: lab` (or
`lab: true`) is the built-in QEMU lab (`LabProvider`), `kind: ssh`, the default, a plain SSH host
(`SshProvider`). The runner and
hosts.check ask the provider (is it running, the config to connect with, can it be restarted,
which test guest it gets) instead of checking the flag; tuxmake's Runtime subclasses are the
model. A new kind of host is one subclass, its entry in `KINDS` and its name in config.py's
`HOST_KINDS`. This module sits above
lab/, guest and provision (it uses them; they never ask it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from . import lab
from .config import HostConfig, Settings
from .errors import HostError, PipelineError
from .guest import GuestImage
from .host import Host, resolve
from .labsuites import for_host
from .util import Progress
from .util import noprogress as _noprogress

if TYPE_CHECKING:
    from .provision import RunGuests


class HostProvider:
    """A plain host reached over SSH as configured; the base of every kind."""

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""  # after the host's name in hosts.check ("" for a plain host)
    # where the host's own test guest comes from ("": it has none, the run makes it: provision.py)
    own_guest: ClassVar[str] = ""
    # the pipeline can start the host again when it stops answering (ensure_running, restart)
    restartable: ClassVar[bool] = False

    def __init__(self, settings: Settings | None, config: HostConfig):
        # settings None: a caller with a bare HostConfig (tests' stand-ins); only the lab needs them
        self.settings, self.config = settings, config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def machine(self) -> str:
        """What `stop` powers off: inventory entries with the same machine are one host."""
        return f"{self.kind}:{self.name}"

    @property
    def boot(self) -> str:
        """What the machine is booted as for this host beyond its machine ("": one way only): inventory
        entries of one machine and one boot run without a reboot between them (runner.host_order)."""
        return ""

    def start(self, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> None:
        """Begin starting the host, without waiting for it (a run's builds go on meanwhile; its
        host stages then `ensure_running`). Nothing for a host somebody else runs."""

    def ensure_running(self, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> HostConfig:
        """The config to connect with, once the host is up (started here if the pipeline starts it)."""
        return self.config

    def running_config(self) -> HostConfig | None:
        """The config to connect with when the host can be asked now without starting anything
        (hosts.check reads only); None: it is not running, `not_running` says what to do."""
        return self.config

    def kernel_release(self) -> str:
        """The kernel release the host runs, as known without connecting ("": only the host can tell)."""
        return self.config.kernel_release

    @property
    def not_running(self) -> str:
        return f"host {self.name} is not running"

    def restart(self, why: str, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> HostConfig:
        """Start the host again after it stopped answering (`why`; callers check `restartable`);
        the config to connect with."""
        raise HostError(f"not answering ({why}), and the pipeline cannot restart it", host=self.name)

    def stop(self, progress: Progress = _noprogress) -> None:
        """After a run that asked for it (`--lab-down`): power the host off if the pipeline started it."""

    def run_guest(self, guests: RunGuests, host: Host) -> GuestImage:
        """The test guest a run uses on the host: the one the run makes for it (provision.py),
        uploaded now if need be. HostError/BuildSetupError when it cannot be made."""
        g = guests.make(host)
        return GuestImage(kernel=g.kernel, ramdisk=g.initrd)

    def guest_image(self) -> GuestImage:
        """The host's own test guest (when `own_guest` says it has one)."""
        raise HostError("no test guest: a host other than the lab gets it from provision.provision()", host=self.name)

    def describe(self) -> str:
        """How the pipeline reaches the host, for `invoke config.show`."""
        try:
            *jumps, t = resolve(self.config)
        except PipelineError as e:
            return f"({e.message})"
        via = f" via {','.join(j.alias for j in jumps)}" if jumps else ""
        return f"{t.user}@{t.hostname}:{t.port}{via}"


class SshProvider(HostProvider):
    """A host somebody else runs: the pipeline connects as configured and never starts or stops it."""

    kind = "ssh"


class LabProvider(HostProvider):
    """The built-in Xen lab under QEMU (pipeline/lab): built and booted by the pipeline, its SSH
    address and keys filled in from the lab's state, restarted when QEMU died."""

    kind = "lab"
    label = "built-in lab"
    own_guest = "built into the lab image"
    restartable = True

    @property
    def machine(self) -> str:
        # one lab per suite: inventory names of the same suite are one QEMU (today's `lab` stays "lab")
        d = self.lab_settings().lab.dir if self.settings is not None else ""
        return "lab" if self.settings is None or d == self.settings.lab.dir else f"lab:{d}"

    @property
    def boot(self) -> str:
        # the dom0 kernel it boots: hosts of one lab folder with other kernels are one QEMU, rebooted
        return self.lab_settings().lab.dom0_kernel if self.settings is not None else ""

    def _settings(self) -> Settings:
        if self.settings is None:
            raise HostError("the built-in lab needs the settings", host=self.name)
        return self.lab_settings()

    def lab_settings(self) -> Settings:
        """The settings of this host's own lab (its suite, its folder): what every lab function gets."""
        assert self.settings is not None
        return for_host(self.settings, self.config)

    def _named(self, settings: Settings) -> HostConfig:
        return lab.host_config(settings, self.name)  # under this inventory name, not `lab`

    def start(self, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> None:
        lab.start(self._settings(), progress, steps, self.name)  # built if need be; QEMU started, dom0 not waited for

    def ensure_running(self, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> HostConfig:
        s = self._settings()
        lab.ensure_up(s, progress, steps, self.name)
        return self._named(s)

    def running_config(self) -> HostConfig | None:
        if not lab.status(self._settings(), probe=False).running:
            return None
        return self._named(self._settings())

    @property
    def not_running(self) -> str:
        if self.machine == "lab":
            return "the built-in lab is not running (`invoke lab.up`)"
        return f"the built-in lab {self.name} is not running (`invoke lab.up --host {self.name}`)"

    def kernel_release(self) -> str:
        # the dom0 kernel the last lab build installed (its manifest): no boot needed
        if self.settings is None:
            return super().kernel_release()
        return lab.kernel_release(self.lab_settings()) or ""

    def restart(self, why: str, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> HostConfig:
        progress(f"{self.name}: not answering ({why}); restarting the lab")
        lab.down(self._settings(), progress)
        lab.ensure_up(self._settings(), progress, steps, self.name)
        return self._named(self._settings())

    def stop(self, progress: Progress = _noprogress) -> None:
        lab.down(self._settings(), progress)

    def run_guest(self, guests: RunGuests, host: Host) -> GuestImage:
        # `guest_kernel: host`: the image's own guest (the dom0 kernel and its xen-pcifront)
        return super().run_guest(guests, host) if guests.tiny else self.guest_image()

    def guest_image(self) -> GuestImage:
        if self.settings is None:
            return super().guest_image()
        files = lab.guest_files(self.lab_settings())
        return GuestImage(kernel=files.kernel, ramdisk=files.initrd)

    def describe(self) -> str:
        return "built-in QEMU lab"


# the kinds of host, by the name a config selects them with
KINDS: dict[str, type[HostProvider]] = {p.kind: p for p in (SshProvider, LabProvider)}


def kind_of(config: HostConfig) -> str:
    """The kind an inventory entry asks for: its `kind` (`lab: true` is `kind: lab`; config.py
    fills it in and rejects a kind not in KINDS)."""
    return config.kind


def provider_for(settings: Settings | None, config: HostConfig) -> HostProvider:
    return KINDS[kind_of(config)](settings, config)


def default_guest(host: Host, settings: Settings | None) -> GuestImage:
    """The guest files the host carries itself (the lab's, built into its image); HostError for a
    host that has none (it gets its guest from the run: `run_guest`)."""
    return provider_for(settings, host.config).guest_image()


def run_guest(guests: RunGuests, host: Host) -> GuestImage:
    """The test guest a run uses on `host` (connected, its config as the provider yielded it)."""
    return provider_for(guests.settings, host.config).run_guest(guests, host)


def builtin_lab(settings: Settings) -> LabProvider:
    """The built-in lab's provider (the inventory's entry for it, else the lab as `lab.host_config`
    names it): what headers `auto` and the 6.1 source import ask for the lab's dom0 release."""
    name, config = next(((n, h) for n, h in settings.hosts.items() if kind_of(h) == LabProvider.kind), ("lab", None))
    return LabProvider(settings, config or HostConfig(name=name, lab=True))


def of_host(settings: Settings, name: str) -> HostProvider:
    """The provider of inventory host `name` (KeyError: not in the inventory)."""
    return provider_for(settings, settings.hosts[name])


def boot_order(providers: list[HostProvider]) -> list[HostProvider]:
    """The hosts in the order a run visits them: each machine's hosts together, and within a machine
    those of one boot (the lab's dom0 kernel) together, each in first-seen order, so that a machine is
    booted again only when the next host needs another kernel."""
    machine_rank: dict[str, int] = {}
    boot_rank: dict[tuple[str, str], int] = {}
    for p in providers:
        machine_rank.setdefault(p.machine, len(machine_rank))
        boot_rank.setdefault((p.machine, p.boot), len(boot_rank))
    return sorted(providers, key=lambda p: (machine_rank[p.machine], boot_rank[(p.machine, p.boot)]))


def machines(providers: list[HostProvider]) -> list[HostProvider]:
    """One provider per machine, in first-seen order: two inventory names for the lab stop it once."""
    seen: dict[str, HostProvider] = {}
    for p in providers:
        seen.setdefault(p.machine, p)
    return list(seen.values())
