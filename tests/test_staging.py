"""Host staging (deploy.make_stage_dir and friends) over a real local sshd against this machine.

The staging root is moved under the test's own directory, so nothing of a real deploy on this
machine is touched; the commands (stat, mkdir, mktemp, sha256sum, rm) are the ones a Xen host runs.
The full deploy path on the lab: tests/test_deploy.py::test_staging_path_made_by_another_user_is_refused.
"""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from local_sshd import serve

from pipeline import deploy as D
from pipeline.errors import HostError
from pipeline.host import Host


@pytest.fixture
def host(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the staging checks are about root's directories")
    root = tmp_path / "run-pv"
    monkeypatch.setattr(D, "MARKER_DIR", str(root))
    monkeypatch.setattr(D, "STAGING", str(root / "stage"))
    (tmp_path / "sshd").mkdir()
    with serve(tmp_path / "sshd") as server, Host(server.host_config) as h:
        yield h


def test_fresh_root_only_directory_per_deploy_checked_and_removed(host, tmp_path):
    ko = tmp_path / "xen-pciback.ko"
    ko.write_bytes(os.urandom(4096))
    a = D.make_stage_dir(host, "ABC123")
    b = D.make_stage_dir(host, "ABC123")
    assert a != b  # one fresh directory per deploy, never an old one reused
    for d in (D.STAGING, a):
        st = os.stat(d)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700, (d, oct(st.st_mode))
    host.put(ko, f"{a}/xen-pciback.ko")
    assert D.remote_sha256(host, f"{a}/xen-pciback.ko") == hashlib.sha256(ko.read_bytes()).hexdigest()
    assert D.staged_module(host, "ABC123") in (f"{a}/xen-pciback.ko", f"{b}/xen-pciback.ko")
    D.clean_staging(host)
    assert not os.path.exists(D.STAGING)


@pytest.mark.parametrize("owner,mode", [(65534, 0o755), (0, 0o777)])
def test_a_staging_path_someone_else_could_have_filled_is_refused(host, owner, mode):
    os.makedirs(D.STAGING)
    os.chmod(D.STAGING, mode)
    os.chown(D.STAGING, owner, owner)
    with pytest.raises(HostError, match=rf"refused: {D.STAGING} exists as a directory owned by uid {owner}"):
        D.make_stage_dir(host, "ABC123")
    assert os.listdir(D.STAGING) == []  # nothing made in it
    D.clean_staging(host)  # what a deploy does on its way out: someone else's directory stays as found
    st = os.stat(D.STAGING)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner, mode)


def test_a_srcversion_that_is_not_one_is_refused(host):
    with pytest.raises(HostError, match="is not a modinfo srcversion"):
        D.make_stage_dir(host, "../../etc")
