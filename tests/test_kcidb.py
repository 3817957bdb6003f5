"""KCIDB v5 of a run (pipeline/kcidb.py): rendered from the sample runs and validated; kcidb.json as
write_reports puts it in a run directory is checked in tests/test_report.py, every status's mapping in
tests/test_statuses.py."""

import pytest
from sample_runs import sample_run

from pipeline.kcidb import _minimal_kcidb_check, render_kcidb, validate_kcidb


def test_kcidb_io_rejects_broken_data():
    pytest.importorskip("kcidb_io", reason="kcidb-io not installed (pip install kcidb-io)")
    import jsonschema

    data = render_kcidb(sample_run())
    data["checkouts"][0]["id"] = "no-origin-prefix"
    with pytest.raises(jsonschema.ValidationError):
        validate_kcidb(data)


def test_minimal_check_without_kcidb_io():
    data = render_kcidb(sample_run())
    _minimal_kcidb_check(data)
    data["tests"][0]["build_id"] = "nocolon"
    with pytest.raises(ValueError, match="bad build_id"):
        _minimal_kcidb_check(data)
