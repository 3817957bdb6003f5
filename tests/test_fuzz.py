"""Fuzz: the series/mbox parser and the config loader only ever raise their own clean errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import PROJECT_ROOT
from pipeline.config import load_settings
from pipeline.errors import ConfigError, SeriesError
from pipeline.series import load_series

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REAL = (PROJECT_ROOT / "patches/xen-pciback-reconfigure").glob("*.patch")
REAL_TEXT = "".join(p.read_text() for p in sorted(REAL))
REAL_LINES = REAL_TEXT.splitlines(keepends=True)


def _parse(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "in.mbox"
        f.write_bytes(data)
        try:
            s = load_series(f)
        except SeriesError as e:
            assert e.message and "\n" not in e.message
            return
        assert s.patches and all(p.files for p in s.patches)
        for p in s.patches:
            assert all(not f.startswith("/") and ".." not in f.split("/") for f in p.files)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    _parse(data)


@FUZZ
@given(st.text(max_size=2048))
def test_random_text(text):
    _parse(text.encode("utf-8", "surrogatepass"))


_line = st.sampled_from(
    [
        "From 0 Mon Sep 17 00:00:00 2001\n",
        "Subject: [PATCH v2 1/2] x\n",
        "Subject: =?utf-8?q?=ff=fe?=\n",
        "Subject: =?x-bogus?q?abc?= [PATCH] y\n",
        "Subject: =?utf-8?b?!!!?=\n",
        "From: =?unknown-8bit?q?=e9?= <a@b>\n",
        "diff --git a/../x b/../x\n",
        "--- /dev/null\n",
        "+++ b/.git/config\n",
        "@@ -1 +1 @@\n",
        "GIT binary patch\n",
        "\n",
        "Content-Transfer-Encoding: base64\n",
        "Content-Type: multipart/mixed; boundary=x\n",
    ]
)


@FUZZ
@given(st.data())
def test_mutated_real_patch(data):
    lines = list(REAL_LINES)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["delete", "insert", "dup", "garble"]))
        i = data.draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "delete" and lines:
            del lines[i]
        elif op == "insert":
            lines.insert(i, data.draw(_line | st.text(max_size=40).map(lambda t: t + "\n")))
        elif op == "dup" and lines:
            lines[i:i] = lines[i : i + data.draw(st.integers(1, 20))]
        elif op == "garble" and lines:
            lines[i] = data.draw(st.text(max_size=len(lines[i]) + 5))
    _parse("".join(lines).encode("utf-8", "surrogatepass"))


def test_unknown_charset_in_headers_is_tolerated(tmp_path):
    f = tmp_path / "cs.patch"
    f.write_text(
        "Subject: =?x-bogus?q?abc?=\nFrom: =?x-bogus?q?T?= <t@x>\n\n--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n"
    )
    (p,) = load_series(f).patches
    assert p.subject == "abc" and p.files == ["x.c"]


_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10)
_keys = st.sampled_from(
    ["results_root", "jobs", "matrix", "matrices", "hosts", "lab", "default", "name", "remote", "ref", "build", "mode"]
    + ["port", "max_vfs", "vf_counts", "fragments", "x", "", "0"]
) | st.text(max_size=6)
_tree = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5), max_leaves=25
)


@FUZZ
@given(st.dictionaries(_keys, _tree, max_size=6) | _tree)
def test_config_loader(data):
    try:
        load_settings(data=data)
    except ConfigError as e:
        assert e.message and "\n" not in e.message


@FUZZ
@given(st.data())
def test_config_loader_mutated_project_config(data):
    import yaml

    base = yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())["pv"]
    node = base
    for _ in range(data.draw(st.integers(1, 4))):
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node, key=str)))
            if data.draw(st.booleans()):
                node[key] = data.draw(_tree)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            node = node[data.draw(st.integers(0, len(node) - 1))]
        else:
            break
    try:
        load_settings(data=base)
    except ConfigError as e:
        assert e.message and "\n" not in e.message
