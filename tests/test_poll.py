"""pipeline/poll.py's `invoke ci.poll` front (poll_ci): options from the environment, the state file
under the cache, one GitLab pipeline per new revision; against local patchwork and GitLab servers."""

from __future__ import annotations

import json
import re

import pytest
from test_post import PW_TOKEN, FakePatchwork
from werkzeug import Response

from pipeline.config import KernelConfig, Settings
from pipeline.errors import ConfigError
from pipeline.poll import Polled, poll_ci


def _settings(tmp_path) -> Settings:
    kernels = [KernelConfig(name=n, remote="r", ref=n) for n in ("debian-6.1", "debian-6.1-prefix")]
    return Settings(cache_dir=str(tmp_path / "cache"), matrices={"default": kernels})


NAME = "xen-pciback: reconfigure also from backend watch handler"


def _series(sid: int, version: int, patch_id: int) -> dict:
    return {
        "id": sid,
        "name": NAME,
        "version": version,
        "received_all": True,
        "patches": [{"id": patch_id, "msgid": f"<{patch_id}@x>"}],
    }


def test_poll_ci_needs_a_patchwork_and_a_project(tmp_path):
    with pytest.raises(ConfigError, match=r"^ci\.poll: give --patchwork and --project"):
        poll_ci(_settings(tmp_path), patchwork="http://127.0.0.1:9", env={})
    with pytest.raises(ConfigError, match=r"^ci\.poll: give --patchwork and --project"):
        poll_ci(_settings(tmp_path), env={"PATCHWORK_PROJECT": "xen-devel"})


def test_poll_ci_triggers_one_pipeline_per_new_revision(httpserver, monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHWORK_TOKEN", PW_TOKEN)
    monkeypatch.setenv("CI_TRIGGER_TOKEN", "trigger-secret")
    pw = FakePatchwork(httpserver)
    httpserver.expect_request("/api/1.2/series/").respond_with_json([_series(4711, 2, 12345)])
    forms = []

    def trigger(request):
        forms.append(request.form.to_dict())
        return json.dumps({"id": 901})

    httpserver.expect_request("/api/v4/projects/12/trigger/pipeline", method="POST").respond_with_handler(trigger)
    env = {
        "PATCHWORK_URL": pw.base,
        "PATCHWORK_PROJECT": "xen-devel",
        "CI_API_V4_URL": pw.base + "/api/v4",
        "CI_PROJECT_ID": "12",
        "CI_DEFAULT_BRANCH": "stable",
    }
    said: list[str] = []
    polled = poll_ci(_settings(tmp_path), trigger=True, env=env, progress=said.append)
    assert polled == [Polled(4711, 2, NAME, "triggered", 901)]
    assert polled[0].new and polled[0].line() == f"4711 v2 {NAME}"
    assert forms == [
        {
            "token": "trigger-secret",
            "ref": "stable",
            "variables[PATCHWORK_SERIES]": "4711",
            "variables[PATCHWORK_URL]": pw.base,
        }
    ]
    assert "series 4711:v2: pipeline 901" in said
    # one queued check per kernel of the matrix, and the state file in the cache
    assert [b["context"] for _, b, _ in pw.posts] == ["pciback-verify/debian-6.1", "pciback-verify/debian-6.1-prefix"]
    assert json.loads((tmp_path / "cache/ci-poll.json").read_text()) == ["4711:v2"]
    # polled again (--state elsewhere: the check on patchwork says it was started)
    again = poll_ci(
        _settings(tmp_path), state=str(tmp_path / "other.json"), trigger=True, env=env, progress=said.append
    )
    assert [(p.action, p.new) for p in again] == [("already-polled", False)] and len(forms) == 1


def test_a_check_patchwork_refuses_starts_no_second_pipeline(httpserver, monkeypatch, tmp_path):
    """A token without maintainer rights on the project may read checks but not post them (403): the
    pipeline started is remembered in the state file first, so the next poll does not start it again."""
    monkeypatch.setenv("PATCHWORK_TOKEN", PW_TOKEN)
    monkeypatch.setenv("CI_TRIGGER_TOKEN", "trigger-secret")
    pw = FakePatchwork(httpserver)
    refused = []

    def no_rights(request):
        if request.method == "POST":
            refused.append(request.path)
            return Response(
                json.dumps({"detail": "You do not have permission to perform this action."}),
                403,
                content_type="application/json",
            )
        return pw.handle(request)

    httpserver.clear_all_handlers()
    httpserver.expect_request(re.compile(r"^/api/1\.2/patches/\d+/checks/$")).respond_with_handler(no_rights)
    httpserver.expect_request("/api/1.2/series/").respond_with_json([_series(4711, 2, 12345)])
    started = []
    httpserver.expect_request("/api/v4/projects/12/trigger/pipeline", method="POST").respond_with_handler(
        lambda request: started.append(1) or json.dumps({"id": 900 + len(started)})
    )
    env = {
        "PATCHWORK_URL": pw.base,
        "PATCHWORK_PROJECT": "xen-devel",
        "CI_API_V4_URL": pw.base + "/api/v4",
        "CI_PROJECT_ID": "12",
    }
    said: list[str] = []
    first = poll_ci(_settings(tmp_path), trigger=True, env=env, progress=said.append)
    assert first == [Polled(4711, 2, NAME, "triggered", 901)]
    assert refused == ["/api/1.2/patches/12345/checks/"]  # the first refusal ends the posting
    (line,) = [s for s in said if "no queued check" in s]
    assert line.startswith("series 4711:v2: no queued check posted (POST ") and "HTTP 403" in line, line
    assert line.endswith(": only the local state file remembers it") and PW_TOKEN not in line
    assert json.loads((tmp_path / "cache/ci-poll.json").read_text()) == ["4711:v2"]
    again = poll_ci(_settings(tmp_path), trigger=True, env=env, progress=said.append)
    assert again == [] and started == [1]
