"""patchwork and GitLab postings, against a local HTTP server speaking their real paths and payloads."""

import json
import logging

import pytest
from sample_runs import sample_run
from werkzeug import Request, Response

from pipeline.post import PostError, post_gitlab, post_patchwork

PW_TOKEN = "pw-secret-0123456789abcdef"
GL_TOKEN = "glpat-secret-xyz"


class FakePatchwork:
    """Patchwork 1.2 checks endpoint: GET lists, POST appends (checks are never edited)."""

    def __init__(self, server):
        self.checks: dict[int, list[dict]] = {}
        self.posts: list[tuple[int, dict, str]] = []
        import re

        server.expect_request(re.compile(r"^/api/1\.2/patches/\d+/checks/$")).respond_with_handler(self.handle)
        self.base = server.url_for("/").rstrip("/")

    def handle(self, request: Request) -> Response:
        pid = int(request.path.split("/")[4])
        if request.headers.get("Authorization") != f"Token {PW_TOKEN}":
            return Response(
                json.dumps({"detail": "Authentication credentials were not provided."}),
                401,
                content_type="application/json",
            )
        if request.method == "GET":
            return Response(json.dumps(self.checks.get(pid, [])), 200, content_type="application/json")
        body = request.get_json()
        self.posts.append((pid, body, request.headers.get("Authorization")))
        n = sum(len(v) for v in self.checks.values()) + 1
        check = {
            "id": n,
            "url": f"{self.base}/api/1.2/patches/{pid}/checks/{n}/",
            "user": {"id": 7, "username": "ci-bot"},
            "date": f"2025-01-01T00:00:{n:02d}",
            "state": body["state"],
            "target_url": body.get("target_url"),
            "context": body["context"],
            "description": body.get("description"),
        }
        self.checks.setdefault(pid, []).append(check)
        return Response(json.dumps(check), 201, content_type="application/json")


class FakeGitLab:
    def __init__(self, server, project="xen/pciback-verify", sha="a" * 40):  # werkzeug decodes %2F
        import re

        self.statuses: list[dict] = []
        self.posts: list[tuple[dict, dict]] = []
        self.base = server.url_for("/").rstrip("/")
        server.expect_request(
            re.compile(rf"^/api/v4/projects/{re.escape(project)}/repository/commits/{sha}/statuses$")
        ).respond_with_handler(self.list)
        server.expect_request(
            re.compile(rf"^/api/v4/projects/{re.escape(project)}/statuses/{sha}$"), method="POST"
        ).respond_with_handler(self.post)

    def list(self, request: Request) -> Response:
        name = request.args.get("name")
        out = [s for s in self.statuses if name is None or s["name"] == name]
        return Response(json.dumps(list(reversed(out))), 200, content_type="application/json")

    def post(self, request: Request) -> Response:
        assert "/projects/xen%2Fpciback-verify/" in request.environ.get(
            "REQUEST_URI", request.environ.get("RAW_URI", "")
        )
        if request.headers.get("PRIVATE-TOKEN") != GL_TOKEN and request.headers.get("JOB-TOKEN") != GL_TOKEN:
            return Response(json.dumps({"message": "401 Unauthorized"}), 401, content_type="application/json")
        body = request.get_json()
        self.posts.append((body, dict(request.headers)))
        status = {
            "id": len(self.statuses) + 1,
            "sha": request.path.rsplit("/", 1)[1],
            "ref": body.get("ref"),
            "status": body["state"],
            "name": body["name"],
            "target_url": body.get("target_url"),
            "description": body.get("description"),
            "created_at": "2025-01-01T00:00:00.000Z",
            "allow_failure": False,
            "author": {"id": 1, "username": "ci-bot"},
        }
        self.statuses.append(status)
        return Response(json.dumps(status), 201, content_type="application/json")


@pytest.fixture
def pw(httpserver, monkeypatch):
    monkeypatch.setenv("PATCHWORK_TOKEN", PW_TOKEN)
    return FakePatchwork(httpserver)


def test_patchwork_one_check_per_patch_and_kernel(pw, caplog):
    caplog.set_level(logging.DEBUG)
    run = sample_run()
    posted = post_patchwork(
        run, pw.base, [1001, 1002], target_url="https://ci.example.org/runs/{run_id}/summary.html#kernel-{kernel}"
    )
    assert [p.sent for p in posted] == [True] * 8
    assert len(pw.posts) == 8
    by = {(pid, b["context"]): b for pid, b, _ in pw.posts}
    assert by[(1001, "pciback-verify/debian-6.1")]["state"] == "success"
    assert by[(1001, "pciback-verify/5.4.y")]["state"] == "fail"
    assert by[(1002, "pciback-verify/5.10.y")]["state"] == "fail"
    assert by[(1002, "pciback-verify/5.4.y")]["description"].startswith("needs-backport: ")
    assert by[(1001, "pciback-verify/debian-6.1-prefix")]["target_url"] == (
        "https://ci.example.org/runs/20250101T000000-1/summary.html#kernel-debian-6.1-prefix"
    )
    assert all(auth == f"Token {PW_TOKEN}" for _, _, auth in pw.posts)
    assert PW_TOKEN not in caplog.text


def test_patchwork_repeated_post_sends_nothing(pw, httpserver):
    run = sample_run()
    post_patchwork(run, pw.base, [1001])
    n_posts = len(pw.posts)
    again = post_patchwork(run, pw.base, [1001])
    assert len(pw.posts) == n_posts
    assert {p.reason for p in again} == {"identical check exists"}
    assert all(r.method == "GET" for r, _ in httpserver.log[-len(again) :])


def test_patchwork_never_moves_a_finished_check_back_to_pending(pw):
    run = sample_run()
    post_patchwork(run, pw.base, [1001])
    n = len(pw.posts)
    res = post_patchwork(run, pw.base, [1001], pending=True)
    assert len(pw.posts) == n
    assert {p.reason for p in res} == {"finished check not moved back to pending"}


def test_patchwork_pending_then_result(pw):
    run = sample_run()
    post_patchwork(run, pw.base, [7], pending=True)
    post_patchwork(run, pw.base, [7])
    states = [b["state"] for _, b, _ in pw.posts if b["context"] == "pciback-verify/debian-6.1"]
    assert states == ["pending", "success"]


def test_patchwork_changed_result_is_posted(pw):
    run = sample_run()
    post_patchwork(run, pw.base, [7])
    run.kernels[2].verdict, run.kernels[2].verdict_detail = "ready", "applies clean"
    res = post_patchwork(run, pw.base, [7])
    assert [p.context for p in res if p.sent] == ["pciback-verify/5.4.y"]


def test_patchwork_missing_token_is_a_clear_error(httpserver, monkeypatch):
    monkeypatch.delenv("PATCHWORK_TOKEN", raising=False)
    with pytest.raises(PostError, match="set PATCHWORK_TOKEN"):
        post_patchwork(sample_run(), httpserver.url_for("/"), [1])
    assert httpserver.log == []


def test_patchwork_rejected_token_is_redacted(httpserver, monkeypatch):
    monkeypatch.setenv("PATCHWORK_TOKEN", "wrong-token-value")
    import re

    httpserver.expect_request(re.compile(r"^/api/1\.2/patches/1/checks/$")).respond_with_data(
        "bad token wrong-token-value", status=401
    )
    with pytest.raises(PostError) as e:
        post_patchwork(sample_run(), httpserver.url_for("/"), [1])
    assert "HTTP 401" in e.value.message
    assert "wrong-token-value" not in e.value.message


def test_gitlab_status_per_kernel(httpserver, monkeypatch):
    monkeypatch.setenv("GITLAB_TOKEN", GL_TOKEN)
    monkeypatch.delenv("CI_JOB_TOKEN", raising=False)
    gl = FakeGitLab(httpserver)
    run = sample_run()
    res = post_gitlab(
        run, gl.base + "/api/v4", "xen/pciback-verify", "a" * 40, target_url="https://ci.example.org/jobs/1", ref="main"
    )
    assert [p.sent for p in res] == [True] * 4
    bodies = {b["name"]: b for b, _ in gl.posts}
    assert bodies["pciback-verify/debian-6.1"]["state"] == "success"
    assert bodies["pciback-verify/5.10.y"]["state"] == "failed"
    assert bodies["pciback-verify/5.4.y"]["description"].startswith("needs-backport")
    assert bodies["pciback-verify/5.4.y"]["ref"] == "main"
    assert all(len(b["description"]) <= 255 for b in bodies.values())
    assert all(h.get("Private-Token") == GL_TOKEN for _, h in gl.posts)
    # repeated: nothing sent
    again = post_gitlab(
        run, gl.base, "xen/pciback-verify", "a" * 40, target_url="https://ci.example.org/jobs/1", ref="main"
    )
    assert len(gl.posts) == 4 and not any(p.sent for p in again)


def test_gitlab_job_token_and_warning(httpserver, monkeypatch):
    monkeypatch.delenv("GITLAB_TOKEN", raising=False)
    monkeypatch.setenv("CI_JOB_TOKEN", GL_TOKEN)
    gl = FakeGitLab(httpserver)
    run = sample_run()
    run.kernels = run.kernels[:1]
    run.kernels[0].verdict, run.kernels[0].verdict_detail = "ready-untested", "no host ran the VF tests"
    post_gitlab(run, gl.base, "xen/pciback-verify", "a" * 40)
    body, headers = gl.posts[0]
    assert headers.get("Job-Token") == GL_TOKEN
    assert body == {
        "state": "success",
        "name": "pciback-verify/debian-6.1",
        "description": "warning: ready-untested: no host ran the VF tests",
    }


def test_gitlab_missing_token(monkeypatch):
    monkeypatch.delenv("GITLAB_TOKEN", raising=False)
    monkeypatch.delenv("CI_JOB_TOKEN", raising=False)
    with pytest.raises(PostError, match="GITLAB_TOKEN or CI_JOB_TOKEN"):
        post_gitlab(sample_run(), "http://127.0.0.1:9", "1", "a" * 40)


# ------------------------------------------------------------------- invoke post: targets


def test_targets_come_from_the_ci_environment_when_not_given():
    from pipeline.post import targets

    env = {
        "PATCHWORK_URL": "https://pw.example.org",
        "PATCHWORK_SERIES": "4711",
        "CI_API_V4_URL": "https://gitlab.example.org/api/v4",
        "CI_PROJECT_ID": "12",
        "CI_COMMIT_SHA": "a" * 40,
        "CI_COMMIT_REF_NAME": "main",
        "CI_JOB_URL": "https://gitlab.example.org/jobs/9",
    }
    t = targets(env=env)
    assert (t.patchwork, t.patch_ids, t.series_id) == ("https://pw.example.org", [], 4711)
    assert (t.gitlab, t.project, t.sha, t.ref) == ("https://gitlab.example.org/api/v4", "12", "a" * 40, "main")
    assert t.target_url == "https://gitlab.example.org/jobs/9"
    # options win over the environment
    t = targets(patchwork="http://127.0.0.1:9", patch=["5", " 6"], series_id="7", project="p", sha="b" * 40, env=env)
    assert (t.patchwork, t.patch_ids, t.series_id, t.project, t.sha) == ("http://127.0.0.1:9", [5, 6], 7, "p", "b" * 40)


def test_targets_without_a_series_leave_patchwork_nothing_to_post_on():
    """PATCHWORK_URL is a project setting: set, with no series (an empty CI variable is unset), it is no error."""
    from pipeline.post import targets

    for series in ("", "  "):
        t = targets(env={"PATCHWORK_URL": "https://pw.example.org", "PATCHWORK_SERIES": series})
        assert (t.patchwork, t.patch_ids, t.series_id, t.gitlab) == ("https://pw.example.org", [], None, "")


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({}, {}, "nothing to post to: give --patchwork/--gitlab or set PATCHWORK_URL / CI_API_V4_URL"),
        ({"patchwork": "http://x", "patch": ["12a"]}, {}, "--patch '12a': expected an integer >= 1"),
        ({"patchwork": "http://x", "series_id": "x"}, {}, "--series-id 'x': expected an integer >= 1"),
        ({}, {"PATCHWORK_URL": "http://x", "PATCHWORK_SERIES": "v2"}, "PATCHWORK_SERIES 'v2': expected an integer"),
        ({"gitlab": "http://x"}, {}, "gitlab: no project; give --project or set CI_PROJECT_ID"),
    ],
)
def test_targets_refuse_with_one_line(kwargs, env, message):
    from pipeline.errors import PipelineError
    from pipeline.post import targets

    with pytest.raises(PipelineError) as e:
        targets(**kwargs, env=env)
    assert e.value.message.startswith(message)


def test_post_checks_without_a_patch_asks_nothing(httpserver):
    from pipeline.post import Targets, post_checks

    line = post_checks(sample_run(), Targets(patchwork=httpserver.url_for("/")))
    assert line == "patchwork: skipped: no patch to post on (give --patch or --series-id, or set PATCHWORK_SERIES)"
    assert httpserver.log == []


def test_post_checks_on_the_series_patches(pw, httpserver):
    from pipeline.post import Targets, post_checks

    httpserver.expect_request("/api/1.2/series/4711/").respond_with_json({"id": 4711, "patches": [{"id": 1001}]})
    run = sample_run()
    assert post_checks(run, Targets(patchwork=pw.base, series_id=4711)) == "patchwork: 4 check(s) sent, 0 unchanged"
    assert {pid for pid, _, _ in pw.posts} == {1001}
    # --patch wins over the series; a repeat sends nothing
    assert post_checks(run, Targets(patchwork=pw.base, patch_ids=[1001], series_id=4711)) == (
        "patchwork: 0 check(s) sent, 4 unchanged"
    )


def test_post_statuses_says_what_was_sent(httpserver, monkeypatch):
    from pipeline.post import Targets, post_statuses

    monkeypatch.setenv("GITLAB_TOKEN", GL_TOKEN)
    gl = FakeGitLab(httpserver)
    t = Targets(gitlab=gl.base + "/api/v4", project="xen/pciback-verify", sha="a" * 40, ref="main")
    assert post_statuses(sample_run(), t) == "gitlab: 4 status(es) sent, 0 unchanged"
    assert post_statuses(sample_run(), t, pending=True) == "gitlab: 0 status(es) sent, 4 unchanged"
