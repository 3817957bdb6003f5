"""Hand-built, realistic RunResult objects for the verdict/report/post tests.

- debian-6.1: the fix is already in (upstream c81d3d246025); the tree's module passes
  the VF tests, the control (fix reverted) fails as it must.
- debian-6.1-prefix: the same tree with the fix reverted; the series applies clean,
  builds, passes; the control fails.
- 5.4.y: the series conflicts in xenbus.c.
- 5.10.y: applies with offset, the build fails.

`lines_run()` is the `debian` matrix as issue 16 expects it once the lab boots each line's dom0
kernel (5.10, 6.1, 6.12, 7.2; each as shipped and -prefix), plus one kernel.org row on two
other hosts, so that its summary has every kind of readiness line: already upstream (the
upstream revert applying; 7.2's adapted revert, 1 line adapted), applies clean, applies with a
3-way merge, needs backport (7.2-prefix: xenbus.c, the hunk in xen_pcibk_reconfigure), builds
with a new warning, VF tests on a host with its dom0 kernel and Xen, a control not applicable
where libxl 4.14 writes every device in one transaction.
"""

from __future__ import annotations

from pipeline.results import (
    ApplyResult,
    BuildResult,
    CheckpatchResult,
    DeployResult,
    FetchResult,
    KernelResult,
    PatchApply,
    PatchInfo,
    RunResult,
    SeriesInfo,
    TestResult,
    Toolstack,
    XsCreation,
)

SUBJECT = "xen-pciback: reconfigure also from backend watch handler"
UPSTREAM = "c81d3d24602540f65256f98831d0a25599ea6b87"
STABLE = "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git"

PATCH_TEXT = """From: Jan Beulich <jbeulich@suse.com>
Subject: [PATCH v{rev}] xen-pciback: reconfigure also from backend watch handler

---
 drivers/xen/xen-pciback/xenbus.c | 9 +++++++++
 1 file changed, 9 insertions(+)

diff --git a/drivers/xen/xen-pciback/xenbus.c b/drivers/xen/xen-pciback/xenbus.c
--- a/drivers/xen/xen-pciback/xenbus.c
+++ b/drivers/xen/xen-pciback/xenbus.c
@@ -689,6 +689,15 @@ static void xen_pcibk_be_watch(struct xenbus_watch *watch,
 \tcase XenbusStateInitWait:
 \t\txen_pcibk_setup_backend(pdev);
 \t\tbreak;
+
+\tcase XenbusStateInitialised:
+\t\t/*
+\t\t * We typically move to Initialised when the first device was
+\t\t * added. Hence subsequent devices getting added may need
+\t\t * reconfiguring.
+\t\t */
+\t\txen_pcibk_reconfigure(pdev, XenbusStateInitialised);
+\t\tbreak;
\x20
 \tdefault:
 \t\tbreak;
"""


def vf_tests(host: str, module: str, passed_for: int, counts=(1, 2, 3)) -> list[TestResult]:
    """vf-boot-N tests; with the bug the guest sees 1 device whatever N is."""
    out = []
    for n in counts:
        seen = n if n <= passed_for else 1
        out.append(
            TestResult(
                name=f"vf-boot-{n}",
                host=host,
                module=module,
                expected=n,
                seen=seen,
                seen_bdfs=[f"0000:00:0{i}.0" for i in range(seen)],
                outcome="pass" if seen == n else "fail",
                reason="" if seen == n else f"guest saw {seen} of {n} VFs; backend stuck in Initialised (3)",
                backend={"num_devs": n, **{f"state-{i}": 3 if seen != n else 4 for i in range(n)}},
                duration_s=41.5,
            )
        )
    return out


def series(revision: int = 1) -> SeriesInfo:
    return SeriesInfo(
        name="xen-pciback-reconfigure",
        revision=revision,
        source="patches/xen-pciback-reconfigure",
        patches=[
            PatchInfo(
                subject=SUBJECT,
                author="Jan Beulich <jbeulich@suse.com>",
                message_id="<2a3bb8c3-4b4e-1c6a-4bd2-1c5b8d4a0d3b@suse.com>",
                patch_id="5c9b6a0d1b8f5c3d2e1f0a9b8c7d6e5f4a3b2c1d",
                revision=revision,
                files=["drivers/xen/xen-pciback/xenbus.c"],
                source="patches/xen-pciback-reconfigure/0001-xen-pciback-reconfigure-also-from-backend-watch.patch",
                text=PATCH_TEXT.format(rev=revision),
            )
        ],
    )


def built(release: str, srcversion: str, control_srcversion: str, log: str, **kw) -> BuildResult:
    """The module built for `release` (headers mode unless told), and its control."""
    fields = {
        "status": "ok",
        "mode": "headers",
        "module": "xen-pciback.ko",
        "vermagic": f"{release} SMP preempt mod_unload modversions",
        "srcversion": srcversion,
        "kernel_release": release,
        "duration_s": 28.0,
        "log": log,
        "checkpatch": [CheckpatchResult(subject=SUBJECT)],
        "control_module": "control/xen-pciback.ko",
        "control_srcversion": control_srcversion,
    }
    return BuildResult(**{**fields, **kw})


def k_upstream() -> KernelResult:
    return KernelResult(
        name="debian-6.1",
        ref="debian-6.1",
        remote=".cache/debian-linux.git",
        fetch=FetchResult(
            status="ok", ref="debian-6.1", commit="0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c", duration_s=3.2
        ),
        apply=ApplyResult(
            status="already-applied",
            patches=[
                PatchApply(
                    subject=SUBJECT,
                    status="already-applied",
                    detail="reverse-applies",
                    upstream_commit=UPSTREAM,
                    evidence="reverse-apply",
                )
            ],
        ),
        build=built("6.1.0-31-amd64", "A1B2C3D4E5F60718293A4B5", "F00DF00DF00DF00DF00DF00", "debian-6.1/build.log"),
        deploy=[
            DeployResult(status="ok", host="lab", original="stock", srcversion="A1B2C3D4E5F60718293A4B5", restored=True)
        ],
        tests=vf_tests("lab", "series", 3) + vf_tests("lab", "control", 1),
    )


def k_prefix() -> KernelResult:
    k = k_upstream()
    k.name = "debian-6.1-prefix"
    k.ref = "debian-6.1-prefix"
    k.fetch.commit = "aa11bb22cc33dd44ee55ff6600112233445566ff"
    k.apply = ApplyResult(
        status="applied",
        base_commit=k.fetch.commit,
        head_commit="bb22cc33dd44ee55ff6600112233445566ffaa11",
        patches=[PatchApply(subject=SUBJECT, status="applied", commit="bb22cc33dd44ee55ff6600112233445566ffaa11")],
    )
    k.build.log = "debian-6.1-prefix/build.log"
    return k


def stable_row(x_y: str, commit: str, **kw) -> KernelResult:
    """Branch linux-<x_y>.y of the kernel.org stable tree, fetched at `commit`."""
    ref = f"linux-{x_y}.y"
    return KernelResult(
        name=f"{x_y}.y", ref=ref, remote=STABLE, fetch=FetchResult(status="ok", ref=ref, commit=commit), **kw
    )


def k_conflict() -> KernelResult:
    return stable_row(
        "5.4",
        "1234567890abcdef1234567890abcdef12345678",
        apply=ApplyResult(
            status="conflict",
            patches=[
                PatchApply(
                    subject=SUBJECT,
                    status="conflict",
                    detail="patch does not apply",
                    files=["drivers/xen/xen-pciback/xenbus.c"],
                    hunks=["@@ -689,6 +689,15 @@ static void xen_pcibk_be_watch"],
                )
            ],
        ),
        build=BuildResult(status="skipped", detail="series does not apply"),
    )


def k_buildfail() -> KernelResult:
    return stable_row(
        "5.10",
        "abcdefabcdefabcdefabcdefabcdefabcdefabcd",
        apply=ApplyResult(
            status="applied",
            patches=[
                PatchApply(
                    subject=SUBJECT, status="applied-offset", detail="Hunk #1 succeeded at 702 (offset 13 lines)."
                )
            ],
        ),
        build=BuildResult(
            status="build-failed",
            mode="full",
            log="5.10.y/build.log",
            errors=[
                "drivers/xen/xen-pciback/xenbus.c:709:3: error: implicit declaration of function 'xen_pcibk_reconfigure'"
            ],
        ),
    )


def sample_run(revision: int = 1, run_id: str = "20250101T000000-1") -> RunResult:
    from pipeline.verdict import apply_verdicts

    run = RunResult(
        run_id=run_id,
        status="complete",
        started="2025-01-01T00:00:00+00:00",
        finished="2025-01-01T00:20:00+00:00",
        series=series(revision),
        kernels=[k_upstream(), k_prefix(), k_conflict(), k_buildfail()],
        hosts=["lab"],
    )
    apply_verdicts(run.kernels)
    return run


def build_only_run(run_id: str = "20250101T010000-2") -> RunResult:
    """The debian pair run `--until build` (CI's build job): built, no host, no test."""
    from pipeline.verdict import apply_verdicts

    kernels = [k_upstream(), k_prefix()]
    for k in kernels:
        k.deploy, k.tests = [], []
    run = RunResult(
        run_id=run_id,
        status="complete",
        started="2025-01-01T01:00:00+00:00",
        finished="2025-01-01T01:02:00+00:00",
        until="build",
        series=series(2),
        kernels=kernels,
    )
    apply_verdicts(run.kernels)
    return run


# ----------------------------------------------------------------- every Debian line (issue 16)

XENBUS = "drivers/xen/xen-pciback/xenbus.c"
XEN_417 = Toolstack(xen_version="4.17.7", xl_version="4.17.7+13-g2445b30a44-0+deb12u1")
PER_DEVICE = XsCreation(observed=True, source="/var/log/xen/xenstored-access.log", transactions=3, num_devs=[1, 2, 3])
ONE_TX = XsCreation(observed=True, source="/var/log/xen/xenstored-access.log", transactions=1, num_devs=[3])
DOM0 = {"5.10": "5.10.0-46-amd64", "6.1": "6.1.0-31-amd64", "6.12": "6.12.117+deb12-amd64", "7.2": "7.2.13+deb14-amd64"}
REVERTS = {"7.2": "patches/controls/revert-c81d3d246025-7.2.patch"}


def _observed(tests: list[TestResult], tool: Toolstack, xs: XsCreation) -> list[TestResult]:
    for t in tests:
        t.toolstack, t.xs_creation = tool, xs
    return tests


def _hexid(*parts: str) -> str:
    import hashlib

    return hashlib.sha1("/".join(parts).encode()).hexdigest()


def k_line(line: str, prefix: bool) -> KernelResult:
    """debian-<line>[-prefix] built for and tested on a lab booted with that line's dom0 kernel."""
    from pipeline.results import AdaptedForm

    name = f"debian-{line}" + ("-prefix" if prefix else "")
    release = DOM0[line]
    base = _hexid(name, "base")
    k = KernelResult(
        name=name,
        ref=name,
        remote=".cache/debian-linux.git",
        fetch=FetchResult(status="ok", ref=name, commit=base, duration_s=2.1),
    )
    if prefix and line == "7.2":  # 7.x reads the driver state with the device: hunk 2 cannot apply
        hunk = f"{XENBUS}: @@ -374,8 +375,7 @@ static int xen_pcibk_reconfigure(struct"
        k.apply = ApplyResult(
            status="conflict",
            base_commit=base,
            head_commit=base,
            patches=[
                PatchApply(
                    subject=SUBJECT, status="conflict", detail=f"does not apply: {hunk}", files=[XENBUS], hunks=[hunk]
                )
            ],
        )
        k.build = BuildResult(status="skipped", detail="the series does not apply")
        return k
    if prefix:
        head = _hexid(name, "head")
        k.apply = ApplyResult(
            status="applied",
            base_commit=base,
            head_commit=head,
            patches=[PatchApply(subject=SUBJECT, status="applied", commit=head, detail="applies cleanly")],
        )
    else:
        revert = REVERTS.get(line, "patches/controls/revert-c81d3d246025.patch")
        adapted = line == "7.2"
        form = AdaptedForm(
            revert=revert,
            revert_patch_id=_hexid(revert),
            reverts_commit="c81d3d246025",
            lines_verbatim=8 if adapted else 9,
            series_lines=["if (xenbus_read_driver_state(pdev->xdev->nodename) != state)"] if adapted else [],
            tree_lines=["if (xenbus_read_driver_state(pdev->xdev, pdev->xdev->nodename) != state)"] if adapted else [],
        )
        words = f"{form.lines_verbatim} line(s) verbatim" + (", 1 in another form" if adapted else "")
        k.apply = ApplyResult(
            status="already-applied",
            base_commit=base,
            head_commit=base,
            patches=[
                PatchApply(
                    subject=SUBJECT,
                    status="already-applied",
                    evidence="control-revert",
                    adapted=form,
                    detail=f"the tree has this change in this line's form: its revert of c81d3d246025 ({revert})"
                    f" applies cleanly; {words}",
                )
            ],
        )
    srcversion = _hexid(name, "srcversion")[:23].upper()
    k.build = built(release, srcversion, _hexid(name, "control")[:23].upper(), f"{name}/build.log", duration_s=31.0)
    k.deploy = [DeployResult(status="ok", host="lab", original="stock", srcversion=srcversion, restored=True)]
    tool = Toolstack(xen_version=XEN_417.xen_version, xl_version=XEN_417.xl_version, dom0_kernel=release)
    k.tests = _observed(vf_tests("lab", "series", 3) + vf_tests("lab", "control", 1), tool, PER_DEVICE)
    return k


def k_stable_3way() -> KernelResult:
    """6.6.y from kernel.org: a 3-way merge, one new warning, tested on two hosts of other Xen versions."""
    head = "66aa66bb66cc66dd66ee66ff6600112233445566"
    warning = f"{XENBUS}:381:6: warning: unused variable 'err' [-Wunused-variable]"
    k = stable_row(
        "6.6",
        "6600aa11bb22cc33dd44ee55ff66778899aabbcc",
        apply=ApplyResult(
            status="applied",
            base_commit="6600aa11bb22cc33dd44ee55ff66778899aabbcc",
            head_commit=head,
            patches=[
                PatchApply(subject=SUBJECT, status="applied-3way", commit=head, detail="applied with a 3-way merge")
            ],
        ),
        build=built(
            "6.6.63",
            "6A6B6C6D6E6F606162636465",
            "C6C6C6C6C6C6C6C6C6C6C6C",
            "6.6.y/build.log",
            mode="full",
            duration_s=612.0,
            checkpatch=[],
            warnings=[warning],
            new_warnings=[warning],
        ),
        deploy=[
            DeployResult(status="ok", host=h, original="stock", srcversion="6A6B6C6D6E6F606162636465", restored=True)
            for h in ("xen1", "xen2")
        ],
    )
    xen1 = Toolstack(xen_version="4.17.7", xl_version="4.17.7+13-g2445b30a44-0+deb12u1", dom0_kernel="6.6.63")
    xen2 = Toolstack(xen_version="4.14.6", xl_version="4.14.6-1", dom0_kernel="6.6.63")
    k.tests = _observed(vf_tests("xen1", "series", 3) + vf_tests("xen1", "control", 1), xen1, PER_DEVICE)
    # libxl 4.14 writes every device in one transaction: the race cannot happen, the control passes
    k.tests += _observed(vf_tests("xen2", "series", 3) + vf_tests("xen2", "control", 3), xen2, ONE_TX)
    return k


def lines_run(run_id: str = "20250102T000000-3") -> RunResult:
    from pipeline.verdict import apply_verdicts

    kernels = [k_line(line, prefix) for line in DOM0 for prefix in (False, True)] + [k_stable_3way()]
    run = RunResult(
        run_id=run_id,
        status="complete",
        started="2025-01-02T00:00:00+00:00",
        finished="2025-01-02T01:10:00+00:00",
        series=series(1),
        kernels=kernels,
        hosts=["lab", "xen1", "xen2"],
    )
    apply_verdicts(run.kernels)
    return run
