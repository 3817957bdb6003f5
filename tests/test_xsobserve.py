"""xsobserve: the creation's xenstore transactions from oxenstored's access log, and the control rule.

The fixtures are lines of the lab's own /var/log/xen/xenstored-access.log (Xen 4.17.7, oxenstored),
cut around three guest creations of a vf-boot run (domids 1, 2 and 3 given 1, 2 and 3 VFs)."""

from pathlib import Path

import pytest

from pipeline import xsobserve
from pipeline.results import Toolstack, XsCreation
from pipeline.verdict import control_not_applicable, verdict

FIX = Path(__file__).parent / "fixtures" / "xsobserve"


def _log(name: str) -> str:
    return (FIX / name).read_text()


def test_every_line_of_the_real_log_parses():
    for f in FIX.glob("*.log"):
        text = f.read_text()
        assert len(xsobserve.parse_access_log(text)) == len(text.splitlines()), f.name


def test_relative_paths_of_dom0_are_made_absolute():
    ops = xsobserve.parse_access_log(_log("lab-4.17-vf-boot-3-domid3.log"))
    pciback = [o for o in ops if o.conn == "D0" and o.op == "write" and o.path.endswith("/state")]
    assert pciback and all(o.path == "/local/domain/0/backend/pci/3/0/state" for o in pciback)


def test_4_17_three_devices_three_transactions_with_the_conflict_replay_counted_once():
    x = xsobserve.creation_pattern(xsobserve.parse_access_log(_log("lab-4.17-vf-boot-3-domid3.log")), 3)
    assert (x.observed, x.transactions, x.num_devs, x.devices_first) == (True, 3, [1, 2, 3], 1)
    # A59.5 conflicted; oxenstored replayed it as r(5):A59.6, which committed num_devs=2
    assert "1 conflicting transaction(s) retried" in x.detail


def test_one_device_is_one_transaction():
    x = xsobserve.creation_pattern(xsobserve.parse_access_log(_log("lab-4.17-vf-boot-1-domid1.log")), 1)
    assert (x.transactions, x.num_devs) == (1, [1])


def test_lines_are_told_apart_by_domid():
    both = _log("lab-4.17-vf-boot-2-domid2.log") + _log("lab-4.17-vf-boot-3-domid3.log")
    ops = xsobserve.parse_access_log(both)
    assert xsobserve.creation_pattern(ops, 2).num_devs == [1, 2]
    assert xsobserve.creation_pattern(ops, 3).num_devs == [1, 2, 3]
    assert xsobserve.creation_pattern(ops, 7).transactions == 0


def test_a_transaction_that_never_committed_wrote_nothing():
    lines = [
        ln
        for ln in _log("lab-4.17-vf-boot-3-domid3.log").splitlines()
        if not ("A59.7" in ln and "commit" in ln)  # the last device's commit lost: its connection ended
    ]
    lines.append("[20261201T23:00:36.443Z]  A59          endconn   ")
    x = xsobserve.creation_pattern(xsobserve.parse_access_log("\n".join(lines)), 3)
    assert x.num_devs == [1, 2]


def test_xl_info_fields():
    info = xsobserve.parse_xl_info(
        "host                   : pvlab\nrelease                : 6.1.0-57-amd64\n"
        "xen_major              : 4\nxen_minor              : 17\nxen_version            : 4.17.7\n"
        "xen_commandline        : console=com1 com1=115200,8n1\n"
    )
    assert (info["release"], info["xen_version"], info["xen_minor"]) == ("6.1.0-57-amd64", "4.17.7", "17")
    assert info["xen_commandline"] == "console=com1 com1=115200,8n1"


# ------------------------------------------------------------------ the control rule (pure)


def _control(outcome: str, xs: XsCreation, xl: str = "4.14.6-1") -> object:
    from pipeline.results import TestResult

    return TestResult(
        name="vf-boot-3",
        host="lab-xen4.14",
        module="control",
        expected=3,
        seen=3 if outcome == "pass" else 1,
        outcome=outcome,
        toolstack=Toolstack(xen_version=xl.split("-")[0], xl_version=xl, dom0_kernel="6.1.0-57-amd64"),
        xs_creation=xs,
    )


ONE_TX = XsCreation(observed=True, transactions=1, num_devs=[3], devices_first=3)
PER_DEV = XsCreation(observed=True, transactions=3, num_devs=[1, 2, 3], devices_first=1)
UNSEEN = XsCreation(observed=False, detail="no access log")


def test_control_passing_where_creation_was_one_transaction_is_not_applicable():
    assert control_not_applicable(_control("pass", ONE_TX)) == (
        "libxl 4.14: all 3 devices in 1 transaction; the race needs per-device writes"
    )


@pytest.mark.parametrize(
    "outcome,xs",
    [("pass", PER_DEV), ("pass", UNSEEN), ("fail", ONE_TX), ("error", ONE_TX), ("fail", PER_DEV)],
    ids=["raced-live", "not-observed", "control-failed", "errored", "shown"],
)
def test_control_counts_unless_one_transaction_was_observed(outcome, xs):
    assert control_not_applicable(_control(outcome, xs)) == ""


def test_verdict_rests_on_the_hosts_where_the_race_was_live():
    from sample_runs import k_prefix

    k = k_prefix()
    series = [t for t in k.tests if t.module == "series"]
    shown = [t for t in k.tests if t.module == "control" and t.outcome == "fail"]
    assert shown
    for t in shown:
        t.xs_creation = PER_DEV
    k.tests = series + shown + [_control("pass", ONE_TX)]
    v, d = verdict(k)
    assert v == "ready"
    assert "vf-boot-3@lab-xen4.14 [control] not-applicable: libxl 4.14: all 3 devices in 1 transaction" in d
    # the same passing control on a host where the race was observed live still proves nothing
    k.tests = series + [_control("pass", PER_DEV)]
    assert verdict(k)[0] == "test-inconclusive"
    # only the one-transaction host: no host showed the fix matters, and the verdict says so
    k.tests = series + [_control("pass", ONE_TX)]
    v, d = verdict(k)
    assert v == "ready" and "negative control not applicable on lab-xen4.14" in d


def test_summary_grid_kernel_by_host_with_xen_and_the_observed_pattern():
    from sample_runs import k_prefix, sample_run

    from pipeline.report import render_markdown

    run = sample_run()
    k = k_prefix()
    for t in k.tests:  # the lab, Xen 4.17: per-device writes observed
        t.toolstack = Toolstack(xen_version="4.17.7", xl_version="4.17.7+13-g2445b30a44-0+deb12u1")
        t.xs_creation = XsCreation(
            observed=True, transactions=t.expected, num_devs=list(range(1, t.expected + 1)), devices_first=1
        )
    k.tests.append(_control("pass", ONE_TX))
    run.kernels = [k]
    md = render_markdown(run)
    grid = md.split("## Kernel x host (toolstack as observed)", 1)[1].split("## Evidence", 1)[0]
    assert "| Kernel | lab | lab-xen4.14 |" in grid
    assert "Xen 4.17.7 (xl 4.17.7+13-g2445b30a44-0+deb12u1); 3 transactions wrote num_devs (1, 2, 3)" in grid
    assert (
        "Xen 4.14.6 (xl 4.14.6-1); all 3 device(s) in 1 transaction (num_devs=3); series 0/0 pass; control not-applicable "
        "(libxl 4.14: all 3 devices in 1 transaction; the race needs per-device writes)"
    ) in grid
