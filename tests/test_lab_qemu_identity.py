"""lab.qemu.is_our_qemu on a real process: the same image reached through a symlinked cache is still ours."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import lab
from pipeline.lab import qemu


def test_a_qemu_started_through_a_symlinked_cache_is_ours_from_both_paths(tmp_path):
    real = tmp_path / "main" / ".cache" / "lab"
    real.mkdir(parents=True)
    (real / "dom0.img").write_bytes(b"")
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".cache").symlink_to(tmp_path / "main" / ".cache")
    # a process whose argv[0] is QEMU's name, started with the image path through the symlink
    exe = tmp_path / lab.QEMU
    exe.symlink_to(os.path.realpath(sys.executable))
    via_link = wt / ".cache" / "lab" / "dom0.img"
    proc = subprocess.Popen(
        [str(exe), "-c", "import time; time.sleep(60)", "-drive", f"file={via_link},if=virtio,format=raw"]
    )
    try:
        deadline = time.monotonic() + 10
        while b"-drive" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)

        class Paths:
            image = real / "dom0.img"

        class LinkPaths:
            image = via_link

        class Other:
            image = tmp_path / "other.img"

        assert qemu.is_our_qemu(proc.pid, Paths)
        assert qemu.is_our_qemu(proc.pid, LinkPaths)
        assert not qemu.is_our_qemu(proc.pid, Other)
    finally:
        proc.kill()
        proc.wait()
