"""Build stage benchmark: ratios measured side by side in one run.

- warm rebuild after a new series revision (build_kernel, full mode, prepared
  tree cached) vs a bare `make M=drivers/xen/xen-pciback modules` on the same
  prepared tree after the same source change (target: <= 1.2x);
- cold full-tree build_kernel (tinyconfig + dom0 fragment, modules_prepare);
- cold headers-mode build_kernel (against Debian's linux-headers);
- peak memory of the children (make, gcc) and of this process;
- warm headers-mode rebuild inside the bubblewrap sandbox vs outside it
  (--no-sandbox), alternating revisions in one run (target: <= 1.1x);
  `--sandbox-only` measures just that.

Needs the Debian source imported (`invoke source.import`) and uses the
checkout `.cache/test-build/full-tree` the build tests create (made here when
missing). Run: `.venv/bin/python bench/bench_build.py [--revisions N]`.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import PROJECT_ROOT  # noqa: E402
from pipeline.build import build_kernel  # noqa: E402
from pipeline.buildmodule import MODULE_DIR  # noqa: E402
from pipeline.config import BuildConfig, KernelConfig, Settings  # noqa: E402
from pipeline.kernelsrc import import_debian_source  # noqa: E402
from pipeline.results import PatchInfo  # noqa: E402
from pipeline.toolchain import make_jobs  # noqa: E402

XENBUS = f"{MODULE_DIR}/xenbus.c"
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True).stdout.strip()


def quiet(msg: str) -> None:
    pass


def tree(base: str, repo: Path) -> Path:
    wt = PROJECT_ROOT / ".cache" / "test-build" / "full-tree"
    if not (wt / "Makefile").exists():
        clone = wt.parent / "repo.git"
        if not clone.exists():
            git(wt.parent.parent, "clone", "-q", "--shared", "--bare", str(repo), str(clone))
        print("checking out the full tree (once)...", flush=True)
        git(clone, "worktree", "add", "-q", "-f", "--detach", str(wt), base)
    return wt


def revision(wt: Path, base: str, n: int) -> list[PatchInfo]:
    """Revision n of a one-patch series: xenbus.c gets a different unused variable each time."""
    git(wt, "checkout", "-q", "-f", "--detach", base)
    f = wt / XENBUS
    text = f.read_text()
    m = re.search(r"static void xen_pcibk_be_watch\([^)]*\)\n\{\n", text)
    f.write_text(text[: m.end()] + f"\tint pv_bench_rev{n};\n" + text[m.end() :])
    git(wt, "commit", "-q", "-a", "-m", f"xen-pciback: bench revision {n}")
    return [PatchInfo(subject=f"bench revision {n}", text=git(wt, "format-patch", "--stdout", "-1"))]


def timed(fn, *args):
    t0 = time.monotonic()
    out = fn(*args)
    return time.monotonic() - t0, out


def sandbox_ratio(wt: Path, base: str, tmp: Path, revisions: int) -> None:
    """Warm headers-mode rebuilds, sandboxed and unconfined, each with its own cache, alternating."""
    kcfg = KernelConfig(name="bench-sb", remote="r", ref="x", build=BuildConfig(mode="headers"))
    inside = Settings(cache_dir=str(tmp / "cache-in"))
    outside = Settings(cache_dir=str(tmp / "cache-out"))
    outside.sandbox.enabled = False
    patches = revision(wt, base, 100)
    for s in (inside, outside):  # cold builds (baseline, control cached), not timed
        r = build_kernel(s, kcfg, wt, base, patches, tmp / "run-sb-cold", quiet)
        assert r.status == "ok", (r.detail, r.errors)
    times: dict[str, list[float]] = {"in": [], "out": []}
    for n in range(101, 101 + revisions):
        patches = revision(wt, base, n)
        for label, s in (("in", inside), ("out", outside)):
            t, r = timed(build_kernel, s, kcfg, wt, base, patches, tmp / f"run-sb-{label}-{n}", quiet)
            assert r.status == "ok" and r.sandbox.confined == (label == "in"), (r.detail, r.errors)
            times[label].append(t)
    git(wt, "checkout", "-q", "-f", "--detach", base)
    i, o = statistics.median(times["in"]), statistics.median(times["out"])
    print(f"machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; make -j{make_jobs()}")
    print(
        f"warm headers-mode rebuild in the sandbox, median of {revisions}: {i:6.2f} s  {[round(x, 2) for x in times['in']]}"
    )
    print(
        f"warm headers-mode rebuild unconfined,     median of {revisions}: {o:6.2f} s  {[round(x, 2) for x in times['out']]}"
    )
    print(f"ratio sandbox / unconfined: {i / o:.2f}x (target <= 1.1x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--revisions", type=int, default=3, help="warm revisions measured (alternating with bare make)")
    ap.add_argument("--sandbox-only", action="store_true", help="only the sandboxed vs unconfined warm rebuild")
    args = ap.parse_args()

    src = import_debian_source(Settings(), progress=print)
    base = src.commit
    wt = tree(base, src.repo)
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o711)  # the sandbox's uid must pass through to the build caches in it
        sandbox_ratio(wt, base, tmp, args.revisions)
        if args.sandbox_only:
            return
        settings = Settings(cache_dir=str(tmp / "cache"))  # cold: no prepared tree, empty ccache
        full = KernelConfig(
            name="bench-full",
            remote="r",
            ref="x",
            build=BuildConfig(mode="full", base_config="tinyconfig", fragments=["kconfigs/xen-dom0.config"]),
        )
        headers = KernelConfig(name="bench-headers", remote="r", ref="x", build=BuildConfig(mode="headers"))

        patches = revision(wt, base, 0)
        t_full, r = timed(lambda: build_kernel(settings, full, wt, base, patches, tmp / "run-cold", quiet))
        assert r.status == "ok" and not r.prepared_reused, (r.status, r.detail, r.errors)
        steps = re.findall(
            r"^### (.+)\n\$ (?:.*\n)*?### exit status \d+ after ([\d.]+) s", Path(r.log).read_text(), re.M
        )
        hsettings = Settings(cache_dir=str(tmp / "cache-headers"))
        t_headers, rh = timed(lambda: build_kernel(hsettings, headers, wt, base, patches, tmp / "run-h", quiet))
        assert rh.status == "ok", (rh.detail, rh.errors)

        # bare make on the same prepared tree, module objects in the tree's own output dir
        (out,) = list((tmp / "cache" / "build").glob("full-*/out"))
        bare_cmd = ["make", "-C", str(wt), f"O={out}", f"M={MODULE_DIR}", f"-j{make_jobs()}", "modules"]
        subprocess.run(bare_cmd, check=True, capture_output=True)  # first compile of all objects, not timed

        warm, bare = [], []
        for n in range(1, args.revisions + 1):
            patches = revision(wt, base, n)
            t, r = timed(build_kernel, settings, full, wt, base, patches, tmp / f"run-{n}", quiet)
            assert r.status == "ok" and r.prepared_reused and len(r.new_warnings) == 1, (r.detail, r.new_warnings)
            warm.append(t)
            t, _ = timed(lambda: subprocess.run(bare_cmd, check=True, capture_output=True))
            bare.append(t)
        git(wt, "checkout", "-q", "-f", "--detach", base)

    w, b = statistics.median(warm), statistics.median(bare)
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; make -j{make_jobs()}")
    print(f"cold full-tree build_kernel (tinyconfig + xen-dom0, prepare, series+baseline+control): {t_full:6.1f} s")
    for name, secs in steps:
        print(f"    {name:<40} {float(secs):6.1f} s")
    print(f"cold headers-mode build_kernel (series+baseline+control, empty ccache):             {t_headers:6.1f} s")
    print(
        f"warm rebuild after a new revision (build_kernel), median of {len(warm)}: {w:6.2f} s  {[round(x, 2) for x in warm]}"
    )
    print(f"bare make M={MODULE_DIR} modules, same change:     {b:6.2f} s  {[round(x, 2) for x in bare]}")
    print(f"ratio warm / bare: {w / b:.2f}x (target <= 1.2x)")
    print(f"peak RSS: largest child {child:.0f} MiB, this process {me:.0f} MiB")


if __name__ == "__main__":
    main()
