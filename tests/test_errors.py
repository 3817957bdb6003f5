"""pipeline/errors.py: a HostError names its host once, and a line that names the host itself
takes the reason without it (never the prefix parsed back out of the message)."""

from __future__ import annotations

from pipeline.errors import HostError, HostLocked, LabError, without_host
from pipeline.host import HostKeyError


def test_a_host_error_renders_its_host_once():
    e = HostError("cannot stat /x: gone", host="lab")
    assert (e.message, str(e), e.host, e.reason) == (
        "host lab: cannot stat /x: gone",
        e.message,
        "lab",
        "cannot stat /x: gone",
    )
    assert HostError("xen_pciback is not loaded").message == "xen_pciback is not loaded"  # the caller knows the host
    assert HostLocked("locked by run r-1", host="h").message == "host h: locked by run r-1"
    k = HostKeyError("host key not found", kind="unknown", jump=True, host="h")
    assert (k.message, k.kind, k.jump) == ("host h: host key not found", "unknown", True)


def test_without_host_gives_the_words_for_a_line_that_names_the_host():
    assert without_host(HostError("ssh connection lost", host="lab"), "lab") == "ssh connection lost"
    # another host's error, an error without a host, any other error: the whole message
    assert without_host(HostError("ssh connection lost", host="jump"), "lab") == "host jump: ssh connection lost"
    assert without_host(HostError("host lab: written by hand"), "lab") == "host lab: written by hand"
    assert without_host(LabError("lab: QEMU did not start"), "lab") == "lab: QEMU did not start"
