"""What a run's host stages would otherwise wait for first, started beside the source import and
the builds: each host the pipeline starts itself (the built-in lab) is built if need be and begins
booting (`HostProvider.start`: QEMU started, dom0 not waited for), and the test guest's kernel is
built (`pv.guest_kernel: tiny`). The host stages then wait only for what is left (`ensure_running`
waits for dom0). A failure here is the host stage's to record: it starts the host again and says why.
"""

from __future__ import annotations

import threading

from . import providers
from .errors import PipelineError
from .interrupt import stop_children
from .provision import RunGuests
from .util import Progress


class HostPrep:
    """The threads of one run's preparation (none: nothing to prepare)."""

    def __init__(self, threads: list[threading.Thread] | None = None):
        self.threads = threads or []

    @classmethod
    def begin(
        cls,
        used: list[providers.HostProvider],
        guests: RunGuests | None,
        steps: dict[str, float],
        progress: Progress,
    ) -> HostPrep:
        """Start preparing the hosts of `used` and, when the run tests, `guests`' kernel; `steps` gets
        the providers' lab_build and lab_start (the guest kernel's time goes to the guests' own steps)."""

        def start_hosts() -> None:
            for provider in providers.machines(used):
                try:
                    provider.start(progress, steps)
                except Exception as e:  # noqa: BLE001 - the host stage starts it again and records why
                    why = e.message if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
                    progress(f"{provider.name}: not started beside the builds ({why}); the host stage tries again")

        # every key these threads write exists before they start: the run saves results.json (which
        # iterates the dict) while they run, and a key added meanwhile would change the dict's size
        for key in ("lab_build", "lab_start"):
            steps.setdefault(key, 0.0)
        if guests is not None:
            guests.steps.setdefault("guest_kernel", 0.0)
        threads = [threading.Thread(target=start_hosts, name="start-hosts", daemon=True)]
        if guests is not None:
            threads.append(threading.Thread(target=guests.prepare, name="guest-kernel", daemon=True))
        for t in threads:
            t.start()
        return cls(threads)

    def wait(self) -> None:
        for t in self.threads:
            while t.is_alive():
                t.join(0.2)  # keeps the main thread responsive to Ctrl-C

    def abandon(self, timeout: float = 60) -> bool:
        """The run ends before its host stages: stop what is still preparing (the lab's debootstrap,
        the guest kernel's make: children of this process) and wait for the threads. False: nothing was."""
        if not any(t.is_alive() for t in self.threads):
            return False
        stop_children()
        for t in self.threads:
            t.join(timeout)
        return True
