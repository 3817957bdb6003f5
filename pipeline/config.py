"""The kernel matrix and host inventory, read from Invoke's config and validated into dataclasses.

Everything lives under the `pv` key of Invoke's configuration: the project's
`invoke.yaml`, a user file (~/.invoke.yaml), `invoke -f FILE` and `INVOKE_PV_*`
environment variables, merged by Invoke itself. A validation error names the
file the offending key came from, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import PROJECT_ROOT
from .errors import ConfigError, UnknownConfigKey
from .redact import register
from .verdict import SEVERITY

BUILD_MODES = ("headers", "full")
# the names of pipeline/lab/emulator.py's EMULATORS (that module needs config: named here, checked by a test)
LAB_QEMU_BUILDS = (
    "system", "10.0", "system-1t", "10.0-1t", "system-dom0-1cpu", "10.0-dom0-1cpu", "system-noxsave", "10.0-noxsave",
    "system-pin", "10.0-pin", "system-lazyfpu", "10.0-lazyfpu",
)  # fmt: skip
GUEST_KERNELS = ("tiny", "host")
LAB_DEVICES = ("nvme", "igb")  # pipeline/lab/devices.py DEVICES (checked by a test)
HOST_KINDS = ("ssh", "lab")  # pipeline/providers.py KINDS: the kinds of host (checked by a test)
LAB_SUITES = ("bullseye", "bookworm", "trixie")  # pipeline/labsuites.py SUITES (checked by a test)
# the Debian kernel lines and the private apt distribution of each: pipeline/kernelsrc.py LINES (checked by a test)
KERNEL_LINES = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "bookworm", "7.2": "sid"}


@dataclass
class BuildConfig:
    mode: str = "headers"  # headers: against prepared headers; full: in the kernel tree
    # headers mode: a linux-headers directory or release, or "auto": the release of the lab's dom0
    # kernel (the newest installed linux-headers-*-amd64 when no lab is built): buildheaders.resolve_headers
    headers: str = "auto"
    # full mode: a make target (tinyconfig, defconfig, ...) or a path to a .config
    base_config: str = "tinyconfig"
    fragments: list[str] = field(default_factory=lambda: ["kconfigs/xen-dom0.config"])
    timeout_s: int = 3600


@dataclass
class KernelConfig:
    name: str
    remote: str
    ref: str
    build: BuildConfig = field(default_factory=BuildConfig)
    hosts: list[str] = field(default_factory=list)
    # patch reverting the fix, used for the negative control where the fix is already in (and as the
    # evidence of the fix in the line's own form); empty: the Debian line's revert for a debian-X.Y
    # ref (kernelsrc.LINES, the one source of truth), else upstream's (kernelsrc.control_revert)
    control_revert: str = ""


@dataclass
class HostConfig:
    name: str
    # SSH: empty values come from the ssh_config file (as `ssh` would read them), then the defaults
    address: str = ""  # host name, address or ssh_config Host alias; empty: the inventory name
    port: int = 0  # 0: ssh_config's Port, else 22
    user: str = ""  # empty: ssh_config's User, else root
    key: str = ""  # private key file; empty: ssh_config's IdentityFile, ssh-agent, ~/.ssh/id_*
    known_hosts: str = ""  # empty: ssh_config's UserKnownHostsFile, else ~/.ssh/known_hosts; always checked
    ssh_config: str = ""  # ssh_config file; empty: ~/.ssh/config when it exists; "none": no file
    proxy_jump: str = ""  # [user@]host[:port][,...]; empty: ssh_config's ProxyJump; "none": direct
    pf_bdf: str = "0000:01:00.0"  # the SR-IOV physical function used by the tests
    max_vfs: int = 0  # 0: the PF's sriov_totalvfs; lower caps it
    kernel_release: str = ""  # expected running release; empty: ask the host
    # the kind of host, i.e. its provider (pipeline/providers.py): "ssh" a plain host, "lab" the
    # built-in QEMU lab, which fills address/port/key/known_hosts itself; empty: from `lab`
    kind: str = ""
    lab: bool = False  # shorthand for kind: lab (kept in step with kind, so either can be read)
    # a lab host's Debian suite (its Xen: pipeline/labsuites.py); empty: pv.lab.suite. Each suite
    # is its own image, folder and QEMU (bullseye: .cache/lab-xen4.14)
    lab_suite: str = ""
    # a lab host's dom0 kernel: the release of another Debian line's linux-image (5.10.0-46-amd64,
    # 6.12.117+deb12-amd64, 7.2.13+deb14-amd64); empty: the image's own (bookworm's 6.1). The lab
    # hosts with one, per suite, share an image of their own (.cache/lab-kernels: the suite's kernel
    # and every one they name) and one QEMU, rebooted when the next host needs another kernel
    dom0_kernel: str = ""
    lock_timeout_s: int = 1800  # how long a run waits for another run's lock on this host
    lock_stale_s: int = 43200  # a lock older than this (of a run on another machine) is broken

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = "lab" if self.lab else "ssh"
        elif self.kind == "lab":
            self.lab = True


@dataclass
class LabConfig:
    dir: str = ".cache/lab"
    vfs: int = 3
    memory: str = "3G"
    smp: int = 2
    # the boot's budget in QEMU's own CPU seconds per vCPU (a busy machine slows a boot, not fails it),
    # and a quarter of its wall-time limit: pipeline/lab/lifecycle.py boot_overdue
    boot_timeout_s: int = 300
    mirror: str = "auto"  # Debian mirror for debootstrap; auto: the host's apt configuration
    qemu: str = "10.0"  # the QEMU build that runs the lab: pipeline/lab/emulator.py EMULATORS
    device: str = "nvme"  # the SR-IOV PF: nvme or igb (a NIC, QEMU >= 8): pipeline/lab/devices.py
    suite: str = "bookworm"  # the dom0 root's Debian suite, i.e. its Xen: pipeline/labsuites.py SUITES
    # the dom0 kernel the lab boots ("": the image's own): set from a lab host's `dom0_kernel` (labsuites.for_host)
    dom0_kernel: str = ""


@dataclass
class SandboxConfig:
    """Bounds of the bubblewrap sandbox every series-code step runs in (pipeline/sandbox.py)."""

    enabled: bool = True  # false (or `invoke verify --no-sandbox`): builds run unconfined, recorded so
    memory_mb: int = 4096  # address space per process
    processes: int = 256
    log_mb: int = 32  # output of one step beyond this kills it
    file_mb: int = 2048  # largest file a step may write


@dataclass
class Settings:
    results_root: str = "runs"
    cache_dir: str = ".cache"
    series: str = "patches/xen-pciback-reconfigure"
    jobs: int = 2  # kernels processed side by side
    vf_counts: list[int] = field(default_factory=lambda: [1, 2, 3])
    hotplug: bool = True  # run vf-hotplug (off: vf-boot only, e.g. bench/load_matrix.py)
    hotplug_cycles: int = 2
    # the test guest's kernel: "tiny" (built here once, pipeline/guestkernel.py, the same for every
    # host) or "host" (the host's own dom0 kernel and its xen-pcifront module)
    guest_kernel: str = "tiny"
    # verdicts that make `invoke verify` exit 10 (CI gating); empty: exit 0 whatever the verdicts
    fail_on: list[str] = field(default_factory=list)
    matrix: str = "default"
    matrices: dict[str, list[KernelConfig]] = field(default_factory=dict)
    hosts: dict[str, HostConfig] = field(default_factory=dict)
    lab: LabConfig = field(default_factory=LabConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    # environment variables whose values never reach an artifact or a post (besides
    # PATCHWORK_TOKEN, GITLAB_TOKEN and CI_*TOKEN*): pipeline/redact.py
    secret_env: list[str] = field(default_factory=list)

    @property
    def kernels(self) -> list[KernelConfig]:
        return self.matrices[self.matrix]

    def to_dict(self) -> dict[str, Any]:
        """`invoke config.show --json`: every setting, and the names of the selected matrix's kernels."""
        return {**dataclasses.asdict(self), "kernels": [k.name for k in self.kernels]}

    def path(self, value: str) -> Path:
        """Config paths are relative to the project root."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else PROJECT_ROOT / p

    def kernel(self, name: str) -> KernelConfig:
        for k in self.kernels:
            if k.name == name:
                return k
        raise ConfigError(
            f"unknown kernel {name!r} in matrix {self.matrix!r}: have {', '.join(k.name for k in self.kernels)}"
        )


def int_option(option: str, value: Any, minimum: int = 1) -> int | None:
    """A command-line option or environment value that must be an integer >= `minimum` (None stays None).

    Invoke hands untyped options over as strings: `--jobs two` is one line, not a TypeError later."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) < minimum:
        raise ConfigError(f"{option} {value!r}: expected an integer >= {minimum}")
    return int(text)


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(tp, str(tp))


class _Validator:
    def __init__(self, source_of):
        self.source_of = source_of

    def fail(self, keypath: str, msg: str, error: type[ConfigError] = ConfigError) -> typing.NoReturn:
        raise error(f"{self.source_of(keypath)}: key {keypath}: {msg}")

    def convert(self, tp: Any, value: Any, keypath: str, name: str | None = None) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, keypath, name)
        if origin is list:
            (inner,) = typing.get_args(tp)
            if not isinstance(value, list):
                self.fail(keypath, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
            return [self.convert(inner, v, f"{keypath}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            _, inner = typing.get_args(tp)
            if not isinstance(value, dict):
                self.fail(keypath, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
            return {str(k): self.convert(inner, v, f"{keypath}.{_part(k)}", name=str(k)) for k, v in value.items()}
        if tp is int and isinstance(value, str) and value.strip().isdigit():
            return int(value)  # INVOKE_PV_* environment variables arrive as strings
        if tp is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if not ok:
            self.fail(keypath, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value

    def dataclass(self, cls: type, value: Any, keypath: str, name: str | None) -> Any:
        if not isinstance(value, dict):
            self.fail(keypath, f"expected a mapping, got {type(value).__name__} {value!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, v in value.items():
            if key not in fields:
                self.fail(
                    f"{keypath}.{_part(key)}",
                    f"unknown key; expected one of {', '.join(sorted(fields))}",
                    UnknownConfigKey,
                )
            kwargs[key] = self.convert(hints[key], v, f"{keypath}.{key}", name=key)
        if "name" in fields and "name" not in kwargs and name is not None:
            kwargs["name"] = name  # hosts are keyed by name
        for f in fields.values():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in kwargs:
                self.fail(f"{keypath}.{f.name}", f"missing; expected {_type_name(hints[f.name])}")
        return cls(**kwargs)


def _part(key: Any) -> str:
    """A key as it appears in an error's key path: quoted when it would break the one-line message."""
    text = str(key)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _lookup(data: Any, keypath: str) -> bool:
    """Whether the dotted/indexed key path exists in a plain config dict."""
    cur = data
    for part in keypath.replace("[", ".").replace("]", "").split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False
    return True


def _source_finder(config: Any):
    """Which layer of Invoke's config a key came from, highest priority first."""
    layers = [
        ("_runtime", "_runtime_path"),
        ("_env", None),
        ("_user", "_user_path"),
        ("_project", "_project_path"),
        ("_system", "_system_path"),
    ]

    def source_of(keypath: str) -> str:
        for data_attr, path_attr in layers:
            data = getattr(config, data_attr, None) if config is not None else None
            if not isinstance(data, dict) or not _lookup(data, keypath):
                continue
            if path_attr is None:
                return "environment (INVOKE_" + keypath.split("[")[0].upper().replace(".", "_") + ")"
            return str(getattr(config, path_attr, None) or data_attr.strip("_"))
        return "configuration"

    return source_of


def load_settings(config: Any = None, data: dict | None = None, matrix: str | None = None) -> Settings:
    """Validate the `pv` section of an Invoke config (or a plain dict) into Settings."""
    if data is None:
        raw = config.get("pv") if config is not None else None
        data = _plain(raw) if raw is not None else None
    if data is None:
        raise ConfigError("configuration has no `pv` section: is invoke.yaml present?")
    validator = _Validator(_source_finder(config))
    settings: Settings = validator.dataclass(Settings, data, "pv", None)
    if matrix:
        settings.matrix = matrix
    if settings.matrix not in settings.matrices:
        validator.fail("pv.matrix", f"no matrix {settings.matrix!r}; have {', '.join(sorted(settings.matrices))}")
    for mname, kernels in settings.matrices.items():
        seen = set()
        for i, k in enumerate(kernels):
            key = f"pv.matrices.{mname}[{i}]"
            if k.name in seen:
                validator.fail(f"{key}.name", f"duplicate kernel name {k.name!r}")
            seen.add(k.name)
            if k.build.mode not in BUILD_MODES:
                validator.fail(f"{key}.build.mode", f"expected one of {', '.join(BUILD_MODES)}, got {k.build.mode!r}")
            for h in k.hosts:
                if h not in settings.hosts:
                    validator.fail(
                        f"{key}.hosts",
                        f"unknown host {h!r}; inventory has {', '.join(sorted(settings.hosts)) or 'none'}",
                    )

    register(settings.secret_env)
    if settings.guest_kernel not in GUEST_KERNELS:
        validator.fail("pv.guest_kernel", f"expected one of {', '.join(GUEST_KERNELS)}, got {settings.guest_kernel!r}")
    if settings.lab.qemu not in LAB_QEMU_BUILDS:
        validator.fail("pv.lab.qemu", f"expected one of {', '.join(LAB_QEMU_BUILDS)}, got {settings.lab.qemu!r}")
    if settings.lab.device not in LAB_DEVICES:
        validator.fail("pv.lab.device", f"expected one of {', '.join(LAB_DEVICES)}, got {settings.lab.device!r}")
    if settings.lab.suite not in LAB_SUITES:
        validator.fail("pv.lab.suite", f"expected one of {', '.join(LAB_SUITES)}, got {settings.lab.suite!r}")
    for hname, h in settings.hosts.items():
        if h.kind not in HOST_KINDS:
            validator.fail(f"pv.hosts.{_part(hname)}.kind", f"expected one of {', '.join(HOST_KINDS)}, got {h.kind!r}")
        if h.lab and h.kind != "lab":
            validator.fail(f"pv.hosts.{_part(hname)}.lab", f"lab: true is kind: lab, but kind is {h.kind!r}")
        if h.lab_suite and not h.lab:
            validator.fail(f"pv.hosts.{_part(hname)}.lab_suite", "only a lab host (kind: lab) has a suite")
        if h.lab_suite and h.lab_suite not in LAB_SUITES:
            validator.fail(
                f"pv.hosts.{_part(hname)}.lab_suite", f"expected one of {', '.join(LAB_SUITES)}, got {h.lab_suite!r}"
            )
        if h.dom0_kernel and not h.lab:
            validator.fail(f"pv.hosts.{_part(hname)}.dom0_kernel", "only a lab host (kind: lab) has a dom0 kernel")
        if h.dom0_kernel:
            _check_dom0_kernel(validator, f"pv.hosts.{_part(hname)}.dom0_kernel", h.dom0_kernel)
    if settings.lab.dom0_kernel:
        _check_dom0_kernel(validator, "pv.lab.dom0_kernel", settings.lab.dom0_kernel)
    if settings.jobs < 1:
        validator.fail("pv.jobs", f"expected an integer >= 1, got {settings.jobs}")
    for v in settings.fail_on:
        if v not in SEVERITY:
            validator.fail("pv.fail_on", f"unknown verdict {v!r}; expected some of {', '.join(SEVERITY)}")
    return settings


def dom0_kernel_line(release: str) -> str:
    """The Debian kernel line of a lab host's `dom0_kernel` release (6.12.117+deb12-amd64 -> 6.12);
    ConfigError when it is none of KERNEL_LINES' amd64 releases."""
    line = next((x for x in sorted(KERNEL_LINES, key=len, reverse=True) if release.startswith(x + ".")), None)
    if line is None or not release.endswith("-amd64"):
        raise ConfigError(
            f"dom0_kernel {release!r}: expected the release of a Debian kernel line ({', '.join(KERNEL_LINES)}), "
            "e.g. 6.12.117+deb12-amd64"
        )
    return line


def _check_dom0_kernel(validator: _Validator, keypath: str, release: str) -> None:
    try:
        dom0_kernel_line(release)
    except ConfigError as e:
        validator.fail(keypath, e.message)


def _plain(value: Any) -> Any:
    """Invoke's DataProxy objects to plain dicts/lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def project_settings() -> Settings:
    """Settings as `invoke` itself reads them outside a task (tests, bench scripts): the project's
    invoke.yaml plus INVOKE_PV_* variables."""
    from invoke import Config

    cfg = Config(project_location=str(PROJECT_ROOT))
    cfg.load_project()
    cfg.load_shell_env()
    return load_settings(cfg)
