"""The built-in Xen lab host: Xen + a Debian dom0 under QEMU (TCG), reached over SSH. Its suite
(pipeline/labsuites.py) gives the root filesystem and Xen: bookworm's 4.17 by default, bullseye's
4.14 and trixie's 4.20 beside it; every lab boots bookworm's 6.1 dom0 kernel.

`build()` makes the dom0 disk image, the boot files for QEMU's multiboot loader and the test
guest's initramfs; it is a no-op while the recipe and the resolved package versions are
unchanged. `up()` boots it with an emulated Intel IOMMU and an SR-IOV PF (NVMe, or igb:
`pv.lab.device`), `down()` powers it off. `host_config()` turns the lab into the inventory host
`lab`. By concern:

    layout      the lab's folder (LabPaths, the QMP socket path), manifest and state, the lock
    recipe      what the image is made of: suite, packages, apt sources, templates, input hash
    image       the image build
    guestfiles  the test guest's files in dom0
    qemu        the QEMU process: command line, identity, stopping it, ports, QMP
    devices     the SR-IOV PF's device type (its QEMU arguments, VF limit)
    emulator    the QEMU builds the lab can run (`pv.lab.qemu`)
    ssh         the OpenSSH command line for the interactive `invoke lab.ssh` (the pipeline: host.Host)
    lifecycle   start (boot without waiting), up, down, status, ensure_up, host_config

Callers use the names below (`from pipeline import lab; lab.up(...)`).
"""

from .guestfiles import GUEST_DIR, GUEST_INITRD, GuestFiles, guest_files
from .image import BuildInfo, build
from .layout import LabPaths, is_built, kernel_release, paths, read_manifest
from .lifecycle import (
    XEN_BANNER,
    LabStatus,
    console_tail,
    disk_usage,
    down,
    ensure_up,
    host_config,
    start,
    status,
    up,
    write_known_hosts,
    xen_boots,
)
from .qemu import QEMU, free_port, port_in_use, qemu_argv
from .recipe import chroot_apt_entries, input_hash, recipe_files, render
from .ssh import ssh_argv

__all__ = [
    "GUEST_DIR",
    "GUEST_INITRD",
    "QEMU",
    "BuildInfo",
    "GuestFiles",
    "LabPaths",
    "LabStatus",
    "build",
    "chroot_apt_entries",
    "XEN_BANNER",
    "console_tail",
    "disk_usage",
    "down",
    "ensure_up",
    "free_port",
    "guest_files",
    "host_config",
    "input_hash",
    "is_built",
    "kernel_release",
    "paths",
    "port_in_use",
    "qemu_argv",
    "read_manifest",
    "recipe_files",
    "render",
    "ssh_argv",
    "start",
    "status",
    "xen_boots",
    "up",
    "write_known_hosts",
]
