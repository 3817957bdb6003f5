"""Series intake: the bundled series, mboxes, single patches, and bad input refused before any tree is touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.errors import SeriesError
from pipeline.series import load_series, parse_subject

BUNDLED = PROJECT_ROOT / "patches/xen-pciback-reconfigure"


def test_bundled_series_is_the_seed_patch():
    s = load_series(BUNDLED)
    assert s.name == "xen-pciback-reconfigure" and s.revision == 1
    (p,) = s.patches
    assert p.subject == "xen-pciback: reconfigure also from backend watch handler"
    assert p.author == "Jan Beulich <jbeulich@suse.com>"
    assert p.message_id == "c9bf77ec-8a82-5a6e-c0eb-36e4cc373b23@suse.com"
    assert p.files == ["drivers/xen/xen-pciback/xenbus.c"]
    # the same id git computes from the file itself
    ref = subprocess.run(["git", "patch-id", "--stable"], input=p.text, capture_output=True, text=True).stdout
    assert len(p.patch_id) == 40 and ref.split()[0] == p.patch_id
    text = (BUNDLED / "0001-xen-pciback-reconfigure-also-from-backend-watch-handler.patch").read_text()
    assert "Signed-off-by: Jan Beulich <jbeulich@suse.com>" in text and "Cc: stable@vger.kernel.org" in text


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("[PATCH v2 3/5] xen: foo", ("xen: foo", 2, 3, 5)),
        ("[PATCH] xen: bar", ("xen: bar", 1, 0, 0)),
        ("[RFC PATCH v4] [PATCH 1/1] baz", ("baz", 4, 1, 1)),
        ("Re: plain", ("Re: plain", 1, 0, 0)),
    ],
)
def test_subject_parsing(raw, expected):
    assert parse_subject(raw) == expected


def _make_series_mbox(tmp_path: Path, revision: int = 2) -> Path:
    """A real `git format-patch --cover-letter` series of two patches."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env_git = ["git", "-C", str(repo), "-c", "user.name=T Ester", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.c").write_text("int a;\n")
    subprocess.run([*env_git, "add", "a.c"], check=True)
    subprocess.run([*env_git, "commit", "-qm", "base"], check=True)
    for i in (1, 2):
        (repo / "a.c").write_text((repo / "a.c").read_text() + f"int b{i};\n")
        subprocess.run([*env_git, "commit", "-qam", f"a: add b{i}"], check=True)
    out = tmp_path / "out"
    subprocess.run(
        [*env_git, "format-patch", "-q", "--cover-letter", f"-v{revision}", "-o", str(out), "HEAD~2"], check=True
    )
    mbox = tmp_path / "series.mbox"
    mbox.write_text("".join(p.read_text() for p in sorted(out.iterdir())))
    return mbox


def test_mbox_series_skips_cover_letter_and_reads_revision(tmp_path):
    s = load_series(_make_series_mbox(tmp_path, revision=3))
    assert [p.subject for p in s.patches] == ["a: add b1", "a: add b2"]
    assert s.revision == 3 and [p.index for p in s.patches] == [1, 2] and s.patches[0].total == 2
    assert all(p.author == "T Ester <t@example.org>" and p.patch_id for p in s.patches)


def test_single_patch_file(tmp_path):
    s = load_series(PROJECT_ROOT / "patches/controls/revert-c81d3d246025.patch")
    assert s.patches[0].subject.startswith('Revert "xen-pciback: reconfigure also')


GOOD_DIFF = """--- a/drivers/xen/xen-pciback/xenbus.c
+++ b/drivers/xen/xen-pciback/xenbus.c
@@ -1,1 +1,2 @@
 int a;
+int b;
"""


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "empty"),
        ("hello, this is no patch\n", "not a patch"),
        ("diff --git a/x.bin b/x.bin\nindex 1..2 100644\nGIT binary patch\nliteral 4\nabc\n", "binary patch refused"),
        (GOOD_DIFF.replace("drivers/xen", "../../etc"), "escapes the tree"),
        (GOOD_DIFF.replace("a/drivers", "/drivers").replace("b/drivers", "/drivers"), "absolute"),
        (GOOD_DIFF.replace("drivers/xen/xen-pciback/xenbus.c", ".git/config"), "touches .git/"),
    ],
    ids=["empty", "not-a-patch", "binary", "dotdot", "absolute", "dotgit"],
)
def test_bad_input_is_refused(tmp_path, content, message):
    f = tmp_path / "bad.patch"
    f.write_text(content)
    with pytest.raises(SeriesError, match=message) as e:
        load_series(f)
    assert str(f) in e.value.message and "\n" not in e.value.message


def test_nul_bytes_and_missing_paths(tmp_path):
    f = tmp_path / "x.mbox"
    f.write_bytes(b"From x\0\0\0")
    with pytest.raises(SeriesError, match="binary file"):
        load_series(f)
    with pytest.raises(SeriesError, match="no such series"):
        load_series(tmp_path / "nope")
    d = tmp_path / "quilt"
    d.mkdir()
    (d / "series").write_text("../../etc/passwd\n")
    with pytest.raises(SeriesError, match="outside the series folder"):
        load_series(d)


def test_series_dict_leaves_the_patch_text_out_and_names_the_patchset():
    from pipeline.report import patchset_hash
    from pipeline.series import series_dict

    s = load_series(PROJECT_ROOT / "patches/xen-pciback-reconfigure")
    data = series_dict(s)
    assert data["name"] == s.name and len(data["patches"]) == len(s.patches)
    assert all("text" not in p for p in data["patches"])
    assert data["patchset_hash"] == patchset_hash(s)
