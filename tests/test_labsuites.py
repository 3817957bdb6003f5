"""The toolstack axis, fast: the lab suites as data, each lab host's derived settings and folder,
the inventory and the `toolstacks` matrix, the recipe's inputs per suite, bad input as one line.
The labs themselves boot in test_lab.py (marked `lab`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from test_config import _project_config as _project

from pipeline import PROJECT_ROOT, labsuites, providers
from pipeline.config import HostConfig, LabConfig, Settings, load_settings
from pipeline.errors import ConfigError, LabError
from pipeline.lab import recipe


def test_suites_name_their_xen_and_packages():
    from pipeline.config import LAB_SUITES

    assert tuple(labsuites.SUITES) == LAB_SUITES  # config validates against its copy of the names
    assert {n: s.xen for n, s in labsuites.SUITES.items()} == {"bullseye": "4.14", "bookworm": "4.17", "trixie": "4.20"}
    b = labsuites.suite("bullseye")
    assert (b.hypervisor_package, b.utils_package) == ("xen-hypervisor-4.14-amd64", "xen-utils-4.14")
    # only the host's own suite installs the dom0 kernel from its apt; the others get its .debs
    assert [s.name for s in labsuites.SUITES.values() if not s.foreign_kernel] == [labsuites.HOST_SUITE]
    with pytest.raises(ConfigError, match="unknown lab suite 'buster'; expected one of bullseye, bookworm, trixie"):
        labsuites.suite("buster")


def test_each_lab_host_gets_its_own_settings_and_folder():
    s = Settings(lab=LabConfig(dir=".cache/lab"))
    plain = HostConfig(name="lab", lab=True)
    assert labsuites.for_host(s, plain) is s  # today's lab: unchanged settings, unchanged folder
    old = labsuites.for_host(s, HostConfig(name="lab-xen4.14", lab=True, lab_suite="bullseye"))
    new = labsuites.for_host(s, HostConfig(name="lab-xen4.20", lab=True, lab_suite="trixie"))
    assert (old.lab.suite, old.lab.dir) == ("bullseye", ".cache/lab-xen4.14")
    assert (new.lab.suite, new.lab.dir) == ("trixie", ".cache/lab-xen4.20")
    assert (old.lab.memory, old.lab.qemu, old.cache_dir) == (s.lab.memory, s.lab.qemu, s.cache_dir)  # rest shared
    assert s.lab.suite == "bookworm" and s.lab.dir == ".cache/lab"  # the base is not changed
    # deriving twice is deriving once (a provider handed derived settings keeps the folder)
    assert labsuites.for_host(old, HostConfig(name="x", lab=True, lab_suite="bullseye")).lab.dir == ".cache/lab-xen4.14"
    # an explicit bookworm is today's lab
    assert labsuites.for_host(s, HostConfig(name="b", lab=True, lab_suite="bookworm")).lab.dir == ".cache/lab"


def test_the_inventory_has_three_labs_one_machine_each_and_one_for_the_other_dom0_kernels():
    s = load_settings(_project())
    labs = {n: labsuites.for_name(s, n) for n, h in s.hosts.items() if h.lab}
    assert {n: (d.lab.suite, d.lab.dir) for n, d in labs.items()} == {
        "lab": ("bookworm", ".cache/lab"),
        "lab-xen4.14": ("bullseye", ".cache/lab-xen4.14"),
        "lab-xen4.20": ("trixie", ".cache/lab-xen4.20"),
        # the Xen 4.17 lab booting another Debian line's kernel: one image and QEMU of their own
        "lab-5.10": ("bookworm", ".cache/lab-kernels"),
        "lab-6.12": ("bookworm", ".cache/lab-kernels"),
        "lab-7.2": ("bookworm", ".cache/lab-kernels"),
    }
    machines = [providers.of_host(s, n).machine for n in labs]
    assert machines == ["lab", "lab:.cache/lab-xen4.14", "lab:.cache/lab-xen4.20"] + ["lab:.cache/lab-kernels"] * 3
    # build and headers `auto` ask the first lab of the inventory: today's (all three boot its kernel)
    assert providers.builtin_lab(s).name == "lab"
    assert providers.of_host(s, "lab-xen4.14").not_running.endswith("(`invoke lab.up --host lab-xen4.14`)")
    with pytest.raises(ConfigError, match=r"--host 'nope': not a lab host of the inventory; have lab, lab-xen4.14"):
        labsuites.for_name(s, "nope")


def test_toolstacks_matrix_runs_both_kernels_on_all_three_labs():
    s = load_settings(_project(), matrix="toolstacks")
    assert [k.name for k in s.kernels] == ["debian-6.1", "debian-6.1-prefix"]
    assert all(k.hosts == ["lab-xen4.14", "lab", "lab-xen4.20"] for k in s.kernels)
    default = load_settings(_project())
    assert all(k.hosts == ["lab"] for k in default.kernels)  # the default run stays on one lab


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"lab": {"suite": "sid"}}, r"key pv\.lab\.suite: expected one of bullseye, bookworm, trixie, got 'sid'"),
        (
            {"hosts": {"old": {"lab": True, "lab_suite": "jessie"}}},
            r"key pv\.hosts\.old\.lab_suite: expected one of bullseye, bookworm, trixie, got 'jessie'",
        ),
        (
            {"hosts": {"ssh1": {"address": "a", "lab_suite": "bullseye"}}},
            r"key pv\.hosts\.ssh1\.lab_suite: only a lab host \(kind: lab\) has a suite",
        ),
        (
            {"hosts": {"box": {"address": "a", "dom0_kernel": "6.12.117+deb12-amd64"}}},
            r"key pv\.hosts\.box\.dom0_kernel: only a lab host \(kind: lab\) has a dom0 kernel",
        ),
        (
            {"hosts": {"l": {"lab": True, "dom0_kernel": "4.19.0-27-amd64"}}},
            r"key pv\.hosts\.l\.dom0_kernel: dom0_kernel '4\.19\.0-27-amd64': expected the release of a Debian "
            r"kernel line \(5\.10, 6\.1, 6\.12, 7\.2\)",
        ),
        ({"hosts": {"l": {"lab": True, "dom0_kernel": "6.12"}}}, r"key pv\.hosts\.l\.dom0_kernel: dom0_kernel '6\.12'"),
    ],
)
def test_bad_suite_or_dom0_kernel_config_is_refused_naming_the_key(tmp_path, data, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pv": data}))
    with pytest.raises(ConfigError, match=match) as e:
        load_settings(_project(str(bad)))
    assert str(bad) in e.value.message and "\n" not in e.value.message


def test_cli_unknown_lab_host_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "lab.status", "--host", "nope"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == ConfigError.exit_code
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "--host 'nope': not a lab host" in proc.stderr


def test_recipe_packages_follow_the_suite():
    old = recipe.debootstrap_packages(labsuites.suite("bullseye"))
    assert "xen-utils-4.14" in old and "xen-hypervisor-4.14-amd64" in old and "xen-utils-4.17" not in old
    assert "linux-base" in old  # the bookworm kernel .deb depends on it, minbase lacks it
    assert recipe.debootstrap_packages(labsuites.suite("bookworm")) == recipe.DEBOOTSTRAP_PACKAGES
    assert recipe.versioned_packages(labsuites.suite("bookworm")) == recipe.VERSIONED_PACKAGES
    new = recipe.versioned_packages(labsuites.suite("trixie"))
    assert "xen-hypervisor-4.20-amd64" in new and recipe.KERNEL_PACKAGE in new


def test_foreign_suite_chroot_sources_are_that_suite_on_the_host_mirrors():
    s = labsuites.for_host(Settings(), HostConfig(name="x", lab=True, lab_suite="trixie"))
    entries = recipe.chroot_apt_entries(s, [])
    assert [e.suites for e in entries] == [["trixie", "trixie-updates"], ["trixie-security"]]
    main, security, _ = __import__("pipeline.aptfetch", fromlist=["mirrors"]).mirrors(s)
    assert [e.uri for e in entries] == [main, security]


def test_input_hash_differs_per_suite(monkeypatch):
    """The real collect_inputs per suite (the package candidates stubbed: they need the archive):
    each suite is its own image, and only its own inputs rebuild it."""
    seen = []

    def candidates(settings):
        seen.append(settings.lab.suite)
        return {p: f"{settings.lab.suite}-1" for p in recipe.versioned_packages(labsuites.suite_of(settings))}

    monkeypatch.setattr(recipe, "suite_candidates", candidates)
    base = Settings(lab=LabConfig(mirror="http://m.example/debian"))
    hashes = {}
    for name in labsuites.SUITES:
        s = labsuites.for_host(base, HostConfig(name=name, lab=True, lab_suite=name))
        inputs = recipe.collect_inputs(s, "ssh-ed25519 AAAA test")
        assert inputs["suite"] == name and f"xen-utils-{labsuites.suite(name).xen}" in inputs["debootstrap_packages"]
        hashes[name] = recipe.input_hash(inputs)
    assert seen == list(labsuites.SUITES) and len(set(hashes.values())) == 3


def test_foreign_suite_without_a_candidate_is_a_one_line_lab_error(monkeypatch):
    from pipeline import aptfetch
    from pipeline.errors import FetchError

    def no_candidate(self, package):
        raise FetchError(f"{package}: not in bullseye bullseye-security (/x/apt-bullseye)")

    monkeypatch.setattr(aptfetch.AptDir, "candidate", no_candidate)
    monkeypatch.setattr(recipe, "apt_candidates", lambda pkgs: {p: "1" for p in pkgs})
    s = labsuites.for_host(Settings(), HostConfig(name="x", lab=True, lab_suite="bullseye"))
    with pytest.raises(LabError, match=r"^lab suite bullseye: xen-hypervisor-4.14-amd64: not in bullseye") as e:
        recipe.suite_candidates(s)
    assert "\n" not in e.value.message


RELEASES = {"5.10": "5.10.0-46-amd64", "6.12": "6.12.117+deb12-amd64", "7.2": "7.2.13+deb14-amd64"}


def test_hosts_with_another_dom0_kernel_share_an_image_of_their_own():
    """The default image asks for no extra kernel (it does not grow); the `-kernels` folder's image
    holds every kernel its hosts name; each host boots its own; the debian matrix runs each line
    on a dom0 of that line, its headers the very release that host boots."""
    s = load_settings(_project(), matrix="debian")
    assert labsuites.image_kernels(labsuites.for_name(s, "lab")) == []
    for name in ("lab-xen4.14", "lab-xen4.20"):
        assert labsuites.image_kernels(labsuites.for_name(s, name)) == []
    for line, release in RELEASES.items():
        d = labsuites.for_name(s, f"lab-{line}")
        assert (d.lab.dir, d.lab.dom0_kernel) == (".cache/lab-kernels", release)
        assert labsuites.image_kernels(d) == sorted(RELEASES.values())
        p = providers.of_host(s, f"lab-{line}")
        assert (p.boot, p.kernel_release()) == (release, release)
        k = labsuites.dom0_kernel(release)
        assert (k.line, k.package) == (line, f"linux-image-{release}")
        for row in (f"debian-{line}", f"debian-{line}-prefix"):
            kcfg = s.kernel(row)
            assert kcfg.hosts == [f"lab-{line}"] and kcfg.build.headers == release, kcfg
    from pipeline.config import KERNEL_LINES
    from pipeline.kernelsrc import LINES

    assert {n: x.dist for n, x in LINES.items()} == KERNEL_LINES  # config's copy of the lines and their dists
    assert labsuites.dom0_kernel(RELEASES["7.2"]).also == ("linux-base",)  # sid's: 7.2 pre-depends on >= 4.17
    assert [k.hosts for k in s.kernels if k.name.startswith("debian-6.1") and "6.12" not in k.name] == [["lab"]] * 2
    # deriving for a plain lab host from a derived one goes back to the default folder and kernel
    back = labsuites.for_host(labsuites.for_name(s, "lab-6.12"), s.hosts["lab"])
    assert (back.lab.dir, back.lab.dom0_kernel) == (".cache/lab", "")
    # the run's order: one machine's hosts together, one kernel's together, first-seen otherwise
    order = providers.boot_order([providers.of_host(s, n) for n in ("lab-6.12", "lab", "lab-5.10", "lab-6.12")])
    assert [p.name for p in order] == ["lab-6.12", "lab-6.12", "lab-5.10", "lab"]
