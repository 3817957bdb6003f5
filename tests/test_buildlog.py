"""What a build's output says (pipeline/buildlog.py): diagnostics relative to the tree, the warnings a series
adds, and failure summaries that name the real first error, the last against real kbuild output of each
kind (marked `build`: external modules built against the installed linux-headers)."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest

from pipeline.buildlog import first_errors, new_warnings, parse_diagnostics
from pipeline.buildmodule import MODULE_DIR

XENBUS = f"{MODULE_DIR}/xenbus.c"


def test_diagnostics_are_relative_and_line_numbers_do_not_count():
    mod = Path("/cache/work/series/drivers/xen/xen-pciback")
    out = "\n".join(
        [
            "  CC [M]  /cache/work/series/drivers/xen/xen-pciback/xenbus.o",
            "/cache/work/series/drivers/xen/xen-pciback/xenbus.c: In function 'f':",
            "/cache/work/series/drivers/xen/xen-pciback/xenbus.c:70:13: warning: unused variable 'x' [-Wunused-variable]",
            "/usr/src/h/include/linux/foo.h:3:1: warning: something [-Wfoo]",
            "/usr/src/h/include/linux/foo.h:3:1: warning: something [-Wfoo]",
            "/cache/work/series/drivers/xen/xen-pciback/vpci.c:9:2: error: expected ';' before '}' token",
        ]
    )
    warnings, errors = parse_diagnostics(out, [(mod, MODULE_DIR), (Path("/usr/src/h"), "")])
    assert warnings == [
        f"{XENBUS}:70:13: warning: unused variable 'x' [-Wunused-variable]",
        "include/linux/foo.h:3:1: warning: something [-Wfoo]",  # once, though two files include it
    ]
    assert errors == [f"{MODULE_DIR}/vpci.c:9:2: error: expected ';' before '}}' token"]
    # ccache's base_dir makes paths relative to make's directory; gcc may quote in UTF-8
    rel = "../../cache/work/series/drivers/xen/xen-pciback/xenbus.c:7:5: warning: unused variable \u2018z\u2019 [-Wunused-variable]"
    assert parse_diagnostics(rel, [(mod, MODULE_DIR)], Path("/usr/src"))[0] == [
        f"{XENBUS}:7:5: warning: unused variable 'z' [-Wunused-variable]"
    ]
    # the series moved the baseline's warning down 4 lines and added one
    baseline = [f"{XENBUS}:66:13: warning: unused variable 'x' [-Wunused-variable]"]
    series = [
        f"{XENBUS}:70:13: warning: unused variable 'x' [-Wunused-variable]",
        f"{XENBUS}:90:6: warning: unused variable 'y' [-Wunused-variable]",
    ]
    assert new_warnings(series, baseline) == [series[1]]
    # the same text twice in the series but once in the baseline: one is new
    assert new_warnings(series[:1] * 2, baseline) == series[:1]


def test_make_trailer_is_never_the_summary():
    out = (
        "  CC [M]  /m/x.o\n/m/x.c:3:9: error: 'nope' undeclared (first use in this function)\n"
        "make[2]: *** [scripts/Makefile.build:250: /m/x.o] Error 1\nmake[1]: *** [Makefile:1992: /m] Error 2\n"
    )
    _, errs = parse_diagnostics(out, [(Path("/m"), "")])
    assert first_errors(out, errs)[0] == "x.c:3:9: error: 'nope' undeclared (first use in this function)"
    assert first_errors("make: *** [Makefile:2: all] Error 2\n", []) == ["make: *** [Makefile:2: all] Error 2"]


HEADERS = sorted(glob.glob("/usr/src/linux-headers-*-amd64"))

KINDS = {
    # kind: (files of the module, what the summary's first line must say)
    "makefile-error": (
        {"Kbuild": "$(error xen-pciback needs CONFIG_PV_TEST_MISSING)\nobj-m := x.o\n", "x.c": "int x;\n"},
        ("Kbuild:1: xen-pciback needs CONFIG_PV_TEST_MISSING",),
    ),
    "compiler-error": (
        {
            "Kbuild": "obj-m := x.o\n",
            "x.c": '#include <linux/module.h>\nint f(void)\n{\n\treturn nope;\n}\nMODULE_LICENSE("GPL");\n',
        },
        ("x.c:4:", "error: 'nope' undeclared"),
    ),
    "modpost-error": (
        {
            "Kbuild": "obj-m := x.o\n",
            "x.c": "#include <linux/module.h>\nextern void pv_no_such_symbol(void);\n"
            "static int __init i(void)\n{\n\tpv_no_such_symbol();\n\treturn 0;\n}\nmodule_init(i);\n"
            'MODULE_LICENSE("GPL");\n',
        },
        ("ERROR: modpost: ", "pv_no_such_symbol", "undefined"),
    ),
    "ld-error": (
        {
            "Kbuild": "obj-m := x.o\nx-y := a.o b.o\n",
            "a.c": '#include <linux/module.h>\nint pv_dup = 1;\nMODULE_LICENSE("GPL");\n',
            "b.c": "int pv_dup = 2;\n",
        },
        ("ld: ", "multiple definition of", "pv_dup"),
    ),
}


@pytest.mark.build
@pytest.mark.skipif(not HEADERS, reason="no linux-headers-*-amd64 installed")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_real_kbuild_failure_of_each_kind(kind, tmp_path):
    files, want = KINDS[kind]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        ["make", "-C", HEADERS[-1], f"M={tmp_path}", "modules"], capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Error" in out.splitlines()[-1] or "Stop." in out.splitlines()[-1], out  # make's trailer came last
    _, errs = parse_diagnostics(out, [(tmp_path, "")])
    summary = first_errors(out, errs)
    for w in want:
        assert w in summary[0], (kind, summary, out[-3000:])
    assert "] Error " not in summary[0]
