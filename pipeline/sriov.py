"""The host's SR-IOV physical function: what it is, who uses its VFs, how many the tests may use.

Nothing here assumes a device family: the PF's driver is read from sysfs, the number of VFs
from `sriov_totalvfs` (capped by the inventory's `max_vfs`). VFs are created only when the PF
has none; VFs that exist already are used as they are (the first N of them), never recreated.
A host whose existing VFs are used by a domain or bound to a driver other than pciback is
refused with the reason, before anything on it changes. `PfState` is what the VF pool compares
after its teardown: numvfs, every VF's driver and assignability exactly as found.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .dom0 import PCIBACK_BE, TEST_DOMAIN_PREFIX
from .errors import HostError
from .host import Host

PCIBACK_DRIVER = "pciback"  # xen-pciback's driver name in sysfs
DRIVER_WAIT_S = 60.0  # a PF's driver binds by udev during boot; a host just up may not have it yet

# one listing of every VF: "<virtfn link target> <driver link target>"; the PF path is an argument
_LIST_VFS = 'for v in "$1"/virtfn*; do [ -e "$v" ] || continue; echo "$(readlink "$v") $(readlink "$v/driver")"; done'


@dataclass
class Vf:
    bdf: str
    driver: str | None  # sysfs driver name, None when unbound
    domain: str | None = None  # name of the live domain it is assigned to (pciback backend), if any


@dataclass
class PfState:
    bdf: str
    driver: str | None
    totalvfs: int
    numvfs: int
    autoprobe: str
    vfs: list[Vf] = field(default_factory=list)

    def snapshot(self) -> dict:
        """What a teardown must give back exactly."""
        return {
            "numvfs": self.numvfs,
            "autoprobe": self.autoprobe,
            "vfs": {v.bdf: v.driver for v in self.vfs},
        }


def short(bdf: str) -> str:
    return bdf[5:] if bdf.startswith("0000:") else bdf


def long(bdf: str) -> str:
    return bdf if bdf.count(":") == 2 else f"0000:{bdf}"


def pf_path(bdf: str) -> str:
    return f"/sys/bus/pci/devices/{bdf}"


def _int(text: str | None) -> int:
    t = (text or "").strip()
    return int(t) if t.isdigit() else 0


def _basename(link: str) -> str | None:
    link = link.strip()
    return link.rsplit("/", 1)[-1] if link else None


def domain_devices(host: Host) -> dict[str, str]:
    """BDF -> name of the live domain pciback serves it to (from xenstore's pci backend tree)."""
    rc, out, _ = host.query(["xenstore-ls", "-f", PCIBACK_BE], timeout=30)
    if rc != 0:
        return {}
    rc2, xl, _ = host.query(["xl", "list"], timeout=60)
    names: dict[int, str] = {}
    for line in xl.splitlines()[1:] if rc2 == 0 else []:
        f = line.split()
        if len(f) >= 2 and f[1].isdigit():
            names[int(f[1])] = f[0]
    return parse_backend_devices(out, names)


def parse_backend_devices(xenstore_ls: str, names: dict[int, str]) -> dict[str, str]:
    """`xenstore-ls -f .../backend/pci` -> {bdf: domain name} for domains in `names` (the live ones)."""
    used: dict[str, str] = {}
    prefix = PCIBACK_BE + "/"
    for line in xenstore_ls.splitlines():
        path, sep, value = line.partition(" = ")
        if not sep or not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].startswith("dev-"):
            continue
        domid = int(parts[0])
        if domid == 0 or domid not in names:
            continue  # a stale directory of a dead domain uses nothing
        bdf = value.strip().strip('"')
        if bdf:
            used[long(bdf)] = names[domid]
    return used


def read_pf(host: Host, bdf: str, wait_driver_s: float = 0.0) -> PfState:
    """The PF's driver, VF counts and every existing VF with its driver and domain.

    HostError when the PF is missing or not SR-IOV capable. `wait_driver_s`: how long to wait
    for a driver to bind (udev, right after boot) before reporting it unbound.
    """
    pf = pf_path(bdf)
    if not host.exists(pf):
        raise HostError(f"SR-IOV PF {bdf} not present on {host.name}")
    total = host.read_text(f"{pf}/sriov_totalvfs")
    if total is None:
        raise HostError(f"{bdf} on {host.name} is not SR-IOV capable (no sriov_totalvfs)")
    deadline = time.monotonic() + wait_driver_s
    while True:
        rc, link, _ = host.query(["readlink", f"{pf}/driver"], timeout=30)
        driver = _basename(link) if rc == 0 else None
        if driver or time.monotonic() >= deadline:
            break
        time.sleep(1)
    state = PfState(
        bdf=bdf,
        driver=driver,
        totalvfs=_int(total),
        numvfs=_int(host.read_text(f"{pf}/sriov_numvfs")),
        autoprobe=(host.read_text(f"{pf}/sriov_drivers_autoprobe") or "1").strip(),
    )
    if state.numvfs:
        used = domain_devices(host)
        out = host.out(["sh", "-c", _LIST_VFS, "sh", pf])
        for line in out.splitlines():
            vf_link, _, drv_link = line.partition(" ")
            vf = _basename(vf_link)
            if vf:
                state.vfs.append(Vf(bdf=vf, driver=_basename(drv_link), domain=used.get(long(vf))))
        state.vfs.sort(key=lambda v: v.bdf)
    return state


def refusal(state: PfState, host_name: str) -> str | None:
    """Why the tests must not touch this PF, or None. Looks only at what exists now."""
    if state.driver is None:
        return (
            f"PF {state.bdf} on {host_name} has no driver bound: its driver creates the VFs "
            "(load it, e.g. modprobe the module for its modalias)"
        )
    if state.driver == PCIBACK_DRIVER:
        return f"PF {state.bdf} on {host_name} is held by pciback (assignable or assigned): its VFs cannot be created"
    for vf in state.vfs:
        if vf.domain and not vf.domain.startswith(TEST_DOMAIN_PREFIX):
            return f"VF {vf.bdf} of PF {state.bdf} on {host_name} is used by domain {vf.domain}; refusing the host"
    for vf in state.vfs:
        if vf.driver and vf.driver != PCIBACK_DRIVER:
            return f"VF {vf.bdf} of PF {state.bdf} on {host_name} is bound to driver {vf.driver}; refusing the host"
    return None


def usable_vfs(state: PfState, configured_max: int) -> int:
    """How many VFs the tests may use: existing ones are used as they are (never recreated), else
    up to sriov_totalvfs, capped by the inventory's max_vfs when it is set (> 0)."""
    avail = state.numvfs if state.numvfs else state.totalvfs
    return min(avail, configured_max) if configured_max > 0 else avail
