"""The test guest inside the lab's dom0: where its kernel and initramfs are (recorded in the
manifest) and how the image build makes the initramfs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import provision
from ..config import Settings
from ..errors import HostError, LabError
from .layout import read_manifest

GUEST_DIR = "/root/pvlab"  # in dom0: the guest initramfs and xl configs
GUEST_INITRD = f"{GUEST_DIR}/guest-initrd.gz"


@dataclass
class GuestFiles:
    """Where the test guest's kernel and initramfs are inside dom0."""

    kernel: str
    initrd: str


def guest_files(settings: Settings) -> GuestFiles:
    m = read_manifest(settings)
    if not m:
        raise LabError("the lab is not built: run `invoke lab.build`")
    return GuestFiles(kernel=m["guest"]["kernel"], initrd=m["guest"]["initrd"])


def guest_initramfs(root: Path, release: str) -> bytes:
    """The guest initramfs with the dom0 image's xen-pcifront (the builder other hosts use too)."""
    mods = list((root / f"lib/modules/{release}").rglob("xen-pcifront.ko*"))
    if not mods:
        raise LabError(f"no xen-pcifront.ko in the dom0 kernel {release}")
    try:
        return provision.initramfs(provision.plain_module(mods[0].name, mods[0].read_bytes()))
    except HostError as e:
        raise LabError(e.message) from None
