"""`invoke verify` of one matrix of a test's own, on the inventory's labs, as a user runs it: a config
file beside the project's (`invoke -f`), its runs under the test's folder, judged from results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline import PROJECT_ROOT


def verify_matrix(root: Path, matrix: str, rows: list[dict], **pv) -> tuple[subprocess.CompletedProcess, dict | None]:
    """The run's process and its results.json (None when it wrote none); the labs it booted are
    powered off at its end (`--lab-down`). `pv`: more settings of the config file."""
    cfg = root / f"{matrix}.yaml"
    data = {"results_root": str(root / "runs"), **pv, "matrices": {matrix: rows}}
    cfg.write_text(yaml.safe_dump({"pv": data}))
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(cfg), "verify", "--matrix", matrix, "--lab-down"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    res = root / "runs" / "latest" / "results.json"
    return proc, json.loads(res.read_text()) if res.exists() else None
