from pathlib import Path

import yaml

CI = Path(__file__).resolve().parent.parent / ".gitlab-ci.yml"
KEYWORDS = {
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
}


def load():
    return yaml.safe_load(CI.read_text())


def jobs(ci):
    return {k: v for k, v in ci.items() if k not in KEYWORDS and not k.startswith(".")}


def test_loads_and_every_job_has_a_known_stage_and_script():
    ci = load()
    stages = ci["stages"]
    assert stages[:2] == ["lint", "unit"] and stages[-1] == "report"
    for name, job in jobs(ci).items():
        assert job["stage"] in stages, name
        assert job.get("script"), name


def test_kernel_matrix_build_test_and_host_lock():
    ci = load()
    j = jobs(ci)
    assert j["build"]["parallel"]["matrix"][0]["KERNEL"] == ["debian-6.1", "debian-6.1-prefix"]
    assert j["test"]["resource_group"] and "xen-host" in j["test"]["tags"]
    for name in ("build", "test"):
        assert j[name]["artifacts"]["reports"]["junit"] == "runs/latest/junit.xml"
        assert "runs/" in j[name]["artifacts"]["paths"]
    assert any("invoke post" in line for line in j["report"]["script"])


def test_matrix_kernels_exist_in_the_default_matrix():
    cfg = yaml.safe_load((CI.parent / "invoke.yaml").read_text())
    names = {k["name"] for k in cfg["pv"]["matrices"]["default"]}
    assert set(load()["build"]["parallel"]["matrix"][0]["KERNEL"]) <= names


def test_scheduled_poll_job():
    j = jobs(load())
    assert j["poll"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
    assert "invoke ci.poll --trigger" in j["poll"]["script"]


def test_ci_gates_on_verdicts():
    """build and test jobs fail on the verdicts CI cares about (`--fail-on`, exit 10); every name is a verdict."""
    from pipeline.verdict import parse_fail_on

    ci = load()
    j = jobs(ci)
    assert any('--fail-on "$BUILD_FAIL_ON"' in line for line in j["build"]["script"])
    assert any('--fail-on "$FAIL_ON"' in line for line in j["test"]["script"])
    for var in ("BUILD_FAIL_ON", "FAIL_ON"):
        assert parse_fail_on(ci["variables"][var])
    assert "test-fails" in ci["variables"]["FAIL_ON"] and "error" in ci["variables"]["BUILD_FAIL_ON"]


def test_test_job_deploys_the_build_artifact_and_report_posts_the_merged_run():
    j = jobs(load())
    assert any("--builds runs" in line for line in j["test"]["script"])  # nothing rebuilt
    assert "build" in j["test"]["needs"]
    report = j["report"]["script"]
    assert report[0] == "invoke report --merge runs --tested-only"
    assert all("for d in runs" not in line for line in report)  # no per-run posting
    assert any("invoke post --run latest" in line for line in report)


def test_report_runs_after_a_failed_test_job():
    """A verdict in FAIL_ON fails its test job (exit 10): the report job still merges and posts it
    (`when: always` runs a job whatever its needs ended as), never in a scheduled poll pipeline."""
    j = jobs(load())
    assert "--fail-on" in " ".join(j["test"]["script"]) and j["test"]["artifacts"]["when"] == "always"
    assert j["report"]["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "schedule"', "when": "never"},
        {"when": "always"},
    ]
