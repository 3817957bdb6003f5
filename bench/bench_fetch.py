"""Fetch benchmark (issue 2): the pipeline's fetch against plain git, measured side by side in one run.

  cold:  fetch_kernel of debian-6.1 into an empty cache (full checkout) vs
         `git clone --depth 1 --branch <ref>` of the same remote; time and disk.  target <= 1.1x
  warm:  adding debian-6.1-prefix to the warm cache vs that first fetch.         target <= 0.3x
  also:  the sparse worktree a headers-mode row uses.

Run: .venv/bin/python bench/bench_fetch.py   (imports the Debian source first if needed)
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from pipeline import PROJECT_ROOT  # noqa: E402
from pipeline.config import load_settings  # noqa: E402
from pipeline.fetch import fetch_kernel, remove_worktree  # noqa: E402
from pipeline.kernelsrc import import_debian_source  # noqa: E402


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def main() -> None:
    base = load_settings(data=yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())["pv"])
    src = import_debian_source(base, progress=lambda m: print(m, file=sys.stderr))
    quiet = lambda m: None  # noqa: E731
    with tempfile.TemporaryDirectory(dir=PROJECT_ROOT / ".cache", prefix="bench-") as tmp:
        tmp = Path(tmp)
        kernels = [dataclasses.replace(k, remote=str(src.repo)) for k in base.matrices["default"]]
        s = dataclasses.replace(base, cache_dir=str(tmp / "cache"), matrices={"default": kernels})
        k61, kpre = kernels

        t_clone, _ = timed(
            lambda: subprocess.run(
                ["git", "clone", "-q", "--depth", "1", "--branch", k61.ref, src.repo.as_uri(), str(tmp / "clone")],
                check=True,
            )
        )
        d_clone = du(tmp / "clone")
        t_cold, r_cold = timed(lambda: fetch_kernel(s, k61, "bench", quiet))
        d_cold = du(tmp / "cache")
        t_warm, r_warm = timed(lambda: fetch_kernel(s, kpre, "bench", quiet))
        t_again, r_again = timed(lambda: fetch_kernel(s, k61, "bench2", quiet))
        paths = ["/drivers/xen/xen-pciback/", "/scripts/", "/Makefile"]
        t_sparse, r_sparse = timed(lambda: fetch_kernel(s, kpre, "bench3", quiet, sparse=paths))
        d_sparse = du(Path(r_sparse.worktree))
        for r in (r_cold, r_warm, r_again, r_sparse):
            remove_worktree(s, r.worktree, progress=quiet)

    print(f"{'case':<46} {'time s':>8} {'disk MB':>9} {'objects':>8}")
    print(f"{'git clone --depth 1 (checkout included)':<46} {t_clone:8.1f} {d_clone / 1e6:9.0f} {'':>8}")
    print(
        f"{'cold fetch + full worktree (empty cache)':<46} {t_cold:8.1f} {d_cold / 1e6:9.0f} {r_cold.objects_received:8}"
    )
    print(f"{'add -prefix ref to warm cache (+ worktree)':<46} {t_warm:8.1f} {'':>9} {r_warm.objects_received:8}")
    print(f"{'repeat fetch of the same ref (+ worktree)':<46} {t_again:8.1f} {'':>9} {r_again.objects_received:8}")
    print(
        f"{'sparse worktree of a headers-mode row':<46} {t_sparse:8.1f} {d_sparse / 1e6:9.1f} {r_sparse.objects_received:8}"
    )
    f_cold, f_warm = t_cold - r_cold.checkout_s, t_warm - r_warm.checkout_s
    print(f"{'  of which object transfer (cold / warm -prefix)':<46} {f_cold:8.1f} / {f_warm:.1f}")
    print()
    print(f"cold fetch / git clone:  time {t_cold / t_clone:.2f}x  disk {d_cold / d_clone:.2f}x  (target <= 1.1x)")
    print(
        f"warm -prefix / cold:     time {t_warm / t_cold:.2f}x with a full checkout each; "
        f"fetch alone {f_warm / f_cold:.2f}x  (target <= 0.3x)"
    )


if __name__ == "__main__":
    main()
