"""Bad input through the real CLI: one line naming the thing, a distinct exit code, no traceback, nothing written.

Every case runs `python -m invoke ...` in the project with the results root and the
cache pointed at empty temporary folders, and checks afterwards that no run
directory was created (input refused before the run starts) or, for remote
errors found by the fetch stage, that the cache holds no worktree or branch.
The table with the exact messages is docs/bad-input.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import PROJECT_ROOT, clihook
from pipeline.errors import (
    ConfigError,
    ConfigSyntaxError,
    FetchError,
    PatchTooLarge,
    SeriesError,
    UnknownConfigKey,
    UnknownRef,
    UnsafePatchPath,
)

GOOD_DIFF = """--- a/drivers/xen/xen-pciback/xenbus.c
+++ b/drivers/xen/xen-pciback/xenbus.c
@@ -1,1 +1,2 @@
 int a;
+int b;
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(
        INVOKE_PV_RESULTS_ROOT=str(tmp_path / "runs"),
        INVOKE_PV_CACHE_DIR=str(tmp_path / "cache"),
        HOME=str(tmp_path / "home"),  # no ~/.invoke.yaml of whoever runs the tests
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def _invoke(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=_env(tmp_path, **env),
        timeout=300,
    )


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_exit_codes_are_distinct():
    codes = [
        c.exit_code
        for c in (
            ConfigError,
            ConfigSyntaxError,
            UnknownConfigKey,
            SeriesError,
            UnsafePatchPath,
            PatchTooLarge,
            FetchError,
            UnknownRef,
        )
    ]
    assert len(set(codes)) == len(codes) and 0 not in codes and 1 not in codes
    assert clihook.EXIT_CODE == ConfigSyntaxError.exit_code and clihook.MERGE_EXIT_CODE == ConfigError.exit_code


def _series_file(tmp_path: Path, kind: str) -> Path:
    f = tmp_path / f"{kind}.mbox"
    if kind == "empty":
        f.write_bytes(b"")
    elif kind == "binary":
        f.write_bytes(b"From x Mon Jan  1 00:00:00 2024\n\x00\x01\x02\xff" * 10)
    elif kind == "malformed":
        f.write_text("From x Mon Jan  1 00:00:00 2024\nSubject: [PATCH] hi\n\nno diff here\n")
    elif kind == "traversal":
        f.write_text("Subject: [PATCH] evil\n\n" + GOOD_DIFF.replace("drivers/xen/xen-pciback/xenbus.c", "../../etc/x"))
    elif kind == "too-large":
        big = "".join(f"+int v{i};\n" for i in range(600_000))  # > 5 MiB in one patch, < 20 MiB file
        f.write_text("Subject: [PATCH] big\n\n" + GOOD_DIFF + big)
    return f


@pytest.mark.parametrize(
    "kind,code,needle",
    [
        ("empty", SeriesError.exit_code, "empty file"),
        ("binary", SeriesError.exit_code, "binary file, not a patch or mbox"),
        ("malformed", SeriesError.exit_code, "not a patch (no unified diff found)"),
        ("traversal", UnsafePatchPath.exit_code, "escapes the tree"),
        ("too-large", PatchTooLarge.exit_code, "patch is larger than 5 MiB"),
    ],
)
def test_bad_series_refused_before_the_run(tmp_path, kind, code, needle):
    f = _series_file(tmp_path, kind)
    proc = _invoke(tmp_path, "verify", "--until", "series", "--series", str(f))
    _one_line_error(proc, code, str(f), needle)
    _nothing_written(tmp_path)


def _config(tmp_path: Path, data: dict | str, name: str = "cfg.yaml") -> Path:
    f = tmp_path / name
    f.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return f


@pytest.mark.parametrize(
    "content,code,needles",
    [
        ("pv:\n  jobs: [1\n", ConfigSyntaxError.exit_code, ["invalid YAML at line 3, column 1"]),
        ("pv: {matrix: default\n", ConfigSyntaxError.exit_code, ["invalid YAML"]),
        ("pv:\n\tjobs: 2\n", ConfigSyntaxError.exit_code, ["invalid YAML", "'\\t'"]),
        ({"pv": {"jobs": "many"}}, ConfigError.exit_code, ["key pv.jobs: expected an integer, got str 'many'"]),
        ({"pv": {"vf_counts": {"a": 1}}}, ConfigError.exit_code, ["key pv.vf_counts: a mapping in", "but a list in"]),
        ({"pv": {"hosts": {"x": {"port": "ssh"}}}}, ConfigError.exit_code, ["key pv.hosts.x.port"]),
        ({"pv": {"colour": "red"}}, UnknownConfigKey.exit_code, ["key pv.colour: unknown key"]),
        ({"pv": {"lab": {"cpus": 4}}}, UnknownConfigKey.exit_code, ["key pv.lab.cpus: unknown key"]),
    ],
    ids=[
        "yaml-flow-seq",
        "yaml-flow-map",
        "yaml-tab",
        "type-int",
        "type-list",
        "type-host-port",
        "unknown",
        "unknown-nested",
    ],
)
def test_bad_runtime_config(tmp_path, content, code, needles):
    f = _config(tmp_path, content)
    proc = _invoke(tmp_path, "-f", str(f), "verify", "--until", "series")
    _one_line_error(proc, code, str(f), *needles)
    _nothing_written(tmp_path)


def test_invalid_json_config(tmp_path):
    f = _config(tmp_path, '{"pv": ', name="cfg.json")
    proc = _invoke(tmp_path, "-f", str(f), "config.show")
    _one_line_error(proc, ConfigSyntaxError.exit_code, str(f), "invalid JSON")


def test_invalid_yaml_in_runtime_config_from_environment(tmp_path):
    f = _config(tmp_path, "pv: [\n")
    proc = _invoke(tmp_path, "verify", "--until", "series", INVOKE_RUNTIME_CONFIG=str(f))
    _one_line_error(proc, ConfigSyntaxError.exit_code, str(f), "invalid YAML")
    _nothing_written(tmp_path)


def test_invalid_yaml_in_user_config(tmp_path):
    """~/.invoke.yaml is read before tasks.py: the venv's .pth hook (./pv installs it) makes it one line."""
    import sysconfig

    pth = Path(sysconfig.get_paths()["purelib"]) / clihook.PTH_NAME
    assert pth.is_file(), f"{pth} missing: run ./pv (or `{sys.executable} -m pipeline.clihook --install`)"
    (tmp_path / "home").mkdir()
    user = tmp_path / "home" / ".invoke.yaml"
    user.write_text("pv:\n  jobs: 2\n   matrix: x\n")
    proc = _invoke(tmp_path, "verify", "--until", "series")
    _one_line_error(proc, ConfigSyntaxError.exit_code, str(user), "invalid YAML at line 3")
    _nothing_written(tmp_path)
    # a wrong type in the user config names the user file (a key the project's invoke.yaml does not set:
    # the project file has priority over the user file)
    user.write_text(yaml.safe_dump({"pv": {"hosts": {"lab": {"port": "ssh"}}}}))
    proc = _invoke(tmp_path, "verify", "--until", "series")
    _one_line_error(proc, ConfigError.exit_code, str(user), "key pv.hosts.lab.port: expected an integer")
    _nothing_written(tmp_path)


def test_bad_options(tmp_path):
    proc = _invoke(tmp_path, "verify", "--until", "series", "--kernel", "nope")
    _one_line_error(proc, ConfigError.exit_code, "unknown kernel 'nope'")
    proc = _invoke(tmp_path, "verify", "--until", "soon")
    _one_line_error(proc, ConfigError.exit_code, "--until 'soon'")
    proc = _invoke(tmp_path, "verify", "--until", "series", "--series", str(tmp_path / "nope"))
    _one_line_error(proc, SeriesError.exit_code, "no such series folder")
    _nothing_written(tmp_path)


# ---------------------------------------------------------------- found by the fetch stage


@pytest.fixture
def tiny_remote(tmp_path) -> Path:
    repo = tmp_path / "remote.git"
    work = tmp_path / "work"
    git = ["git", "-c", "user.name=T", "-c", "user.email=t@example.org", "-C", str(work)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "f").write_text("x\n")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repo)], check=True)
    return repo


def _remote_error(tmp_path: Path, remote: str, ref: str, code: int, *needles: str) -> str:
    cfg = _config(tmp_path, {"pv": {"matrices": {"default": [{"name": "k", "remote": remote, "ref": ref}]}}})
    proc = _invoke(tmp_path, "-f", str(cfg), "verify", "--until", "apply")
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("k: fetch: ") and all(n in last for n in needles), last
    # found inside the run: its directory records the failure; no tree, worktree or branch was made
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    res = yaml.safe_load((run / "results.json").read_text())
    assert res["kernels"][0]["fetch"]["status"] == "failed" and res["kernels"][0]["error_code"] == code
    assert not (tmp_path / "cache" / "worktrees").exists() or not any((tmp_path / "cache" / "worktrees").iterdir())
    assert not (tmp_path / "cache" / "git" / "objects.git").exists()
    return last


def test_unknown_ref(tmp_path, tiny_remote):
    _remote_error(tmp_path, str(tiny_remote), "no-such-ref", UnknownRef.exit_code, "ref 'no-such-ref' not found")


def test_unreachable_remote(tmp_path):
    _remote_error(tmp_path, str(tmp_path / "gone.git"), "main", FetchError.exit_code, "no such path")
    for p in (tmp_path / "runs").iterdir():
        p.unlink() if p.is_symlink() else __import__("shutil").rmtree(p)
    _remote_error(tmp_path, "https://127.0.0.1:9/linux.git", "main", FetchError.exit_code, "unreachable")


def test_output_piped_into_a_reader_that_leaves_early_is_no_traceback(tmp_path):
    # `invoke config.show | head -1`: the reader closes the pipe while we still print
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "config.show"],
        cwd=PROJECT_ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
