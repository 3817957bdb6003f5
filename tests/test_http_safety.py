"""HTTP of post.py against local servers: where a token may go, bounded pagination, retries; and redaction.

The servers are real HTTP servers (pytest-httpserver) answering GitLab's paths; a second one plays
the host a hostile or broken `Link: rel=next` (or a redirect) points at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pytest_httpserver import HTTPServer
from sample_runs import sample_run
from werkzeug import Request, Response

from pipeline import PROJECT_ROOT
from pipeline import post as P
from pipeline.post import PostError, post_gitlab
from pipeline.redact import redact, redact_tree

TOKEN = "glpat-http-safety-0123456789"
SHA = "b" * 40
STATUSES = "/api/v4/projects/xen%2Fpv/repository/commits/" + SHA + "/statuses"


@pytest.fixture
def other():
    """The server a link points at: it must never be asked anything."""
    srv = HTTPServer(host="127.0.0.1", port=0)
    srv.start()
    srv.expect_request("/stolen").respond_with_data("[]", content_type="application/json")
    yield srv
    srv.clear()
    srv.stop()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("GITLAB_TOKEN", TOKEN)
    monkeypatch.delenv("CI_JOB_TOKEN", raising=False)


def _one_kernel():
    run = sample_run()
    run.kernels = run.kernels[:1]
    return run


def test_rel_next_to_another_server_is_not_followed(httpserver, other, token):
    httpserver.expect_request("/api/v4/projects/xen/pv/repository/commits/" + SHA + "/statuses").respond_with_response(
        Response("[]", headers={"Link": f'<{other.url_for("/stolen")}>; rel="next"'}, content_type="application/json")
    )
    with pytest.raises(PostError, match=r"Link rel=next leads off http://[\w.]+:\d+: not followed") as e:
        post_gitlab(_one_kernel(), httpserver.url_for("/"), "xen/pv", SHA)
    assert other.log == []  # the token never reached it: nothing reached it
    assert TOKEN not in str(e.value)


def test_redirect_to_another_server_is_not_followed(httpserver, other, token):
    httpserver.expect_request("/api/v4/projects/xen/pv/repository/commits/" + SHA + "/statuses").respond_with_response(
        Response("", status=302, headers={"Location": other.url_for("/stolen")})
    )
    with pytest.raises(PostError, match="HTTP 302 redirect to .*not followed"):
        post_gitlab(_one_kernel(), httpserver.url_for("/"), "xen/pv", SHA)
    assert other.log == []


def test_self_link_is_one_clear_error(httpserver, token):
    url = httpserver.url_for(STATUSES)

    def handler(request: Request) -> Response:
        return Response("[]", headers={"Link": f'<{request.url}>; rel="next"'}, content_type="application/json")

    httpserver.expect_request("/api/v4/projects/xen/pv/repository/commits/" + SHA + "/statuses").respond_with_handler(
        handler
    )
    with pytest.raises(PostError, match="pagination loops"):
        post_gitlab(_one_kernel(), httpserver.url_for("/"), "xen/pv", SHA)
    assert len(httpserver.log) <= 2, url  # werkzeug spells the self-link with / for %2F: read once more


def test_endless_pages_are_bounded(httpserver, token):
    def handler(request: Request) -> Response:
        n = int(request.args.get("page", "1"))
        nxt = f"{request.base_url}?page={n + 1}"
        return Response("[]", headers={"Link": f'<{nxt}>; rel="next"'}, content_type="application/json")

    httpserver.expect_request("/api/v4/projects/xen/pv/repository/commits/" + SHA + "/statuses").respond_with_handler(
        handler
    )
    with pytest.raises(PostError, match=f"pagination did not end after {P.MAX_PAGES} pages"):
        post_gitlab(_one_kernel(), httpserver.url_for("/"), "xen/pv", SHA)
    assert len(httpserver.log) == P.MAX_PAGES


def test_429_and_503_are_retried_then_posted(httpserver, token):
    answers = iter([(429, {"Retry-After": "0"}), (503, {"Retry-After": "0"})])

    def listing(request: Request) -> Response:
        status, headers = next(answers, (200, {}))
        return Response("[]", status=status, headers=headers, content_type="application/json")

    posts = []

    def status(request: Request) -> Response:
        posts.append(request.get_json())
        return Response(json.dumps({"id": 1}), 201, content_type="application/json")

    httpserver.expect_request("/api/v4/projects/xen/pv/repository/commits/" + SHA + "/statuses").respond_with_handler(
        listing
    )
    httpserver.expect_request("/api/v4/projects/xen/pv/statuses/" + SHA).respond_with_handler(status)
    res = post_gitlab(_one_kernel(), httpserver.url_for("/"), "xen/pv", SHA)
    assert [p.sent for p in res] == [True] and len(posts) == 1
    assert [r.path for r, _ in httpserver.log][:3] == [httpserver.log[0][0].path] * 3  # two retries, then the list


def test_a_secret_in_a_payload_or_an_artifact_is_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("CI_TRIGGER_TOKEN", "trigger-secret-42")
    monkeypatch.setenv("PATCHWORK_TOKEN", "pw-secret-4242")
    assert redact("x trigger-secret-42 pw-secret-4242") == "x [redacted:CI_TRIGGER_TOKEN] [redacted:PATCHWORK_TOKEN]"
    (tmp_path / "build.log").write_text("make: *** token=pw-secret-4242.  Stop.\n")
    assert redact_tree(tmp_path) == [tmp_path / "build.log"]
    assert "pw-secret-4242" not in (tmp_path / "build.log").read_text()


class _Recorder:
    """Local patchwork and GitLab endpoints that keep every request (headers and body) they get."""

    def __init__(self, server):
        self.requests: list[dict] = []
        self.server = server
        server.expect_request("/api/1.2/series/7/").respond_with_handler(self.series)
        import re

        server.expect_request(re.compile(r"^/api/.*")).respond_with_handler(self.any)

    def _record(self, request: Request) -> None:
        self.requests.append(
            {
                "method": request.method,
                "url": request.url,
                "headers": dict(request.headers),
                "body": request.get_data(as_text=True),
            }
        )

    def series(self, request: Request) -> Response:
        self._record(request)
        return Response(json.dumps({"id": 7, "patches": [{"id": 11}]}), 200, content_type="application/json")

    def any(self, request: Request) -> Response:
        self._record(request)
        if request.method == "GET":
            return Response("[]", 200, content_type="application/json")
        return Response(json.dumps({"id": 1}), 201, content_type="application/json")


@pytest.mark.build
@pytest.mark.kernel
def test_token_of_a_normal_verify_and_post_is_in_no_artifact_and_no_payload(tmp_path, httpserver):
    rec = _Recorder(httpserver)
    secret_pw, secret_gl, secret_own = "pw-e2e-" + "7" * 20, "glpat-e2e-" + "8" * 20, "own-secret-" + "9" * 12
    env = {
        **os.environ,
        "PATCHWORK_TOKEN": secret_pw,
        "GITLAB_TOKEN": secret_gl,
        "CI_JOB_TOKEN": secret_gl,
        "PV_DEPLOY_PASSWORD": secret_own,
        "INVOKE_PV_RESULTS_ROOT": str(tmp_path / "runs"),
        # a job URL that happens to carry a secret: the posted target_url must not
        "CI_JOB_URL": f"https://ci.example.org/jobs/1?t={secret_own}",
    }
    cfg = tmp_path / "secret.yaml"
    cfg.write_text("pv:\n  secret_env: [PV_DEPLOY_PASSWORD]\n")
    inv = [sys.executable, "-m", "invoke", "-f", str(cfg)]
    v = subprocess.run(
        [*inv, "verify", "--until", "build", "--kernel", "debian-6.1"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert v.returncode == 0, v.stderr[-3000:]
    base = httpserver.url_for("/").rstrip("/")
    p = subprocess.run(
        [
            *inv,
            "post",
            "--patchwork",
            base,
            "--series-id",
            "7",
            "--gitlab",
            base + "/api/v4",
            "--project",
            "1",
            "--sha",
            SHA,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert any(r["method"] == "POST" for r in rec.requests)
    for r in rec.requests:
        for s in (secret_pw, secret_gl, secret_own):
            assert s not in r["url"] and s not in r["body"], r
        # a token travels only in its own authentication header, to its own server
        others = {k: v for k, v in r["headers"].items() if k not in ("Authorization", "Private-Token")}
        assert not any(s in json.dumps(others) for s in (secret_pw, secret_gl, secret_own)), r["headers"]
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for s in (secret_pw, secret_gl, secret_own):
                assert s.encode() not in data, (s, path)
    for out in (v.stdout, v.stderr, p.stdout, p.stderr):
        assert secret_pw not in out and secret_gl not in out and secret_own not in out


def test_intake_mbox_link_to_another_server_is_not_fetched(httpserver, other, tmp_path):
    from pipeline.errors import SeriesError
    from pipeline.intake import from_patchwork

    httpserver.expect_request("/api/1.2/series/5/").respond_with_json(
        {"id": 5, "mbox": other.url_for("/stolen"), "received_all": True, "patches": []}
    )
    with pytest.raises(SeriesError, match="is not on .*: not fetched"):
        from_patchwork(httpserver.url_for("/").rstrip("/"), 5, tmp_path)
    assert other.log == []
