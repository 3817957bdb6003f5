"""The bundled patch in the mail forms clients and lore deliver (tests/fixtures/mailforms, made by its
make.py): each read as `git am` reads it gives the plain `git format-patch` file's patch-id and files,
and (marked `kernel`, on the real imported Debian 6.1 trees) the plain file's apply status:
`already-applied` on debian-6.1, `applied` on debian-6.1-prefix."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from pipeline import PROJECT_ROOT
from pipeline.series import git_paths, load_series

FORMS = PROJECT_ROOT / "tests/fixtures/mailforms"
PLAIN = next((PROJECT_ROOT / "patches/xen-pciback-reconfigure").glob("0001-*.patch"))
SECOND = FORMS / "pciback-h.patch"
NAMES = sorted(p.name for p in FORMS.glob("*.mbox"))
SUBJECT = "xen-pciback: reconfigure also from backend watch handler"


def test_the_corpus_is_what_it_says():
    assert len(NAMES) >= 8
    text = {n: (FORMS / n).read_bytes() for n in NAMES}
    assert b"Content-Transfer-Encoding: quoted-printable" in text["qp-cover-letter.mbox"]
    assert b"[PATCH 0/1]" in text["qp-cover-letter.mbox"]
    assert b"Content-Transfer-Encoding: base64" in text["base64.mbox"]
    assert text["crlf.mbox"].count(b"\r\n") == text["crlf.mbox"].count(b"\n")
    assert 0 < text["mixed-line-endings.mbox"].count(b"\r\n") < text["mixed-line-endings.mbox"].count(b"\n")
    assert (
        b"multipart/mixed" in text["multipart-attachment.mbox"] and b"text/x-patch" in text["multipart-attachment.mbox"]
    )
    assert b"[RFC PATCH v3 1/1]" in text["rfc-v3.mbox"]
    assert b"Subject: Re: [PATCH]" in text["patch-and-review-reply.mbox"]
    assert (
        b"=?ISO-8859-1?Q?J=FCrgen" in text["iso-8859-1-author.mbox"] and b"\xfc" not in text["iso-8859-1-author.mbox"]
    )
    two = text["two-patch-out-of-order.mbox"]
    assert two.index(b"[PATCH 2/2]") < two.index(b"[PATCH 0/2]") < two.index(b"[PATCH 1/2]")


@pytest.mark.parametrize("name", NAMES)
def test_every_form_gives_the_plain_patch(name):
    plain = load_series(PLAIN).patches[0]
    s = load_series(FORMS / name)
    want = [plain.patch_id] + ([load_series(SECOND).patches[0].patch_id] if name.startswith("two-") else [])
    assert [p.patch_id for p in s.patches] == want  # the cover letter and the reply are no patches
    p = s.patches[0]
    assert p.subject == SUBJECT and p.files == plain.files
    assert p.index in (0, 1) and s.revision == (3 if name == "rfc-v3.mbox" else 1)
    # what apply and checkpatch get: decoded, LF only, the diff exactly as in the plain file
    assert "\r" not in p.text and "=3D" not in p.text and plain.text.split("\ndiff --git ", 1)[1] in p.text
    if name == "iso-8859-1-author.mbox":
        assert p.author == "Jürgen Groß <jgross@suse.com>" and "Signed-off-by: Jürgen Groß" in p.text


def test_paths_come_from_gits_parser(tmp_path):
    """C-quoted names, renames and copies: the names git itself would touch."""
    diff = (
        'diff --git "a/drivers/xen/xen-pciback/t\\303\\244b.c" "b/drivers/xen/xen-pciback/t\\303\\244b.c"\n'
        '--- "a/drivers/xen/xen-pciback/t\\303\\244b.c"\n+++ "b/drivers/xen/xen-pciback/t\\303\\244b.c"\n'
        "@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/drivers/xen/xen-pciback/old.c b/../../etc/cron.d/x\n"
        "similarity index 100%\nrename from drivers/xen/xen-pciback/old.c\nrename to ../../etc/cron.d/x\n"
    )
    paths = git_paths(diff, "t")
    assert "drivers/xen/xen-pciback/täb.c" in paths
    from pipeline.errors import UnsafePatchPath

    f = tmp_path / "rename.patch"
    f.write_text("From: a <a@b>\nSubject: [PATCH] x\n\n---\n" + diff)
    with pytest.raises(UnsafePatchPath):
        load_series(f)


# ------------------------------------------------------------------ on the real trees


@pytest.fixture(scope="module")
def trees():
    """Sparse worktrees of both default rows from the project's own object cache: a fresh clone's
    first fetch into it is shared with every other test and run that fetches (CI's time is tight)."""
    from pipeline.config import project_settings
    from pipeline.fetch import cache_repo, fetch_kernel, remove_worktree
    from pipeline.kernelsrc import import_debian_source

    settings = project_settings()
    src = import_debian_source(settings, progress=lambda m: print(m, file=sys.stderr))
    kernels = [dataclasses.replace(k, remote=str(src.repo)) for k in settings.matrices["default"]]
    settings = dataclasses.replace(settings, matrices={"default": kernels})
    sparse = ["/drivers/xen/xen-pciback/", "/scripts/", "/Makefile"]
    out = {k.name: fetch_kernel(settings, k, "mailforms", progress=print, sparse=sparse) for k in kernels}
    yield out
    for f in out.values():
        remove_worktree(settings, f.worktree)
    # the apply branches of the forms (refs/heads/pv/mf-*): the project's cache is left as found
    repo = cache_repo(settings)
    for ref in repo.git.for_each_ref("--format=%(refname)", "refs/heads/pv/mf-").split():
        repo.git.update_ref("-d", ref)


@pytest.mark.kernel
@pytest.mark.parametrize("name", [PLAIN.name, *NAMES])
def test_every_form_applies_as_the_plain_file(trees, name):
    from pipeline.apply import apply_series

    path = PLAIN if name == PLAIN.name else FORMS / name
    series = load_series(path)
    up = apply_series(trees["debian-6.1"], series, f"mf-{len(name)}-{name[:8]}", label="debian-6.1")
    assert up.status == "already-applied", [(p.status, p.detail) for p in up.patches]
    pre = apply_series(trees["debian-6.1-prefix"], series, f"mf-{len(name)}-{name[:8]}", label="prefix")
    assert pre.status == "applied", [(p.status, p.detail) for p in pre.patches]
    assert pre.patches[0].status == "applied"  # clean, not 3-way
