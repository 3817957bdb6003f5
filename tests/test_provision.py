"""The test guest's initramfs builder (pipeline/provision.py, also the lab's) on a real module:
Debian's xen-pcifront.ko from a linux-image package in apt's cache (skipped without one)."""

from __future__ import annotations

import glob
import gzip
import subprocess
from pathlib import Path

import pytest

from pipeline import lab, provision


def _pcifront_from_a_deb(tmp_path: Path) -> bytes:
    debs = sorted(glob.glob("/var/cache/apt/archives/linux-image-6.*_amd64.deb"))
    for deb in debs:
        listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True).stdout
        members = [line.split()[-1] for line in listing.splitlines() if "/xen-pcifront.ko" in line]
        if members:
            subprocess.run(["dpkg-deb", "-x", deb, str(tmp_path / "deb")], check=True)
            path = tmp_path / "deb" / members[0]
            return provision.plain_module(path.name, path.read_bytes())
    pytest.skip("no linux-image .deb with xen-pcifront in /var/cache/apt/archives")


def test_initramfs_holds_busybox_init_and_pcifront_and_is_reproducible(tmp_path):
    ko = _pcifront_from_a_deb(tmp_path)
    data = provision.initramfs(ko)
    assert data == provision.initramfs(ko)  # same inputs, same bytes
    out = tmp_path / "unpacked"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=gzip.decompress(data), cwd=out, check=True)
    assert (out / "xen-pcifront.ko").read_bytes() == ko and ko[:4] == b"\x7fELF"
    assert (out / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    init = (out / "init").read_text()
    assert init == lab.render("guest-init.sh.j2", poll_s=provision.GUEST_POLL_S)
    assert "insmod /xen-pcifront.ko" in init and "PVLAB_MARKER" in init
    # built in: no module file, the same /init
    (tmp_path / "b").mkdir()
    raw = gzip.decompress(provision.initramfs(None))
    names = subprocess.run(["cpio", "-t", "--quiet"], input=raw, capture_output=True, check=True).stdout.split()
    assert b"xen-pcifront.ko" not in names and b"init" in names
