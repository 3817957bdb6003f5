#!/usr/bin/env python3
"""Wall time of the default `invoke verify`, warm and cold, with each step's total and share,
beside the floor measured in the same run.

    .venv/bin/python bench/bench_verify.py            # warm: lab image built, lab down, caches warm
    .venv/bin/python bench/bench_verify.py --cold     # cold: a fresh clone (own .cache: source import,
                                                      # lab image, builds), packages present
    .venv/bin/python bench/bench_verify.py --matrix debian   # warm, another matrix: also each row's
                                                      # time and each host stage (boots per run)
    .venv/bin/python bench/bench_verify.py --results runs/X/results.json   # only the table of a run

Run it on an otherwise idle machine, with no other lab running (it takes /work-style lab lock
holders into account only through `flock`, e.g. `flock /work/lab.lock .venv/bin/python bench/...`).

Floor (what the run cannot go below on this machine): one dom0 boot (the run's own lab_ready_s) +
the module builds it ran (build steps series/baseline/control) + one bare guest start per test
case (a PV guest with no device, `xl create` to its first report, measured after the run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import lab  # noqa: E402
from pipeline.config import project_settings  # noqa: E402


def say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def step_totals(res: dict) -> dict[str, float]:
    """Seconds per step over the whole run: run-level, build, deploy and test steps by name."""
    tot: dict[str, float] = defaultdict(float)
    for k, v in res.get("steps", {}).items():
        tot[f"run.{k}"] += v
    for k in res["kernels"]:
        for name, v in k["build"].get("steps", {}).items():
            tot[f"build.{name}"] += v
        for d in k["deploy"]:
            for name, v in d.get("steps", {}).items():
                tot[f"deploy.{name}"] += v
        for t in k["tests"]:
            for name, v in t.get("steps", {}).items():
                tot[f"test.{name}"] += v
    return dict(tot)


def bare_guest_start(settings) -> float:
    """`xl create` of a PV test guest with no PCI device to its first report, on the running lab."""
    from pipeline.guest import Guest
    from pipeline.host import Host
    from pipeline.providers import default_guest

    hc = lab.ensure_up(settings, say)
    with Host(hc) as h:
        with Guest(h, "pvtest-bare", default_guest(h, settings), [], 0, "bare") as g:
            t0 = time.monotonic()
            g.create()
            m = g.wait_marker()
            took = time.monotonic() - t0
            assert m is not None, "the bare guest never reported"
    return took


def rows_and_boots(res: dict) -> list[str]:
    """Each row's own time (its build steps, deploys and test cases) and each host stage in the
    order it ran (results.json host_visits): booted or not, the boot, the wait, the stages; then
    lab boots per run against the dom0 kernels the rows needed (one boot each is the target)."""
    lines = [f"{'row':<22} {'build s':>8} {'deploy s':>8} {'tests s':>8} {'cases':>5}  verdict"]
    for k in res["kernels"]:
        b = sum(k["build"].get("steps", {}).values())
        d = sum(x.get("duration_s") or 0 for x in k["deploy"])
        t = sum(x.get("duration_s") or 0 for x in k["tests"])
        lines.append(f"{k['name']:<22} {b:8.1f} {d:8.1f} {t:8.1f} {len(k['tests']):>5}  {k['verdict']}")
    visits = res.get("host_visits", [])
    if visits:
        lines.append(f"{'host stage':<22} {'booted':>6} {'boot s':>7} {'wait s':>7} {'stages s':>8}  rows")
        for v in visits:
            lines.append(
                f"{v['host']:<22} {'yes' if v['booted'] else 'no':>6} {v['boot_s']:7.1f} {v['wait_s']:7.1f} "
                f"{v['stages_s']:8.1f}  {', '.join(v['rows'])}"
            )
        kernels = {
            r for k in res["kernels"] for r in [k["build"].get("kernel_release")] if r and k["build"].get("module")
        }
        boots = sum(1 for v in visits if v["booted"])
        lines.append(f"lab boots per run: {boots} for {len(kernels)} dom0 kernel(s) the built rows needed")
    return lines


def table(res: dict, wall: float, bare_s: float | None) -> str:
    tot = step_totals(res)
    tests = [t for k in res["kernels"] for t in k["tests"] if t.get("duration_s")]
    boots = [t["duration_s"] for t in tests if t["name"].startswith("vf-boot") and t.get("steps")]
    lines = [f"wall time {wall:.0f} s ({wall / 60:.1f} min), status {res['status']}"]
    for k in res["kernels"]:
        lines.append(
            f"  {k['name']:<20} verdict {k['verdict']:<18} "
            + " ".join(f"{t['name']}[{t['module']}]={t['duration_s']:.0f}s" for t in k["tests"])
        )
    lines += rows_and_boots(res)
    if boots:
        lines.append(
            f"median vf-boot case {statistics.median(boots):.1f} s over {len(boots)} (min {min(boots):.1f}, max {max(boots):.1f})"
        )
    lines.append(f"{'step':<24} {'total s':>8} {'share':>6}")
    for name, v in sorted(tot.items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<24} {v:8.1f} {100 * v / wall:5.1f}%")
    builds = sum(v for n, v in tot.items() if n in ("build.series", "build.baseline", "build.control"))
    # rows build side by side: build steps can add up to more than the rows' own wall time
    builds = min(builds, tot.get("run.rows", builds))
    lines.append("(build.* and deploy/test steps of rows running side by side can share more than 100% together)")
    # the boot itself (QEMU start to dom0 answering); lab_boot is only what the run still waited
    # for when the boot began beside the builds (runner.prepare_hosts)
    boot = tot.get("run.lab_ready_s", tot.get("run.lab_boot", 0.0))
    floor = boot + builds + (bare_s or 0.0) * len(tests)
    lines.append(
        f"floor {floor:.0f} s = dom0 boot {boot:.0f} s + module builds {builds:.0f} s"
        + (f" + {len(tests)} cases x bare guest start {bare_s:.1f} s" if bare_s else " (bare guest start not measured)")
        + f"; the run took {wall / floor:.1f}x the floor"
        if floor
        else "floor: not measured"
    )
    return "\n".join(lines)


def run_verify(cwd: Path, env: dict[str, str], matrix: str | None = None) -> tuple[float, dict]:
    results_root = Path(tempfile.mkdtemp(prefix="bench-verify-runs-"))
    env = {**env, "INVOKE_PV_RESULTS_ROOT": str(results_root), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    argv = ["./pv", "invoke", "verify", *(["--matrix", matrix] if matrix else [])]
    proc = subprocess.run(argv, cwd=cwd, env=env, check=False)
    wall = time.monotonic() - t0
    path = results_root / "latest" / "results.json"
    if not path.exists():
        raise SystemExit(f"verify exited {proc.returncode} without results")
    return wall, json.loads(path.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cold", action="store_true", help="a fresh clone with its own .cache (slow: source import, image)"
    )
    ap.add_argument("--matrix", help="another matrix of invoke.yaml (warm only), e.g. debian")
    ap.add_argument("--results", help="print the table of an existing run's results.json and exit")
    ap.add_argument("--wall", type=float, help="with --results: the wall time to share against")
    args = ap.parse_args()

    if args.results:
        res = json.loads(Path(args.results).read_text())
        print(table(res, args.wall or sum(res.get("steps", {}).values()), None))
        return 0

    settings = project_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_PV_")}
    if args.cold:
        clone = Path(tempfile.mkdtemp(prefix="bench-verify-clone-")) / "pciback-verify"
        os.chmod(clone.parent, 0o711)  # the build sandbox's uid must pass through to the clone's cache
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        cwd = clone
        env["INVOKE_PV_LAB_DIR"] = str(clone / ".cache" / "lab")
        settings.lab.dir = env["INVOKE_PV_LAB_DIR"]
    else:
        cwd = ROOT
        lab.build(settings, say)  # warm means: image built
    lab.down(settings, say)  # the run boots its own lab: its boot is part of the figure
    if args.matrix and args.cold:
        raise SystemExit("--matrix runs warm only (a cold run of it is its first run)")
    wall, res = run_verify(cwd, env, args.matrix)
    bare = bare_guest_start(settings)
    lab.down(settings, say)
    what = f"--matrix {args.matrix}" if args.matrix else "default"
    print(("cold" if args.cold else "warm") + f" {what} `invoke verify`")
    print(table(res, wall, bare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
