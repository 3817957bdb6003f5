"""`invoke ci.poll`: start one pipeline per new patchwork series revision, and only one.

The state that says "this revision was polled" lives where it survives: on patchwork itself. A
revision counts as polled when any of its patches carries a `pciback-verify/...` check (a queued,
pending or finished one); when poll starts a pipeline it writes the local file, then posts a
pending check per kernel ("queued: pipeline N"). The local file (CI cache) is only a shortcut that
saves the check look-ups: losing it re-triggers nothing. A check that cannot be posted (patchwork
refuses the token) is said on stderr and leaves the local file as the only record. Without a patchwork token
nothing can be posted, and the local file is all there is (said so on stderr).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from .config import Settings
from .errors import ConfigError
from .intake import _pw_get, patchwork_new_series
from .post import CONTEXT_PREFIX, Check, Patchwork, PostError, trigger_pipeline
from .results import atomic_write_text
from .util import Progress


@dataclass
class Polled:
    series_id: int
    version: int
    name: str
    action: str  # triggered | listed | already-polled
    pipeline: int = 0

    @property
    def new(self) -> bool:
        """Not polled before: `invoke ci.poll` prints it (`line`)."""
        return self.action != "already-polled"

    def line(self) -> str:
        return f"{self.series_id} v{self.version} {self.name}"


def key(item: dict) -> str:
    return f"{item['id']}:v{item.get('version') or 1}"


def patch_ids(item: dict) -> list[int]:
    return [int(p["id"]) for p in item.get("patches") or [] if "id" in p]


def has_our_check(url: str, item: dict, pw: Patchwork | None = None, timeout: float = 30) -> bool:
    """Whether a patch of the series has any pciback-verify check (with the token when there is one,
    else anonymously: patchwork's checks are public)."""
    s = requests.Session()
    s.headers.update({"Accept": "application/json", "User-Agent": "pciback-verify"})
    for pid in patch_ids(item):
        if pw is not None:
            checks = pw.checks(pid)
        else:
            checks = _pw_get(s, f"{url.rstrip('/')}/api/1.2/patches/{pid}/checks/", timeout).json()
        if any(str(c.get("context", "")).startswith(f"{CONTEXT_PREFIX}/") for c in checks):
            return True
    return False


def _load(state: Path) -> set[str]:
    try:
        return set(json.loads(state.read_text())) if state.is_file() else set()
    except (ValueError, OSError):
        return set()  # a damaged shortcut: patchwork still knows


def poll(
    url: str,
    project: str,
    state: Path,
    kernels: list[str],
    trigger: Callable[[dict], int] | None = None,
    token: str | None = None,
    progress: Progress = print,
) -> list[Polled]:
    seen = _load(state)
    pw = None
    try:
        pw = Patchwork(url, token)
    except Exception:  # noqa: BLE001 - no token: nothing to post; said below
        progress("ci.poll: no PATCHWORK_TOKEN: polled revisions are remembered in the local state file only")
    out: list[Polled] = []

    def remember(k: str) -> None:
        seen.add(k)
        atomic_write_text(
            state, json.dumps(sorted(seen), indent=1) + "\n"
        )  # once per revision, even if a later one fails

    for item in patchwork_new_series(url, project, seen):
        k, version = key(item), int(item.get("version") or 1)
        name = item.get("name") or ""
        if has_our_check(url, item, pw):
            progress(f"series {k}: already has pciback-verify checks on patchwork; not started again")
            out.append(Polled(int(item["id"]), version, name, "already-polled"))
            remember(k)
            continue
        pid = trigger(item) if trigger else 0
        # remembered before posting: a pipeline started is never started again because a check
        # could not be posted (a token without maintainer rights on the project gets 403)
        remember(k)
        out.append(Polled(int(item["id"]), version, name, "triggered" if trigger else "listed", pid))
        if pw is not None:
            _queued(pw, item, kernels, f"queued: pipeline {pid}" if pid else "queued", progress)
    return out


def _queued(pw: Patchwork, item: dict, kernels: list[str], desc: str, progress: Progress) -> None:
    """The pending check per patch and kernel that marks the revision as polled on patchwork."""
    try:
        for patch in patch_ids(item):
            for kern in kernels:
                pw.post_check(patch, Check(kern, f"{CONTEXT_PREFIX}/{kern}", "pending", desc, ""))
    except PostError as e:
        progress(f"series {key(item)}: no queued check posted ({e.message}): only the local state file remembers it")


def poll_ci(
    settings: Settings,
    patchwork: str | None = None,
    project: str | None = None,
    state: str | None = None,
    trigger: bool = False,
    env: Mapping[str, str] = os.environ,
    progress: Progress = print,
) -> list[Polled]:
    """`invoke ci.poll`: the options completed from the environment (PATCHWORK_URL, PATCHWORK_PROJECT;
    for --trigger CI_API_V4_URL, CI_PROJECT_ID, CI_DEFAULT_BRANCH), the state file under the cache
    (`ci-poll.json`), one GitLab pipeline per new revision when `trigger`."""
    url = patchwork or env.get("PATCHWORK_URL")
    proj = project or env.get("PATCHWORK_PROJECT")
    if not url or not proj:
        raise ConfigError("ci.poll: give --patchwork and --project (or PATCHWORK_URL, PATCHWORK_PROJECT)")

    def start(item: dict) -> int:
        pid = trigger_pipeline(
            env.get("CI_API_V4_URL", ""),
            env.get("CI_PROJECT_ID", ""),
            env.get("CI_DEFAULT_BRANCH", "main"),
            {"PATCHWORK_SERIES": str(item["id"]), "PATCHWORK_URL": url},
        )
        progress(f"series {key(item)}: pipeline {pid}")
        return pid

    state_path = settings.path(state or f"{settings.cache_dir}/ci-poll.json")
    kernels = [k.name for k in settings.kernels]
    return poll(url, proj, state_path, kernels, trigger=start if trigger else None, progress=progress)
