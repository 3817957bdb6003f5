#!/usr/bin/env python3
"""Lab figures from one run: image build cold and warm, boot to SSH-ready, guest start to marker, down.

    .venv/bin/python bench/bench_lab.py                 # cold build in a separate lab dir (.cache/lab-bench)
    .venv/bin/python bench/bench_lab.py --dir .cache/lab --no-cold   # the project's lab, warm figures only

The feasibility figures of ../shared/lab/README.md are printed beside them for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from pipeline import lab  # noqa: E402
from pipeline.config import project_settings  # noqa: E402
from pipeline.guest import Guest  # noqa: E402
from pipeline.host import Host  # noqa: E402
from pipeline.providers import default_guest  # noqa: E402

# ../shared/lab/README.md, "Timings" (2-core machine, TCG)
REFERENCE = {
    "build cold": "1 min 38 s (whole image build)",
    "build warm": "- (the scripts always rebuild)",
    "up: QEMU start to SSH-ready": "32 s",
    "guest: xl create to marker (1 VF)": "~17.5 s for 3 VFs (fixed module)",
    "down": "-",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=".cache/lab-bench", help="lab directory to use (default .cache/lab-bench)")
    ap.add_argument("--no-cold", action="store_true", help="keep an existing image: skip the cold build")
    args = ap.parse_args()

    settings = project_settings()
    settings.lab.dir = args.dir
    d = settings.path(args.dir)
    if lab.status(settings, probe=False).running:
        print(f"a lab is running in {d}: run this on a stopped lab", file=sys.stderr)
        return 1

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    fig: dict[str, str] = {}
    if not args.no_cold and d.exists():
        shutil.rmtree(d)
    t = time.monotonic()
    info = lab.build(settings, progress)
    fig["build cold" if info.rebuilt else "build warm"] = f"{time.monotonic() - t:.1f} s"
    t = time.monotonic()
    info2 = lab.build(settings, progress)
    assert not info2.rebuilt
    fig["build warm"] = f"{time.monotonic() - t:.1f} s"

    t = time.monotonic()
    host = lab.up(settings, progress)
    fig["up: QEMU start to SSH-ready"] = f"{time.monotonic() - t:.1f} s"
    try:
        pf = f"/sys/bus/pci/devices/{host.pf_bdf}"
        setup = (
            f"modprobe nvme && modprobe xen-pciback && for i in $(seq 30); do [ -e {pf}/driver ] && break; sleep 1; done; "
            f"echo 1 > {pf}/sriov_numvfs && sleep 2 && xl pci-assignable-add 01:00.1"
        )
        with Host(host) as h:
            h.run(["sh", "-c", setup], timeout=120)
            # the pipeline's own guest path (guest.Guest), as the VF test cases start it
            with Guest(h, "pvtest-labbench", default_guest(h, settings), ["01:00.1"], 1, "bench") as g:
                t = time.monotonic()
                g.create()
                create_s = time.monotonic() - t
                first = g.wait_marker(timeout=120)
                marker_s = time.monotonic() - t
            h.run(["sh", "-c", f"xl pci-assignable-remove -r 01:00.1; echo 0 > {pf}/sriov_numvfs"], check=False)
        fig["guest: xl create to marker (1 VF)"] = (
            f"{marker_s:.1f} s (xl create {create_s:.1f} s; count={first.count if first else '?'})"
        )
    finally:
        t = time.monotonic()
        lab.down(settings, progress)
        fig["down"] = f"{time.monotonic() - t:.1f} s"
    du = lab.disk_usage(settings)
    m = lab.read_manifest(settings) or {}

    print(f"{'step':38} {'this run':42} reference (../shared/lab)")
    for k, v in fig.items():
        print(f"{k:38} {v:42} {REFERENCE.get(k, '')}")
    print(f"{'disk: image allocated (3G sparse)':38} {du['image'] / 2**20:.0f} MiB{'':34} ~950 MB")
    print(f"{'disk: whole lab dir':38} {du['lab_dir'] / 2**20:.0f} MiB")
    print(f"{'dom0 kernel / Xen':38} {m.get('dom0_kernel_release')} / {m.get('xen_package_version')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
