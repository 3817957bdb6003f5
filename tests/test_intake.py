"""Series intake: lore via b4 (pointed at a local public-inbox-like server), patchwork via its REST API."""

import gzip
import json
import re
from pathlib import Path

import pytest

from pipeline.errors import SeriesError
from pipeline.intake import from_lore, from_patchwork, patchwork_new_series, thread_revisions

FIXTURES = Path(__file__).parent / "fixtures" / "intake"
THREAD = FIXTURES / "thread-v1-v2.mbox"
MSGID = "pciback-reconfigure-v1@suse.com"


def _load(path):
    series = pytest.importorskip("pipeline.series", reason="pipeline.series not available yet")
    return series.load_series(path)


def test_thread_has_two_revisions():
    assert thread_revisions(THREAD) == [1, 2]


def test_b4_local_mbox_picks_newest_and_reports_both(tmp_path):
    got = from_lore(MSGID, tmp_path / "out", local_mbox=THREAD, b4_home=tmp_path / "home")
    assert got.revision == 2
    assert got.revisions == [1, 2]
    assert got.name == "xen-pciback: reconfigure also from backend watch handler"
    text = " ".join(got.mbox.read_text().split())  # b4 folds long headers
    assert "Subject: [PATCH v2] xen-pciback: reconfigure also from backend watch handler" in text
    assert text.count("Subject: [PATCH") == 1  # v1 is not in the am mbox
    s = _load(got.mbox)
    assert s.revision == 2 and len(s.patches) == 1
    assert s.patches[0].files == ["drivers/xen/xen-pciback/xenbus.c"]


def test_b4_fetches_thread_from_configured_midmask(httpserver, tmp_path):
    httpserver.expect_request(re.compile(rf"^/all/{re.escape(MSGID)}/t\.mbox\.gz$")).respond_with_data(
        gzip.compress(THREAD.read_bytes()), content_type="application/gzip"
    )
    midmask = httpserver.url_for("/all/%s").replace("%25s", "%s")
    got = from_lore(f"<{MSGID}>", tmp_path / "out", midmask=midmask, b4_home=tmp_path / "home")
    assert [r.path for r, _ in httpserver.log if r.path.endswith("t.mbox.gz")] == [f"/all/{MSGID}/t.mbox.gz"]
    assert got.source == f"lore:{MSGID}"
    assert (got.revision, got.revisions) == (2, [1, 2])
    assert got.thread.read_bytes().count(b"Message-ID:") == 2
    assert _load(got.mbox).revision == 2


def test_b4_unknown_msgid_is_a_clear_error(httpserver, tmp_path):
    httpserver.expect_request(re.compile(r"^/.*")).respond_with_data("not found", status=404)
    with pytest.raises(SeriesError, match="b4 mbox nope@example.org"):
        from_lore(
            "nope@example.org", tmp_path / "o", midmask=httpserver.url_for("/all/") + "%s", b4_home=tmp_path / "h"
        )


def test_msgid_that_looks_like_an_option_is_refused(tmp_path):
    with pytest.raises(SeriesError, match="not a message-id"):
        from_lore("--help", tmp_path)


def _series_json(base, sid, version, patches):
    return {
        "id": sid,
        "url": f"{base}/api/1.2/series/{sid}/",
        "web_url": f"{base}/project/xen-devel/list/?series={sid}",
        "project": {
            "id": 12,
            "url": f"{base}/api/1.2/projects/12/",
            "name": "Xen Development",
            "link_name": "xen-devel",
            "list_id": "xen-devel.lists.xenproject.org",
            "list_email": "xen-devel@lists.xenproject.org",
            "web_url": "",
            "scm_url": "",
            "webscm_url": "",
            "list_archive_url": "https://lore.kernel.org/xen-devel",
            "list_archive_url_format": "https://lore.kernel.org/xen-devel/{}",
            "commit_url_format": "",
        },
        "name": "xen-pciback: reconfigure also from backend watch handler",
        "date": "2021-05-19T07:40:00",
        "submitter": {
            "id": 501,
            "url": f"{base}/api/1.2/people/501/",
            "name": "Jan Beulich",
            "email": "jbeulich@suse.com",
        },
        "version": version,
        "total": len(patches),
        "received_total": len(patches),
        "received_all": True,
        "mbox": f"{base}/series/{sid}/mbox/",
        "cover_letter": None,
        "patches": [
            {
                "id": pid,
                "url": f"{base}/api/1.2/patches/{pid}/",
                "web_url": f"{base}/project/xen-devel/patch/{msgid}/",
                "msgid": f"<{msgid}>",
                "list_archive_url": f"https://lore.kernel.org/xen-devel/{msgid}",
                "date": "2021-05-19T07:40:00",
                "name": f"[v{version}] xen-pciback: reconfigure also from backend watch handler",
                "mbox": f"{base}/project/xen-devel/patch/{msgid}/mbox/",
            }
            for pid, msgid in patches
        ],
    }


def test_patchwork_series_intake(httpserver, tmp_path):
    base = httpserver.url_for("").rstrip("/")
    v2 = THREAD.read_text().split("From jbeulich@suse.com Mon Sep 17", 2)[2]
    mbox = "From jbeulich@suse.com Mon Sep 17" + v2
    httpserver.expect_request("/api/1.2/series/4711/").respond_with_json(
        _series_json(base, 4711, 2, [(12345, "pciback-reconfigure-v2@suse.com")])
    )
    httpserver.expect_request("/series/4711/mbox/").respond_with_data(mbox, content_type="text/plain")
    got = from_patchwork(base, 4711, tmp_path)
    assert got.mbox == tmp_path / "patchwork-4711-v2.mbox"
    assert got.mbox.read_text() == mbox
    assert (got.revision, got.patchwork_patch_ids, got.patchwork_series) == (2, [12345], 4711)
    assert got.message_id == "pciback-reconfigure-v2@suse.com"
    assert _load(got.mbox).revision == 2


def test_patchwork_incomplete_or_missing_series(httpserver, tmp_path):
    base = httpserver.url_for("").rstrip("/")
    partial = _series_json(base, 5, 1, [(1, "a@b")])
    partial.update(total=3, received_total=1, received_all=False)
    httpserver.expect_request("/api/1.2/series/5/").respond_with_json(partial)
    httpserver.expect_request("/api/1.2/series/6/").respond_with_json({"detail": "Not found."}, status=404)
    with pytest.raises(SeriesError, match="only 1 of 3 patches"):
        from_patchwork(base, 5, tmp_path)
    with pytest.raises(SeriesError, match="HTTP 404"):
        from_patchwork(base, 6, tmp_path)


def test_patchwork_poll_returns_each_revision_once(httpserver):
    base = httpserver.url_for("").rstrip("/")
    listing = [_series_json(base, 4711, 2, [(12345, "v2@x")]), _series_json(base, 4600, 1, [(12000, "v1@x")])]
    httpserver.expect_request(
        "/api/1.2/series/", query_string={"project": "xen-devel", "order": "-date", "per_page": "50"}
    ).respond_with_json(listing)
    new = patchwork_new_series(base, "xen-devel", seen={"4600:v1"})
    assert [(s["id"], s["version"]) for s in new] == [(4711, 2)]
    assert patchwork_new_series(base, "xen-devel", seen={"4600:v1", "4711:v2"}) == []
    json.dumps(new)  # serialisable for the CI state file


def test_fetch_series_puts_a_patchwork_series_under_the_cache(httpserver, tmp_path):
    from pipeline.config import Settings
    from pipeline.intake import fetch_series

    base = httpserver.url_for("").rstrip("/")
    httpserver.expect_request("/api/1.2/series/4711/").respond_with_json(
        _series_json(base, 4711, 2, [(12345, "pciback-reconfigure-v2@suse.com")])
    )
    httpserver.expect_request("/series/4711/mbox/").respond_with_data(THREAD.read_text(), content_type="text/plain")
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    got = fetch_series(settings, patchwork=base, series_id=" 4711")
    assert got.mbox == tmp_path / "cache/intake/pw-4711/patchwork-4711-v2.mbox"
    got = fetch_series(settings, patchwork=base, series_id="4711", out=str(tmp_path / "here"))
    assert got.mbox.parent == tmp_path / "here"


def test_fetch_series_needs_a_msgid_or_a_patchwork_series(tmp_path):
    from pipeline.config import Settings
    from pipeline.errors import ConfigError
    from pipeline.intake import fetch_series

    with pytest.raises(SeriesError, match=r"^give --msgid, or --patchwork with --series-id$"):
        fetch_series(Settings(), patchwork="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"^--series-id '1e3': expected an integer >= 1$"):
        fetch_series(Settings(), patchwork="http://127.0.0.1:9", series_id="1e3")


def test_intake_summary_names_the_other_revisions():
    from pipeline.intake import Intake

    assert Intake(Path("x"), "lore:x", 2, [1, 2], name="s").summary() == "s: v2 (also in the thread: v1)"
    assert Intake(Path("x"), "lore:x", 1, [1], name="s").summary() == "s: v1"
