"""Module sources, the negative control's sources and the build target (pipeline/buildmodule.py); the
module builds themselves are the `build` tests of tests/test_build.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.buildmodule import MODULE_DIR, Target, control_sources, kernel_release_of, worktree_sources
from pipeline.errors import BuildSetupError

REVERT = f"""\
diff --git a/{MODULE_DIR}/x.c b/{MODULE_DIR}/x.c
--- a/{MODULE_DIR}/x.c
+++ b/{MODULE_DIR}/x.c
@@ -1 +1 @@
-int fixed;
+int broken;
"""


@pytest.fixture
def revert(tmp_path) -> Path:
    path = tmp_path / "revert.patch"
    path.write_text(REVERT)
    return path


def test_control_is_the_base_reverted_or_the_base_as_is(tmp_path, revert):
    stage = tmp_path / "stage"
    files, detail = control_sources({"x.c": b"int fixed;\n", "Makefile": b"obj-m := x.o\n"}, revert, stage)
    assert files == {"x.c": b"int broken;\n", "Makefile": b"obj-m := x.o\n"}
    assert "revert.patch applied (the fix is in the base tree)" in detail
    base = {"x.c": b"int broken;\n"}
    assert control_sources(base, revert, stage) == (
        base,
        "base commit as is (it lacks the fix: revert.patch is already in)",
    )
    files, detail = control_sources({"x.c": b"int other;\n"}, revert, stage)
    assert files is None and "neither applies to the base tree nor is already in it" in detail
    files, detail = control_sources(base, tmp_path / "gone.patch", stage)
    assert files is None and detail.endswith("gone.patch not found")
    assert not stage.exists()


def test_worktree_sources_leave_build_products_out(tmp_path):
    with pytest.raises(BuildSetupError, match=f"no {MODULE_DIR} in this tree"):
        worktree_sources(tmp_path)
    mod = tmp_path / MODULE_DIR
    (mod / "sub").mkdir(parents=True)
    for name in ("x.c", "Makefile", "sub/y.h", "x.o", "xen-pciback.ko", ".x.o.cmd", "x.mod.c", "modules.order"):
        (mod / name).write_text(name)
    assert sorted(worktree_sources(tmp_path)) == ["Makefile", "sub/y.h", "x.c"]


def test_headers_target_reads_the_headers_and_what_their_makefile_includes(tmp_path):
    kdir = tmp_path / "linux-headers-6.1.0-99-amd64"
    (kdir / "include" / "generated").mkdir(parents=True)
    assert kernel_release_of(kdir) == ""
    (kdir / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-99-amd64"\n')
    assert kernel_release_of(kdir) == "6.1.0-99-amd64"
    common = tmp_path / "linux-headers-6.1.0-99-common"
    (kdir / "Makefile").write_text(f"include {common}/Makefile\n")
    target = Target("headers", tmp_path / "key", kdir, None, "gcc-12", "6.1.0-99-amd64", ccache=False)
    assert target.ro_roots() == [kdir, common]
    moddir = tmp_path / "work" / MODULE_DIR
    cmd = target.make_cmd(moddir, 2)
    assert cmd[:3] == ["make", "-C", str(kdir)] and cmd[-1] == "modules"
    assert {f"M={moddir}", "-j2", "CC=gcc-12", "CONFIG_XEN_PCIDEV_BACKEND=m", "CONFIG_MODULE_SRCVERSION_ALL=y"} <= set(
        cmd
    )
    assert target.roots(moddir) == [(moddir, MODULE_DIR), (kdir, "")]
