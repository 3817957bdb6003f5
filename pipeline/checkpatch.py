"""The kernel tree's own scripts/checkpatch.pl on each patch of a series."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .results import CheckpatchResult, PatchInfo

_MSG_RE = re.compile(r"^\S*:\d+: (ERROR|WARNING|CHECK):")
_TOTAL_RE = re.compile(r"total: (\d+) errors, (\d+) warnings, (?:(\d+) checks, )?")

# (cmd, cwd, what, input) -> (returncode, output); the build stage passes its sandboxed runner
Runner = Callable[[list[str], Path, str, str], tuple[int, str]]


def parse_output(subject: str, output: str) -> CheckpatchResult:
    res = CheckpatchResult(subject=subject)
    res.messages = [line for line in output.splitlines() if _MSG_RE.match(line)]
    if m := _TOTAL_RE.search(output):
        res.errors, res.warnings = int(m.group(1)), int(m.group(2))
        res.checks = int(m.group(3) or 0)
    else:  # no summary line (checkpatch crashed): count what was printed
        for line in res.messages:
            kind = _MSG_RE.match(line).group(1)
            if kind == "ERROR":
                res.errors += 1
            elif kind == "WARNING":
                res.warnings += 1
            else:
                res.checks += 1
    return res


def run_checkpatch(tree: Path, patches: list[PatchInfo], run: Runner) -> tuple[list[CheckpatchResult], str]:
    """Check each patch's mbox text with the tree's checkpatch.pl; returns (results, note)."""
    script = tree / "scripts" / "checkpatch.pl"
    if not script.exists():
        return [], f"checkpatch: {script} not found, not run"
    results = []
    for p in patches:
        if not p.text:
            continue
        # --no-tree: the patch is checked alone, not against files of the tree
        cmd = ["perl", str(script), "--no-tree", "--terse", "--show-types", "-"]
        _, out = run(cmd, tree, f"checkpatch: {p.subject}", p.text)
        results.append(parse_output(p.subject, out))
    return results, ""
