#!/usr/bin/env python3
"""Soak: vf-boot-3 N times with the fixed module and N times with the control (fix reverted).

    .venv/bin/python bench/soak_vf.py [-n 20] [--keep-lab]

Boots (or reuses) the built-in lab, builds both modules as `invoke verify` builds the lab's line,
deploys each in turn, runs vf-boot-3 N times, restores the original module, and prints
pass/fail counts and the median time per test case. Target: fixed 20/20 pass, control
20/20 fail, 0 faults absorbed (printed, each with where and how) — a single flake in either is
a finding. The guest is the one a run makes (pv.guest_kernel). Exit 0 only on zero flakes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # labmodules


from labmodules import build_pair  # noqa: E402

from pipeline import absorbed, lab, provision  # noqa: E402
from pipeline.config import project_settings  # noqa: E402
from pipeline.deploy import deploy, preflight, restore  # noqa: E402
from pipeline.host import Host  # noqa: E402
from pipeline.hostlock import HostLock  # noqa: E402
from pipeline.providers import run_guest  # noqa: E402
from pipeline.vftest import vf_boot  # noqa: E402


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("-n", type=int, default=20, help="runs per module (default 20)")
    ap.add_argument("--vfs", type=int, default=3, help="VFs per guest (default 3)")
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab running if this script booted it")
    args = ap.parse_args()

    settings = project_settings()
    was_running = lab.status(settings, probe=False).running
    hc = lab.ensure_up(settings, say)
    rows: list[tuple] = []
    faults: list = []
    try:
        with tempfile.TemporaryDirectory(prefix="soak-vf-") as tmp:
            mods = build_pair(settings, Path(tmp), say)
            # the guest a run would make (pv.guest_kernel), and every fault the retries absorb
            guests = provision.RunGuests(settings, f"soak-vf-{os.getpid()}", {}, say)
            # the host lock, like a pipeline run: a `verify` started meanwhile waits instead of
            # "recovering" the host from under the soak
            with (
                absorbed.collect(faults),
                Host(hc) as host,
                HostLock(host, f"soak-vf-{os.getpid()}", say).acquire(),
            ):
                try:
                    image = run_guest(guests, host)
                    for label, want_pass in (("series", True), ("control", False)):
                        row = soak(host, mods[label], label, image, args)
                        if row is None:
                            return 2
                        rows.append((label, want_pass, *row))
                finally:
                    guests.remove(host)
    finally:
        if not was_running and not args.keep_lab:
            lab.down(settings, say)

    flakes = 0
    print(f"{'module':<8} {'expect':<6} {'pass':>5} {'fail':>5} {'error':>5} {'median_s':>9}  seen-counts")
    for label, want_pass, p, f, e, med, seen in rows:
        flakes += (f if want_pass else p) + e
        counts = ", ".join(f"{k}:{v}" for k, v in sorted(seen.items()))
        print(f"{label:<8} {'pass' if want_pass else 'fail':<6} {p:>5} {f:>5} {e:>5} {med:>9.1f}  {counts}")
    print(f"flakes: {flakes}")
    print(absorbed.tally(faults))
    for fault in faults:
        print(f"    {absorbed.describe(fault)}")
    return 0 if flakes == 0 else 1


def soak(host, b, label: str, image, args) -> tuple | None:
    """vf-boot-N args.n times with one module deployed: (passed, failed, errored, median s, seen counts)."""
    why = preflight(host, b, args.vfs)
    if why:
        say(f"preflight refused {label}: {why}")
        return None
    d = deploy(host, Path(b.module), b.srcversion, say)
    if d.status != "ok":
        say(f"deploy of {label} failed: {d.detail}")
        return None
    times, passed, errored, seen = [], 0, 0, {}
    try:
        for i in range(1, args.n + 1):
            r = vf_boot(host, args.vfs, label, image, lambda m: None)
            times.append(r.duration_s)
            passed += r.passed
            # no guest result (ssh, xl, libxl trouble): a flake whatever the module
            errored += r.outcome == "error"
            seen[r.seen] = seen.get(r.seen, 0) + 1
            say(f"[{label} {i}/{args.n}] {r.outcome.upper()} {r.duration_s:.1f}s {r.reason}")
    finally:
        restore(host, d, say)
    return passed, args.n - passed - errored, errored, statistics.median(times), seen


if __name__ == "__main__":
    sys.exit(main())
