"""Results never lost, Ctrl-C safe: kill -9 and SIGINT in the middle of `invoke verify` (real Debian 6.1 source)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import PROJECT_ROOT
from pipeline.interrupt import children

pytestmark = pytest.mark.kernel

DEBIAN = PROJECT_ROOT / ".cache" / "debian-linux.git"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(INVOKE_PV_RESULTS_ROOT=str(tmp_path / "runs"), PYTHONUNBUFFERED="1", **extra)
    return env


def _start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    # own session: like a terminal job; the signals below go to the pid only (the harder case)
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=PROJECT_ROOT,
        env=_env(tmp_path, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float = 300) -> list[str]:
    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    pytest.fail(f"never saw {needle!r}: {''.join(seen)[-2000:]}")


def _run_dir(out: str, root: Path) -> Path:
    for line in out.splitlines():
        if line.startswith("run ") and ": " in line:
            return Path(line.split(": ", 1)[1].strip())
    runs = [p for p in root.iterdir() if p.name != "latest"]
    return max(runs, key=lambda p: p.stat().st_mtime)


def _leftovers(cache_dir: Path, run_id: str) -> list[str]:
    objects = cache_dir / "git" / "objects.git"
    if not objects.exists():
        return []
    wts = subprocess.run(
        ["git", f"--git-dir={objects}", "worktree", "list", "--porcelain"], capture_output=True, text=True
    ).stdout
    refs = subprocess.run(
        ["git", f"--git-dir={objects}", "for-each-ref", "--format=%(refname)", f"refs/heads/pv/{run_id}/"],
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in wts.splitlines() if run_id in line] + refs.split()


@pytest.fixture(scope="module", autouse=True)
def _debian_source():
    if not (DEBIAN / "HEAD").exists():
        pytest.skip("Debian 6.1 source not imported: `invoke source.import`")


def test_kill9_mid_build_keeps_earlier_runs_and_marks_the_run_incomplete(tmp_path):
    root = tmp_path / "runs"
    first = subprocess.run(
        [sys.executable, "-m", "invoke", "verify", "--until", "series"],
        cwd=PROJECT_ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr
    (earlier,) = [p for p in root.iterdir() if p.name != "latest"]
    before = {p.name: p.read_bytes() for p in earlier.iterdir() if p.is_file()}

    proc = _start(tmp_path, "verify", "--until", "build")
    # the rows fetch and build side by side: both have fetched once both have begun to build
    # (on a loaded machine the second row's checkout outlasted the first row's build start)
    out = "".join(_wait_for(proc, "debian-6.1: build: "))
    if "debian-6.1-prefix: build: " not in out:
        out += "".join(_wait_for(proc, "debian-6.1-prefix: build: "))
    # killed while a compiler runs: a module build can end within a second of its start line
    kids = _compiling(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in kids:  # the orphaned builds (own sessions) of the killed run
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    run = _run_dir(out, root)
    try:
        assert run != earlier and {p.name: p.read_bytes() for p in earlier.iterdir() if p.is_file()} == before
        res = json.loads((run / "results.json").read_text())
        assert res["status"] == "incomplete" and res["run_id"] == run.name
        assert all(k["fetch"]["status"] in ("ok", "running", "not-run") for k in res["kernels"])
        assert not list(run.glob(".results.json.*"))  # no half-written temp file left as the result
        rep = subprocess.run(
            [sys.executable, "-m", "invoke", "report", "--run", str(run)],
            cwd=PROJECT_ROOT,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
        )
        assert rep.returncode == 0, rep.stderr
        assert "debian-6.1" in rep.stdout and (run / "summary.md").is_file()
    finally:
        from pipeline.config import project_settings
        from pipeline.fetch import sweep_run

        time.sleep(1)
        sweep_run(project_settings(), run.name, progress=lambda m: None)  # kill -9 cannot clean up: the test does
        assert _leftovers(PROJECT_ROOT / ".cache", run.name) == []


# Not a time limit: only a guard against a run that hangs (pytest-timeout would also catch it).
HANG_GUARD_S = 900
# a line that starts new work; none may follow the run's acknowledgement of the Ctrl-C
NEW_WORK = re.compile(
    r"^fetch \S+: \S+ from |^fetch \S+: checking out |^apply \S+: |: build: against |: xl create with |: insmod |: creating \d+ VF|lab: starting QEMU"
)
ACK = re.compile(r"Ctrl-C|interrupted")


def _assert_interrupted(proc: subprocess.Popen, root: Path, out: str, cache: Path) -> tuple[dict, str]:
    """The run stopped on its own (130), recorded `interrupted`, started nothing new after it saw the
    Ctrl-C, and left no worktree or branch of its own. The order of events is asserted, never a time."""
    t0 = time.monotonic()
    rest, _ = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, out + rest
    print(f"stopped {time.monotonic() - t0:.1f} s after Ctrl-C (for information); last lines:\n{rest[-1500:]}")
    assert "Traceback" not in out + rest
    lines = (out + rest).splitlines()
    ack = next((i for i, line in enumerate(lines) if ACK.search(line)), None)
    assert ack is not None, rest[-2000:]
    started = [line for line in lines[ack + 1 :] if NEW_WORK.search(line)]
    assert not started, f"new work after the Ctrl-C was acknowledged: {started}"
    run = _run_dir(out, root)
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "interrupted"
    assert _leftovers(cache, run.name) == []
    assert not (cache / "worktrees" / run.name).exists()
    return res, rest


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    todo, out = [pid], []
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def _compiling(proc: subprocess.Popen, timeout: float = 120) -> list[int]:
    """The run's processes once one of them is a compiler (make, gcc, cc1); fails if none starts."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        kids = descendants(proc.pid)
        for pid in kids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() in ("make", "gcc", "gcc-12", "cc1", "ccache"):
                    return kids
            except OSError:
                continue
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no compiler ever ran under the run")


def _alive(pids: list[int]) -> list[int]:
    """Those of `pids` that still run (a zombie has exited)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def test_sigint_during_build_stops_promptly_and_cleans_up(tmp_path):
    proc = _start(tmp_path, "verify", "--until", "build")
    out = "".join(_wait_for(proc, ": build: "))
    # Ctrl-C once a compiler runs under the run (an event, not a delay: on a warm cache a row's
    # builds end within a second, on a loaded machine the other row may still be checking out)
    kids = _compiling(proc)  # make and gcc (own sessions: reparented, not ended, if we exit first)
    proc.send_signal(signal.SIGINT)
    res, _ = _assert_interrupted(proc, tmp_path / "runs", out, PROJECT_ROOT / ".cache")
    k = res["kernels"]
    # what completed is recorded: each row stopped in one stage, nothing after it ran
    for r in k:
        stages = [r["fetch"]["status"], r["apply"]["status"], r["build"]["status"]]
        if "interrupted" in stages:
            at = stages.index("interrupted")
            assert "not-run" not in stages[:at] and set(stages[at + 1 :]) <= {"not-run"}, (r["name"], stages)
        else:
            assert "not-run" not in stages, (r["name"], stages)  # it had ended before the Ctrl-C
    assert any(r["build"]["status"] == "interrupted" for r in k), [r["build"]["status"] for r in k]
    # the run ended its builds before it exited: none of them outlived it
    assert kids and _alive(kids) == [], _alive(kids)


def test_sigint_during_fetch_stops_promptly_and_cleans_up(tmp_path):
    cache = tmp_path / "cache"  # cold: the fetch of the whole tree takes long enough to interrupt it
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump({"pv": {"matrices": {"default": [{"name": "deb", "remote": str(DEBIAN), "ref": "debian-6.1"}]}}})
    )
    proc = _start(tmp_path, "-f", str(cfg), "verify", "--until", "apply", INVOKE_PV_CACHE_DIR=str(cache))
    out = "".join(_wait_for(proc, "fetch deb: debian-6.1 from"))
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    res, _ = _assert_interrupted(proc, tmp_path / "runs", out, cache)
    (k,) = res["kernels"]
    assert k["fetch"]["status"] == "interrupted" and k["apply"]["status"] == "not-run", k


# On a host the run first puts back what it changed (guest destroyed, VFs removed, stock module
# reloaded) and only then stops; a second Ctrl-C waits for that too.


@pytest.mark.lab
@pytest.mark.build
@pytest.mark.parametrize(
    "step, needle, delay",
    [
        ("deploy", ": loaded now: ", 0.5),  # between upload and reload
        ("test", ": vf-boot-2 [series]: xl create with ", 4.0),  # guest booting with 2 VFs
    ],
)
def test_sigint_on_the_host_puts_it_back_and_records_what_completed(
    lab_host, tiny_guest, tmp_path, step, needle, delay
):
    from conftest import host_state

    from pipeline.host import Host

    with Host(lab_host) as h:
        before = host_state(h)
    assert before["domids"] == [0] and not before["lock"] and not before["marker"]

    proc = _start(tmp_path, "verify", "--kernel", "debian-6.1-prefix")
    out = "".join(_wait_for(proc, needle, timeout=900))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    # impatient user: a second Ctrl-C once the first is acknowledged, while the host is put back
    # (sent on that line, not after a sleep: a quick restore had ended before a 1 s sleep did).
    # Which line depends on where it lands: in a host step ("finishing the host step in
    # progress") or between steps ("stopping, putting back ..."; a quick guest's marker wait)
    out += "".join(_wait_for(proc, "Ctrl-C: ", timeout=300))
    proc.send_signal(signal.SIGINT)
    res, rest = _assert_interrupted(proc, tmp_path / "runs", out, PROJECT_ROOT / ".cache")

    # it only said so: the cleanup went on and the run ended after it
    events = [line for line in rest.splitlines() if "already stopping" in line or "interrupted during" in line]
    assert events and "Ctrl-C: already stopping, putting the host back first" in events[0], rest
    (k,) = res["kernels"]
    assert k["build"]["status"] == "ok"  # what completed is on record
    assert k["verdict"] == "untested", k["verdict_detail"]
    if step == "deploy":
        assert k["tests"] == []
        assert k["deploy"][-1]["status"] == "interrupted" and k["deploy"][-1]["restored"], k["deploy"]
        assert "interrupted during deploy to lab" in k["verdict_detail"]
    else:
        tests = {t["name"]: t for t in k["tests"]}
        assert tests["vf-boot-1"]["passed"] and tests["vf-boot-1"]["seen"] == 1, tests
        assert tests["vf-boot-2"]["reason"] == "interrupted", tests
        assert "vf-boot-3" not in tests
        assert all(d["restored"] for d in k["deploy"]), k["deploy"]
        assert "interrupted during vf-boot-2@lab [series]" in k["verdict_detail"]

    # left as found: same module (srcversion), no guest, VFs and assignable devices as before,
    # no marker, nothing staged, no lock
    with Host(lab_host) as h:
        assert host_state(h) == before


@pytest.mark.lab
@pytest.mark.build
def test_sigint_during_vf_hotplug_with_keep_takes_the_guest_down_and_keeps_the_module(lab_host, tiny_guest, tmp_path):
    """`--keep` leaves the series module loaded after the run. A Ctrl-C in its last test still takes
    the guest and the VFs down; the module stays, with its marker, and the next run puts the
    stock module back before doing anything else."""
    from conftest import host_state

    from pipeline.host import Host

    short = tmp_path / "short.yaml"
    short.write_text("pv:\n  vf_counts: [2]\n  hotplug_cycles: 1\n")
    with Host(lab_host) as h:
        before = host_state(h)
    assert before["domids"] == [0] and not before["marker"]

    proc = _start(tmp_path, "-f", str(short), "verify", "--kernel", "debian-6.1-prefix", "--keep")
    out = "".join(_wait_for(proc, ": vf-hotplug [series]: xl create with ", timeout=900))
    time.sleep(4.0)
    proc.send_signal(signal.SIGINT)
    res, _ = _assert_interrupted(proc, tmp_path / "runs", out, PROJECT_ROOT / ".cache")
    (k,) = res["kernels"]
    tests = {(t["name"], t["module"]): t for t in k["tests"]}
    assert tests[("vf-boot-2", "series")]["passed"], tests
    assert tests[("vf-boot-3", "control")]["seen"] == 1, tests
    assert tests[("vf-hotplug", "series")]["reason"] == "interrupted", tests
    assert k["verdict"] == "untested"

    with Host(lab_host) as h:
        kept = host_state(h)
    assert kept["module"][0] == k["build"]["srcversion"] and kept["marker"], kept
    assert kept["domids"] == [0] and kept["numvfs"] == before["numvfs"] and not kept["lock"], kept
    assert kept["assignable"] == before["assignable"], kept

    nxt = _start(tmp_path, "verify", "--kernel", "debian-6.1-prefix", "--until", "deploy")
    rest, _ = nxt.communicate(timeout=900)
    assert nxt.returncode == 0, rest[-3000:]
    assert "an earlier run left the host modified" in rest, rest[-3000:]
    with Host(lab_host) as h:
        assert host_state(h) == before
