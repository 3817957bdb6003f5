"""Series intake beyond local files: a lore message-id (via b4) or a patchwork series id (REST API).

Both return an Intake whose `mbox` is a file `pipeline.series.load_series` accepts.

lore: `b4 mbox` saves the whole thread, `b4 am` (offline, on that saved thread) picks
the newest revision of the series in it and writes a git-am-ready mbox; the thread's
subjects give every revision posted (`[PATCH vN ...]`), so v1 and v2 of a series in one
thread are both reported and v2 is used. `midmask` points b4 at another public-inbox
(b4's own `b4.midmask` setting, e.g. `http://127.0.0.1:8080/all/%s`).

patchwork: GET `/api/1.2/series/{id}/` gives the series' version, its patches' ids
(where checks are posted) and its `mbox` URL, which is downloaded.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .config import Settings, int_option
from .errors import SeriesError
from .util import BACKOFF_S, RETRIES, origin, retry_after

_REV_RE = re.compile(r"\[[^\]]*?\bv(\d+)\b[^\]]*\]", re.I)
_PATCH_RE = re.compile(r"\[[^\]]*\bPATCH\b[^\]]*\]", re.I)


@dataclass
class Intake:
    mbox: Path  # git-am-ready mbox of the chosen (newest) revision
    source: str  # lore:<msgid> | patchwork:<url>
    revision: int
    revisions: list[int] = field(default_factory=list)  # every revision seen, ascending
    name: str = ""
    message_id: str = ""
    patchwork_series: int = 0
    patchwork_patch_ids: list[int] = field(default_factory=list)
    thread: Path | None = None  # the whole thread (lore)
    log: str = ""  # what b4 said

    def summary(self) -> str:
        """One line: the series, the revision taken and the others the thread has."""
        others = [f"v{r}" for r in self.revisions if r != self.revision]
        return f"{self.name}: v{self.revision}" + (f" (also in the thread: {', '.join(others)})" if others else "")


def _b4() -> str:
    exe = Path(sys.executable).with_name("b4")
    found = str(exe) if exe.exists() else shutil.which("b4")
    if not found:
        raise SeriesError("b4 is not installed: pip install 'pciback-verify[lore]' (or pip install b4)")
    return found


def _run_b4(args: list[str], cwd: Path, env_home: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_home is not None:  # keep b4's cache and config out of the user's home (tests, CI)
        env["HOME"] = str(env_home)
        env["XDG_CACHE_HOME"] = str(env_home / "cache")
        env["XDG_DATA_HOME"] = str(env_home / "data")
        env["XDG_CONFIG_HOME"] = str(env_home / "config")
        env["GIT_CONFIG_NOSYSTEM"] = "1"
    return subprocess.run([_b4(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def thread_revisions(thread: Path) -> list[int]:
    """Revisions of the patches (not replies) found in a thread mbox, ascending."""
    revs = set()
    for msg in mailbox.mbox(
        str(thread), factory=lambda f: email.message_from_binary_file(f, policy=email.policy.default)
    ):
        subject = " ".join(str(msg.get("Subject", "")).split())
        if subject.lower().startswith("re:") or not _PATCH_RE.search(subject):
            continue
        m = _REV_RE.search(subject)
        revs.add(int(m.group(1)) if m else 1)
    return sorted(revs)


def from_lore(
    msgid: str,
    outdir: Path,
    *,
    midmask: str | None = None,
    local_mbox: Path | None = None,
    b4_home: Path | None = None,
) -> Intake:
    """Fetch the thread of `msgid` with b4 (or use `local_mbox`), pick the newest revision."""
    msgid = msgid.strip().strip("<>")
    if not msgid or msgid.startswith("-"):
        raise SeriesError(f"not a message-id: {msgid!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    config = ["-c", "b4.attestation-policy=off"]
    if midmask:
        config += ["-c", f"b4.midmask={midmask}"]
    log = []
    if local_mbox is None:
        proc = _run_b4([*config, "mbox", "-o", str(outdir), "-n", "thread.mbox", msgid], outdir, b4_home)
        log.append(proc.stdout + proc.stderr)
        thread = outdir / "thread.mbox"
        if proc.returncode != 0 or not thread.is_file():
            raise SeriesError(f"b4 mbox {msgid}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'failed'}")
    else:
        thread = Path(local_mbox)
        if not thread.is_file():
            raise SeriesError(f"{thread}: no such mbox")
    proc = _run_b4(
        [*config, "--offline-mode", "am", "-m", str(thread.resolve()), "-o", str(outdir), "-n", "series", msgid],
        outdir,
        b4_home,
    )
    log.append(proc.stdout + proc.stderr)
    out = outdir / "series.mbx"  # b4 am names it <name>.mbx
    text = "\n".join(log)
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise SeriesError(f"b4 am {msgid}: {last[-1] if last else 'no patches found'}")
    m = re.search(r"Will use the latest revision: v(\d+)", text)
    revisions = thread_revisions(thread)
    revision = int(m.group(1)) if m else (max(revisions) if revisions else 1)
    if revision not in revisions:
        revisions = sorted({*revisions, revision})
    subj = re.search(r"^\s*\[PATCH[^\]]*\]\s*(.+)$", text, re.M)
    return Intake(
        mbox=out,
        source=f"lore:{msgid}",
        revision=revision,
        revisions=revisions,
        name=subj.group(1).strip() if subj else msgid,
        message_id=msgid,
        thread=thread,
        log=text,
    )


def _pw_get(session: requests.Session, url: str, timeout: float, base: str = "") -> requests.Response:
    """GET with a timeout, retried with backoff on 429/5xx and connection errors; with `base`, only
    on its scheme://host:port (an mbox link from the API answer) and without following redirects."""
    if base and origin(url) != origin(base):
        raise SeriesError(f"patchwork: {url} is not on {base}: not fetched")
    wait = BACKOFF_S
    for attempt in range(1, RETRIES + 1):
        try:
            resp = session.get(url, timeout=timeout, allow_redirects=not base)
        except (requests.ConnectionError, requests.Timeout) as e:
            if attempt == RETRIES:
                raise SeriesError(f"patchwork: GET {url}: {type(e).__name__} after {attempt} attempts: {e}") from None
            time.sleep(wait)
            wait *= 2
            continue
        except requests.RequestException as e:
            raise SeriesError(f"patchwork: GET {url}: {type(e).__name__}: {e}") from None
        if (resp.status_code == 429 or resp.status_code >= 500) and attempt < RETRIES:
            time.sleep(retry_after(resp, wait))
            wait *= 2
            continue
        if resp.status_code != 200:
            raise SeriesError(f"patchwork: GET {url}: HTTP {resp.status_code}")
        return resp
    raise AssertionError("unreachable")


def patchwork_series(url: str, series_id: int, timeout: float = 30) -> dict:
    """The series object of patchwork's REST API 1.2."""
    s = requests.Session()
    s.headers.update({"Accept": "application/json", "User-Agent": "pciback-verify"})
    return _pw_get(s, f"{url.rstrip('/')}/api/1.2/series/{int(series_id)}/", timeout).json()


def from_patchwork(url: str, series_id: int, outdir: Path, timeout: float = 30) -> Intake:
    """Download a patchwork series' mbox; record its version and patch ids."""
    data = patchwork_series(url, series_id, timeout)
    mbox_url = data.get("mbox")
    if not mbox_url:
        raise SeriesError(f"patchwork series {series_id}: no mbox URL in the API answer")
    if not data.get("received_all", True):
        raise SeriesError(
            f"patchwork series {series_id}: only {data.get('received_total')} of {data.get('total')} patches received yet"
        )
    s = requests.Session()
    s.headers.update({"User-Agent": "pciback-verify"})
    text = _pw_get(s, mbox_url, timeout, base=url).content
    if not text.strip():
        raise SeriesError(f"patchwork series {series_id}: empty mbox")
    version = int(data.get("version") or 1)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"patchwork-{int(series_id)}-v{version}.mbox"
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, out)
    patches = data.get("patches") or []
    return Intake(
        mbox=out,
        source=f"patchwork:{data.get('web_url') or data.get('url') or url}",
        revision=version,
        revisions=[version],
        name=data.get("name") or f"series {series_id}",
        message_id=(patches[0].get("msgid", "") if patches else "").strip("<>"),
        patchwork_series=int(data.get("id") or series_id),
        patchwork_patch_ids=[int(p["id"]) for p in patches],
    )


def patchwork_new_series(url: str, project: str, seen: set[str], timeout: float = 30, since: str = "") -> list[dict]:
    """Series of `project` not yet verified: `seen` holds "<series id>:v<version>" keys (idempotent polling).

    A newer revision of a series is a new patchwork series with a higher `version`
    (patchwork links them by subject); each (id, version) is returned once.
    """
    s = requests.Session()
    s.headers.update({"Accept": "application/json", "User-Agent": "pciback-verify"})
    q = f"?project={project}&order=-date&per_page=50" + (f"&since={since}" if since else "")
    data = _pw_get(s, f"{url.rstrip('/')}/api/1.2/series/{q}", timeout).json()
    new = []
    for item in data:
        key = f"{item['id']}:v{item.get('version') or 1}"
        if key in seen or not item.get("received_all", True):
            continue
        new.append(item)
    return new


def fetch_series(
    settings: Settings,
    msgid: str | None = None,
    patchwork: str | None = None,
    series_id: str | int | None = None,
    out: str | None = None,
    midmask: str | None = None,
) -> Intake:
    """`invoke intake.fetch`: from lore by message-id, or from patchwork by series id, into `out`
    (default: the cache's `intake/<message-id>` or `intake/pw-<series id>`)."""
    if msgid:
        dest = settings.path(out or f"{settings.cache_dir}/intake/{msgid.strip('<>').replace('/', '_')}")
        return from_lore(msgid, dest, midmask=midmask)
    if patchwork and series_id:
        sid = int_option("--series-id", series_id) or 0
        return from_patchwork(patchwork, sid, settings.path(out or f"{settings.cache_dir}/intake/pw-{sid}"))
    raise SeriesError("give --msgid, or --patchwork with --series-id")
