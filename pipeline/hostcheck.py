"""`invoke hosts.check`: what each inventory host is, before a run relies on it. Reads only.
`format_config`: the matrix and the inventory as configured (`invoke config.show`).

Per host: how SSH reaches it (ssh_config applied, jump hosts), reachable, host key known (or
unknown / changed), Xen dom0, Xen and xl versions, kernel release, the PF with its driver and
VFs, the host lock, whether the test guest can be made there, and which rows of the matrix would
run on it (their module's vermagic release equals the host's running release; for a lab that is
down, the dom0 kernel it would boot, known without booting it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import deploy, providers, provision, sriov
from .buildheaders import resolve_headers
from .buildmodule import kernel_release_of
from .config import HostConfig, Settings
from .errors import ConfigError, PipelineError
from .host import Host, HostKeyError, resolve
from .hostlock import LOCK_DIR, HostLock, _describe


@dataclass
class RowCheck:
    kernel: str
    runs: bool
    why: str  # the module's release and how it is known


@dataclass
class HostCheck:
    name: str
    lab: bool  # the built-in lab (kept for --json readers; `provider` names the kind)
    provider: str = ""  # the kind of host: providers.KINDS
    ssh: str = ""  # user@host:port [via jumps]
    reachable: bool = False
    host_key: str = ""  # known | unknown | changed | "" (not reached)
    error: str = ""
    dom0: bool = False
    xen_version: str = ""
    xl_version: str = ""
    kernel_release: str = ""
    pf_bdf: str = ""
    pf_driver: str = ""
    sriov_totalvfs: int = 0
    sriov_numvfs: int = 0
    max_vfs: int = 0  # what the tests would use
    pf_refusal: str = ""
    guest: str = ""  # where the test guest comes from, or why it cannot be made
    lock: str = ""  # free | held by ... (| stale: ...)
    rows: list[RowCheck] = field(default_factory=list)
    # a host the pipeline starts itself (a built-in lab) that is down and that no row of the selected
    # matrix uses: nothing to check, and nothing stands in the way of the run
    idle: bool = False

    @property
    def ok(self) -> bool:
        return self.idle or (self.reachable and self.dom0 and not self.pf_refusal and not self.error)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def check_hosts(settings: Settings, host: str | None = None) -> list[HostCheck]:
    """`invoke hosts.check`: the inventory host `host`, or every host in name order."""
    if host and host not in settings.hosts:
        raise ConfigError(f"unknown host {host!r}; inventory has {', '.join(sorted(settings.hosts)) or 'none'}")
    return [check_host(settings, n) for n in ([host] if host else sorted(settings.hosts))]


def check_host(settings: Settings, name: str) -> HostCheck:
    provider = providers.of_host(settings, name)
    res = HostCheck(
        name=name,
        lab=provider.kind == providers.LabProvider.kind,
        provider=provider.kind,
        pf_bdf=provider.config.pf_bdf,
    )
    running = _probe(settings, provider, res)
    if running:
        res.rows = rows_for(settings, name, res.kernel_release)
    else:  # down: judged on what it would boot (a lab's dom0 kernel: from config or its last build), nothing booted
        res.rows = rows_for(settings, name, provider.kernel_release(), down=True)
    res.idle = not running and provider.restartable and not res.rows
    return res


def _probe(settings: Settings, provider: providers.HostProvider, res: HostCheck) -> bool:
    """Fill `res` from the host; False when it is not running (a provider's host that is down)."""
    cfg = provider.running_config()  # reads only: a host that is not up is not started
    if cfg is None:
        res.error = provider.not_running
        return False
    try:
        *jumps, target = resolve(cfg)
        via = f" via {', '.join(j.label() for j in jumps)}" if jumps else ""
        res.ssh = f"{target.user}@{target.hostname}:{target.port}{via}"
    except PipelineError as e:
        res.error = e.message
        return True
    host = Host(cfg, connect_timeout=10)
    try:
        host.connect()
    except HostKeyError as e:
        res.host_key = e.kind if not e.jump else f"{e.kind} (jump host)"
        res.error = e.message
        return True
    except PipelineError as e:
        res.error = e.message
        return True
    res.reachable, res.host_key = True, "known"
    with host:
        try:
            res.kernel_release = host.out(["uname", "-r"])
            why = deploy.not_dom0_reason(host)
            res.dom0 = why is None
            if why:
                res.error = str(why)  # a Refusal (str with its code): the record keeps the words
            else:
                info = host.out(["xl", "info"])
                res.xen_version = _field(info, "xen_version")
                res.xl_version = _xl_version(host)
            _pf(host, cfg, res, sriov)
            if settings.guest_kernel == "tiny":  # nothing of the host's own kernel is needed: not asked
                res.guest = "made by the run: tiny PV kernel (pipeline/guestkernel.py) + local busybox"
            elif provider.own_guest:
                res.guest = provider.own_guest
            else:
                release, pcifront, gwhy = provision.inspect(host)
                if gwhy:
                    res.guest = f"cannot be made: {gwhy}"
                else:
                    res.guest = f"made by the run: /boot/vmlinuz-{release} + xen-pcifront ({pcifront}) + local busybox"
            if not host.exists(LOCK_DIR):
                res.lock = "free"
            else:
                lock = HostLock(host, "")
                owner = lock._owner()
                stale = lock.stale_reason(owner)
                res.lock = f"held by {_describe(owner)}" + (f" (stale: {stale})" if stale else "")
        except PipelineError as e:
            res.error = res.error or e.message
    return True


def _pf(host, cfg: HostConfig, res: HostCheck, sriov) -> None:
    try:
        state = sriov.read_pf(host, cfg.pf_bdf)
    except PipelineError as e:
        res.pf_refusal = e.message
        return
    res.pf_driver = state.driver or "(none)"
    res.sriov_totalvfs, res.sriov_numvfs = state.totalvfs, state.numvfs
    res.max_vfs = sriov.usable_vfs(state, cfg.max_vfs)
    res.pf_refusal = sriov.refusal(state, host.name) or ""


def _field(xl_info: str, key: str) -> str:
    for line in xl_info.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip() == key:
            return v.strip()
    return ""


# the xl on PATH and, where dpkg knows it, the version of its package; a fixed script, no data in it
_XL_VERSION = (
    'p=$(command -v xl) || exit 1; echo "$p"; '
    'pkg=$(dpkg-query -S "$p" 2>/dev/null | cut -d: -f1) && dpkg-query -W -f="\\${Package} \\${Version}" "$pkg"'
)


def _xl_version(host) -> str:
    rc, out, _ = host.query(["sh", "-c", _XL_VERSION], timeout=30)
    lines = out.strip().splitlines()
    if not lines:
        return ""
    return f"{lines[0]} ({lines[1]})" if len(lines) > 1 else lines[0]


def rows_for(settings: Settings, host: str, release: str, down: bool = False) -> list[RowCheck]:
    """Rows of the selected matrix that name this host, and whether they would run there: on
    `release`, the release it runs, or with `down` (a host the pipeline boots that is not running)
    the release it would boot ("": unknown)."""
    out = []
    for k in settings.kernels:
        if host not in k.hosts:
            continue
        if k.build.mode == "headers":
            try:
                built_for = kernel_release_of(resolve_headers(settings, k))
            except PipelineError as e:
                out.append(RowCheck(kernel=k.name, runs=False, why=e.message))
                continue
            how = f"module built for {built_for} (headers)"
        else:
            built_for = _last_vermagic(settings, k.name)
            how = f"module last built for {built_for} (runs/latest)" if built_for else ""
            if not built_for:
                out.append(
                    RowCheck(kernel=k.name, runs=False, why="full-tree build: its release is known after the build")
                )
                continue
        runs = bool(release) and built_for == release
        if down:
            would = f"would boot {release}" if release else "the release it would boot is unknown"
            why = f"{how}; {host} is down; {would}"
        else:
            why = how + ("" if runs else f"; host runs {release or 'an unknown release'}")
        out.append(RowCheck(kernel=k.name, runs=runs, why=why))
    return out


def _last_vermagic(settings: Settings, kernel: str) -> str:
    path = Path(settings.path(settings.results_root)) / "latest" / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    for k in data.get("kernels", []):
        if k.get("name") == kernel:
            vm = (k.get("build") or {}).get("vermagic") or ""
            return vm.split()[0] if vm else ""
    return ""


def format_check(c: HostCheck) -> str:
    yes = {True: "yes", False: "no"}
    label = providers.KINDS[c.provider].label if c.provider in providers.KINDS else ""
    lines = [f"{c.name}{f' ({label})' if label else ''}: {'ok' if c.ok else 'NOT READY'}"]
    add = lines.append
    add(f"  ssh            {c.ssh or '-'}")
    add(f"  reachable      {yes[c.reachable]}{'' if c.reachable or not c.error else ': ' + c.error}")
    add(f"  host key       {c.host_key or '-'}")
    if c.reachable:
        add(f"  Xen dom0       {yes[c.dom0]}")
        add(f"  Xen / xl       {c.xen_version or '-'} / {c.xl_version or '-'}")
        add(f"  kernel         {c.kernel_release or '-'}")
        pf = f"{c.pf_bdf} driver {c.pf_driver or '-'}, sriov_totalvfs {c.sriov_totalvfs}, numvfs {c.sriov_numvfs}"
        add(f"  PF             {pf}")
        add(f"  VFs for tests  {c.max_vfs}" + (f" — refused: {c.pf_refusal}" if c.pf_refusal else ""))
        add(f"  test guest     {c.guest or '-'}")
        add(f"  lock           {c.lock or '-'}")
        if c.error:
            add(f"  error          {c.error}")
    for r in c.rows:
        add(f"  row {r.kernel:<20} {'runs here' if r.runs else 'not here'}: {r.why}")
    if not c.rows:
        add("  rows           none of the selected matrix names this host")
    if c.idle:
        add("  idle           down, and no row of the selected matrix uses it (a run that needs it boots it)")
    return "\n".join(lines)


def format_config(settings: Settings) -> str:
    lines = [f"matrix {settings.matrix!r} ({len(settings.kernels)} kernels), series {settings.series}"]
    for k in settings.kernels:
        b = k.build
        mode = f"headers ({b.headers})" if b.mode == "headers" else f"full ({b.base_config} + {', '.join(b.fragments)})"
        lines.append(f"  {k.name:<20} {k.remote} @ {k.ref}  build: {mode}  hosts: {', '.join(k.hosts) or '-'}")
    lines.append(f"hosts ({len(settings.hosts)}):")
    for h in settings.hosts.values():
        where = providers.provider_for(settings, h).describe()
        vfs = f"up to {h.max_vfs} VFs" if h.max_vfs else "VFs up to sriov_totalvfs"
        lines.append(f"  {h.name:<20} {where}  PF {h.pf_bdf}, {vfs}")
    lines.append(f"other matrices: {', '.join(m for m in settings.matrices if m != settings.matrix) or '-'}")
    return "\n".join(lines)
