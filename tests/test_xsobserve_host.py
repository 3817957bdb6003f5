"""xsobserve.Cursor over a real SSH connection (tests/local_sshd.py): only what was appended after
the cursor is read, a rotation (log -> log.1) loses nothing, and a missing log says why."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from local_sshd import SshServer, serve

from pipeline import xsobserve
from pipeline.host import Host

FIX = Path(__file__).parent / "fixtures" / "xsobserve"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    with serve(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def test_cursor_reads_only_the_lines_after_it(sshd, tmp_path):
    log = tmp_path / "xenstored-access.log"
    # an earlier creation that reused domid 3 (after a reboot) is before the cursor: not counted
    log.write_text((FIX / "lab-4.17-vf-boot-1-domid1.log").read_text().replace("/pci/1/", "/pci/3/"))
    with Host(sshd.host_config) as host:
        cur = xsobserve.Cursor(host, str(log))
        with log.open("a") as fh:
            fh.write((FIX / "lab-4.17-vf-boot-3-domid3.log").read_text())
        x = cur.creation(3)
    assert (x.observed, x.transactions, x.num_devs, x.source) == (True, 3, [1, 2, 3], str(log))


def test_cursor_follows_a_rotation(sshd, tmp_path):
    log = tmp_path / "xenstored-access.log"
    lines = (FIX / "lab-4.17-vf-boot-3-domid3.log").read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:10]))
    with Host(sshd.host_config) as host:
        cur = xsobserve.Cursor(host, str(log))
        cut = next(i for i, ln in enumerate(lines) if "A59.5 " in ln)  # mid-creation, as oxenstored may
        with log.open("a") as fh:
            fh.write("".join(lines[10:cut]))
        log.rename(str(log) + ".1")
        log.write_text("".join(lines[cut:]))
        x = cur.creation(3)
    assert x.num_devs == [1, 2, 3]


def test_no_access_log_is_not_observed_and_says_why(sshd, tmp_path):
    with Host(sshd.host_config) as host:
        x = xsobserve.Cursor(host, str(tmp_path / "absent.log")).creation(3)
    assert not x.observed and "absent.log" in x.detail and "access log off" in x.detail
    assert xsobserve.describe(x).startswith("not observed: ")
