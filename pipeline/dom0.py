"""Queries and actions on a dom0's toolstack (xl, xenstore) that deploy and the VF tests share:
live domains, pci backends and stale ones, assignable devices, the pipeline's test domains."""

from __future__ import annotations

import time

from . import absorbed
from .errors import HostError
from .host import Host
from .statuses import FaultKind
from .util import Progress
from .util import noprogress as _noprogress

PCIBACK_BE = "/local/domain/0/backend/pci"
TEST_DOMAIN_PREFIX = "pvtest-"


def boot_id(host: Host) -> str:
    """The host's boot id: another one means it rebooted (everything under /run is gone)."""
    rc, out, _ = host.query(["cat", "/proc/sys/kernel/random/boot_id"], timeout=30)
    return out.strip() if rc == 0 else ""


def assignable_devices(host: Host) -> list[str]:
    """BDFs that pciback holds (`xl pci-assignable-list`)."""
    rc, out, _ = host.query(["xl", "pci-assignable-list"], timeout=60)
    if rc != 0:
        return []
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def domains(host: Host) -> dict[str, int]:
    """Name -> domain id of every domain `xl list` shows (dom0 included). The list comes from the
    hypervisor; a failed listing raises, it never reads as "no such domain"."""
    rc, out, err = host.query(["xl", "list"], timeout=60)
    if rc != 0:
        raise host.failed(["xl", "list"], rc, out, err)
    found: dict[str, int] = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            found[fields[0]] = int(fields[1])
    return found


def live_domids(host: Host) -> set[int]:
    """Domain ids `xl list` shows (dom0 included)."""
    return set(domains(host).values())


def pci_backend_domids(host: Host) -> list[int]:
    rc, out, _ = host.query(["xenstore-list", PCIBACK_BE], timeout=30)
    if rc != 0:
        return []
    return [int(x) for x in out.split() if x.strip().isdigit()]


def remove_stale_backends(host: Host) -> list[int]:
    """Remove pci backend directories of domains that no longer exist; returns their ids."""
    live = live_domids(host)
    stale = [d for d in pci_backend_domids(host) if d not in live]
    for d in stale:
        host.run(["xenstore-rm", f"{PCIBACK_BE}/{d}"], check=False, timeout=30)
    return stale


def test_domains(host: Host) -> list[str]:
    """Names of the pipeline's test guests (`pvtest-*`) that exist on the host."""
    out = host.out(["xl", "list"], timeout=60)
    return [f[0] for f in (line.split() for line in out.splitlines()[1:]) if f and f[0].startswith(TEST_DOMAIN_PREFIX)]


def destroy_test_domains(host: Host, progress: Progress = _noprogress) -> None:
    """Destroy the pipeline's leftover test guests and remove their pci backend entries."""
    for dom in test_domains(host):
        progress(f"{host.name}: destroying leftover test domain {dom}")
        destroy_domain(host, dom)
    remove_stale_backends(host)


def destroy_domain(host: Host, name: str, timeout: float = 60.0) -> None:
    """`xl destroy` until `xl list` no longer shows the domain. Not `xl domid`: on the lab it has
    answered "no such domain" for a guest that went on running, and that guest kept its VFs."""
    deadline = time.monotonic() + timeout
    again, rc = 0.0, None
    while name in domains(host):
        if time.monotonic() > deadline:
            raise HostError(f"domain {name} still exists {timeout:.0f} s after xl destroy", host=host.name)
        if time.monotonic() >= again:  # destroying again is harmless; an xl that crashed did nothing
            if rc is not None:
                evidence = f"still listed 10 s after `xl destroy` ({absorbed.of_exit(rc)})"
                absorbed.record(FaultKind.DESTROY_REISSUED, host.name, f"xl destroy {name}", evidence)
            rc = host.run(["xl", "destroy", name], check=False, timeout=120)[0]
            again = time.monotonic() + 10
        time.sleep(0.5)
