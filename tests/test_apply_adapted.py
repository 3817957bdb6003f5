"""The apply stage's already-upstream evidence on small fake kernel trees (fast; issue 16).

Each tree is one file, drivers/xen/xen-pciback/xenbus.c, made from a real patch of the project: the
pre-image its hunks need (context and removed lines at their line numbers, filler between). So the
bundled series, the upstream revert and the 7.x revert meet the same lines they meet in Debian's
trees: the 7.x form of the fix (`xenbus_read_driver_state(pdev->xdev, ...)`) is in the shipped 7.2
tree, and the bundled 2021 series cannot apply to 7.2-prefix at its hunk 2.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from markupsafe import escape
from sample_runs import sample_run

from pipeline import PROJECT_ROOT, report
from pipeline.apply import apply_series
from pipeline.results import FetchResult, KernelResult, load_results, write_results
from pipeline.series import load_series
from pipeline.statuses import UpstreamEvidence
from pipeline.verdict import verdict

XENBUS = "drivers/xen/xen-pciback/xenbus.c"
SERIES = PROJECT_ROOT / "patches/xen-pciback-reconfigure"
REVERT = PROJECT_ROOT / "patches/controls/revert-c81d3d246025.patch"
REVERT_7 = PROJECT_ROOT / "patches/controls/revert-c81d3d246025-7.2.patch"
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


def pre_image(patch_text: str) -> str:
    """The file a one-file patch applies to exactly: its context and removed lines at their line
    numbers, distinct filler lines between the hunks."""
    out: list[str] = []
    in_hunk = False
    for line in patch_text.split("\n"):
        if m := _HUNK.match(line):
            start = int(m.group(1))
            out += [f"/* filler {n} */" for n in range(len(out) + 1, start)]
            in_hunk = True
        elif in_hunk and line[:1] in (" ", "-"):
            out.append(line[1:])
        elif in_hunk and not line.startswith(("+", "\\")):
            in_hunk = False  # the mail signature after the last hunk
    return "\n".join(out + ["/* end */"]) + "\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def tree(tmp_path: Path, name: str, content: str, *then: Path) -> FetchResult:
    """A git tree holding xenbus.c with `content`, then each patch of `then` applied and committed."""
    repo = tmp_path / name
    (repo / XENBUS).parent.mkdir(parents=True)
    (repo / XENBUS).write_text(content)
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "config", "user.name", "Test")
    git(repo, "config", "user.email", "test@example.org")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "base")
    for p in then:
        git(repo, "apply", str(p))
        git(repo, "commit", "--quiet", "-am", f"apply {p.name}")
    return FetchResult(status="ok", commit=git(repo, "rev-parse", "HEAD"), worktree=str(repo))


@pytest.fixture()
def series():
    return load_series(SERIES)


def patch_file(series) -> Path:
    return Path(series.patches[0].source)


def shipped_7(tmp_path: Path, name: str = "debian-7.2") -> FetchResult:
    """7.x as shipped: the fix in its 7.x form (what the 7.x revert removes)."""
    return tree(tmp_path, name, pre_image(REVERT_7.read_text()))


def prefix_7(tmp_path: Path) -> FetchResult:
    """7.x -prefix: the shipped 7.x tree with its revert applied, as source.import makes it."""
    return tree(tmp_path, "debian-7.2-prefix", pre_image(REVERT_7.read_text()), REVERT_7)


def apply_one(fetch: FetchResult, series, revert: Path | None, status: str):
    """The series' one patch on the tree: the series result and the patch's, both of `status`."""
    res = apply_series(fetch, series, "t", label=Path(fetch.worktree).name, control_revert=revert)
    (p,) = res.patches
    assert res.status == status and p.status == status, p.detail
    return res, p


def clean_at_base(fetch: FetchResult) -> None:
    wt = Path(fetch.worktree)
    assert git(wt, "status", "--porcelain") == ""
    assert git(wt, "rev-parse", "HEAD") == fetch.commit
    assert not (wt / git(wt, "rev-parse", "--git-path", "rebase-apply")).exists()


def test_series_applies_on_a_tree_without_the_fix(tmp_path, series):
    fetch = tree(tmp_path, "prefix", pre_image(series.patches[0].text))
    _, p = apply_one(fetch, series, REVERT, "applied")
    assert p.evidence is UpstreamEvidence.NONE and not p.adapted.revert
    assert "xen_pcibk_reconfigure(pdev, XenbusStateInitialised);" in (Path(fetch.worktree) / XENBUS).read_text()


def test_series_verbatim_in_the_tree_is_already_upstream_by_reverse_apply(tmp_path, series):
    fetch = tree(tmp_path, "fixed", pre_image(series.patches[0].text), patch_file(series))
    _, p = apply_one(fetch, series, REVERT, "already-applied")
    assert p.evidence is UpstreamEvidence.REVERSE_APPLY
    clean_at_base(fetch)


def test_upstream_form_is_shown_by_the_lines_revert_before_content(tmp_path, series):
    """6.1-like: upstream's commit differs from the 2021 mail in comments only. Its revert applying is
    the evidence (no line adapted); without a revert configured the weaker content match remains."""
    fetch = tree(tmp_path, "debian-6.1", pre_image(REVERT.read_text()))
    res, p = apply_one(fetch, series, REVERT, "already-applied")
    assert p.evidence is UpstreamEvidence.CONTROL_REVERT
    assert p.adapted.series_lines == [] and p.adapted.tree_lines == [] and p.adapted.lines_verbatim == 9
    assert verdict(KernelResult(name="debian-6.1", fetch=fetch, apply=res))[1] == (
        "in this line's form: its revert of c81d3d246025 applies (revert-c81d3d246025.patch), no line adapted"
    )
    (q,) = apply_series(fetch, series, "t2", label="debian-6.1").patches
    assert q.status == "already-applied" and q.evidence is UpstreamEvidence.CONTENT and not q.adapted.revert


def test_adapted_fix_with_its_control_revert_is_already_upstream_with_evidence(tmp_path, series):
    fetch = shipped_7(tmp_path)
    res, p = apply_one(fetch, series, REVERT_7, "already-applied")
    assert p.evidence is UpstreamEvidence.CONTROL_REVERT
    a = p.adapted
    assert a.revert == "patches/controls/revert-c81d3d246025-7.2.patch"
    assert a.reverts_commit == "c81d3d246025"
    assert a.revert_patch_id == load_series(REVERT_7).patches[0].patch_id
    # the one line 7.x adapted, on both sides; the other 8 significant added lines are there verbatim
    assert a.series_lines == ["if (xenbus_read_driver_state(pdev->xdev->nodename) != state)"]
    assert a.tree_lines == ["if (xenbus_read_driver_state(pdev->xdev, pdev->xdev->nodename) != state)"]
    assert a.lines_verbatim == 8
    assert "revert-c81d3d246025-7.2.patch" in p.detail and "1 in another form" in p.detail
    clean_at_base(fetch)  # only `git apply --check`: nothing was applied

    # the row's verdict and what results.json keeps
    k = KernelResult(name="debian-7.2", fetch=fetch, apply=res)
    v, detail = verdict(k)
    assert v == "already-upstream"
    assert "its revert of c81d3d246025 applies (revert-c81d3d246025-7.2.patch), 1 line(s) adapted" in detail
    run = sample_run()
    run.kernels = [k]
    write_results(tmp_path, run)
    back = load_results(tmp_path).kernels[0].apply.patches[0]
    assert back == p and back.evidence is UpstreamEvidence.CONTROL_REVERT

    # what a stable maintainer reads: the readiness line names the revert, the evidence the lines
    k.verdict, k.verdict_detail = v, detail
    md = report.render_markdown(run)
    line = f"already upstream in this line's form (its revert of c81d3d246025 applies: {a.revert}; 1 line adapted)"
    assert f"- debian-7.2: {line}; " in md
    assert "    - the series adds `if (xenbus_read_driver_state(pdev->xdev->nodename) != state)`\n" in md
    assert "    - this tree has `if (xenbus_read_driver_state(pdev->xdev, pdev->xdev->nodename) != state)`" in md
    assert str(escape(line)) in report.render_html(run)  # escaped as every value in the HTML
    (case,) = [c for c in report.junit_cases(run) if c["name"] == "apply"]
    assert f"in this line's form: {a.revert} applies" in case["out"]


def test_neither_is_needs_backport_naming_the_hunk_and_nothing_half_applied(tmp_path, series):
    fetch = prefix_7(tmp_path)
    res, p = apply_one(fetch, series, REVERT_7, "conflict")
    assert p.evidence is UpstreamEvidence.NONE
    assert p.files == [XENBUS]
    # hunk 2, in xen_pcibk_reconfigure, where 7.x reads the driver state with the device
    assert p.hunks == [f"{XENBUS}: @@ -374,8 +375,7 @@ static int xen_pcibk_reconfigure(struct"]
    clean_at_base(fetch)
    assert verdict(KernelResult(name="debian-7.2-prefix", fetch=fetch, apply=res))[0] == "needs-backport"


def test_a_revert_that_is_not_this_lines_or_not_this_patchs_proves_nothing(tmp_path, series):
    """The upstream-form revert on a 7.x tree does not apply; a 7.x revert of another subject is not
    a revert of this patch: neither makes the shipped 7.x tree already-upstream."""
    fetch = shipped_7(tmp_path)
    (p,) = apply_series(fetch, series, "t", label="debian-7.2", control_revert=REVERT).patches
    assert p.status == "conflict" and p.evidence is UpstreamEvidence.NONE
    other = tmp_path / "other.patch"
    other.write_text(
        REVERT_7.read_text().replace('Subject: [PATCH] Revert "xen-pciback:', "Subject: [PATCH] xen-pciback:")
    )
    fetch2 = shipped_7(tmp_path, "debian-7.2-b")
    (q,) = apply_series(fetch2, series, "t", label="debian-7.2", control_revert=other).patches
    assert q.status == "conflict" and not q.adapted.revert
    missing = apply_series(fetch2, series, "t2", label="debian-7.2", control_revert=tmp_path / "none.patch")
    assert missing.patches[0].status == "conflict"
    clean_at_base(fetch2)
