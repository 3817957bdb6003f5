"""Series stage: read a patch series from a quilt folder, an mbox or one patch file.

Every patch is checked before anything touches a tree: it must hold a text diff,
and every path it names must stay inside the kernel tree.
"""

from __future__ import annotations

import email.header
import email.utils
import mailbox
import re
import subprocess
from email.message import Message
from pathlib import Path, PurePosixPath

from .errors import PatchTooLarge, SeriesError, UnsafePatchPath
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
_MBOX_FROM_RE = re.compile(r"^From \S+ +\w{3} \w{3} +\d+ ", re.M)


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
        path = raw
        pure = PurePosixPath(path)
        if path.startswith("/") or pure.is_absolute():
            raise UnsafePatchPath(f"{where}: path {raw!r} is absolute; a patch must stay inside the kernel tree")
        if ".." in pure.parts:
            raise UnsafePatchPath(f"{where}: path {raw!r} escapes the tree ('..')")
        if ".git" in pure.parts:
            raise UnsafePatchPath(f"{where}: path {raw!r} touches .git/")
        if path not in files:
            files.append(path)
    return files


def _patch_from_message(msg: Message, text: str, where: str) -> PatchInfo:
    subject, revision, index, total = parse_subject(_decode(msg.get("Subject")))
    body = msg.get_payload(decode=True)
    body_text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(msg.get_payload())
    files = check_patch_text(body_text, where)
    upstream = [a or b for a, b in _UPSTREAM_RE.findall(body_text)]
    return PatchInfo(
        subject=subject,
        author=_decode(msg.get("From")),
        date=_decode(msg.get("Date")),
        message_id=_decode(msg.get("Message-Id")).strip("<>"),
        patch_id=patch_id(text),
        revision=revision,
        index=index,
        total=total,
        files=files,
        upstream_refs=upstream,
        fixes=_FIXES_RE.findall(body_text),
        source=where,
        text=text,
    )


def _is_cover_letter(msg: Message) -> bool:
    _, _, index, total = parse_subject(_decode(msg.get("Subject")))
    if total and index == 0:
        return True
    payload = msg.get_payload(decode=True)
    body = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(msg.get_payload())
    return not _diff_part(body)


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


def _split_mbox(path: Path, text: str) -> list[tuple[Message, str]]:
    """Messages of an mbox file with each one's own text (for patch-id and git am)."""
    starts = [m.start() for m in _MBOX_FROM_RE.finditer(text)]
    if not starts or starts[0] != 0:
        # a bare patch without the mbox "From " line: treat the whole file as one message
        starts = [0] + [s for s in starts if s]
    chunks = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)], strict=True)]
    msgs = []
    for chunk in chunks:
        msg = mailbox.mboxMessage(chunk) if chunk.startswith("From ") else email.message_from_string(chunk)
        msgs.append((msg, chunk))
    return msgs


def load_patch_file(path: Path) -> list[PatchInfo]:
    """An mbox (one or many messages; a cover letter is skipped) or a single patch file."""
    text = _read_text(path)
    if not text.strip():
        raise SeriesError(f"{path}: empty file")
    patches = []
    messages = _split_mbox(path, text)
    for i, (msg, chunk) in enumerate(messages):
        if len(messages) > 1 and _is_cover_letter(msg):
            continue
        where = f"{path}" if len(messages) == 1 else f"{path} (message {i + 1})"
        if not msg.get("Subject"):
            # plain diff without mail headers: subject from the file name
            files = check_patch_text(chunk, where)
            patches.append(
                PatchInfo(subject=path.stem, patch_id=patch_id(chunk), files=files, source=str(path), text=chunk)
            )
            continue
        patches.append(_patch_from_message(msg, chunk, where))
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
