"""`invoke hosts.run` (pipeline/hostcmd.py): files put on an inventory host and one command run
there over the pipeline's SSH, as the reproduce recipe of a failed VF test tells a maintainer to
type it; against a real sshd on 127.0.0.1 (tests/local_sshd.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from local_sshd import serve

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError
from pipeline.hostcmd import Put, parse_put
from pipeline.reproduce import recipes
from pipeline.results import KernelResult, Outcome, RunResult, TestResult


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("sshd"), "box") as server:
        yield server


def _config(tmp_path: Path, server) -> Path:
    hc = server.host_config
    entry = {"address": hc.address, "port": hc.port, "user": hc.user, "key": hc.key, "known_hosts": hc.known_hosts}
    cfg = tmp_path / "pv.yaml"
    cfg.write_text(yaml.safe_dump({"pv": {"hosts": {"box": {**entry, "ssh_config": "none"}}}}))
    return cfg


def _invoke(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(cfg), *args], cwd=PROJECT_ROOT, capture_output=True, text=True
    )


def test_put_specs_and_their_one_line_errors(tmp_path):
    f = tmp_path / "a:b.cfg"  # a colon in the local name: the last one splits
    f.write_text("x")
    assert parse_put(f"{f}:/tmp/a.cfg") == Put(f, "/tmp/a.cfg")
    for bad, why in [
        ("nocolon", "expected LOCAL:/"),
        (f"{f}:relative", "expected LOCAL:/"),
        ("/no/such:/tmp/x", "no file"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_put(bad)


def test_the_recipe_of_a_failed_vf_test_puts_its_xl_config_on_the_host_and_runs_xl_there(box, tmp_path):
    run_dir = tmp_path / "run"
    name = f"vf-boot-3-{os.getpid()}"
    t = TestResult(name=name, host="box", module="series", expected=3, seen=1, outcome=Outcome.FAIL)
    t.xl_config = 'name = "pvtest-vf-boot-3"\n'
    k = KernelResult(name="debian-6.1", ref="debian-6.1", remote=".cache/debian-linux.git", tests=[t])
    (rp,) = recipes(RunResult(run_id="r1"), k, run_dir)
    line = next(c for c in rp.commands if c.startswith("invoke hosts.run"))
    argv = shlex.split(line.split("   #")[0])
    assert argv[:4] == ["invoke", "hosts.run", "--host", "box"] and argv[-2:] == ["-c", f"xl create /tmp/{name}.cfg"]
    remote = Path(f"/tmp/{name}.cfg")  # the host is this machine: what arrived can be read here
    try:
        # the recipe's own line, with the invoke config that names the host
        proc = _invoke(_config(tmp_path, box), *argv[1:])
        assert remote.read_text() == t.xl_config
        # no Xen on this machine: xl itself is missing, and its exit code is the task's
        assert proc.returncode == 127 and "xl" in proc.stderr, proc.stderr
    finally:
        remote.unlink(missing_ok=True)


def test_the_commands_exit_code_and_output_and_an_unknown_host(box, tmp_path):
    cfg = _config(tmp_path, box)
    proc = _invoke(cfg, "hosts.run", "--host", "box", "-c", "echo out; echo err >&2; exit 3")
    assert (proc.returncode, proc.stdout.splitlines()[-1], proc.stderr.splitlines()[-1]) == (3, "out", "err")
    proc = _invoke(cfg, "hosts.run", "--host", "nosuch", "-c", "true")
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "error: --host 'nosuch': not in the inventory; have lab, lab-xen4.14, lab-xen4.20, lab-5.10, lab-6.12, lab-7.2, box"
    ], proc.stderr
