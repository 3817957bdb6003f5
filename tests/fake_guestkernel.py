"""A fake kernel source tarball for pipeline/guestkernel.py: its Makefile answers the targets the
builder calls in a second (the "bzImage" is the final .config), so the real builder, sandbox and
cache run without a real kernel build."""

from __future__ import annotations

import subprocess
from pathlib import Path

FAKE_MAKEFILE = """\
tinyconfig:
\t@echo '# tinyconfig' > .config
olddefconfig:
\t@true
bzImage:
\t@mkdir -p arch/x86/boot && cat .config > arch/x86/boot/bzImage
kernelrelease:
\t@echo 6.1.0-fake
"""


def fake_tarball(tmp_path: Path, merge: str = 'cat "$3" >> "$2"') -> Path:
    tree = tmp_path / "src" / "linux-source-6.1"
    (tree / "scripts/kconfig").mkdir(parents=True)
    (tree / "Makefile").write_text(FAKE_MAKEFILE)
    mc = tree / "scripts/kconfig/merge_config.sh"
    mc.write_text(f"#!/bin/sh\n{merge}\n")
    mc.chmod(0o755)
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(tmp_path / "src"), "linux-source-6.1"], check=True)
    return tarball
