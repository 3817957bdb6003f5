"""Series stage: read a patch series from a quilt folder, an mbox or one patch file.

Every patch is checked before anything touches a tree: it must hold a text diff,
and every path it names must stay inside the kernel tree.
"""

from __future__ import annotations

import dataclasses
import email
import email.header
import email.utils
import os
import re
import subprocess
import tempfile
from email.message import Message
from pathlib import Path, PurePosixPath

from .errors import PatchTooLarge, SeriesError, UnsafePatchPath
from .report import patchset_hash
from .results import PatchInfo, SeriesInfo

MAX_PATCH_BYTES = 5 * 1024 * 1024  # far beyond any sane pciback series

_PREFIX_RE = re.compile(r"^\s*\[(?P<tags>[^\]]*)\]\s*")
_REV_RE = re.compile(r"\bv(\d+)\b", re.I)
_NUM_RE = re.compile(r"\b(\d+)/(\d+)\b")
_DIFF_PATH_RE = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(?P<path>\S+)", re.M)
_GIT_DIFF_RE = re.compile(r"^diff --git a/(?P<a>\S+) b/(?P<b>\S+)$", re.M)
_RENAME_RE = re.compile(r"^(?:rename|copy) (?:from|to) (?P<path>.+)$", re.M)
_UPSTREAM_RE = re.compile(
    r"(?:^commit ([0-9a-f]{12,40}) upstream\.?$|^\[\s*upstream commit ([0-9a-f]{12,40})\s*\]$)", re.I | re.M
)
_FIXES_RE = re.compile(r"^Fixes:\s*([0-9a-f]{8,40})\b.*$", re.M)


def _decode(value: str | None) -> str:
    if not value:
        return ""
    parts = email.header.decode_header(value)
    out = []
    for text, charset in parts:
        if isinstance(text, bytes):
            try:
                text = text.decode(charset or "utf-8", "replace")
            except LookupError:  # an unknown charset in an encoded word (found by tests/test_fuzz.py)
                text = text.decode("utf-8", "replace")
        out.append(text)
    return " ".join("".join(out).split())


def parse_subject(raw: str) -> tuple[str, int, int, int]:
    """'[PATCH v2 3/5] foo' -> ('foo', 2, 3, 5); repeated [..] prefixes are all consumed."""
    subject = " ".join(raw.split())
    revision, index, total = 1, 0, 0
    while m := _PREFIX_RE.match(subject):
        tags = m.group("tags")
        if r := _REV_RE.search(tags):
            revision = int(r.group(1))
        if n := _NUM_RE.search(tags):
            index, total = int(n.group(1)), int(n.group(2))
        subject = subject[m.end() :]
    return subject.strip(), revision, index, total


def patch_id(text: str) -> str:
    """`git patch-id --stable` of a patch: stable across line shifts and commit metadata."""
    proc = subprocess.run(["git", "patch-id", "--stable"], input=text.encode(), capture_output=True, check=False)
    out = proc.stdout.decode().split()
    return out[0] if out else ""


def _diff_part(text: str) -> str:
    m = re.search(r"^(diff --git |--- (?:a/)?\S)", text, re.M)
    return text[m.start() :] if m else ""


def check_patch_text(text: str, where: str) -> list[str]:
    """Refuse what must never reach a tree; return the files the patch touches."""
    if not text.strip():
        raise SeriesError(f"{where}: empty patch")
    if len(text.encode()) > MAX_PATCH_BYTES:
        raise PatchTooLarge(f"{where}: patch is larger than {MAX_PATCH_BYTES // (1024 * 1024)} MiB")
    diff = _diff_part(text)
    if not diff or not re.search(r"^@@ ", diff, re.M):
        if "GIT binary patch" in text or re.search(r"^Binary files .* differ$", text, re.M):
            raise SeriesError(f"{where}: binary patch refused (only text diffs are verified)")
        raise SeriesError(f"{where}: not a patch (no unified diff found)")
    if "GIT binary patch" in diff or re.search(r"^Binary files .* differ$", diff, re.M):
        raise SeriesError(f"{where}: binary patch refused (only text diffs are verified)")
    paths: list[str] = []
    for m in _GIT_DIFF_RE.finditer(diff):
        paths += [m.group("a"), m.group("b")]
    paths += [m.group("path") for m in _DIFF_PATH_RE.finditer(diff)]
    paths += [m.group("path").strip() for m in _RENAME_RE.finditer(diff)]
    files: list[str] = []
    for raw in paths:
        if raw == "/dev/null":
            continue
        _check_path(raw, where)
        if raw not in files:
            files.append(raw)
    return files


def git_paths(diff: str, where: str) -> list[str]:
    """Every path the diff names, as git's own parser reads it (`git apply --numstat -z`): C-quoted
    names unquoted, both sides of a rename or copy. Binary diffs are refused here too."""
    with tempfile.TemporaryDirectory(prefix="pv-numstat-") as tmp:
        proc = subprocess.run(
            ["git", "apply", "--numstat", "-z", "-"],
            input=diff.encode(),
            cwd=tmp,  # outside any repository: git only parses
            capture_output=True,
            check=False,
            env={**os.environ, "GIT_DIR": os.path.join(tmp, "none"), "GIT_CEILING_DIRECTORIES": tmp},
        )
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SeriesError(f"{where}: not a patch git can apply ({why[-1] if why else 'git apply failed'})")
    tokens = proc.stdout.decode("utf-8", "replace").split("\0")
    paths: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok:
            continue
        added, deleted, name = (tok.split("\t", 2) + ["", ""])[:3]
        if added == "-" and deleted == "-":
            raise SeriesError(f"{where}: binary patch refused (only text diffs are verified)")
        if name:
            paths.append(name)
        else:  # rename/copy: the two names follow as their own NUL-terminated fields
            paths += [t for t in tokens[i : i + 2] if t]
            i += 2
    return paths


def _check_path(raw: str, where: str) -> None:
    pure = PurePosixPath(raw)
    if raw.startswith("/") or pure.is_absolute():
        raise UnsafePatchPath(f"{where}: path {raw!r} is absolute; a patch must stay inside the kernel tree")
    if ".." in pure.parts:
        raise UnsafePatchPath(f"{where}: path {raw!r} escapes the tree ('..')")
    if ".git" in pure.parts:
        raise UnsafePatchPath(f"{where}: path {raw!r} touches .git/")


def _mailinfo(msgfile: Path, workdir: Path) -> tuple[dict[str, str], str, str]:
    """`git mailinfo` exactly as `git am` runs it (re-encoded to UTF-8, CRs already dropped by
    mailsplit), but with -k so that the [PATCH vN m/n] prefix stays for parse_subject.
    Returns (Author/Email/Subject/Date, commit message body, decoded patch)."""
    msg, patch = workdir / "msg", workdir / "patch"
    for recode in ("-u", "-n"):  # -n: a charset git cannot convert (x-bogus) is taken as it is
        with open(msgfile, "rb") as fh:
            proc = subprocess.run(
                ["git", "mailinfo", "-k", recode, str(msg), str(patch)], stdin=fh, capture_output=True, check=False
            )
        if proc.returncode == 0 or b"cannot convert" not in proc.stderr:
            break
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SeriesError(f"{msgfile.name}: git mailinfo failed ({why[-1] if why else proc.returncode})")
    info = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            info[key] = value
    return (
        info,
        msg.read_bytes().decode("utf-8", "replace"),
        patch.read_bytes().decode("utf-8", "replace"),
    )


def _git_am_mail(info: dict[str, str], subject: str, body: str, diff: str) -> str:
    """The patch as a plain 8-bit UTF-8 mail: what apply (git am, git apply) and checkpatch read."""
    author = email.utils.formataddr((info.get("Author", ""), info.get("Email", "")), charset="utf-8")
    head = [
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001",
        f"From: {author}",
        *([f"Date: {info['Date']}"] if info.get("Date") else []),
        f"Subject: [PATCH] {subject}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    body = body.strip("\n")
    return "\n".join(head) + "\n\n" + (body + "\n" if body else "") + "---\n" + diff


def _headers(raw: bytes) -> Message:
    return email.message_from_bytes(raw.split(b"\n\n", 1)[0] + b"\n\n")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SeriesError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > MAX_PATCH_BYTES * 4:
        raise PatchTooLarge(f"{path}: file is larger than {MAX_PATCH_BYTES * 4 // (1024 * 1024)} MiB")
    if b"\0" in data:
        raise SeriesError(f"{path}: binary file, not a patch or mbox")
    return data.decode("utf-8", "replace")


def load_patch_file(path: Path) -> list[PatchInfo]:
    """An mbox (one or many messages) or a single patch file, read as `git am` reads it.

    `git mailsplit` splits it (CRLF lines become LF, as git am does by default) and `git mailinfo`
    decodes each message (quoted-printable, base64, 8bit; header and body charsets to UTF-8;
    multipart with the patch inline or attached). Cover letters ([PATCH 0/n], or no diff) and
    review replies (Re:) are skipped, never taken as patches; the rest is sorted by [m/n].
    The size, binary and path checks and the patch-id run on the decoded diff."""
    if not _read_text(path).strip():  # size and NUL checks on the file itself
        raise SeriesError(f"{path}: empty file")
    patches = []
    with tempfile.TemporaryDirectory(prefix="pv-mailsplit-") as tmp:
        out = Path(tmp) / "split"
        out.mkdir()
        proc = subprocess.run(["git", "mailsplit", "-b", f"-o{out}", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SeriesError(f"{path}: not an mbox or patch ({why[-1] if why else 'git mailsplit failed'})")
        messages = sorted(out.iterdir())
        for i, mfile in enumerate(messages):
            where = f"{path}" if len(messages) == 1 else f"{path} (message {i + 1})"
            raw = mfile.read_bytes()
            info, body, diff = _mailinfo(mfile, Path(tmp))
            raw_subject = " ".join(info.get("Subject", "").split())
            subject, revision, index, total = parse_subject(raw_subject)
            if len(messages) > 1 and (
                re.match(r"(re|aw|fwd?):", raw_subject, re.I) or (total and index == 0) or not diff.strip()
            ):
                continue  # a review reply or a cover letter
            if not diff.strip():
                if "GIT binary patch" in body or re.search(r"^Binary files .* differ$", body, re.M):
                    raise SeriesError(f"{where}: binary patch refused (only text diffs are verified)")
                raise SeriesError(f"{where}: not a patch (no unified diff found)")
            files = check_patch_text(diff, where)
            for p in git_paths(diff, where):
                _check_path(p, where)
                if p not in files:
                    files.append(p)
            if not raw_subject:  # a plain diff without mail headers: subject from the file name
                subject = path.stem
            hdr = _headers(raw)
            patches.append(
                PatchInfo(
                    subject=subject,
                    author=f"{info.get('Author', '')} <{info['Email']}>" if info.get("Email") else "",
                    date=info.get("Date", ""),
                    message_id=_decode(hdr.get("Message-Id")).strip("<>"),
                    patch_id=patch_id(diff),
                    revision=revision,
                    index=index,
                    total=total,
                    files=files,
                    upstream_refs=[a or b for a, b in _UPSTREAM_RE.findall(body)],
                    fixes=_FIXES_RE.findall(body),
                    source=where,
                    text=_git_am_mail(info, subject, body, diff) if raw_subject else diff,
                )
            )
    if not patches:
        raise SeriesError(f"{path}: no patch in it (only a cover letter?)")
    patches.sort(key=lambda p: p.index)  # mboxes from lore are not always in order
    return patches


def load_series(path: Path | str, name: str | None = None) -> SeriesInfo:
    path = Path(path)
    if path.is_dir():
        series_file = path / "series"
        if not series_file.is_file():
            raise SeriesError(f"{path}: folder has no `series` file")
        patches: list[PatchInfo] = []
        for lineno, line in enumerate(series_file.read_text(encoding="utf-8").splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            fname = entry.split()[0]  # quilt allows options such as -p1 after the name
            pure = PurePosixPath(fname)
            if pure.is_absolute() or ".." in pure.parts:
                raise UnsafePatchPath(f"{series_file}:{lineno}: {fname!r} is outside the series folder")
            pfile = path / fname
            if not pfile.is_file():
                raise SeriesError(f"{series_file}:{lineno}: no such patch file {fname!r}")
            patches += load_patch_file(pfile)
        if not patches:
            raise SeriesError(f"{series_file}: lists no patches")
        series_name = name or path.name
    elif path.is_file():
        patches = load_patch_file(path)
        series_name = name or (patches[0].subject if len(patches) == 1 else path.stem)
    else:
        raise SeriesError(f"{path}: no such series folder, mbox or patch file")
    revision = max(p.revision for p in patches)
    return SeriesInfo(name=series_name, revision=revision, source=str(path), patches=patches)


def series_dict(s: SeriesInfo) -> dict:
    """`invoke series.show --json`: the series without the patches' text, with its patchset hash."""
    data = dataclasses.asdict(s)
    for p in data["patches"]:
        p.pop("text", None)
    return {**data, "patchset_hash": s.patchset_hash or patchset_hash(s)}
