"""Results back where the patch lives: patchwork checks and GitLab commit statuses, one per kernel.

Patchwork (REST API 1.2): GET then POST `/api/1.2/patches/{id}/checks/` with
state pending|success|warning|fail, context `pciback-verify/<kernel>`, target_url and
description; header `Authorization: Token <PATCHWORK_TOKEN>`.
GitLab (API v4): GET `/api/v4/projects/{id}/repository/commits/{sha}/statuses` then POST
`/api/v4/projects/{id}/statuses/{sha}` with state, name, target_url, description; header
`PRIVATE-TOKEN: <GITLAB_TOKEN>` or, failing that, `JOB-TOKEN: <CI_JOB_TOKEN>`.

Idempotent: an identical check/status is never sent twice, and a finished one is never
moved back to pending. Tokens come only from the environment (or a caller's argument),
are never logged, and are redacted from every error message.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import requests

from .config import int_option
from .errors import PipelineError
from .intake import patchwork_series
from .redact import redact as redact_all
from .results import RunResult
from .util import BACKOFF_S, RETRIES, Progress, origin, retry_after
from .verdict import STATE, verdict

CONTEXT_PREFIX = "pciback-verify"
DESCRIPTION_MAX = 255  # GitLab's limit; patchwork shows it on one line anyway
GITLAB_STATE = {"pending": "pending", "success": "success", "warning": "success", "fail": "failed"}


class PostError(PipelineError):
    exit_code = 9


@dataclass
class Posted:
    target: str  # "patchwork patch 123" / "gitlab group%2Fproj@sha"
    context: str
    state: str
    sent: bool
    reason: str = ""  # why it was not sent


@dataclass
class Check:
    kernel: str
    context: str
    state: str  # pending | success | warning | fail
    description: str
    target_url: str


def redact(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def checks_for(run: RunResult, target_url: str = "", pending: bool = False) -> list[Check]:
    """One check per kernel from its verdict; `target_url` may contain `{kernel}` and `{run_id}`."""
    out = []
    for k in run.kernels:
        v, d = k.verdict, k.verdict_detail
        if not d and v == "untested":
            v, d = verdict(k)
        state = "pending" if pending else STATE.get(v, "fail")
        desc = "verification running" if pending else f"{v}: {d}" if d else v
        if len(desc) > DESCRIPTION_MAX:
            desc = desc[: DESCRIPTION_MAX - 3] + "..."
        url = target_url.replace("{kernel}", k.name).replace("{run_id}", run.run_id) if target_url else ""
        out.append(
            Check(kernel=k.name, context=f"{CONTEXT_PREFIX}/{k.name}", state=state, description=desc, target_url=url)
        )
    return out


def _token(explicit: str | None, names: list[str], what: str) -> tuple[str, str]:
    if explicit:
        return names[0], explicit
    for n in names:
        value = os.environ.get(n, "")
        if value:
            return n, value
    raise PostError(f"{what}: no token; set {' or '.join(names)} in the environment")


MAX_PAGES = 50  # of one listing; GitLab's 100 per page: 5000 statuses of one context is not a real commit


class _Api:
    """HTTP to one API base: a timeout on every request, retries with backoff on 429/5xx, redirects and
    pagination links followed only to the base's own scheme://host:port (the token goes nowhere else)."""

    def __init__(self, base: str, headers: dict[str, str], secret: str, timeout: float):
        self.base = base.rstrip("/")
        self.origin = origin(self.base)
        self.session = requests.Session()
        self.session.headers.update(headers)
        self.session.headers["User-Agent"] = "pciback-verify"
        self.secret = secret
        self.timeout = timeout
        self.sleep = time.sleep

    def _fail(self, method: str, url: str, detail: str) -> PostError:
        return PostError(redact(redact_all(f"{method} {url}: {detail}"), [self.secret]))

    def _same_origin(self, method: str, url: str, why: str) -> None:
        if origin(url) != self.origin:
            o = "{}://{}:{}".format(*self.origin)
            raise self._fail(method, url, f"{why} leads off {o}: not followed (the token is only sent there)")

    def request(self, method: str, url: str, **kw) -> requests.Response:
        self._same_origin(method, url, "request")
        if "json" in kw:  # nothing of a secret variable's value leaves in a payload
            kw["json"] = json.loads(redact_all(json.dumps(kw["json"])))
        wait = BACKOFF_S
        for attempt in range(1, RETRIES + 1):
            try:
                # redirects are not followed: requests would carry PRIVATE-TOKEN along to any host
                resp = self.session.request(method, url, timeout=self.timeout, allow_redirects=False, **kw)
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt == RETRIES:
                    raise self._fail(method, url, f"{type(e).__name__} after {attempt} attempts: {e}") from None
                self.sleep(wait)
                wait *= 2
                continue
            except requests.RequestException as e:
                raise self._fail(method, url, f"{type(e).__name__}: {e}") from None
            if resp.status_code == 429 or resp.status_code >= 500:
                if attempt == RETRIES:
                    raise self._fail(method, url, f"HTTP {resp.status_code} after {attempt} attempts")
                self.sleep(retry_after(resp, wait))
                wait *= 2
                continue
            if 300 <= resp.status_code < 400:
                raise self._fail(
                    method, url, f"HTTP {resp.status_code} redirect to {resp.headers.get('Location')!r}: not followed"
                )
            if resp.status_code >= 400:
                raise self._fail(method, url, f"HTTP {resp.status_code} {resp.text[:300]}")
            return resp
        raise AssertionError("unreachable")

    def get_all(self, url: str, params: dict | None = None) -> list[dict]:
        """Follow Link: rel=next pagination (both patchwork and GitLab use it), on this origin, at most MAX_PAGES."""
        items: list[dict] = []
        next_url: str | None = url
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            resp = self.request("GET", next_url, params=params)
            params = None  # the next link carries them
            data = resp.json()
            if not isinstance(data, list):
                raise self._fail("GET", next_url, "expected a JSON list")
            items.extend(data)
            seen.add(resp.url)
            next_url = resp.links.get("next", {}).get("url")
            if not next_url:
                return items
            next_url = urllib.parse.urljoin(resp.url, next_url)
            self._same_origin("GET", next_url, "Link rel=next")
            if next_url in seen:
                raise self._fail("GET", next_url, "Link rel=next points at a page already read: pagination loops")
        raise self._fail("GET", url, f"pagination did not end after {MAX_PAGES} pages")


# ------------------------------------------------------------------- patchwork


class Patchwork(_Api):
    def __init__(self, url: str, token: str | None = None, timeout: float = 30):
        _, tok = _token(token, ["PATCHWORK_TOKEN"], "patchwork")
        super().__init__(url, {"Authorization": f"Token {tok}", "Accept": "application/json"}, tok, timeout)

    def _checks_url(self, patch_id: int) -> str:
        return f"{self.base}/api/1.2/patches/{int(patch_id)}/checks/"

    def checks(self, patch_id: int) -> list[dict]:
        return self.get_all(self._checks_url(patch_id))

    def post_check(self, patch_id: int, check: Check) -> Posted:
        target = f"patchwork patch {patch_id}"
        mine = [c for c in self.checks(patch_id) if c.get("context") == check.context]
        mine.sort(key=lambda c: (c.get("date") or "", c.get("id") or 0))
        if mine:
            last = mine[-1]
            same = (last.get("state"), last.get("description") or "", last.get("target_url") or "") == (
                check.state,
                check.description,
                check.target_url,
            )
            if same:
                return Posted(target, check.context, check.state, False, "identical check exists")
            if check.state == "pending" and any(c.get("state") != "pending" for c in mine):
                return Posted(target, check.context, check.state, False, "finished check not moved back to pending")
        body = {"state": check.state, "context": check.context, "description": check.description}
        if check.target_url:
            body["target_url"] = check.target_url
        self.request("POST", self._checks_url(patch_id), json=body)
        return Posted(target, check.context, check.state, True)


def post_patchwork(
    run: RunResult,
    url: str,
    patch_ids: list[int],
    target_url: str = "",
    token: str | None = None,
    pending: bool = False,
    progress: Progress | None = None,
) -> list[Posted]:
    """One check per patch and kernel."""
    if not patch_ids:
        raise PostError("patchwork: no patch ids to post checks to")
    pw = Patchwork(url, token)
    out = []
    for pid in patch_ids:
        for check in checks_for(run, target_url, pending):
            p = pw.post_check(pid, check)
            out.append(p)
            if progress:
                progress(
                    f"patchwork {pid} {check.context}: {check.state}" + ("" if p.sent else f" (not sent: {p.reason})")
                )
    return out


# ------------------------------------------------------------------- gitlab


class GitLab(_Api):
    def __init__(self, url: str, token: str | None = None, timeout: float = 30):
        name, tok = _token(token, ["GITLAB_TOKEN", "CI_JOB_TOKEN"], "gitlab")
        header = "JOB-TOKEN" if name == "CI_JOB_TOKEN" else "PRIVATE-TOKEN"
        base = url.rstrip("/")
        if base.endswith("/api/v4"):
            base = base[: -len("/api/v4")]
        super().__init__(base, {header: tok, "Accept": "application/json"}, tok, timeout)

    @staticmethod
    def _project(project: str | int) -> str:
        return urllib.parse.quote(str(project), safe="")

    def statuses(self, project: str | int, sha: str, name: str) -> list[dict]:
        url = f"{self.base}/api/v4/projects/{self._project(project)}/repository/commits/{sha}/statuses"
        return self.get_all(url, params={"name": name, "all": "true", "per_page": 100})

    def post_status(self, project: str | int, sha: str, check: Check, ref: str = "") -> Posted:
        state = GITLAB_STATE[check.state]
        desc = (
            check.description
            if check.state != "warning" or check.description.startswith("warning")
            else f"warning: {check.description}"
        )
        desc = desc[:DESCRIPTION_MAX]
        target = f"gitlab {project}@{sha[:12]}"
        mine = [s for s in self.statuses(project, sha, check.context) if s.get("name") == check.context]
        mine.sort(key=lambda s: s.get("id") or 0)
        if mine:
            last = mine[-1]
            if (last.get("status"), last.get("description") or "", last.get("target_url") or "") == (
                state,
                desc,
                check.target_url,
            ):
                return Posted(target, check.context, state, False, "identical status exists")
            if state == "pending" and any(s.get("status") not in ("pending", "running", "created") for s in mine):
                return Posted(target, check.context, state, False, "finished status not moved back to pending")
        body = {"state": state, "name": check.context, "description": desc}
        if check.target_url:
            body["target_url"] = check.target_url
        if ref:
            body["ref"] = ref
        self.request("POST", f"{self.base}/api/v4/projects/{self._project(project)}/statuses/{sha}", json=body)
        return Posted(target, check.context, state, True)


def post_gitlab(
    run: RunResult,
    url: str,
    project: str | int,
    sha: str,
    target_url: str = "",
    token: str | None = None,
    ref: str = "",
    pending: bool = False,
    progress: Progress | None = None,
) -> list[Posted]:
    """One commit status per kernel on `sha`."""
    if not sha:
        raise PostError("gitlab: no commit sha to post statuses to")
    gl = GitLab(url, token)
    out = []
    for check in checks_for(run, target_url, pending):
        p = gl.post_status(project, sha, check, ref=ref)
        out.append(p)
        if progress:
            progress(f"gitlab {check.context}: {p.state}" + ("" if p.sent else f" (not sent: {p.reason})"))
    return out


def trigger_pipeline(
    url: str, project: str | int, ref: str, variables: dict[str, str], token: str | None = None
) -> int:
    """Start a GitLab pipeline on `ref` with variables (POST /projects/:id/trigger/pipeline); returns its id.

    Token: a pipeline trigger token from CI_TRIGGER_TOKEN (or the job's CI_JOB_TOKEN, which GitLab accepts here).
    """
    _, tok = _token(token, ["CI_TRIGGER_TOKEN", "CI_JOB_TOKEN"], "gitlab trigger")
    base = url.rstrip("/").removesuffix("/api/v4")
    api = _Api(base, {}, tok, 30)
    form = {"token": tok, "ref": ref, **{f"variables[{k}]": v for k, v in variables.items()}}
    resp = api.request("POST", f"{base}/api/v4/projects/{GitLab._project(project)}/trigger/pipeline", data=form)
    return int(resp.json().get("id") or 0)


# ------------------------------------------------------------------- invoke post


@dataclass
class Targets:
    """Where `invoke post` sends a run: each option, else its CI variable (an empty variable is unset)."""

    patchwork: str = ""  # --patchwork, $PATCHWORK_URL
    patch_ids: list[int] = field(default_factory=list)  # --patch
    series_id: int | None = None  # --series-id, $PATCHWORK_SERIES: its patches when no --patch
    gitlab: str = ""  # --gitlab, $CI_API_V4_URL
    project: str = ""  # --project, $CI_PROJECT_ID
    sha: str = ""  # --sha, $CI_COMMIT_SHA
    ref: str = ""  # $CI_COMMIT_REF_NAME
    target_url: str = ""  # --target-url, $CI_JOB_URL


def targets(
    patchwork: str | None = None,
    patch: Iterable[str | int] = (),
    series_id: str | int | None = None,
    gitlab: str | None = None,
    project: str | None = None,
    sha: str | None = None,
    target_url: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Targets:
    """The options of `invoke post` completed from the environment and checked; nothing is sent yet."""
    t = Targets(
        patchwork=patchwork or env.get("PATCHWORK_URL", ""),
        gitlab=gitlab or env.get("CI_API_V4_URL", ""),
        target_url=target_url or env.get("CI_JOB_URL", ""),
    )
    if not t.patchwork and not t.gitlab:
        raise PostError("nothing to post to: give --patchwork/--gitlab or set PATCHWORK_URL / CI_API_V4_URL")
    if t.patchwork:
        t.patch_ids = [int_option("--patch", p) or 0 for p in patch]
        if series_id:
            t.series_id = int_option("--series-id", series_id)
        elif env.get("PATCHWORK_SERIES", "").strip():
            t.series_id = int_option("PATCHWORK_SERIES", env["PATCHWORK_SERIES"])
    if t.gitlab:
        t.project = project or env.get("CI_PROJECT_ID", "")
        if not t.project:
            raise PostError("gitlab: no project; give --project or set CI_PROJECT_ID")
        t.sha = sha or env.get("CI_COMMIT_SHA", "")
        t.ref = env.get("CI_COMMIT_REF_NAME", "")
    return t


def post_checks(run: RunResult, t: Targets, pending: bool = False, progress: Progress | None = None) -> str:
    """Patchwork's part of `invoke post`: the checks on the given patches (or the series' patches); one line
    saying what was done. Without a patch to post on (PATCHWORK_URL is a project setting; a pipeline
    for a series not from patchwork has none) nothing is sent and the line says so."""
    ids = list(t.patch_ids)
    if t.series_id and not ids:
        ids = [int(p["id"]) for p in patchwork_series(t.patchwork, t.series_id).get("patches", [])]
    if not ids:
        return "patchwork: skipped: no patch to post on (give --patch or --series-id, or set PATCHWORK_SERIES)"
    sent = post_patchwork(run, t.patchwork, ids, target_url=t.target_url, pending=pending, progress=progress)
    return f"patchwork: {sum(p.sent for p in sent)} check(s) sent, {sum(not p.sent for p in sent)} unchanged"


def post_statuses(run: RunResult, t: Targets, pending: bool = False, progress: Progress | None = None) -> str:
    """GitLab's part of `invoke post`: a commit status per kernel; one line saying what was done."""
    sent = post_gitlab(
        run, t.gitlab, t.project, t.sha, target_url=t.target_url, ref=t.ref, pending=pending, progress=progress
    )
    return f"gitlab: {sum(p.sent for p in sent)} status(es) sent, {sum(not p.sent for p in sent)} unchanged"
