"""A hostile series, one patch per attempt, built for real by `invoke verify --until build` (marked build, kernel).

Each patch only changes drivers/xen/xen-pciback/Makefile, which kbuild evaluates when it builds the
module: the series' own code running on this machine. Each attempt must end as a failed build naming
its reason (or the sandbox limit it hit), with nothing of the token or the keys under the run
directory, nothing written outside, no connection reaching the test's own listener and no process
of the sandbox left behind.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline import sandbox as S

pytestmark = [pytest.mark.build, pytest.mark.kernel]

MAKEFILE = "drivers/xen/xen-pciback/Makefile"
CONTEXT = ["# SPDX-License-Identifier: GPL-2.0", "", "# N.B. The below cannot be expressed with a single line using"]


def _patch(subject: str, lines: list[str]) -> str:
    """A one-patch mbox that puts `lines` at the top of the module's Makefile."""
    body = "".join(f"+{line}\n" for line in lines) + "".join(f" {c}\n" for c in CONTEXT)
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: Mallory <mallory@example.org>\n"
        "Date: Tue, 1 Dec 2026 00:00:00 +0000\n"
        f"Subject: [PATCH] xen-pciback: {subject}\n\n"
        "Signed-off-by: Mallory <mallory@example.org>\n---\n"
        f"diff --git a/{MAKEFILE} b/{MAKEFILE}\n--- a/{MAKEFILE}\n+++ b/{MAKEFILE}\n"
        f"@@ -1,3 +1,{3 + len(lines)} @@\n{body}-- \n2.39.5\n"
    )


@pytest.fixture(scope="module")
def listener():
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    seen: list = []

    def accept():
        while True:
            try:
                conn, addr = srv.accept()
            except OSError:
                return
            seen.append(addr)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1], seen
    srv.close()


@pytest.fixture(scope="module")
def secrets_env(tmp_path_factory):
    """A token in the environment and a private key in a $HOME/.ssh, as on a CI machine."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir(mode=0o700)
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + secrets.token_hex(32) + "\n-----END OPENSSH PRIVATE KEY-----\n"
    (home / ".ssh" / "id_ed25519").write_text(key)
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    token = "pvtok-" + secrets.token_hex(16)
    lab_key = PROJECT_ROOT / ".cache" / "lab" / "id_ed25519"
    values = [token, key.splitlines()[1]]
    if lab_key.is_file():
        values.append(lab_key.read_text().splitlines()[1])
    env = {**os.environ, "HOME": str(home), "PROBE_SECRET": token, "PATCHWORK_TOKEN": token, "GITLAB_TOKEN": token}
    # git am's committer, which a CI machine has in its ~/.gitconfig
    env.update(GIT_COMMITTER_NAME="CI", GIT_COMMITTER_EMAIL="ci@example.org")
    return env, values, home, lab_key


def _sandbox_processes() -> list[str]:
    """What the hostile patches started, if still alive (other builds may use the sandbox uids meanwhile)."""
    out = subprocess.run(["ps", "-e", "-o", "uid=,pid=,args="], capture_output=True, text=True, check=True).stdout
    return [
        ln
        for ln in out.splitlines()
        if S.UID_BASE <= int(ln.split()[0]) < S.UID_BASE + S.SLOTS
        and any(m in ln for m in ("sleep 3600", "hostile log line", "f() {", "socket"))
    ]


def _verify(tmp_path: Path, env: dict, subject: str, lines: list[str], timeout_s: int = 300) -> dict:
    import json

    patch = tmp_path / "hostile.patch"
    patch.write_text(_patch(subject, lines))
    results = tmp_path / "runs"
    cfg = tmp_path / "timeout.yaml"
    cfg.write_text(
        "pv:\n  matrices:\n    default:\n"
        "      - {name: debian-6.1, remote: .cache/debian-linux.git, ref: debian-6.1,\n"
        f"         build: {{mode: headers, headers: auto, timeout_s: {timeout_s}}}, hosts: [lab]}}\n"
    )
    env = {**env, "INVOKE_PV_RESULTS_ROOT": str(results)}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(cfg), "verify", "--until", "build", "--series", str(patch)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((results / "latest" / "results.json").read_text())
    (k,) = data["kernels"]
    assert k["apply"]["status"] == "applied", k["apply"]
    b = k["build"]
    assert b["sandbox"]["confined"] and "net" in b["sandbox"]["namespaces"], b["sandbox"]
    assert b["status"] == "build-failed", (b["status"], b["errors"])
    log = Path(b["log"]).read_text(errors="replace")
    return {"build": b, "results": results, "stdout": proc.stdout + proc.stderr, "log": log}


def _make_error(res: dict, tag: str) -> str:
    """The `$(error tag ...)` line make printed, as the build log has it."""
    lines = [ln for ln in res["log"].splitlines() if f"*** {tag}" in ln]
    assert lines, res["log"][-3000:]
    return lines[0]


def _assert_nothing_leaked(res: dict, values: list[str]) -> None:
    for path in res["results"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for v in values:
                assert v.encode() not in data, f"{v[:10]}... in {path}"
    for v in values:
        assert v not in res["stdout"]
    assert _sandbox_processes() == []


def test_environment_token_is_not_there(tmp_path, secrets_env):
    env, values, _, _ = secrets_env
    res = _verify(
        tmp_path, env, "read a token", ["$(error build setup: token=$(PROBE_SECRET)$(PATCHWORK_TOKEN)$(GITLAB_TOKEN))"]
    )
    assert _make_error(res, "build setup: token=").endswith("token=.  Stop.")
    _assert_nothing_leaked(res, values)


def test_ssh_keys_and_lab_key_are_not_there(tmp_path, secrets_env):
    env, values, home, lab_key = secrets_env
    paths = f"$(HOME)/.ssh/id_ed25519 /root/.ssh/id_ed25519 {home}/.ssh/id_ed25519 {lab_key}"
    res = _verify(tmp_path, env, "read keys", [f"$(error keys: $(shell cat {paths} 2>&1 | tr '\\n' ' '))"])
    err = _make_error(res, "keys:")
    assert "No such file or directory" in err, err
    _assert_nothing_leaked(res, values)


def test_writes_outside_the_build_directory_fail(tmp_path, secrets_env):
    env, values, _, _ = secrets_env
    outside = tmp_path / "outside"
    outside.mkdir()
    targets = [outside / "pwned", PROJECT_ROOT / "runs" / "pwned", Path("/usr/src/pwned"), Path("/tmp/pv-pwned")]
    cmd = "; ".join(f"touch {t} 2>&1" for t in targets)
    res = _verify(tmp_path, env, "write outside", [f"$(error wrote: $(shell {cmd}))"])
    err = _make_error(res, "wrote:")
    assert "No such file or directory" in err or "Read-only file system" in err, err
    for t in targets:
        assert not t.exists(), t
    _assert_nothing_leaked(res, values)


def test_no_connection_reaches_a_local_listener(tmp_path, secrets_env, listener):
    env, values, _, _ = secrets_env
    port, seen = listener
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 5)"
    res = _verify(tmp_path, env, "phone home", [f'$(error net: $(shell python3 -c "{probe}" 2>&1 | tail -n 1))'])
    err = _make_error(res, "net:")
    assert "Connection refused" in err, err
    assert seen == []
    _assert_nothing_leaked(res, values)


def test_fork_bomb_hits_the_process_limit(tmp_path, secrets_env):
    env, values, _, _ = secrets_env
    # 1000 processes that stay (a recursive bomb ends on a race: dash's recursion limit can come
    # first and its last lines then say nothing of forks); past the limit every fork fails, so the
    # last lines are the shell's "Cannot fork", and the leftover check sees every sleep gone
    bomb = "for i in $$(seq 1000); do sleep 3600 >/dev/null 2>&1 & done"  # ($$: make's escape)
    res = _verify(tmp_path, env, "fork bomb", [f"$(error bomb: $(shell sh -c '{bomb}' 2>&1 | tail -n 3))"])
    b = res["build"]
    assert b["limit"] == "processes", (b["limit"], b["errors"])
    assert any("process limit" in e for e in b["errors"]), b["errors"]
    _assert_nothing_leaked(res, values)


def test_time_limit_kills_the_build(tmp_path, secrets_env):
    env, values, _, _ = secrets_env
    # run past the limit, with a child that tries to outlive the build
    res = _verify(tmp_path, env, "sleep", ["$(shell setsid sleep 3600 >/dev/null 2>&1 &)", "$(shell sleep 3600)"], 30)
    b = res["build"]
    assert b["limit"] == "time", (b["limit"], b["errors"])
    assert any("time limit of 30 s" in e for e in b["errors"]), b["errors"]
    _assert_nothing_leaked(res, values)


def test_a_100_mb_log_is_cut_at_the_limit(tmp_path, secrets_env):
    env, values, _, _ = secrets_env
    res = _verify(tmp_path, env, "flood", ["$(shell yes 'hostile log line' | head -c 104857600 >&2)", "$(error done)"])
    b = res["build"]
    assert b["limit"] == "log-size", (b["limit"], b["errors"])
    assert any("log size limit of 32 MB" in e for e in b["errors"]), b["errors"]
    log = Path(b["log"])
    assert 32 * 2**20 <= log.stat().st_size < 33 * 2**20
    _assert_nothing_leaked(res, values)
