"""Stable-style mails: for each kernel whose verdict needs action, an .eml ready for `git send-email`.

As stable maintainers write them: Subject `FAILED: patch "[PATCH] <subject>" failed to apply to
<X>-stable tree` (or `... fails to build on <X>`, `... fails its VF test on <X>`), In-Reply-To and
References the patch's Message-Id, the reproduce commands (reproduce.py: git fetch, git checkout,
`b4 am`/`git am -3`, the `invoke verify --until STAGE` line) and, for a conflict, the possible
dependencies: earlier commits of the tree touching the conflicting lines (`git log -L`), when the
tree has that history. Written to `<run>/mails/<kernel>.eml`; body: templates/mail/.
"""

from __future__ import annotations

import re
import subprocess
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import jinja2

from .redact import redact
from .report import stable_version
from .reproduce import recipes
from .results import KernelResult, PatchInfo, RunResult
from .statuses import BuildStatus, PatchStatus
from .util import templates
from .verdict import verdict_of

# verdicts a maintainer has to act on, and the mail each gets
KIND = {
    "needs-backport": "apply",
    "build-fails": "build",
    "new-warnings": "build",
    "test-fails": "test",
    "error": "error",
}
DEFAULT_FROM = "pciback-verify <pciback-verify@localhost>"
STABLE = "stable@vger.kernel.org"

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))?")


def _env() -> jinja2.Environment:
    return templates("mail")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120, check=False)


def has_commit(repo: Path, commit: str) -> bool:
    return bool(commit) and _git(repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def dependencies(repo: Path, commit: str, files: list[str], hunks: list[str], limit: int = 5) -> list[str]:
    """`<sha> ("<subject>")` of the commits before `commit` that last touched the lines of each
    conflicting hunk (the old side of its header), newest first; the root commit (an import) is none."""
    out: list[str] = []
    for path in files:
        for h in hunks or []:
            m = _HUNK.search(h)
            if not m:
                continue
            start, n = int(m.group(1)), int(m.group(2) or 1)
            res = _git(repo, "log", f"-L{start},{start + max(n, 1) - 1}:{path}", "-s", "--format=%H %P%x00%s", commit)
            if res.returncode:
                continue
            for line in res.stdout.splitlines():
                if "\0" not in line:
                    continue
                ids, subject = line.split("\0", 1)
                sha, *parents = ids.split()
                entry = f'{sha[:12]} ("{subject}")'
                if parents and entry not in out:
                    out.append(entry)
    return out[:limit]


def subject_line(kind: str, patch: PatchInfo, k: KernelResult) -> str:
    subj = re.sub(r"^\s*\[[^\]]*\]\s*", "", patch.subject)
    version = stable_version(k)
    tail = {
        "apply": f"failed to apply to {version}-stable tree",
        "build": f"fails to build on {version}-stable tree"
        if k.build.status is not BuildStatus.OK
        else f"adds build warnings on {version}-stable tree",
        "test": f"fails its VF test on {version}",
        "error": f"could not be verified on {version}",
    }[kind]
    return f'FAILED: patch "[PATCH] {subj}" {tail}'


def build_mail(
    run: RunResult, k: KernelResult, git_dirs: list[Path], sender: str = DEFAULT_FROM, run_dir: Path | None = None
) -> EmailMessage | None:
    v, detail = verdict_of(k)
    kind = KIND.get(v)
    if not kind or not run.series.patches:
        return None
    conflicting = {p.subject for p in k.apply.patches if p.status is PatchStatus.CONFLICT}
    patch = next((p for p in run.series.patches if p.subject in conflicting), run.series.patches[0])
    deps: list[str] = []
    has_history = False
    if kind == "apply":
        repo = next((g for g in git_dirs if g.is_dir() and has_commit(g, k.fetch.commit)), None)
        if repo is not None:
            has_history = _git(repo, "rev-parse", "--verify", "-q", f"{k.fetch.commit}^").returncode == 0
            for pa in k.apply.patches:
                if pa.status is PatchStatus.CONFLICT:
                    deps += [d for d in dependencies(repo, k.fetch.commit, pa.files, pa.hunks) if d not in deps]
    msgid = patch.message_id.strip()
    if msgid and not msgid.startswith("<"):
        msgid = f"<{msgid}>"
    body = (
        _env()
        .get_template("stable-failed.txt.j2")
        .render(
            kind=kind,
            kernel=k,
            version=stable_version(k),
            verdict=v,
            detail=detail,
            recipes=recipes(run, k, run_dir),
            msgid=msgid,
            dependencies=deps,
            has_history=has_history,
            run=run,
            patch=patch,
            failed_tests=[t for t in k.tests if t.module != "control" and not t.passed],
        )
    )
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = patch.author or STABLE
    msg["Cc"] = STABLE
    msg["Subject"] = subject_line(kind, patch, k)
    msg["Date"] = format_datetime(_when(run))
    msg["Message-Id"] = make_msgid(idstring=f"pciback-verify.{run.run_id}.{k.name}", domain="localhost")
    if msgid:
        msg["In-Reply-To"] = msgid
        msg["References"] = msgid
    msg["X-Pciback-Verify-Verdict"] = v
    # the redaction of atomic_write_text, before the body is encoded (base64 would hide a value):
    # a CI remote's URL carries CI_JOB_TOKEN, and `invoke report` writes mails outside any verify
    msg.set_content(redact(body))
    return msg


def _when(run: RunResult):
    from datetime import UTC, datetime

    try:
        return datetime.fromisoformat(run.finished or run.started)
    except ValueError:
        return datetime.now(UTC)


def git_dirs(settings, run: RunResult) -> list[Path]:
    """Where the fetched commits are: the shared object cache, then each row's remote when it is a local path."""
    dirs = [settings.path(settings.cache_dir) / "git" / "objects.git"]
    for k in run.kernels:
        if k.remote and "://" not in k.remote and settings.path(k.remote).is_dir():
            dirs.append(settings.path(k.remote))
    return dirs


def write_mails(
    run: RunResult, run_dir: Path, git_dirs: list[Path] | None = None, sender: str = DEFAULT_FROM
) -> list[Path]:
    """One .eml per kernel that needs action, in `<run_dir>/mails/`; stale ones of an earlier render go."""
    out_dir = Path(run_dir) / "mails"
    paths = []
    for k in run.kernels:
        msg = build_mail(run, k, list(git_dirs or []), sender, run_dir)
        path = out_dir / f"{k.name}.eml"
        if msg is None:
            path.unlink(missing_ok=True)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(msg))
        paths.append(path)
    return paths
