#!/usr/bin/env python3
"""The toolstack axis' figures: per lab host (one Debian suite, one Xen each) its image build time,
disk and boot to SSH-ready; then the wall time of `invoke verify --matrix toolstacks` and what each
case saw (seen/expected, the creation's num_devs transactions observed in oxenstored's log).

    .venv/bin/python bench/bench_toolstacks.py                  # build (if needed), boot, verify
    .venv/bin/python bench/bench_toolstacks.py --no-verify      # the labs only
    .venv/bin/python bench/bench_toolstacks.py --results runs/latest/results.json   # a run's cases only

A lab whose image is up to date is not rebuilt: its build time is the one its manifest recorded
(`built` says which). Run it on stopped labs: each is booted, timed and powered off again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import PROJECT_ROOT, lab, labsuites  # noqa: E402
from pipeline.config import project_settings  # noqa: E402


def progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def lab_figures(settings, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        s = labsuites.for_name(settings, name)
        if lab.status(s, probe=False).running:
            progress(f"{name}: running; powering it off first (the boot is timed from cold)")
            lab.down(s, progress)
        t = time.monotonic()
        info = lab.build(s, progress)
        build_s = time.monotonic() - t if info.rebuilt else float(info.manifest.get("duration_s") or 0)
        t = time.monotonic()
        lab.up(s, progress)
        boot_s = time.monotonic() - t
        lab.down(s, progress)
        du = lab.disk_usage(s)
        m = info.manifest
        rows.append(
            {
                "host": name,
                "suite": s.lab.suite,
                "xen": m.get("xen_package_version", ""),
                "dom0": m.get("dom0_kernel_release", ""),
                "build_s": round(build_s, 1),
                "built": "now" if info.rebuilt else f"earlier ({m.get('built_at', '?')})",
                "image_mb": round(du["image"] / 2**20),
                "dir_mb": round(du["lab_dir"] / 2**20),
                "rootfs_mb": round(int(m.get("rootfs_bytes") or 0) / 2**20),
                "boot_s": round(boot_s, 1),
            }
        )
    return rows


def print_labs(rows: list[dict]) -> None:
    print(f"{'host':12} {'suite':9} {'Xen':28} {'build s':>8} {'image MB':>9} {'dir MB':>7} {'boot s':>7}  built")
    for r in rows:
        print(
            f"{r['host']:12} {r['suite']:9} {r['xen']:28} {r['build_s']:8.1f} {r['image_mb']:9d} {r['dir_mb']:7d}"
            f" {r['boot_s']:7.1f}  {r['built']}"
        )


def print_cases(data: dict) -> None:
    print(
        f"{'kernel':18} {'host':12} {'case':11} {'module':8} {'seen':>5} {'outcome':8} {'xs txns':>7}  num_devs  verdict"
    )
    for k in data["kernels"]:
        for t in k["tests"]:
            xs = t.get("xs_creation") or {}
            txns = xs.get("transactions", "-") if xs.get("observed") else "-"
            print(
                f"{k['name']:18} {t['host']:12} {t['name']:11} {t['module']:8} {t.get('seen', '-')!s:>2}/{t.get('expected', '-')!s:<2}"
                f" {t.get('outcome', ''):8} {txns!s:>7}  {xs.get('num_devs', '-')!s:9} {k['verdict']}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", nargs="*", default=None, help="lab hosts (default: every lab host of the inventory)")
    ap.add_argument("--no-verify", action="store_true", help="the labs only, no `invoke verify --matrix toolstacks`")
    ap.add_argument("--results", help="print the cases of this results.json and stop")
    args = ap.parse_args()
    if args.results:
        print_cases(json.loads(Path(args.results).read_text()))
        return 0
    settings = project_settings()
    names = args.hosts or [n for n, h in settings.hosts.items() if h.lab]
    print_labs(lab_figures(settings, names))
    if args.no_verify:
        return 0
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "verify", "--matrix", "toolstacks", "--lab-down"],
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        check=False,
    )
    wall = time.monotonic() - t
    print(f"invoke verify --matrix toolstacks: {wall:.0f} s wall, exit {proc.returncode}")
    res = settings.path(settings.results_root) / "latest" / "results.json"
    if res.exists():
        print_cases(json.loads(res.read_text()))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
