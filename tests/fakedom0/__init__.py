"""A scripted Xen dom0 behind the real local sshd (tests/local_sshd.py), for fast tests of the
host choreography: a plain SSH host that looks like a dom0 with an SR-IOV PF.

Its root is a directory (`FakeDom0.root`) holding what the pipeline reads and writes on a dom0 —
/proc/xen/capabilities, /sys (the PF 0000:01:00.0 with 3 VFs to make, xen_pciback under
/sys/module, DMI names), /boot/vmlinuz-<release>, /var/log/xen/console, /run — and
/fakedom0: the fake commands (fake.py, linked from /fakebin first on PATH), their state and the
log. Every SSH session (a command or SFTP) runs chrooted into it, in a mount namespace that binds
this machine's /usr, /etc and /dev read-only (namespace.sh, entered by the sshd's ForceCommand):
files, links and SFTP are real, only the Xen toolstack, module loading and sysfs writes are
scripted (fake.py). The guest's marker and backend follow the loaded module: a module file made
by `module(..., publishes="all")` (the series) shows every VF to the guest, "first" (the bug,
the control and Debian's stock module here) only the first one of a creation.

`log()` is every command the host ran (`$ ...`) and every change the fakes made (`! ...`), in
order; `fail(...)` and `interrupt(...)` script a failure or a Ctrl-C at a command.
"""

from __future__ import annotations

import marshal
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from local_sshd import SshServer, serve

from pipeline.config import HostConfig

HERE = Path(__file__).resolve().parent
RELEASE = "6.1.0-99-amd64"
PF = "0000:01:00.0"
VFS = [f"0000:01:00.{i}" for i in (1, 2, 3)]
COMMANDS = (
    "xl",
    "xenstore-ls",
    "xenstore-list",
    "xenstore-rm",
    "insmod",
    "modprobe",
    "rmmod",
    "modinfo",
    "uname",
    "tee",
)
KO_MAGIC = b"pvfake-ko\0"


@dataclass
class FakeDom0:
    root: Path
    server: SshServer

    @property
    def host_config(self) -> HostConfig:
        return self.server.host_config

    def log(self) -> list[str]:
        return (self.root / "fakedom0" / "log").read_text().splitlines()

    def events(self) -> list[str]:
        """What the fakes changed (`! ` lines), in order."""
        return [line[2:] for line in self.log() if line.startswith("! ")]

    def state(self) -> dict:
        return marshal.loads((self.root / "fakedom0" / "state").read_bytes())

    def _rule(self, start: str, end: str, skip: int, times: int, **rule) -> None:
        st = self.state()
        st["rules"].append({"start": start, "end": end, "skip": skip, "times": times, "seen": 0, **rule})
        (self.root / "fakedom0" / "state").write_bytes(marshal.dumps(st))

    def fail(self, start: str, end: str = "", skip: int = 0, times: int = 1, stderr: str = "") -> None:
        """The commands whose line (`name args...`, a sysfs write `tee PATH = VALUE`) starts with
        `start` and ends with `end` fail, after `skip` of them that do not."""
        self._rule(start, end, skip, times, action="fail", stderr=stderr)

    def reboot(self, start: str, end: str = "", skip: int = 0) -> None:
        """The host reboots under the matching command (which fails): domains, VFs, our module and
        /run gone, the stock module loaded, a new boot id."""
        self._rule(start, end, skip, 1, action="reboot")

    def scribble(self, start: str, end: str = "", skip: int = 0, times: int = 1) -> None:
        """A byte of every staged module flips under the matching command (which then runs), as the
        lab's tmpfs copy once changed between upload and load."""
        self._rule(start, end, skip, times, action="scribble")

    def interrupt(self, start: str, end: str = "", skip: int = 0) -> None:
        """Ctrl-C (SIGINT to this process) while the matching command runs; the command then runs."""
        self._rule(start, end, skip, 1, action="sigint", pid=os.getpid())


def module(path: Path, label: str, srcversion: str, publishes: str, release: str = RELEASE) -> Path:
    """A stand-in for a built xen-pciback.ko that the fake modinfo and insmod read."""
    fields = {
        "name": "xen_pciback",
        "srcversion": srcversion,
        "vermagic": f"{release} SMP preempt mod_unload modversions ",
        "pvfake.label": label,
        "pvfake.publishes": publishes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(KO_MAGIC + b"\0".join(f"{k}={v}".encode() for k, v in fields.items()) + b"\0")
    return path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_root(root: Path) -> None:
    """The dom0's files: Xen dom0 capabilities, the PF (nvme, 3 VFs possible, none made), stock
    xen_pciback loaded, the release's kernel in /boot; the fake commands and their state."""
    _write(root / "proc/xen/capabilities", "control_d\n")
    _write(root / "proc/sys/kernel/random/boot_id", "00000000-0000-4000-8000-000000000001\n")
    for d in ("nvme", "pciback"):
        (root / "sys/bus/pci/drivers" / d).mkdir(parents=True)
    pf = root / "sys/bus/pci/devices" / PF
    _write(pf / "sriov_totalvfs", f"{len(VFS)}\n")
    _write(pf / "sriov_numvfs", "0\n")
    _write(pf / "sriov_drivers_autoprobe", "1\n")
    (pf / "driver").symlink_to("../../drivers/nvme")
    _write(root / "sys/module/xen_pciback/initstate", "live\n")
    _write(root / "sys/module/xen_pciback/taint", "\n")
    for f, v in (("sys_vendor", "pciback-verify"), ("product_name", "scripted dom0"), ("product_version", "1")):
        _write(root / "sys/class/dmi/id" / f, f"{v}\n")
    _write(root / f"boot/vmlinuz-{RELEASE}", "not a kernel: the scripted dom0 boots no guest\n")
    _write(root / f"boot/config-{RELEASE}", "CONFIG_XEN_PV=y\n")
    for d in ("var/log/xen/console", "run", "root", "tmp", "fakebin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    fake = root / "fakedom0"
    fake.mkdir()
    python = Path(os.path.realpath(sys.executable))
    (fake / "fake.py").write_text(f"#!{python} -IS\n" + (HERE / "fake.py").read_text())
    (fake / "fake.py").chmod(0o755)
    (fake / "enter.sh").write_text((HERE / "enter.sh").read_text())
    for c in COMMANDS:
        (root / "fakebin" / c).symlink_to("/fakedom0/fake.py")
    # what each session binds in, read-only: this machine's system and the Python of fake.py
    mounts = ["/usr", "/etc", "/dev"]
    prefix = Path(sys.base_prefix).resolve()
    if not str(prefix).startswith("/usr"):
        mounts.append(str(prefix))
    for m in mounts:
        (root / m.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):  # merged /usr: the same links; else bound too
        real = Path("/") / link
        if real.is_symlink():
            (root / link).symlink_to(os.readlink(real))
        elif real.is_dir():
            (root / link).mkdir()
            mounts.append(str(real))
    (fake / "mounts").write_text("".join(f"{m} /{m.lstrip('/')}\n" for m in mounts))
    state = {
        "release": RELEASE,
        "pf": PF,
        "vfs": VFS,
        "module": {"label": "stock", "publishes": "first"},
        "stock_publishes": "first",  # Debian's module as shipped: without the fix
        "domains": {},
        "next_domid": 1,
        "xenstore": {},
        "rules": [],
    }
    (fake / "state").write_bytes(marshal.dumps(state))
    (fake / "log").write_text("")


@contextmanager
def fake_dom0(d: Path, name: str = "fakedom0") -> Iterator[FakeDom0]:
    """The scripted dom0 under `d`, reached as root over a real sshd on 127.0.0.1 (strict host key)."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("the scripted dom0 lives in a mount namespace of its own: needs root")
    root = d / "root"
    root.mkdir(parents=True)
    build_root(root)
    ns = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", str(HERE / "namespace.sh"), str(root)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{ns.pid}/root/fakedom0").is_dir():  # mounted and chrooted
            assert ns.poll() is None and time.monotonic() < deadline, "the scripted dom0's namespace did not start"
            time.sleep(0.02)
        force = f"ForceCommand exec nsenter --target {ns.pid} --mount --root /bin/sh /fakedom0/enter.sh"
        # bash runs ~/.bashrc for a command sshd starts unless SHLVL says it is nested; this
        # machine's root .bashrc (pyenv init) takes a third of a second, every command
        nested = "SetEnv SHLVL=1"
        (d / "sshd").mkdir()
        with serve(d / "sshd", name, extra=(force, nested)) as server:
            assert server.host_config.user == pwd.getpwuid(0).pw_name
            yield FakeDom0(root=root, server=server)
    finally:
        os.killpg(ns.pid, signal.SIGTERM)
        ns.wait(timeout=10)
