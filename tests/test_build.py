"""Build stage: unit tests of its parsers, and builds that really compile xen-pciback.ko.

The compiling tests use Debian's linux-source-6.1 imported by pipeline.kernelsrc
(`.cache/debian-linux.git`, branches debian-6.1 and debian-6.1-prefix), a
shared clone of it under `.cache/test-build/`, and a fresh build cache per
session, so every "first" build really is cold.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.build import build_kernel
from pipeline.buildheaders import resolve_headers
from pipeline.buildmodule import MODULE_DIR, modinfo
from pipeline.checkpatch import parse_output
from pipeline.config import BuildConfig, KernelConfig, Settings
from pipeline.kconfig import check_fragments
from pipeline.results import PatchInfo

XENBUS = f"{MODULE_DIR}/xenbus.c"
VPCI = f"{MODULE_DIR}/vpci.c"


def _progress(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ unit tests


def test_fragment_symbols_unknown_and_not_taken(tmp_path):
    (tmp_path / "Kconfig").write_text(
        "config XEN\n\tbool\nmenuconfig PCI\n\tbool\nconfig XEN_PCIDEV_BACKEND\n\ttristate\n"
    )
    frag = "CONFIG_XEN=y\nCONFIG_PCI=y\nCONFIG_XEN_PCIDEV_BACKEND=m\nCONFIG_NO_SUCH_THING=y\n# CONFIG_FOO is not set\n"
    config = "CONFIG_XEN=y\n# CONFIG_PCI is not set\nCONFIG_XEN_PCIDEV_BACKEND=m\n"
    issues = check_fragments([("kconfigs/x.config", frag)], config, tmp_path)
    by_symbol = {i.symbol: i for i in issues}
    assert sorted(by_symbol) == ["CONFIG_NO_SUCH_THING", "CONFIG_PCI"]
    assert by_symbol["CONFIG_NO_SUCH_THING"].unknown
    assert "no such Kconfig symbol" in by_symbol["CONFIG_NO_SUCH_THING"].message()
    assert not by_symbol["CONFIG_PCI"].unknown and by_symbol["CONFIG_PCI"].got == "n"


def test_checkpatch_output_parsed():
    out = "-:13: ERROR:TRAILING_WHITESPACE: trailing whitespace\n-:13: WARNING:SPACING: space prohibited\ntotal: 1 errors, 1 warnings, 4 lines checked\n"
    res = parse_output("subj", out)
    assert (res.errors, res.warnings, res.checks) == (1, 1, 0)
    assert res.messages[0].startswith("-:13: ERROR:TRAILING_WHITESPACE")


# ------------------------------------------------------------------ real builds


def _git(cwd: Path, *args: str, input: str | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
    }
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, input=input, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def debian_source():
    from pipeline.kernelsrc import import_debian_source

    return import_debian_source(Settings(), progress=_progress)


@pytest.fixture(scope="session")
def test_repo(debian_source):
    """A bare clone sharing the imported repository's objects: test worktrees never touch the real one."""
    repo = PROJECT_ROOT / ".cache" / "test-build" / "repo.git"
    if not repo.exists():
        repo.parent.mkdir(parents=True, exist_ok=True)
        _git(repo.parent, "clone", "-q", "--shared", "--bare", str(debian_source.repo), str(repo))
    _git(repo, "fetch", "-q", str(debian_source.repo), "+refs/heads/*:refs/heads/*")
    _git(repo, "worktree", "prune")
    return repo


@pytest.fixture
def sparse_tree(test_repo, tmp_path):
    """Worktree factory with only the module and scripts/ checked out: enough for headers mode, in a second."""

    def make(commit: str, name: str = "wt") -> Path:
        wt = tmp_path / name
        _git(test_repo, "worktree", "add", "-q", "--no-checkout", "--detach", str(wt), commit)
        _git(wt, "sparse-checkout", "set", MODULE_DIR, "scripts")
        _git(wt, "checkout", "-q", "--detach", commit)
        return wt

    return make


@pytest.fixture(scope="session")
def build_settings(tmp_path_factory):
    """Settings whose build cache is new for this session (cold first builds), with the project's ccache."""
    return Settings(cache_dir=str(tmp_path_factory.mktemp("build-cache")))


@pytest.fixture(scope="session")
def lab_release():
    """The release the lab boots: its recorded dom0 kernel, else the installed Debian headers."""
    try:
        from pipeline import lab

        release = lab.kernel_release(Settings())
    except (ImportError, AttributeError):
        release = None
    if not release:
        release = resolve_headers(Settings(), KernelConfig(name="k", remote="r", ref="x")).name.removeprefix(
            "linux-headers-"
        )
    return release


def _series(wt: Path, base: str) -> list[PatchInfo]:
    text = _git(wt, "format-patch", "--stdout", f"{base}..HEAD")
    subjects = _git(wt, "log", "--reverse", "--format=%s", f"{base}..HEAD").splitlines()
    return [PatchInfo(subject=s, text=text if len(subjects) == 1 else "") for s in subjects]


def _commit_edit(wt: Path, path: str, edit, message: str) -> None:
    file = wt / path
    before = file.read_text()
    after = edit(before)
    assert after != before
    file.write_text(after)
    _git(wt, "commit", "-q", "-a", "-m", message)


def _add_unused_variable(name: str):
    def edit(text: str) -> str:
        # first statement of the backend watch handler
        m = re.search(r"static void xen_pcibk_be_watch\([^)]*\)\n\{\n", text)
        assert m, "xen_pcibk_be_watch not found in xenbus.c"
        return text[: m.end()] + f"\tint {name};\n" + text[m.end() :]

    return edit


def _add_unused_static(text: str) -> str:
    return text + "\nstatic int pv_keep;\n"


def _headers_kernel(name: str) -> KernelConfig:
    return KernelConfig(name=name, remote="r", ref="x", build=BuildConfig(mode="headers", headers="auto"))


@pytest.fixture(scope="module")
def headers_builds(test_repo, debian_source, build_settings, tmp_path_factory):
    """debian-6.1 as shipped and debian-6.1-prefix with the project's series applied, in one run dir."""
    from pipeline.series import load_series

    series = load_series(PROJECT_ROOT / "patches" / "xen-pciback-reconfigure")
    root = tmp_path_factory.mktemp("headers")
    run_dir = root / "run"
    out = {}
    for name, commit, apply in (
        ("debian-6.1", debian_source.commit, False),
        ("debian-6.1-prefix", debian_source.prefix_commit, True),
    ):
        wt = root / name
        _git(test_repo, "worktree", "add", "-q", "--no-checkout", "--detach", str(wt), commit)
        _git(wt, "sparse-checkout", "set", MODULE_DIR, "scripts")
        _git(wt, "checkout", "-q", "--detach", commit)
        if apply:
            for p in series.patches:
                _git(wt, "am", "-q", input=p.text)
        res = build_kernel(build_settings, _headers_kernel(name), wt, commit, series.patches, run_dir, _progress)
        out[name] = res
    return out


@pytest.mark.build
@pytest.mark.kernel
def test_headers_mode_vermagic_is_the_lab_release(headers_builds, lab_release):
    for name, res in headers_builds.items():
        assert res.status == "ok", (name, res.detail, res.errors)
        assert res.kernel_release == lab_release
        # modinfo of the copied module itself, not the recorded string
        vermagic = modinfo(Path(res.module), "vermagic")
        assert vermagic == res.vermagic
        assert vermagic.split()[0] == lab_release, vermagic
        assert "modversions" in vermagic.split() and "mod_unload" in vermagic.split()
        assert res.network_isolated
        assert res.new_warnings == []
        assert len(res.checkpatch) == 1 and res.checkpatch[0].errors == 0
        assert Path(res.log).is_file() and "module: series" in Path(res.log).read_text()


@pytest.mark.build
@pytest.mark.kernel
def test_series_on_prefix_reproduces_upstream_and_controls_lack_the_fix(headers_builds):
    shipped, prefix = headers_builds["debian-6.1"], headers_builds["debian-6.1-prefix"]
    # srcversion is a digest of the sources: the series on the prefix tree gives upstream's module
    assert shipped.srcversion and shipped.srcversion == prefix.srcversion
    # the fix is in debian-6.1: its control is the tree with the revert patch ...
    assert "revert" in shipped.control_detail and "fix is in" in shipped.control_detail
    # ... in debian-6.1-prefix it is the base commit as is; both are the same sources
    assert "as is" in prefix.control_detail
    assert shipped.control_srcversion == prefix.control_srcversion != prefix.srcversion
    assert modinfo(Path(prefix.control_module), "srcversion") == prefix.control_srcversion


@pytest.mark.build
@pytest.mark.kernel
def test_unused_variable_is_exactly_one_new_warning(debian_source, sparse_tree, build_settings, tmp_path):
    base = debian_source.commit
    wt = sparse_tree(base)
    _commit_edit(wt, XENBUS, _add_unused_variable("pv_test_unused"), "xen-pciback: test an unused variable")
    res = build_kernel(
        build_settings, _headers_kernel("unused"), wt, base, _series(wt, base), tmp_path / "run", _progress
    )
    assert res.status == "ok", res.errors
    assert len(res.new_warnings) == 1, res.new_warnings
    (w,) = res.new_warnings
    assert w.startswith(f"{XENBUS}:") and "unused variable 'pv_test_unused'" in w and w.endswith("[-Wunused-variable]")
    assert w in res.warnings


@pytest.mark.build
@pytest.mark.kernel
def test_syntax_error_fails_while_another_kernel_builds(debian_source, sparse_tree, build_settings, tmp_path):
    run_dir = tmp_path / "run"
    base = debian_source.commit
    broken = sparse_tree(base, "broken")
    _commit_edit(broken, XENBUS, _add_unused_variable("pv_test_syntax = ;"), "xen-pciback: syntax error")
    bad = build_kernel(build_settings, _headers_kernel("broken"), broken, base, [], run_dir, _progress)
    good_tree = sparse_tree(debian_source.prefix_commit, "good")
    good = build_kernel(
        build_settings, _headers_kernel("good"), good_tree, debian_source.prefix_commit, [], run_dir, _progress
    )
    assert bad.status == "build-failed"
    assert not bad.module
    assert bad.errors and bad.errors[0].startswith(f"{XENBUS}:") and "error:" in bad.errors[0], bad.errors
    assert "build failed" in bad.detail
    assert good.status == "ok" and Path(good.module).is_file()


# ------------------------------------------------------------------ full tree


@pytest.fixture(scope="module")
def full_tree(test_repo, debian_source):
    """A complete checkout of debian-6.1 (kbuild needs the whole tree), kept between sessions."""
    wt = PROJECT_ROOT / ".cache" / "test-build" / "full-tree"
    if not (wt / "Makefile").exists():
        _git(test_repo, "worktree", "add", "-q", "-f", "--detach", str(wt), debian_source.commit)
    _git(wt, "checkout", "-q", "-f", "--detach", debian_source.commit)
    return wt


def _full_kernel(name: str, fragments: list[str]) -> KernelConfig:
    return KernelConfig(
        name=name, remote="r", ref="x", build=BuildConfig(mode="full", base_config="tinyconfig", fragments=fragments)
    )


def _kbuild_output_of_step(log: str, step: str) -> str:
    parts = log.split(f"### {step}\n", 1)
    assert len(parts) == 2, f"no step {step!r} in the log"
    return parts[1].split("\n### exit status", 1)[0]


@pytest.mark.build
@pytest.mark.kernel
def test_full_tree_dom0_fragment_and_incremental_revision(full_tree, debian_source, build_settings, tmp_path):
    base = debian_source.commit
    bogus = tmp_path / "bogus.config"
    bogus.write_text("CONFIG_PV_VERIFY_NO_SUCH_SYMBOL=y\n")
    kcfg = _full_kernel("full-6.1", ["kconfigs/xen-dom0.config", str(bogus)])

    # revision 1: an unused static in vpci.c and an unused variable in xenbus.c; cold cache,
    # so config and modules_prepare run
    _commit_edit(full_tree, VPCI, _add_unused_static, "xen-pciback: unused static")
    _commit_edit(full_tree, XENBUS, _add_unused_variable("pv_rev1"), "xen-pciback: revision 1")
    r1 = build_kernel(build_settings, kcfg, full_tree, base, _series(full_tree, base), tmp_path / "run1", _progress)
    assert r1.status == "ok", (r1.detail, r1.errors)
    assert not r1.prepared_reused
    assert r1.config_warnings == [
        f"CONFIG_PV_VERIFY_NO_SUCH_SYMBOL: no such Kconfig symbol in this tree (fragment {bogus} wants y)"
    ]
    assert Path(r1.module).is_file()
    assert r1.vermagic.split()[0] == r1.kernel_release and r1.kernel_release.startswith("6.1.")
    assert sorted(w.split(": warning: ")[1] for w in r1.new_warnings) == [
        "'pv_keep' defined but not used [-Wunused-variable]",
        "unused variable 'pv_rev1' [-Wunused-variable]",
    ]
    log1 = Path(r1.log).read_text()
    assert "### prepare: make modules_prepare" in log1 and "### config: make olddefconfig" in log1

    # revision 2 of the series on the same base, vpci.c unchanged: only the module is rebuilt
    _git(full_tree, "checkout", "-q", "-f", "--detach", base)
    _commit_edit(full_tree, VPCI, _add_unused_static, "xen-pciback: unused static")
    _commit_edit(full_tree, XENBUS, _add_unused_variable("pv_rev2"), "xen-pciback: revision 2")
    prepared_config = Path(build_settings.path(build_settings.cache_dir)).glob("build/full-*/out/.config")
    (config_file,) = list(prepared_config)
    mtime = config_file.stat().st_mtime_ns
    r2 = build_kernel(build_settings, kcfg, full_tree, base, _series(full_tree, base), tmp_path / "run2", _progress)
    assert r2.status == "ok", (r2.detail, r2.errors)
    assert r2.prepared_reused and r2.config_warnings == r1.config_warnings
    log2 = Path(r2.log).read_text()
    assert "modules_prepare" not in log2.replace("no modules_prepare", "")
    assert "### config:" not in log2
    kbuild = _kbuild_output_of_step(log2, "module: series")
    # kbuild's own output: only the module's objects, nothing of prepare (scripts, syncconfig, generated headers)
    assert re.search(r"CC \[M\]\s+\S*/xenbus\.o", kbuild)
    # only the changed file is recompiled; vpci.c's warning is still reported from revision 1's build
    assert not re.search(r"CC \[M\]\s+\S*/vpci\.o", kbuild)
    assert sorted(w.split(": warning: ")[1] for w in r2.new_warnings) == [
        "'pv_keep' defined but not used [-Wunused-variable]",
        "unused variable 'pv_rev2' [-Wunused-variable]",
    ]
    for prepare_mark in ("SYNC", "HOSTCC", "HOSTLD", "UPD ", "WRAP", "scripts/"):
        assert prepare_mark not in kbuild, prepare_mark
    assert config_file.stat().st_mtime_ns == mtime
    assert r2.srcversion != r1.srcversion and r2.vermagic == r1.vermagic
    # the baseline (base commit) came from the cache built for revision 1
    assert "module: baseline: cached" in log2
    _git(full_tree, "checkout", "-q", "-f", "--detach", base)


@pytest.mark.build
@pytest.mark.kernel
def test_full_tree_module_symbol_not_taken_is_an_error(full_tree, debian_source, build_settings, tmp_path):
    off = tmp_path / "off.config"
    off.write_text("# CONFIG_XEN_PCIDEV_BACKEND is not set\n")
    kcfg = _full_kernel("full-off", ["kconfigs/xen-dom0.config", str(off)])
    res = build_kernel(build_settings, kcfg, full_tree, debian_source.commit, [], tmp_path / "run", _progress)
    assert res.status == "error"
    assert "CONFIG_XEN_PCIDEV_BACKEND" in res.detail and not res.module
    assert not res.prepared_reused and "### prepare: make modules_prepare" not in Path(res.log).read_text()
