"""The SR-IOV device the lab's PF is, selected by `pv.lab.device`: QEMU's NVMe controller
(the default) or igb, an Intel 82576 NIC (QEMU >= 8: the class most passthrough users have).

The pipeline never asks which one it is: it creates VFs through sysfs, binds them to pciback and
counts them in the guest the same way for any PCI function. A new device is one more class here.
"""

from __future__ import annotations

from ..errors import LabError


class SriovDevice:
    name = ""
    max_vfs = 0
    min_qemu = (0, 0)  # the oldest QEMU that emulates it with SR-IOV

    def qemu_args(self, vfs: int, bus: str) -> list[str]:
        raise NotImplementedError

    def trace_args(self) -> list[str]:
        return []

    def check(self, vfs: int, qemu_version: str) -> None:
        """A one-line LabError when this QEMU or this VF count cannot give the device."""
        if not 0 < vfs <= self.max_vfs:
            raise LabError(f"pv.lab.vfs {vfs}: {self.name} has 1..{self.max_vfs} VFs")
        if qemu_version and _version(qemu_version) < self.min_qemu:
            raise LabError(
                f"pv.lab.device {self.name} needs QEMU >= {'.'.join(map(str, self.min_qemu))}, "
                f"the lab's is {qemu_version} (pv.lab.qemu: 10.0)"
            )


class Nvme(SriovDevice):
    name = "nvme"
    max_vfs = 127

    def qemu_args(self, vfs: int, bus: str) -> list[str]:
        ctrl = (
            f"nvme,id=nvme0,bus={bus},serial=pvlab01,subsys=nvmesubsys0,sriov_max_vfs={vfs},"
            # QEMU's constraints: vq >= 2*VFs, ioqpairs >= vq+2, vi >= VFs, msix >= vi+2
            f"sriov_vq_flexible={2 * vfs},sriov_vi_flexible={vfs},max_ioqpairs={2 * vfs + 4},msix_qsize={vfs + 5}"
        )
        return ["-device", "nvme-subsys,id=nvmesubsys0,nqn=pvlab", "-device", ctrl]

    def trace_args(self) -> list[str]:
        return ["-trace", "enable=pci_nvme_err*"]


class Igb(SriovDevice):
    name = "igb"
    max_vfs = 7  # the 82576 has 8 VF slots; QEMU's igb PF keeps one
    min_qemu = (8, 0)

    def qemu_args(self, vfs: int, bus: str) -> list[str]:
        # its own user-mode network with no route out: the NIC only has to exist
        return ["-netdev", "user,id=sriov0,restrict=on", "-device", f"igb,id=igb0,bus={bus},netdev=sriov0"]


DEVICES: dict[str, SriovDevice] = {d.name: d for d in (Nvme(), Igb())}


def device(name: str) -> SriovDevice:
    try:
        return DEVICES[name]
    except KeyError:
        raise LabError(f"pv.lab.device {name!r}: expected one of {', '.join(DEVICES)}") from None


def _version(text: str) -> tuple[int, int]:
    parts = text.split()[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)
