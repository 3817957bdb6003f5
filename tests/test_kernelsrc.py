"""Debian kernel lines 5.10, 6.1, 6.12 and 7.2 imported into the one local repository.

Marked `kernel` and `download`: on a fresh clone this fetches linux-source-5.10,
-6.12 and -7.2 through the project-private apt state (116 + 146 + 157 MiB, about
40 s here) and imports each (2-3 min per line on this 2-core machine); on a warm
cache it checks and writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import PROJECT_ROOT
from pipeline.config import load_settings
from pipeline.kernelsrc import (
    LINES,
    REVERT_PATCH,
    control_revert,
    import_lines,
    line_of_ref,
    lines_for_refs,
    repo_path,
)
from pipeline.sysdeps import dpkg_version

XENBUS = "drivers/xen/xen-pciback/xenbus.c"
FIX_LINE = "xen_pcibk_reconfigure(pdev, XenbusStateInitialised);"


@pytest.fixture(scope="module")
def settings():
    return load_settings(data=yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())["pv"])


def _system_apt_state() -> str:
    h = hashlib.sha256()
    # the system's sources (its dpkg status may change under other jobs: checked per package below)
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def imported(settings):
    before = _system_apt_state()
    infos = import_lines(settings, list(LINES), progress=lambda m: print(m, file=sys.stderr))
    return {i.line: i for i in infos}, before


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={repo}", *args], capture_output=True, text=True, check=True).stdout


def _snapshot(settings) -> dict:
    """Everything an import could write: refs, notes, object files, and the private apt caches."""
    cache = settings.path(settings.cache_dir)
    repo = repo_path(settings)
    files = {}
    for top in [repo / "objects", repo / "refs", repo / "packed-refs", *sorted(cache.glob("apt-*"))]:
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.exists() else []
        for p in paths:
            st = p.stat()
            files[str(p)] = (st.st_size, st.st_mtime_ns)
    return {"refs": _git(repo, "for-each-ref"), "files": files}


@pytest.mark.kernel
@pytest.mark.download
def test_every_line_is_a_tag_with_a_prefix_branch(imported, settings):
    infos, _ = imported
    repo = repo_path(settings)
    for line, info in infos.items():
        assert info.tag.startswith(f"v{line}.") and info.package == f"linux-source-{line}"
        refs = _git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)")
        assert f"{info.tag} {info.commit}" in refs
        assert f"debian-{line} {info.commit}" in refs and f"debian-{line}-prefix {info.prefix_commit}" in refs
        assert f"{info.tag}-prefix {info.prefix_commit}" in refs
        # the Debian tarball's top-level .gitignore ("/*") must not have hidden the tree
        names = _git(repo, "ls-tree", "--name-only", info.tag).split()
        assert {".gitignore", "Makefile", "drivers", "include"} <= set(names)
        assert int(_git(repo, "ls-tree", "-r", info.tag).count("\n")) > 50_000
        # as shipped the fix is in (since 5.13); the -prefix commit reverts it, in xenbus.c only
        assert FIX_LINE in _git(repo, "show", f"{info.tag}:{XENBUS}")
        assert FIX_LINE not in _git(repo, "show", f"{info.prefix_commit}:{XENBUS}")
        assert _git(repo, "diff", "--name-only", info.commit, info.prefix_commit).split() == [XENBUS]
        assert _git(repo, "rev-parse", f"{info.prefix_commit}^").strip() == info.commit
        assert _git(repo, "notes", "--ref=refs/notes/debian-package", "show", info.tag).strip() == info.package_version


@pytest.mark.kernel
@pytest.mark.download
def test_7_2_prefix_uses_its_adapted_revert(imported, settings):
    infos, _ = imported
    repo = repo_path(settings)
    text = _git(repo, "show", f"{infos['7.2'].prefix_commit}:{XENBUS}")
    # 7.x reads the driver state with the device as first argument; the restored check keeps that form
    assert "xenbus_read_driver_state(pdev->xdev, pdev->xdev->nodename) !=\n\t    XenbusStateReconfiguring)" in text
    assert "7.x" in _git(repo, "log", "-1", "--format=%B", infos["7.2"].prefix_commit)


@pytest.mark.kernel
@pytest.mark.download
def test_second_import_writes_nothing_and_the_system_is_untouched(imported, settings):
    infos, before = imported
    snap = _snapshot(settings)
    said: list[str] = []
    again = import_lines(settings, list(LINES), progress=said.append)
    assert _snapshot(settings) == snap
    assert [i.imported for i in again] == [False] * len(LINES)
    assert [(i.tag, i.commit, i.prefix_commit) for i in again] == [
        (infos[i.line].tag, infos[i.line].commit, infos[i.line].prefix_commit) for i in again
    ]
    assert said == [
        f"source: debian-{i.line} is {i.tag} ({i.package} {i.package_version}), already imported" for i in again
    ]
    # downloaded, never installed; the system's apt sources and dpkg status as they were
    assert _system_apt_state() == before
    for line in ("5.10", "6.12", "7.2"):
        assert dpkg_version(f"linux-source-{line}") is None
    assert not any(Path("/usr/src").glob("linux-source-7.2*"))
    assert os.path.isfile(settings.path(settings.cache_dir) / "apt-sid" / "sources.list")


def test_matrix_refs_name_their_lines():
    assert line_of_ref("debian-5.10") == "5.10" and line_of_ref("debian-7.2-prefix") == "7.2"
    assert line_of_ref("debian-4.19") is None and line_of_ref("v6.1.192-prefix") is None
    # any other ref on the Debian remote (a tag, a commit) is served by the default line
    assert lines_for_refs(["debian-6.12-prefix", "debian-6.12", "v6.1.192", "debian-7.2"]) == ["6.12", "6.1", "7.2"]


def test_a_rows_control_revert_is_its_lines_unless_configured(settings):
    """kernelsrc.LINES is the one place a Debian line's revert is named: every row of invoke.yaml on a
    debian-X.Y ref gets it (none repeats or contradicts it), any other row upstream's revert."""
    for matrix, kernels in settings.matrices.items():
        for k in kernels:
            line = line_of_ref(k.ref)
            assert not k.control_revert or (line and settings.path(k.control_revert) == LINES[line].revert), (
                f"{matrix}/{k.name}: control_revert {k.control_revert} repeats or contradicts kernelsrc.LINES"
            )
            assert control_revert(settings, k) == (LINES[line].revert if line else REVERT_PATCH)
    seven = settings.matrices["debian"][-1]
    assert seven.ref == "debian-7.2-prefix" and control_revert(settings, seven).name == "revert-c81d3d246025-7.2.patch"
    own = dataclasses.replace(seven, control_revert="patches/controls/revert-c81d3d246025.patch")
    assert control_revert(settings, own) == REVERT_PATCH  # configured: the row's own wins
    assert all(ln.revert.is_file() for ln in LINES.values())


@pytest.mark.kernel
@pytest.mark.download
def test_an_imported_line_is_packed_not_left_loose(imported, settings):
    from pipeline.kernelsrc import LOOSE_LIMIT, loose_objects

    assert loose_objects(repo_path(settings)) < LOOSE_LIMIT


def test_pack_loose_packs_what_the_commits_reach_before_any_ref_does(tmp_path):
    """As an import does it: objects written, no ref yet (`git repack` would pack nothing)."""
    from pipeline.kernelsrc import _pack_loose, loose_objects

    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    work = tmp_path / "w"
    (work / "d").mkdir(parents=True)
    for i in range(20):
        (work / "d" / f"f{i}.c").write_text(f"int f{i};\n")
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "index"), "GIT_WORK_TREE": str(work)}
    ident = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}
    run = lambda *a: subprocess.run(  # noqa: E731
        ["git", f"--git-dir={repo}", *a], env={**env, **ident}, capture_output=True, text=True, check=True
    ).stdout.strip()
    run("add", "-A", ".")
    commit = run("commit-tree", run("write-tree"), "-m", "import")
    assert loose_objects(repo) == 20 + 2 + 1  # blobs, two trees, the commit
    _pack_loose(repo, [commit])
    assert loose_objects(repo) == 0
    assert run("cat-file", "-p", f"{commit}:d/f7.c") == "int f7;"
    # a second line's import packs only its own new objects
    (work / "d" / "new.c").write_text("int n;\n")
    run("add", "-A", ".")
    second = run("commit-tree", run("write-tree"), "-p", commit, "-m", "next")
    _pack_loose(repo, [second])
    sizes = sorted(
        len(
            subprocess.run(
                ["git", "show-index"], stdin=idx.open("rb"), capture_output=True, check=True
            ).stdout.splitlines()
        )
        for idx in (repo / "objects" / "pack").glob("*.idx")
    )
    assert loose_objects(repo) == 0 and sizes == [4, 23]  # new.c, two trees, the commit
