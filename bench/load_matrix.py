#!/usr/bin/env python3
"""Load soak: 8 kernel entries × 3 VF counts against one lab host, two runs at once, then one by one.

    .venv/bin/python bench/load_matrix.py [--entries 8] [--baseline all|distinct] [--keep-lab] [--results DIR]

The reliability item it answers: a matrix of 8 kernel entries × 3 VF counts against one lab
host completes with correct serialization and the same verdicts as running them one by one.

Kernels: the local Debian repository (`invoke source.import`), entries `load-1` … `load-N`
alternating between `debian-6.1` (fix already upstream: `already-upstream`) and
`debian-6.1-prefix` (fix reverted, the series applies: `ready`); each is built in headers mode
against the lab's dom0 release, deployed to the host `lab` and tested with vf_counts [1, 2, 3].
The matrix lives in a generated config file (`invoke -f FILE`, matrix `load`) in the results
directory; every `invoke verify` writes its run under that directory, never under `runs/`.

1. Setup: `invoke config.show` on the generated file (it must validate), `invoke source.import`
   (a no-op when imported; done once here so two runs never import at the same time), then
   `invoke lab.build` (only if the lab is not running) and `invoke lab.up`.
2. Concurrent: two `invoke verify` processes started together, entries 1…N/2 and N/2+1…N, same
   host. Every output line is timestamped (time.monotonic()) as it is read. A run holds the host
   lock (pipeline/hostlock.py) from its first deploy to its last restore, for all its kernels,
   so a run's host stage is one interval: from `host lab: lock acquired after …` or its first
   host line (`lab: loaded now: …`, recovery, test lines) to its last host line (`lab:
   xen_pciback back to …`). These lines are printed with the lock held, so the interval lies
   within the lock's; two intervals that overlap mean the lock failed. Checked: no overlap,
   each run waited at most once (`host lab: locked by run …; waiting`), one run waited for
   the other (otherwise the soak did not exercise the lock), no lock was broken as stale and
   no run gave up waiting. Per-kernel host times (deploy + test durations) come from
   results.json; the progress lines themselves do not name the kernel.
3. Alone: each entry in its own `invoke verify --kernel load-K`, one after the other
   (`--baseline distinct`: only the first entry of each ref, to save lab time).
4. Compare per entry: the verdict and every test's passed/seen must equal the lone run's.

Exit 0 only when both phases completed (every run exited 0 with a complete results.json),
no host-stage intervals overlapped, the lock behaved as above and no entry differed; 1 when a
check failed; 2 when the setup failed (config rejected, source or lab not available).

vf-hotplug (after the control; the slowest and most fragile step in the emulated lab) is
switched off with `pv.hotplug: false` (`--hotplug` keeps it).
`--hotplug-cycles N` sets pv.hotplug_cycles for these runs (0: attach the VFs one by one, no
detach/attach cycles). Expect roughly 40–60 minutes for 8 entries with `--baseline all` on
the emulated lab. Logs (one per run, with timestamps), the config file and load_matrix.json
(all figures) stay in the results directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from pipeline import PROJECT_ROOT  # noqa: E402
from pipeline.config import project_settings  # noqa: E402

HOST = "lab"
MATRIX = "load"
# ref -> the verdict a lab run gives it (the default matrix's two kernels)
REFS = {"debian-6.1": "already-upstream", "debian-6.1-prefix": "ready"}
VF_COUNTS = [1, 2, 3]

# pipeline.lab's own messages share the host's `lab: ` prefix; they are not host-stage work
_LAB_MGMT = re.compile(
    r"(already running|waiting for another lab command|QEMU pid|removing the stale|starting QEMU|ready after"
    r"|booting,|not running|powering dom0 off|no clean poweroff|killing QEMU|down after)"
)
_RUN_LINE = re.compile(r"^run (\S+): (/.+)$")
_WAITING = re.compile(r"^host (\S+): locked by (?:run (\S+) \(|an unknown run)")
_ACQUIRED = re.compile(r"^host (\S+): lock acquired after (\d+) s")
_BROKEN = re.compile(r"^host (\S+): breaking the stale lock")
_GAVE_UP = re.compile(r"host (\S+): locked by .*; gave up after")
# lines worth echoing while the soak runs (everything goes to the logs)
_ECHO = re.compile(r"(: (PASS|FAIL): |lock|failed|error|restarting the lab|^run \S+: )")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ pure parts


def make_entries(n: int, remote: str, refs: list[str] | None = None) -> list[dict]:
    """Matrix entries load-1 … load-n, alternating between the refs, headers mode, host `lab`."""
    refs = refs or list(REFS)
    return [
        {
            "name": f"load-{i}",
            "remote": remote,
            "ref": refs[(i - 1) % len(refs)],
            "build": {"mode": "headers", "headers": "auto"},
            "hosts": [HOST],
        }
        for i in range(1, n + 1)
    ]


def make_config(
    entries: list[dict],
    lock_timeout_s: int | None = None,
    hotplug: bool | None = None,
    hotplug_cycles: int | None = None,
) -> dict:
    """The `invoke -f` file: matrix `load` (merged over the project's invoke.yaml by Invoke).

    None leaves a setting as the project has it (`hotplug` must stay None for a pipeline
    without that setting: an unknown key is a config error).
    """
    pv: dict = {"matrix": MATRIX, "vf_counts": list(VF_COUNTS), "matrices": {MATRIX: entries}}
    if lock_timeout_s is not None:  # the second run waits for the first run's whole host stage
        pv["hosts"] = {HOST: {"lock_timeout_s": lock_timeout_s}}
    if hotplug is not None:
        pv["hotplug"] = hotplug
    if hotplug_cycles is not None:
        pv["hotplug_cycles"] = hotplug_cycles
    return {"pv": pv}


def split_halves(names: list[str]) -> list[list[str]]:
    """Two runs' kernels: the first half and the rest (alternating refs: both refs in each)."""
    half = (len(names) + 1) // 2
    return [names[:half], names[half:]]


def baseline_of(entries: list[dict], mode: str) -> dict[str, str]:
    """Entry -> the entry whose lone run it is compared with: itself, or the first of its ref."""
    if mode == "all":
        return {e["name"]: e["name"] for e in entries}
    first: dict[str, str] = {}
    for e in entries:
        first.setdefault(e["ref"], e["name"])
    return {e["name"]: first[e["ref"]] for e in entries}


Line = tuple[float, str]  # (time.monotonic() when read, text without the newline)


def host_interval(lines: list[Line], host: str = HOST) -> tuple[float, float] | None:
    """When a run worked on the host, as seen from its output; None when it never did.

    Start: `host H: lock acquired after` or its first `H: ` line that is not the lab module's own
    (boot/up/down messages also start with `lab: `); end: its last such line.
    """
    start = end = None
    for t, text in lines:
        acquired = _ACQUIRED.match(text)
        work = text.startswith(f"{host}: ") and not _LAB_MGMT.search(text)
        if (acquired and acquired.group(1) == host) or work:
            start = t if start is None else start
        if work:
            end = t
    if start is None:
        return None
    return (start, end if end is not None else start)


@dataclass
class LockWait:
    holders: list[str] = field(default_factory=list)  # run ids named while waiting ("?" for no owner file)
    acquired_after_s: int | None = None  # None: never acquired (gave up or the run ended)


def lock_waits(lines: list[Line], host: str = HOST) -> list[LockWait]:
    """Each wait for the host lock: `locked by run X; waiting` lines up to `lock acquired after N s`."""
    waits: list[LockWait] = []
    cur: LockWait | None = None
    for _, text in lines:
        m = _WAITING.match(text)
        if m and m.group(1) == host:
            cur = cur or LockWait()
            holder = m.group(2) or "?"
            if holder not in cur.holders:
                cur.holders.append(holder)
            continue
        m = _ACQUIRED.match(text)
        if m and m.group(1) == host:
            cur = cur or LockWait()
            cur.acquired_after_s = int(m.group(2))
            waits.append(cur)
            cur = None
    if cur is not None:
        waits.append(cur)
    return waits


def find_overlaps(intervals: dict[str, tuple[float, float] | None]) -> list[tuple[str, str, float]]:
    """Pairs of labelled intervals that overlap, with the overlap in seconds (touching is no overlap)."""
    found = []
    items = [(k, v) for k, v in intervals.items() if v is not None]
    for i, (a, (a0, a1)) in enumerate(items):
        for b, (b0, b1) in items[i + 1 :]:
            both = min(a1, b1) - max(a0, b0)
            if both > 0:
                found.append((a, b, both))
    return found


def serialization_problems(
    lines_by_run: dict[str, list[Line]], run_ids: dict[str, str], host: str = HOST
) -> tuple[list[str], dict]:
    """Everything wrong with how the concurrent runs shared the host, and what was observed."""
    problems: list[str] = []
    intervals = {label: host_interval(lines, host) for label, lines in lines_by_run.items()}
    waits = {label: lock_waits(lines, host) for label, lines in lines_by_run.items()}
    overlaps = find_overlaps(intervals)
    for a, b, s in overlaps:
        problems.append(f"host stages of {a} and {b} overlap by {s:.1f} s")
    for label, iv in intervals.items():
        if iv is None:
            problems.append(f"{label}: no host stage seen in its output")
    ours = {rid: label for label, rid in run_ids.items() if rid}
    waited_for_ours = []
    for label, ws in waits.items():
        if len(ws) > 1:
            problems.append(f"{label}: waited for the lock {len(ws)} times (one acquisition per run)")
        for w in ws:
            if w.acquired_after_s is None:
                problems.append(f"{label}: waited for the lock (held by {', '.join(w.holders)}) and never got it")
            waited_for_ours += [(label, ours[h]) for h in w.holders if h in ours and ours[h] != label]
    for label, lines in lines_by_run.items():
        for _, text in lines:
            if _BROKEN.match(text):
                problems.append(f"{label}: broke a lock as stale ({text}); no run died")
            elif _GAVE_UP.search(text):
                problems.append(f"{label}: gave up waiting ({text})")
    pairs = {(w, h) for w, h in waited_for_ours}
    if not pairs:
        problems.append("no run waited for the other: the lock was not exercised")
    elif any((h, w) in pairs for w, h in pairs):
        problems.append("each run waited for the other: the lock was held twice at once")
    observed = {
        "intervals": intervals,
        "overlaps": overlaps,
        "waits": {k: [vars(w) for w in v] for k, v in waits.items()},
        "waited_for": sorted(pairs),
    }
    return problems, observed


def label_of(t: dict) -> str:
    if t.get("module") == "control":
        return "control"
    return t["name"] if t.get("module") in ("series", None) else f"{t['name']}[{t['module']}]"


def tests_by_label(kernel: dict) -> dict[str, dict]:
    """A kernel row's tests by label: passed, seen, expected."""
    out: dict[str, dict] = {}
    for t in kernel.get("tests", []):
        label = label_of(t)
        while label in out:  # one label twice (a second host): keep both
            label += "+"
        out[label] = {"passed": bool(t.get("passed")), "seen": t.get("seen", 0), "expected": t.get("expected", 0)}
    return out


def format_tests(kernel: dict | None) -> str:
    if not kernel:
        return "-"
    tests = tests_by_label(kernel)
    return ", ".join(f"{k} {v['seen']}/{v['expected']}" for k, v in tests.items()) or "no tests"


def differences(concurrent: dict | None, alone: dict | None) -> list[str]:
    """How one entry's concurrent result differs from the lone one: verdict, then each test's passed/seen."""
    if concurrent is None or alone is None:
        return [f"no result {'concurrent' if concurrent is None else 'alone'}"]
    diffs = []
    if concurrent.get("verdict") != alone.get("verdict"):
        diffs.append(f"verdict {concurrent.get('verdict')} vs {alone.get('verdict')}")
    tc, ta = tests_by_label(concurrent), tests_by_label(alone)
    for label in list(tc) + [x for x in ta if x not in tc]:
        a, b = tc.get(label), ta.get(label)
        if a is None or b is None:
            diffs.append(f"{label} only {'alone' if a is None else 'concurrent'}")
        elif (a["passed"], a["seen"]) != (b["passed"], b["seen"]):
            pa, pb = ("pass" if x["passed"] else "fail" for x in (a, b))
            diffs.append(f"{label} {pa} {a['seen']}/{a['expected']} vs {pb} {b['seen']}/{b['expected']}")
    return diffs


@dataclass
class Row:
    entry: str
    ref: str
    concurrent: str
    alone: str
    baseline: str  # the entry whose lone run this is compared with
    tests: str
    diffs: list[str]


def compare(
    entries: list[dict], concurrent: dict[str, dict], alone: dict[str, dict], baseline: dict[str, str]
) -> list[Row]:
    rows = []
    for e in entries:
        c, a = concurrent.get(e["name"]), alone.get(baseline[e["name"]])
        rows.append(
            Row(
                entry=e["name"],
                ref=e["ref"],
                concurrent=(c or {}).get("verdict", "-"),
                alone=(a or {}).get("verdict", "-"),
                baseline=baseline[e["name"]],
                tests=format_tests(c),
                diffs=differences(c, a),
            )
        )
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("ENTRY", "REF", "CONCURRENT", "ALONE", "TESTS (concurrent, seen/expected)", "SAME")
    body = [
        (
            r.entry,
            r.ref,
            r.concurrent,
            r.alone + ("" if r.baseline == r.entry else f" (via {r.baseline})"),
            r.tests,
            "yes" if not r.diffs else "NO",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in [head, *body]]
    for r in rows:
        lines += [f"  {r.entry}: {d}" for d in r.diffs]
    return "\n".join(lines)


# ------------------------------------------------------------------ running invoke


@dataclass
class Run:
    label: str
    kernels: list[str]
    rc: int | None = None
    t0: float = 0.0
    t1: float = 0.0
    lines: list[Line] = field(default_factory=list)
    run_id: str = ""
    run_dir: str = ""
    results: dict | None = None

    @property
    def complete(self) -> bool:
        return self.rc == 0 and bool(self.results) and self.results.get("status") == "complete"

    def kernel_results(self) -> dict[str, dict]:
        return {k["name"]: k for k in (self.results or {}).get("kernels", [])}


ACTIVE: list[subprocess.Popen] = []  # children not waited for yet


class Invocation:
    """One `python -m invoke …` child: its merged output read line by line, timestamped and logged."""

    def __init__(self, run: Run, argv: list[str], env: dict[str, str], log: Path, echo_all: bool):
        self.run, self.echo_all = run, echo_all
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "w", encoding="utf-8")  # closed by the reader thread
        self.log.write("$ " + " ".join(argv) + "\n")
        run.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
        )
        ACTIVE.append(self.proc)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            t = time.monotonic()
            text = raw.rstrip("\n")
            self.run.lines.append((t, text))
            self.log.write(f"[{t - self.run.t0:8.1f}s] {text}\n")
            self.log.flush()
            if self.echo_all or _ECHO.search(text):
                say(f"  [{self.run.label}] {text}")
        self.log.close()

    def wait(self) -> Run:
        self.run.rc = self.proc.wait()
        ACTIVE.remove(self.proc)
        self.reader.join()
        self.run.t1 = time.monotonic()
        for _, text in self.run.lines:
            m = _RUN_LINE.match(text)
            if m:
                self.run.run_id, self.run.run_dir = m.group(1), m.group(2)
                break
        if self.run.run_dir:
            try:
                self.run.results = json.loads((Path(self.run.run_dir) / "results.json").read_text())
            except (OSError, ValueError) as e:
                say(f"  [{self.run.label}] results.json unreadable: {e}")
        return self.run


def child_env(results_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(INVOKE_PV_RESULTS_ROOT=str(results_root), PYTHONUNBUFFERED="1")
    env.pop("INVOKE_PV_MATRIX", None)  # --matrix load is passed anyway
    return env


def invoke_argv(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "invoke", "-f", str(cfg), *args]


def verify_argv(cfg: Path, kernels: list[str]) -> list[str]:
    argv = invoke_argv(cfg, "verify", "--matrix", MATRIX)
    for k in kernels:
        argv += ["--kernel", k]
    return argv


def report_run(run: Run) -> None:
    verdicts = ", ".join(f"{n} {k.get('verdict')}" for n, k in run.kernel_results().items()) or "no results"
    status = (run.results or {}).get("status", "?")
    say(f"{run.label}: exit {run.rc}, {status}, {run.t1 - run.t0:.0f} s: {verdicts}")


def simple(cfg: Path, env: dict[str, str], logs: Path, label: str, *args: str) -> int:
    run = Run(label=label, kernels=[])
    rc = Invocation(run, invoke_argv(cfg, *args), env, logs / f"{label}.log", echo_all=True).wait().rc
    return rc if rc is not None else 1


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=8, help="kernel entries in the matrix (default 8, at least 2)")
    ap.add_argument(
        "--baseline",
        choices=("all", "distinct"),
        default="all",
        help="alone phase: every entry (all) or one entry per distinct ref (distinct)",
    )
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab running if this script booted it")
    ap.add_argument("--results", help="results directory (default: a new one under /tmp; never the repo's runs/)")
    ap.add_argument(
        "--lock-timeout", type=int, default=7200, help="pv.hosts.lab.lock_timeout_s for these runs (default 7200)"
    )
    ap.add_argument("--hotplug", action="store_true", help="keep vf-hotplug (default: off where pv.hotplug exists)")
    ap.add_argument("--hotplug-cycles", type=int, help="pv.hotplug_cycles for these runs (default: the project's)")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo every line of the runs, not only key lines")
    args = ap.parse_args(argv)
    if args.entries < 2:
        ap.error("--entries: at least 2 (two concurrent runs)")

    if args.results:
        out = Path(args.results).resolve()
        if out.is_relative_to((PROJECT_ROOT / "runs").resolve()):
            ap.error(f"--results {out}: not under the project's runs/")
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = Path(tempfile.mkdtemp(prefix="load-matrix-"))
    logs = out / "logs"

    from pipeline import kernelsrc, lab

    settings = project_settings()
    entries = make_entries(args.entries, str(kernelsrc.repo_path(settings)))
    cfg = out / "load-matrix.yaml"
    hotplug = None if args.hotplug else False
    args.vf_hotplug = hotplug is None  # for load_matrix.json
    config = make_config(entries, args.lock_timeout, hotplug, args.hotplug_cycles)
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    say(f"results: {out}")
    if hotplug is None:
        say("vf-hotplug runs for every kernel (--hotplug); each kernel takes a few minutes longer")
    env_c, env_a = child_env(out / "concurrent"), child_env(out / "alone")

    # ---- setup
    if simple(cfg, env_c, logs, "config-show", "config.show", "--matrix", MATRIX):
        say("setup: the generated config was rejected")
        return 2
    if simple(cfg, env_c, logs, "source-import", "source.import"):
        say("setup: `invoke source.import` failed")
        return 2
    was_running = lab.status(settings, probe=False).running
    if not was_running and simple(cfg, env_c, logs, "lab-build", "lab.build"):
        say("setup: `invoke lab.build` failed")
        return 2
    try:
        if simple(cfg, env_c, logs, "lab-up", "lab.up"):
            say("setup: `invoke lab.up` failed")
            return 2
        return _phases(args, entries, cfg, env_c, env_a, logs, out)
    except KeyboardInterrupt:
        # the runs share our process group: they got the Ctrl-C too and are putting the host back
        say(f"interrupted: waiting for {len(ACTIVE)} run(s) to stop (Ctrl-C again leaves them)")
        for proc in list(ACTIVE):
            proc.wait()
            ACTIVE.remove(proc)
        return 130
    finally:
        if not was_running and not args.keep_lab and not ACTIVE:
            simple(cfg, env_c, logs, "lab-down", "lab.down")


def _phases(args, entries, cfg, env_c, env_a, logs, out) -> int:
    names = [e["name"] for e in entries]
    refs = {e["name"]: e["ref"] for e in entries}

    # ---- phase 1: two runs at once on one host
    halves = split_halves(names)
    say(f"phase 1 (concurrent): run A {', '.join(halves[0])} | run B {', '.join(halves[1])}")
    t1 = time.monotonic()
    runs = [Run(label=label, kernels=ks) for label, ks in zip(("A", "B"), halves, strict=True)]
    started = [
        Invocation(r, verify_argv(cfg, r.kernels), env_c, logs / f"concurrent-{r.label}.log", args.verbose)
        for r in runs
    ]
    for inv in started:
        report_run(inv.wait())
    wall_concurrent = time.monotonic() - t1
    problems, observed = serialization_problems({r.label: r.lines for r in runs}, {r.label: r.run_id for r in runs})
    concurrent = {n: k for r in runs for n, k in r.kernel_results().items()}

    # ---- phase 2: one by one
    baseline = baseline_of(entries, args.baseline)
    alone_names = [n for n in names if n in set(baseline.values())]
    say(f"phase 2 (alone, {args.baseline}): {', '.join(alone_names)}, one after the other")
    t2 = time.monotonic()
    alone_runs = []
    for n in alone_names:
        r = Run(label=n, kernels=[n])
        report_run(Invocation(r, verify_argv(cfg, [n]), env_a, logs / f"alone-{n}.log", args.verbose).wait())
        alone_runs.append(r)
    wall_alone = time.monotonic() - t2
    alone = {n: k for r in alone_runs for n, k in r.kernel_results().items()}

    # ---- compare and report
    rows = compare(entries, concurrent, alone, baseline)
    print(format_table(rows))
    mismatches = [r for r in rows if r.diffs]
    incomplete = [r.label for r in runs + alone_runs if not r.complete]
    unexpected = [r.entry for r in rows if r.concurrent != REFS.get(refs[r.entry])]
    ivs = observed["intervals"]
    print()
    for r in runs:
        iv = ivs.get(r.label)
        where = f"{iv[0] - t1:.0f}–{iv[1] - t1:.0f} s" if iv else "none seen"
        print(f"run {r.label} ({r.run_id or '?'}): exit {r.rc}, host stage {where} after the phase start")
        for n, k in r.kernel_results().items():
            host_s = sum(d.get("duration_s", 0) for d in k.get("deploy", [])) + sum(
                t.get("duration_s", 0) for t in k.get("tests", [])
            )
            print(f"  {n}: deploy + tests {host_s:.0f} s")
    n_waits = sum(len(w) for w in observed["waits"].values())
    waited = ", ".join(f"{w} waited for {h}" for w, h in observed["waited_for"]) or "none"
    print(f"wall time: concurrent {wall_concurrent:.0f} s, alone {wall_alone:.0f} s ({len(alone_runs)} runs)")
    print(f"lock waits observed: {n_waits} ({waited})")
    print(f"overlaps: {len(observed['overlaps'])}")
    print(f"mismatches: {len(mismatches)}")
    print(f"incomplete runs: {', '.join(incomplete) or 'none'}")
    if unexpected:
        print(f"note: verdict other than the ref's usual one (lab trouble?): {', '.join(unexpected)}")
    for p in problems:
        print(f"serialization: {p}")
    summary = {
        "results": str(out),
        "entries": entries,
        "baseline": args.baseline,
        "vf_hotplug": args.vf_hotplug,
        "wall_s": {"concurrent": round(wall_concurrent, 1), "alone": round(wall_alone, 1)},
        "runs": [
            {"label": r.label, "kernels": r.kernels, "rc": r.rc, "run_id": r.run_id, "run_dir": r.run_dir}
            for r in runs + alone_runs
        ],
        "host_intervals_s": {k: (None if v is None else [v[0] - t1, v[1] - t1]) for k, v in ivs.items()},
        "lock_waits": observed["waits"],
        "serialization_problems": problems,
        "rows": [vars(r) for r in rows],
    }
    (out / "load_matrix.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"details: {out / 'load_matrix.json'}, logs in {out / 'logs'}")
    return 0 if not problems and not mismatches and not incomplete else 1


if __name__ == "__main__":
    sys.exit(main())
