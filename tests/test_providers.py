"""pipeline/providers.py: every host has a provider chosen from its config, and the runner,
hosts.check, provision and guest ask it (no lab is booted here: the lab's state is files)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from pipeline import absorbed, guest, hostcheck, lab, providers, provision
from pipeline import deploy as deploy_mod
from pipeline.config import HOST_KINDS, HostConfig, LabConfig, Settings, load_settings
from pipeline.errors import ConfigError, HostError
from pipeline.results import RunResult
from pipeline.runner import _Run
from pipeline.statuses import FaultKind


def _settings(tmp_path: Path, **hosts: HostConfig) -> Settings:
    return Settings(
        lab=LabConfig(dir=str(tmp_path / "lab")), hosts=hosts, guest_kernel="host", matrices={"default": []}
    )


def _plain(tmp_path: Path, name: str = "box", **kw) -> HostConfig:
    known = tmp_path / "known_hosts"
    known.touch()
    return HostConfig(name=name, ssh_config="none", proxy_jump="none", known_hosts=str(known), **kw)


def _built_lab(s: Settings) -> None:
    p = lab.paths(s)
    p.dir.mkdir(parents=True)
    p.manifest.write_text(json.dumps({"guest": {"kernel": "/boot/vmlinuz-6.1", "initrd": lab.GUEST_INITRD}}))


def test_the_config_users_write_selects_the_provider():
    hosts = {"lab": {"kind": "lab"}, "old": {"lab": True}, "box": {"address": "box.example"}, "b2": {"kind": "ssh"}}
    s = load_settings(data={"matrices": {"m": []}, "matrix": "m", "hosts": hosts})
    assert type(providers.of_host(s, "lab")) is providers.LabProvider
    assert type(providers.of_host(s, "old")) is providers.LabProvider  # `lab: true` is `kind: lab`
    assert type(providers.of_host(s, "box")) is providers.SshProvider
    assert type(providers.of_host(s, "b2")) is providers.SshProvider
    assert {n: (h.kind, h.lab) for n, h in s.hosts.items()} == {
        "lab": ("lab", True),
        "old": ("lab", True),
        "box": ("ssh", False),
        "b2": ("ssh", False),
    }


def test_every_kind_config_accepts_has_a_provider():
    assert tuple(providers.KINDS) == HOST_KINDS
    assert all(providers.KINDS[k].kind == k for k in HOST_KINDS)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ({"kind": "docker"}, r"key pv\.hosts\.h\.kind: expected one of ssh, lab, got 'docker'$"),
        ({"kind": "ssh", "lab": True}, r"key pv\.hosts\.h\.lab: lab: true is kind: lab, but kind is 'ssh'$"),
    ],
)
def test_a_kind_of_host_that_does_not_exist_or_disagrees_is_one_line(host, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(data={"matrices": {"m": []}, "matrix": "m", "hosts": {"h": host}})


def test_a_plain_host_is_used_as_configured_and_never_started_or_stopped(tmp_path):
    cfg = _plain(tmp_path, address="10.0.0.7", port=2222, user="admin")
    p = providers.provider_for(_settings(tmp_path, box=cfg), cfg)
    assert p.ensure_running() is cfg and p.running_config() is cfg
    assert not p.restartable and not p.own_guest and not p.label
    with pytest.raises(HostError, match=r"^host box: not answering \(gone\), and the pipeline cannot restart it$"):
        p.restart("gone")
    with pytest.raises(HostError, match=r"^host box: no test guest: .*provision\.provision\(\)$"):
        p.guest_image()
    assert p.describe() == "admin@10.0.0.7:2222"
    p.stop()  # nothing to power off


def test_the_lab_is_read_from_its_state_and_carries_its_guest(tmp_path):
    s = _settings(tmp_path, lab=HostConfig(name="lab", lab=True))
    p = providers.of_host(s, "lab")
    assert p.restartable and p.own_guest == "built into the lab image" and p.label == "built-in lab"
    assert p.running_config() is None  # no QEMU: hosts.check does not start it
    assert p.not_running == "the built-in lab is not running (`invoke lab.up`)"
    assert p.describe() == "built-in QEMU lab"
    _built_lab(s)
    assert p.guest_image() == guest.GuestImage("/boot/vmlinuz-6.1", lab.GUEST_INITRD)
    # default_guest asks the provider of the connected host's config
    host = types.SimpleNamespace(name="lab", config=lab.host_config(s))
    assert providers.default_guest(host, s) == p.guest_image()
    with pytest.raises(HostError, match="no test guest"):
        providers.default_guest(host, None)  # without settings nobody knows where the lab is


class _Guests(provision.RunGuests):
    """The run's guests, the upload left out: what `make` would have put on the host."""

    def make(self, host):
        self.made[host.name] = types.SimpleNamespace(kernel=f"/run/{host.name}/vmlinuz", initrd=f"/run/{host.name}/i")
        return self.made[host.name]


@pytest.mark.parametrize("guest_kernel", ["tiny", "host"])
def test_the_run_makes_the_guest_unless_the_host_carries_its_own(tmp_path, guest_kernel):
    s = _settings(tmp_path, lab=HostConfig(name="lab", lab=True), box=HostConfig(name="box"))
    s.guest_kernel = guest_kernel
    _built_lab(s)
    guests = _Guests(s, "r-1", {})
    lab_host = types.SimpleNamespace(name="lab", config=lab.host_config(s))
    box = types.SimpleNamespace(name="box", config=s.hosts["box"])
    made = guest.GuestImage("/run/lab/vmlinuz", "/run/lab/i")
    own = guest.GuestImage("/boot/vmlinuz-6.1", lab.GUEST_INITRD)
    assert providers.run_guest(guests, lab_host) == (made if guest_kernel == "tiny" else own)
    assert providers.run_guest(guests, box) == guest.GuestImage("/run/box/vmlinuz", "/run/box/i")
    assert sorted(guests.made) == (["box", "lab"] if guest_kernel == "tiny" else ["box"])


def test_two_inventory_names_for_the_lab_are_one_machine(tmp_path):
    s = _settings(
        tmp_path,
        lab=HostConfig(name="lab", lab=True),
        lab2=HostConfig(name="lab2", lab=True),
        box=HostConfig(name="box"),
    )
    ps = [providers.of_host(s, n) for n in ("lab", "box", "lab2")]
    assert [p.name for p in providers.machines(ps)] == ["lab", "box"]


def test_hosts_check_asks_the_provider(tmp_path):
    s = _settings(tmp_path, lab=HostConfig(name="lab", lab=True))
    (c,) = hostcheck.check_hosts(s)
    assert (c.lab, c.provider, c.reachable) == (True, "lab", False)
    assert c.error == "the built-in lab is not running (`invoke lab.up`)"
    # down and named by no row of the matrix: nothing stands in the way of a run (a run that needs it boots it)
    assert hostcheck.format_check(c).startswith("lab (built-in lab): ok") and c.idle
    box = hostcheck.HostCheck(name="box", lab=False, provider="ssh")
    assert hostcheck.format_check(box).startswith("box: NOT READY")
    s.hosts["box"] = _plain(tmp_path, address="10.0.0.7")
    out = hostcheck.format_config(s)
    assert "built-in QEMU lab" in out and "root@10.0.0.7:22" in out


class _DeadHost:
    """A connection whose host stopped answering."""

    def __init__(self, config: HostConfig):
        self.name, self.config, self.closed = config.name, config, 0

    def run(self, argv, timeout=None):
        raise HostError(f"host {self.name}: connection lost")

    def close(self):
        self.closed += 1


def _run(s: Settings, tmp_path: Path, said: list[str]) -> _Run:
    return _Run(s, RunResult(run_id="r-1"), tmp_path, None, "report", said.append)


def test_the_runner_restarts_only_a_host_its_provider_can_restart(tmp_path, monkeypatch):
    monkeypatch.delenv(absorbed.JOURNAL_ENV, raising=False)  # a stand-in fault, not one of the session's
    s = _settings(tmp_path, lab=HostConfig(name="lab", lab=True), box=HostConfig(name="box"))
    said: list[str] = []
    restarted: list[str] = []
    recovered: list[str] = []
    fresh = HostConfig(name="lab", lab=True, port=2444)

    def restart(self, why, progress, steps):
        restarted.append(why)
        return fresh

    monkeypatch.setattr(providers.LabProvider, "restart", restart)
    monkeypatch.setattr(deploy_mod, "recover", lambda host, progress: recovered.append(host.name))
    ctx = _run(s, tmp_path, said)
    with pytest.raises(HostError, match="connection lost"):
        ctx.ensure_host(_DeadHost(s.hosts["box"]))
    assert not restarted
    host = _DeadHost(s.hosts["lab"])
    with absorbed.collect() as faults:
        ctx.ensure_host(host)
    assert restarted == ["host lab: connection lost"] and recovered == ["lab"]
    assert host.config is fresh and host.closed == 1
    assert [(f.what, f.host) for f in faults] == [(FaultKind.LAB_RESTARTED, "lab")]


def test_the_runner_connects_with_what_the_provider_yields(tmp_path, monkeypatch):
    s = _settings(tmp_path, lab=HostConfig(name="lab", lab=True), box=HostConfig(name="box"))
    up = HostConfig(name="lab", lab=True, port=2444)
    monkeypatch.setattr(providers.LabProvider, "ensure_running", lambda self, progress, steps: up)
    ctx = _run(s, tmp_path, [])
    assert ctx.host_config("lab") is up and ctx.host_config("box") is s.hosts["box"]


def test_the_kernel_release_known_without_connecting_comes_from_the_provider(tmp_path):
    s = _settings(
        tmp_path, box=_plain(tmp_path, kernel_release="6.1.0-9-amd64"), mylab=HostConfig(name="mylab", lab=True)
    )
    assert providers.of_host(s, "box").kernel_release() == "6.1.0-9-amd64"
    # the lab's is its image's dom0 (the manifest), whatever the inventory entry is called
    assert providers.builtin_lab(s).name == "mylab" and providers.builtin_lab(s).kernel_release() == ""
    _built_lab(s)
    lab.paths(s).manifest.write_text(json.dumps({"dom0_kernel_release": "6.1.0-57-amd64"}))
    assert providers.of_host(s, "mylab").kernel_release() == "6.1.0-57-amd64"
    # headers `auto` and the 6.1 source import ask it: an inventory without a lab entry still finds a built lab
    assert providers.builtin_lab(_settings(tmp_path)).kernel_release() == "6.1.0-57-amd64"
