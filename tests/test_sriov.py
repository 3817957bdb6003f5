"""pipeline.sriov: what a PF's state says about using it (pure; the lab tests use the real PF)."""

from __future__ import annotations

from pipeline.sriov import PfState, Vf, parse_backend_devices, refusal, usable_vfs

XS = """/local/domain/0/backend/pci/3/0/num_devs = "2"
/local/domain/0/backend/pci/3/0/dev-0 = "0000:01:00.1"
/local/domain/0/backend/pci/3/0/dev-1 = "0000:01:00.2"
/local/domain/0/backend/pci/3/0/state-0 = "3"
/local/domain/0/backend/pci/7/0/dev-0 = "0000:01:00.3"
"""


def test_backend_devices_of_live_domains_only():
    # domain 7 is gone (a stale backend directory): its device is not in use
    assert parse_backend_devices(XS, {0: "Domain-0", 3: "web"}) == {"0000:01:00.1": "web", "0000:01:00.2": "web"}


def _pf(**kw) -> PfState:
    base = dict(bdf="0000:01:00.0", driver="nvme", totalvfs=7, numvfs=0, autoprobe="1")
    return PfState(**{**base, **kw})


def test_refusal_names_the_reason():
    assert refusal(_pf(), "h") is None
    assert "has no driver bound" in refusal(_pf(driver=None), "h")
    assert "held by pciback" in refusal(_pf(driver="pciback"), "h")
    used = _pf(numvfs=2, vfs=[Vf("0000:01:00.1", "pciback", "web"), Vf("0000:01:00.2", None)])
    assert refusal(used, "h") == "VF 0000:01:00.1 of PF 0000:01:00.0 on h is used by domain web; refusing the host"
    bound = _pf(numvfs=1, vfs=[Vf("0000:01:00.1", "ixgbevf")])
    assert (
        refusal(bound, "h") == "VF 0000:01:00.1 of PF 0000:01:00.0 on h is bound to driver ixgbevf; refusing the host"
    )
    # free VFs (unbound or held by pciback, in no domain, or in one of our own test guests) are usable
    free = _pf(numvfs=2, vfs=[Vf("0000:01:00.1", "pciback", "pvtest-vf-boot-2"), Vf("0000:01:00.2", None)])
    assert refusal(free, "h") is None


def test_usable_vfs_from_sriov_totalvfs_capped_by_the_inventory():
    assert usable_vfs(_pf(), 0) == 7
    assert usable_vfs(_pf(), 3) == 3
    assert usable_vfs(_pf(totalvfs=2), 3) == 2
    assert usable_vfs(_pf(numvfs=2), 0) == 2  # existing VFs are used as they are, never recreated
