"""Apply stage: the series on a fresh branch of the kernel's worktree, one status per patch.

Order per patch: clean forward apply (applied / applied-offset); reverse apply
(already-applied, same form); a commit in history with the same subject or
patch-id (already-applied, naming it); the kernel's control revert, a revert of
this very patch adapted to the line, applying cleanly (already-applied in the
line's form: `adapted_form`); the patch's change present in another form
(already-applied, "matched by content"); `git am -3` (applied-3way); otherwise
conflict. Each already-applied records which of these showed it
(PatchApply.evidence). A conflict resets the branch to the base: no
half-applied series is ever left behind.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import PROJECT_ROOT
from .results import AdaptedForm, ApplyResult, FetchResult, PatchApply, PatchInfo, SeriesInfo
from .series import load_patch_file
from .statuses import ApplyStatus, PatchStatus, UpstreamEvidence

_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@.*$", re.M)
_FAILED_RE = re.compile(r"^error: patch failed: (.+):(\d+)$", re.M)
_DOES_NOT_APPLY_RE = re.compile(
    r"^error: (.+): (?:patch does not apply|does not exist in index|No such file or directory)$", re.M
)
_OFFSET_RE = re.compile(r"^Hunk #\d+ succeeded at \d+ (?:\(offset|with fuzz)", re.M)
_HISTORY_LIMIT = 2000  # commits per touched file searched for a patch-id/subject match
_REVERTS_RE = re.compile(r"^This reverts commit ([0-9a-f]{7,40})\b", re.M)


GIT_TIMEOUT_S = 600  # one git call on a worktree; a hung one (a lock, a filesystem) must not hang the run


def _git(worktree: Path, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            ["git", "-C", str(worktree), *args],
            capture_output=True,
            text=True,
            errors="replace",
            input=input,
            check=False,
            timeout=GIT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"git {' '.join(args)}: no answer after {GIT_TIMEOUT_S} s") from None
    if check and proc.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@dataclass
class _Hunk:
    file: str
    header: str
    old_start: int
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed_runs: list[list[str]] = field(default_factory=list)  # consecutive '-' lines


def parse_hunks(text: str) -> list[_Hunk]:
    hunks: list[_Hunk] = []
    current_file = ""
    cur: _Hunk | None = None
    last_was_removed = False
    for line in text.splitlines():
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0]
            current_file = path[2:] if path.startswith("b/") else path
            cur = None
        elif line.startswith("diff --git ") or line.startswith("--- ") or line == "-- ":
            cur = None  # next file, or the mail signature after the last hunk
        elif m := _HUNK_RE.match(line):
            cur = _Hunk(current_file, line, int(m.group(1)))
            hunks.append(cur)
            last_was_removed = False
        elif cur is not None:
            if line.startswith("+"):
                cur.added.append(line[1:])
            elif line.startswith("-"):
                cur.removed.append(line[1:])
                if not last_was_removed:
                    cur.removed_runs.append([])
                cur.removed_runs[-1].append(line[1:])
            elif not (line.startswith(" ") or line == "" or line.startswith("\\")):
                cur = None
            last_was_removed = line.startswith("-")
    return hunks


def _significant(line: str) -> str | None:
    """Normalised code line, or None for blank/comment-only/brace lines that prove nothing."""
    s = " ".join(line.split())
    if not s or s in ("{", "}", "};") or s.startswith(("/*", "*", "//")):
        return None
    return s


def _contains_run(lines: list[str], run: list[str]) -> bool:
    n = len(run)
    return any(lines[i : i + n] == run for i in range(len(lines) - n + 1))


def change_present(worktree: Path, text: str) -> bool:
    """Whether the patch's change is in the tree in some form: every significant added line is
    present in its file, and no run of significant removed lines (those the patch does not add
    back) is still there as a whole."""
    hunks = parse_hunks(text)
    if not hunks:
        return False
    by_file: dict[str, list[str]] = {}
    evidence = 0
    for h in hunks:
        if h.file not in by_file:
            path = worktree / h.file
            if not path.is_file():
                return False
            by_file[h.file] = [s for s in map(_significant, path.read_text(errors="replace").splitlines()) if s]
        lines = by_file[h.file]
        added = {s for s in map(_significant, h.added) if s}
        if not added <= set(lines):
            return False
        for run in h.removed_runs:
            sig = [s for s in map(_significant, run) if s and s not in added]
            if sig and _contains_run(lines, sig):
                return False
        evidence += len(added)
    return evidence > 0


def _significant_lines(hunks: list[_Hunk], side: str) -> list[str]:
    """The hunks' significant added or removed lines, in order, each once."""
    return list(dict.fromkeys(s for h in hunks for s in map(_significant, getattr(h, side)) if s))


def load_control_revert(path: Path | None) -> list[PatchInfo]:
    """The kernel's control revert (config control_revert), parsed; none when not configured or absent."""
    return load_patch_file(path) if path is not None and path.is_file() else []


def _project_name(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def adapted_form(worktree: Path, patch: PatchInfo, revert: PatchInfo, name: str, scratch: Path) -> AdaptedForm | None:
    """The patch's change in the kernel line's own form, shown by the line's revert of it, or None.

    Four facts decide, nothing fuzzy: the revert is named `Revert "<the patch's subject>"` (git
    revert's form, so it is a revert of this patch and no other), it touches only the patch's files,
    it removes at least one line the patch adds, and it applies cleanly here (`git apply --check`:
    every line it removes, with its context, is in the tree verbatim). The lines recorded are what a
    reader checks the adaptation by; they decide nothing."""
    if revert.subject != f'Revert "{patch.subject}"' or not revert.files or not set(revert.files) <= set(patch.files):
        return None
    added = _significant_lines(parse_hunks(patch.text), "added")
    removed = _significant_lines(parse_hunks(revert.text), "removed")
    verbatim = [s for s in added if s in set(removed)]
    if not verbatim:
        return None
    scratch.write_text(revert.text)
    if _git(worktree, "apply", "--check", str(scratch), check=False).returncode:
        return None
    m = _REVERTS_RE.search(revert.text)
    return AdaptedForm(
        revert=name,
        revert_patch_id=revert.patch_id,
        reverts_commit=m.group(1) if m else "",
        lines_verbatim=len(verbatim),
        series_lines=[s for s in added if s not in set(removed)],
        tree_lines=[s for s in removed if s not in set(added)],
    )


def _adapted_detail(form: AdaptedForm) -> str:
    what = f"revert of {form.reverts_commit}" if form.reverts_commit else "revert"
    return (
        f"the tree has this change in this line's form: its {what} ({form.revert}) applies cleanly; "
        f"{form.lines_verbatim} added line(s) verbatim, {len(form.series_lines)} in another form"
    )


def _history_match(worktree: Path, patch: PatchInfo) -> str:
    """A commit in the tree's history with the same subject or patch-id (shallow trees have none)."""
    if not patch.files:
        return ""
    log = _git(
        worktree, "log", f"-{_HISTORY_LIMIT}", "--format=%H%x09%s", "HEAD", "--", *patch.files, check=False
    ).stdout
    for line in log.splitlines():
        sha, _, subject = line.partition("\t")
        if subject.strip() == patch.subject:
            return sha
    if patch.patch_id and log:
        shas = [line.split("\t")[0] for line in log.splitlines()][:200]
        # diffs limited to the patch's files: a root commit of an imported tree is otherwise huge
        shown = _git(worktree, "show", "--format=commit %H", *shas, "--", *patch.files, check=False).stdout
        ids = subprocess.run(
            ["git", "patch-id", "--stable"], input=shown, capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        ).stdout
        for line in ids.splitlines():
            pid, _, sha = line.partition(" ")
            if pid == patch.patch_id:
                return sha
    return ""


def _conflict_detail(text: str, stderr: str) -> tuple[list[str], list[str]]:
    files: list[str] = []
    hunks: list[str] = []
    parsed = parse_hunks(text)
    for m in _FAILED_RE.finditer(stderr):
        path, line = m.group(1), int(m.group(2))
        if path not in files:
            files.append(path)
        for h in parsed:
            if h.file == path and h.old_start == line:
                hunks.append(f"{path}: {h.header}")
    for m in _DOES_NOT_APPLY_RE.finditer(stderr):
        if m.group(1) not in files:
            files.append(m.group(1))
    return files, hunks


def _refname_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def branch_name(series: SeriesInfo, run_id: str, kernel: str) -> str:
    # branches live in the shared cache: one per kernel and run, or rows would move each other's
    return f"pv/{_refname_part(run_id)}/{_refname_part(kernel)}/{_refname_part(series.name)}-v{series.revision}"


def apply_series(
    fetch: FetchResult,
    series: SeriesInfo,
    run_id: str,
    progress=print,
    label: str = "",
    control_revert: Path | None = None,
) -> ApplyResult:
    """control_revert: the kernel's revert of the upstream fix (config control_revert), the evidence
    for a patch already in the tree in that line's form (adapted_form)."""
    t0 = time.monotonic()
    wt = Path(fetch.worktree)
    reverts = load_control_revert(control_revert)
    revert_name = _project_name(control_revert) if control_revert else ""
    result = ApplyResult(base_commit=fetch.commit, branch=branch_name(series, run_id, label or wt.name))
    _git(wt, "switch", "--quiet", "--force-create", result.branch, fetch.commit)
    conflicted = False
    with tempfile.TemporaryDirectory(prefix="pv-apply-") as tmp:
        for i, patch in enumerate(series.patches, 1):
            pa = PatchApply(subject=patch.subject, status=PatchStatus.NOT_ATTEMPTED)
            result.patches.append(pa)
            if conflicted:
                pa.detail = "an earlier patch of the series conflicts"
                continue
            pfile = Path(tmp) / f"{i:04d}.patch"
            pfile.write_text(patch.text)
            check = _git(wt, "apply", "--check", "--verbose", str(pfile), check=False)
            if check.returncode == 0:
                am = _git(wt, "am", "--keep-cr", "--quiet", str(pfile), check=False)
                if am.returncode == 0:
                    offset = bool(_OFFSET_RE.search(check.stderr + check.stdout))
                    pa.status = PatchStatus.APPLIED_OFFSET if offset else PatchStatus.APPLIED
                    pa.commit = _git(wt, "rev-parse", "HEAD").stdout.strip()
                    pa.detail = "hunks applied at an offset" if offset else "applies cleanly"
                    progress(f"apply {label}: [{i}/{len(series.patches)}] {pa.status}: {patch.subject}")
                    continue
                _git(wt, "am", "--abort", check=False)
            if _git(wt, "apply", "--check", "--reverse", str(pfile), check=False).returncode == 0:
                pa.status, pa.evidence = PatchStatus.ALREADY_APPLIED, UpstreamEvidence.REVERSE_APPLY
                pa.upstream_commit = _history_match(wt, patch)
                pa.detail = "the tree already has this change (the patch reverse-applies)"
                if pa.upstream_commit:
                    pa.detail += f"; upstream commit {pa.upstream_commit[:12]}"
            elif sha := _history_match(wt, patch):
                pa.status, pa.upstream_commit, pa.evidence = PatchStatus.ALREADY_APPLIED, sha, UpstreamEvidence.HISTORY
                pa.detail = f"upstream commit {sha[:12]} has the same subject or patch-id"
            elif form := next(
                (f for r in reverts if (f := adapted_form(wt, patch, r, revert_name, pfile.with_suffix(".revert")))),
                None,
            ):
                pa.status, pa.evidence, pa.adapted = PatchStatus.ALREADY_APPLIED, UpstreamEvidence.CONTROL_REVERT, form
                pa.detail = _adapted_detail(form)
            elif change_present(wt, patch.text):
                pa.status, pa.evidence = PatchStatus.ALREADY_APPLIED, UpstreamEvidence.CONTENT
                pa.detail = "matched by content: the tree has this change in another form (no commit found in history)"
            else:
                am = _git(wt, "am", "--keep-cr", "--quiet", "-3", str(pfile), check=False)
                if am.returncode == 0:
                    pa.status = PatchStatus.APPLIED_3WAY
                    pa.commit = _git(wt, "rev-parse", "HEAD").stdout.strip()
                    pa.detail = "applied with a 3-way merge"
                else:
                    _git(wt, "am", "--abort", check=False)
                    pa.status = PatchStatus.CONFLICT
                    pa.files, pa.hunks = _conflict_detail(patch.text, check.stderr)
                    pa.detail = "does not apply: " + (
                        "; ".join(pa.hunks) or ", ".join(pa.files) or check.stderr.strip()[-200:]
                    )
                    conflicted = True
            progress(f"apply {label}: [{i}/{len(series.patches)}] {pa.status}: {patch.subject}")
    if conflicted:
        # no half-applied series: back to the base, worktree clean
        _git(wt, "reset", "--quiet", "--hard", fetch.commit)
        _git(wt, "clean", "-fdq")
    result.head_commit = _git(wt, "rev-parse", "HEAD").stdout.strip()
    result.status = rollup([p.status for p in result.patches])
    result.duration_s = round(time.monotonic() - t0, 2)
    result.detail = ", ".join(f"{p.status}" for p in result.patches)
    return result


def rollup(statuses: list[PatchStatus]) -> ApplyStatus:
    """Series status on one kernel from its patches' statuses."""
    if not statuses:
        return ApplyStatus.NOT_RUN
    if PatchStatus.CONFLICT in statuses:
        return ApplyStatus.CONFLICT
    if all(s == PatchStatus.ALREADY_APPLIED for s in statuses):
        return ApplyStatus.ALREADY_APPLIED
    return ApplyStatus.APPLIED
