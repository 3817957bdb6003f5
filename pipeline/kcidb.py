"""KernelCI KCIDB v5 of a run (kcidb.json): a checkout per kernel (base + series, with the
series' patchset_hash), its build and its tests; ids `pciback_verify:<run>:<kernel>...`.
Validated with kcidb-io's schema when that package is installed, else by the structural rules
of the schema this module relies on. Statuses map from their Kind (pipeline/statuses.py).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .results import RunResult, SeriesInfo
from .statuses import Kind
from .util import xmlsafe
from .verdict import verdict_of

KCIDB_ORIGIN = "pciback_verify"
KCIDB_VERSION = {"major": 5, "minor": 0}
# each status maps from its Kind, the same way as in every report (report.py)
KCIDB = {Kind.OK: "PASS", Kind.FAIL: "FAIL", Kind.ERROR: "ERROR", Kind.SKIP: "SKIP", Kind.INTERRUPTED: "MISS"}


def patchset_hash(series: SeriesInfo) -> str:
    """KCIDB patchset_hash: sha256 over the newline-terminated sha256 hex digests of the patches, in order.

    Uses the stored value when the patch texts are gone (a run re-rendered from results.json).
    """
    texts = [p.text for p in series.patches]
    if texts and all(texts):
        lines = "".join(hashlib.sha256(t.encode()).hexdigest() + "\n" for t in texts)
        return hashlib.sha256(lines.encode()).hexdigest()
    return series.patchset_hash


def render_kcidb(run: RunResult) -> dict[str, Any]:
    """KCIDB v5 I/O data for the run: a checkout per kernel (base + series), its build and tests."""
    o = KCIDB_ORIGIN
    phash = patchset_hash(run.series)
    first = run.series.patches[0] if run.series.patches else None
    data: dict[str, Any] = {"version": dict(KCIDB_VERSION), "checkouts": [], "builds": [], "tests": []}
    for k in run.kernels:
        v, d = verdict_of(k)
        cid = f"{o}:{run.run_id}:{k.name}"
        checkout: dict[str, Any] = {
            "id": cid,
            "origin": o,
            "tree_name": k.name,
            "git_repository_branch": k.ref,
            "patchset_hash": phash,
            "comment": f"{run.series.name} v{run.series.revision}",
            "misc": {"remote": k.remote, "apply_status": k.apply.status, "verdict": v, "verdict_detail": d},
        }
        if k.remote.startswith("https://"):
            checkout["git_repository_url"] = k.remote
        if re.fullmatch(r"[0-9a-f]{40}", k.fetch.commit or ""):
            checkout["git_commit_hash"] = k.fetch.commit
        if first and first.message_id:
            checkout["message_id"] = first.message_id.strip("<>")
        if run.started:
            checkout["start_time"] = run.started
        if k.apply.status.kind in (Kind.OK, Kind.FAIL):
            checkout["valid"] = k.apply.status.kind is Kind.OK
        data["checkouts"].append(checkout)

        b = k.build
        if b.status.kind not in (Kind.OK, Kind.FAIL, Kind.ERROR):
            continue  # no build was attempted
        bid = f"{cid}:build"
        build: dict[str, Any] = {
            "id": bid,
            "checkout_id": cid,
            "origin": o,
            "architecture": "x86_64",
            "config_name": b.mode or "headers",
            "duration": float(b.duration_s),
            "status": KCIDB[b.status.kind],
            "misc": {
                "module": "xen-pciback.ko",
                "vermagic": b.vermagic,
                "srcversion": b.srcversion,
                "new_warnings": list(b.new_warnings),
            },
        }
        if b.errors:
            build["log_excerpt"] = xmlsafe("\n".join(b.errors))[:16384]
        data["builds"].append(build)
        for i, t in enumerate(k.tests):
            part = "negative-control." if t.module == "control" else ""
            test = {
                "id": f"{bid}:{t.module}:{t.name}:{t.host}:{i}",
                "build_id": bid,
                "origin": o,
                "path": f"xen-pciback.{part}{t.name}",
                "status": KCIDB[t.outcome.kind],
                "duration": float(t.duration_s),
                "number": {"value": float(t.seen), "unit": "devices"},
                "environment": {"comment": f"Xen host {t.host}", "misc": {"host": t.host}},
                "misc": {
                    "module": t.module,
                    "outcome": str(t.outcome),
                    "expected": t.expected,
                    "seen": t.seen,
                    "backend": t.backend,
                },
            }
            if t.teardown_error:
                test["misc"]["teardown_error"] = t.teardown_error
            if t.reason:
                test["log_excerpt"] = xmlsafe(t.reason)
            data["tests"].append(test)
    return data


def _minimal_kcidb_check(data: dict[str, Any]) -> None:
    """Without kcidb-io: the structural rules of the KCIDB v5 schema this module relies on."""
    idre = re.compile(r"^[a-z0-9_]+:[^\0]*$")
    if data.get("version", {}).get("major") != KCIDB_VERSION["major"]:
        raise ValueError(f"kcidb: version {data.get('version')!r}")
    need = {
        "checkouts": ["id", "origin"],
        "builds": ["checkout_id", "id", "origin"],
        "tests": ["build_id", "id", "origin"],
    }
    for kind, keys in need.items():
        for obj in data.get(kind, []):
            for key in keys:
                if key not in obj:
                    raise ValueError(f"kcidb {kind}: missing {key}")
                if key.endswith("id") and not idre.match(obj[key]):
                    raise ValueError(f"kcidb {kind}: bad {key} {obj[key]!r}")


def validate_kcidb(data: dict[str, Any]) -> str:
    """Validate with kcidb-io's schema when installed; returns what validated it. Raises on invalid data."""
    try:
        import kcidb_io
    except ImportError:
        _minimal_kcidb_check(data)
        return "minimal built-in check (kcidb-io not installed)"
    schema = kcidb_io.schema.V5_0
    schema.validate(data)
    return f"kcidb-io schema v{schema.major}.{schema.minor}"
