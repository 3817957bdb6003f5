"""Hand-built, realistic RunResult objects for the verdict/report/post tests.

- debian-6.1: the fix is already in (upstream c81d3d246025); the tree's module passes
  the VF tests, the control (fix reverted) fails as it must.
- debian-6.1-prefix: the same tree with the fix reverted; the series applies clean,
  builds, passes; the control fails.
- 5.4.y: the series conflicts in xenbus.c.
- 5.10.y: applies with offset, the build fails.
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
                    subject=SUBJECT, status="already-applied", detail="reverse-applies", upstream_commit=UPSTREAM
                )
            ],
        ),
        build=BuildResult(
            status="ok",
            mode="headers",
            module="xen-pciback.ko",
            vermagic="6.1.0-31-amd64 SMP preempt mod_unload modversions",
            srcversion="A1B2C3D4E5F60718293A4B5",
            kernel_release="6.1.0-31-amd64",
            duration_s=28.0,
            log="debian-6.1/build.log",
            checkpatch=[CheckpatchResult(subject=SUBJECT)],
            control_module="control/xen-pciback.ko",
            control_srcversion="F00DF00DF00DF00DF00DF00",
        ),
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


def k_conflict() -> KernelResult:
    return KernelResult(
        name="5.4.y",
        ref="linux-5.4.y",
        remote=STABLE,
        fetch=FetchResult(status="ok", ref="linux-5.4.y", commit="1234567890abcdef1234567890abcdef12345678"),
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
    return KernelResult(
        name="5.10.y",
        ref="linux-5.10.y",
        remote=STABLE,
        fetch=FetchResult(status="ok", ref="linux-5.10.y", commit="abcdefabcdefabcdefabcdefabcdefabcdefabcd"),
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
