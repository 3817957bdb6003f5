"""Config: the shipped matrices validate; bad config names the file, the key and what was expected."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from invoke import Config

from pipeline import PROJECT_ROOT
from pipeline.config import load_settings
from pipeline.errors import ConfigError, UnknownConfigKey


def _project_config(runtime: str | None = None) -> Config:
    cfg = Config(project_location=str(PROJECT_ROOT), runtime_path=runtime)
    cfg.load_project()
    cfg.load_runtime()
    return cfg


def test_default_matrix_is_the_local_debian_pair():
    s = load_settings(_project_config())
    assert [k.name for k in s.kernels] == ["debian-6.1", "debian-6.1-prefix"]
    assert all(k.build.mode == "headers" and k.hosts == ["lab"] for k in s.kernels)
    assert s.hosts["lab"].lab


def test_stable_matrix_loads_and_validates():
    s = load_settings(_project_config(), matrix="stable")
    names = [k.name for k in s.kernels]
    assert names[0] == "5.4.y" and "6.12.y" in names and names[-1] == "mainline"
    assert all(k.build.mode == "full" and "kconfigs/xen-dom0.config" in k.build.fragments for k in s.kernels)


def test_wrong_type_names_file_key_and_expectation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pv": {"jobs": "many"}}))
    with pytest.raises(ConfigError) as e:
        load_settings(_project_config(str(bad)))
    msg = e.value.message
    assert str(bad) in msg and "pv.jobs" in msg and "expected an integer" in msg


def test_unknown_key_and_unknown_host_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"pv": {"matrices": {"default": [{"name": "x", "remote": "/r", "ref": "v1", "colour": 1}]}}})
    )
    with pytest.raises(ConfigError, match=r"pv\.matrices\.default\[0\]\.colour: unknown key"):
        load_settings(_project_config(str(bad)))
    bad.write_text(
        yaml.safe_dump(
            {"pv": {"matrices": {"default": [{"name": "x", "remote": "/r", "ref": "v1", "hosts": ["nope"]}]}}}
        )
    )
    with pytest.raises(ConfigError, match="unknown host 'nope'"):
        load_settings(_project_config(str(bad)))


def test_unknown_matrix_option():
    with pytest.raises(ConfigError, match="no matrix 'nope'"):
        load_settings(_project_config(), matrix="nope")


def _invoke(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env
    )


def test_config_show_prints_the_effective_matrix():
    out = _invoke("config.show").stdout
    assert "debian-6.1-prefix" in out and "built-in QEMU lab" in out
    assert "linux-6.12.y" in _invoke("config.show", "--matrix", "stable").stdout


def test_cli_config_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pv": {"jobs": "many"}}))
    proc = _invoke("-f", str(bad), "config.show")
    assert proc.returncode == ConfigError.exit_code
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "pv.jobs" in proc.stderr


def test_env_variable_overrides_config(monkeypatch):
    import os

    proc = _invoke("config.show", env={**os.environ, "INVOKE_PV_MATRIX": "stable"})
    assert proc.returncode == 0, proc.stderr
    assert "matrix 'stable'" in proc.stdout


def test_a_key_with_a_line_break_stays_a_one_line_error():
    # found by the fuzz test: a YAML key "\n" was echoed raw into the message
    with pytest.raises(UnknownConfigKey) as e:
        load_settings(data={"\n": 1})
    assert "\n" not in e.value.message and "pv.'\\n': unknown key" in e.value.message


@pytest.mark.parametrize("value, expected", [(None, None), ("3", 3), (" 12 ", 12), (7, 7)])
def test_int_option_reads_integers(value, expected):
    from pipeline.config import int_option

    assert int_option("--jobs", value) == expected


@pytest.mark.parametrize("value", ["two", "0", "-3", "1e3", "", " "])
def test_int_option_refuses_the_rest_naming_the_option(value):
    from pipeline.config import int_option

    with pytest.raises(ConfigError, match=rf"^--lines {value!r}: expected an integer >= 1$"):
        int_option("--lines", value)


def test_settings_to_dict_names_the_matrix_kernels():
    s = load_settings(_project_config())
    data = s.to_dict()
    assert data["kernels"] == ["debian-6.1", "debian-6.1-prefix"]
    assert data["matrix"] == "default" and data["hosts"]["lab"]["lab"] is True
