"""What kind of host an inventory entry is, and what only that kind knows: its host provider.

Every host has a provider, chosen from its config (`provider_for`): `lab: true` is the built-in
QEMU lab (`LabProvider`), any other entry a plain SSH host (`SshProvider`). The runner and
hosts.check ask the provider (is it running, the config to connect with, can it be restarted,
which test guest it gets) instead of checking the flag; tuxmake's Runtime subclasses are the
model. A new kind of host is one subclass and its entry in `KINDS`. This module sits above
lab/, guest and provision (it uses them; they never ask it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .config import HostConfig, Settings
from .errors import HostError, PipelineError
from .guest import GuestImage
from .util import Progress
from .util import noprogress as _noprogress

if TYPE_CHECKING:
    from .host import Host
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

    def ensure_running(self, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> HostConfig:
        """The config to connect with, once the host is up (started here if the pipeline starts it)."""
        return self.config

    def running_config(self) -> HostConfig | None:
        """The config to connect with when the host can be asked now without starting anything
        (hosts.check reads only); None: it is not running, `not_running` says what to do."""
        return self.config

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
        from .host import resolve

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
        return "lab"  # one lab per project, whatever the inventory calls it

    def _settings(self) -> Settings:
        if self.settings is None:
            raise HostError("the built-in lab needs the settings", host=self.name)
        return self.settings

    def ensure_running(self, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> HostConfig:
        from . import lab

        return lab.ensure_up(self._settings(), progress, steps)

    def running_config(self) -> HostConfig | None:
        from . import lab

        if not lab.status(self._settings(), probe=False).running:
            return None
        return lab.host_config(self._settings(), self.name)

    @property
    def not_running(self) -> str:
        return "the built-in lab is not running (`invoke lab.up`)"

    def restart(self, why: str, progress: Progress = _noprogress, steps: dict[str, float] | None = None) -> HostConfig:
        from . import lab

        progress(f"{self.name}: not answering ({why}); restarting the lab")
        lab.down(self._settings(), progress)
        return lab.ensure_up(self._settings(), progress, steps)

    def stop(self, progress: Progress = _noprogress) -> None:
        from . import lab

        lab.down(self._settings(), progress)

    def run_guest(self, guests: RunGuests, host: Host) -> GuestImage:
        # `guest_kernel: host`: the image's own guest (the dom0 kernel and its xen-pcifront)
        return super().run_guest(guests, host) if guests.tiny else self.guest_image()

    def guest_image(self) -> GuestImage:
        if self.settings is None:
            return super().guest_image()
        from . import lab

        files = lab.guest_files(self.settings)
        return GuestImage(kernel=files.kernel, ramdisk=files.initrd)

    def describe(self) -> str:
        return "built-in QEMU lab"


# the kinds of host, by the name a config selects them with
KINDS: dict[str, type[HostProvider]] = {p.kind: p for p in (SshProvider, LabProvider)}


def kind_of(config: HostConfig) -> str:
    """The kind an inventory entry asks for: `lab: true` is the built-in lab, anything else plain SSH."""
    return LabProvider.kind if config.lab else SshProvider.kind


def provider_for(settings: Settings | None, config: HostConfig) -> HostProvider:
    return KINDS[kind_of(config)](settings, config)


def default_guest(host: Host, settings: Settings | None) -> GuestImage:
    """The guest files the host carries itself (the lab's, built into its image); HostError for a
    host that has none (it gets its guest from the run: `run_guest`)."""
    return provider_for(settings, host.config).guest_image()


def run_guest(guests: RunGuests, host: Host) -> GuestImage:
    """The test guest a run uses on `host` (connected, its config as the provider yielded it)."""
    return provider_for(guests.settings, host.config).run_guest(guests, host)


def of_host(settings: Settings, name: str) -> HostProvider:
    """The provider of inventory host `name` (KeyError: not in the inventory)."""
    return provider_for(settings, settings.hosts[name])


def machines(providers: list[HostProvider]) -> list[HostProvider]:
    """One provider per machine, in first-seen order: two inventory names for the lab stop it once."""
    seen: dict[str, HostProvider] = {}
    for p in providers:
        seen.setdefault(p.machine, p)
    return list(seen.values())
