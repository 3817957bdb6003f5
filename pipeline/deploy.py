"""Deploy stage: preflight a Xen host, swap xen-pciback for the built module, restore the original.

While the host runs a module of ours a marker file (MARKER) records what was
loaded before, so a later run can put the host back even after a crash. The
installed module under /lib/modules is never touched: the new module is loaded
with insmod from a staging directory, the stock one comes back with modprobe.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from pathlib import Path

from . import absorbed, sriov
from .dom0 import assignable_devices, destroy_test_domains, live_domids, pci_backend_domids
from .errors import HostError, without_host
from .host import Host
from .interrupt import deferred_sigint
from .results import BuildResult, DeployResult, Refusal, now_iso, timed
from .statuses import BuildStatus, DeployStatus, FaultKind
from .util import STATE_DIR, Progress
from .util import noprogress as _noprogress

MARKER_DIR = STATE_DIR
MARKER = f"{MARKER_DIR}/modified.json"
# root's alone (0700 under /run, never world-writable /var/tmp); one fresh `mktemp -d` entry per deploy
STAGING = f"{MARKER_DIR}/stage"
SYS_MODULE = "/sys/module/xen_pciback"


def changed_bytes(built: bytes, staged: bytes) -> str:
    """What differs between the built module and the copy on the host, for the record: how many
    bytes, where, in how many 4 KiB pages (a whole page points at DMA or a page reused under us)."""
    if len(built) != len(staged):
        return f"size {len(staged)} on the host, {len(built)} built"
    diff = [i for i, (a, b) in enumerate(zip(built, staged, strict=True)) if a != b]
    if not diff:
        return "no byte differs (the checksum itself was wrong)"
    pages = sorted({i // 4096 for i in diff})
    return (
        f"{len(diff)} byte(s) differ, offsets {diff[0]:#x}..{diff[-1]:#x}, in {len(pages)} page(s) "
        f"({', '.join(f'{p:#x}' for p in pages[:8])}{', ...' if len(pages) > 8 else ''})"
    )


def _upload_again(host: Host, module_path: str, staged: str, digest: str, progress: Progress) -> None:
    """The staged copy changed between the upload and the load: nobody else can write the staging
    directory, so the host changed it (measured once in the lab, after VFs were released). On record
    with what changed, uploaded again and loaded only if the new copy holds."""
    built = Path(module_path).read_bytes()
    with tempfile.TemporaryDirectory(prefix="pv-staged-") as d:
        try:
            host.get(staged, Path(d) / "staged.ko")
            evidence = changed_bytes(built, (Path(d) / "staged.ko").read_bytes())
        except HostError as e:
            evidence = f"not read back: {e.message}"
    progress(f"{host.name}: staged module changed since the upload ({evidence}); uploading it again")
    absorbed.record(FaultKind.STAGED_CHANGED, host.name, f"load of {staged}", evidence)
    host.put(module_path, staged)
    if remote_sha256(host, staged) != digest:
        raise HostError(f"staged module {staged}: sha256 changed since the upload ({evidence}) and again; not loaded")


def vermagic_release(vermagic: str) -> str:
    """The kernel release of a module's vermagic string ('6.1.0-50-amd64 SMP preempt ...' -> '6.1.0-50-amd64')."""
    parts = vermagic.split()
    return parts[0] if parts else ""


# ------------------------------------------------------------------ host state


def is_loaded(host: Host) -> bool:
    """xen_pciback is loaded as a module (initstate exists only for modules)."""
    return host.exists(f"{SYS_MODULE}/initstate")


def loaded_srcversion(host: Host) -> str | None:
    """srcversion of the loaded xen_pciback: None when not loaded, "" when it has none (stock Debian)."""
    if not is_loaded(host):
        return None
    text = host.read_text(f"{SYS_MODULE}/srcversion")
    return text.strip() if text is not None else ""


def loaded_taint(host: Host) -> str:
    return (host.read_text(f"{SYS_MODULE}/taint") or "").strip()


def stock_srcversion(host: Host) -> str:
    """srcversion of the module modprobe would load from /lib/modules ("" when it has none)."""
    return host.out(["modinfo", "-F", "srcversion", "xen-pciback"])


def loaded_state(host: Host) -> tuple[str, str]:
    """("stock" | "none" | <srcversion> | "out-of-tree", srcversion) of what is loaded now.

    Debian builds without CONFIG_MODULE_SRCVERSION_ALL, so the stock module has no srcversion:
    stock is "srcversion equal to the stock file's and not tainted out-of-tree (O)".
    """
    cur = loaded_srcversion(host)
    if cur is None:
        return "none", ""
    if "O" not in loaded_taint(host) and cur == stock_srcversion(host):
        return "stock", cur
    return (cur or "out-of-tree"), cur


def is_stock_loaded(host: Host) -> bool:
    return loaded_state(host)[0] == "stock"


def staged_entries(host: Host) -> list[str]:
    """What is left under the staging directory (module versions uploaded by deploys)."""
    try:
        return sorted(host.sftp().listdir(STAGING))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise HostError(f"cannot list {STAGING}: {e}", host=host.name) from None


def _stage_key(entry: str) -> str:
    """The srcversion a staging entry (`<srcversion>.XXXXXXXX`) holds."""
    return entry.split(".", 1)[0]


def staged_module(host: Host, srcversion: str) -> str | None:
    """Path of the staged module of this srcversion (kept as the original by an earlier --keep), if any."""
    for entry in staged_entries(host):
        if _stage_key(entry) == srcversion:
            return f"{STAGING}/{entry}/xen-pciback.ko"
    return None


def _owned_by_root(host: Host, path: str) -> bool:
    """False when `path` is absent; raises when it exists but another user could have put anything there."""
    rc, out, _ = host.run(["stat", "-c", "%u %g %a %F", "--", path], check=False, timeout=30)
    if rc != 0:
        return False
    uid, gid, mode, kind = out.strip().split(" ", 3)
    if kind != "directory" or uid != "0" or int(mode, 8) & 0o022:
        raise HostError(
            f"refused: {path} exists as a {kind} owned by uid {uid} (gid {gid}), mode {mode}; "
            "only a root-owned directory no one else can write is used for staging: "
            "remove it after checking who made it",
            host=host.name,
        )
    return True


def make_stage_dir(host: Host, srcversion: str) -> str:
    """A fresh 0700 directory of root's for one deploy; a pre-existing path of another user is refused."""
    for d in (MARKER_DIR, STAGING):
        if not _owned_by_root(host, d):
            host.run(["mkdir", "-m", "0700", "--", d], timeout=30)
            _owned_by_root(host, d)  # the path a racing user created in between is refused too
    if not re.fullmatch(r"[0-9A-F]+", srcversion):
        raise HostError(f"srcversion {srcversion!r} is not a modinfo srcversion")
    return host.out(["mktemp", "-d", "-p", STAGING, f"{srcversion}.XXXXXXXX"], timeout=30)


def remote_sha256(host: Host, path: str) -> str:
    out = host.out(["sha256sum", "--", path], timeout=60)
    return out.split()[0] if out else ""


def clean_staging(host: Host, keep: str = "") -> None:
    """Remove uploaded modules (all but `keep`, a staged srcversion still loaded as the original).

    A staging path another user made was refused before anything went into it: it is theirs, and
    stays as found (the refusal names it)."""
    try:
        if not _owned_by_root(host, STAGING):
            return
    except HostError:
        return
    for entry in staged_entries(host):
        if _stage_key(entry) != keep:
            host.run(["rm", "-rf", "--", f"{STAGING}/{entry}"], timeout=60)
    host.run(["rmdir", "--ignore-fail-on-non-empty", STAGING], check=False, timeout=30)


def pf_numvfs(host: Host) -> int | None:
    text = host.read_text(f"/sys/bus/pci/devices/{host.config.pf_bdf}/sriov_numvfs")
    return int(text.strip() or 0) if text is not None else None


def pf_autoprobe(host: Host) -> str | None:
    text = host.read_text(f"/sys/bus/pci/devices/{host.config.pf_bdf}/sriov_drivers_autoprobe")
    return text.strip() if text is not None else None


def recover(host: Host, progress: Progress = _noprogress) -> str | None:
    """Put a host back that an earlier run left modified (its marker file exists); None when clean.

    Destroys the pipeline's test guests, removes their backend entries, sets sriov_numvfs back to
    what the earlier deploy found, reloads the original xen-pciback, makes the devices that were
    assignable assignable again, empties the staging directory and removes the marker. Call it
    with the host lock held, before anything else touches the host. Ctrl-C waits for it.
    """
    with deferred_sigint(progress):
        return _recover(host, progress)


def _recover(host: Host, progress: Progress) -> str | None:
    marker = read_marker(host)
    if marker is None:
        if host.exists(MARKER):  # unreadable marker: we cannot know the original; stock is the safe bet
            marker = {"original": "stock"}
        else:
            return None
    original = str(marker.get("original") or "stock")
    progress(
        f"{host.name}: an earlier run left the host modified (deployed {marker.get('deployed', '?')} "
        f"since {marker.get('since', '?')}); restoring it first"
    )
    destroy_test_domains(host, progress)
    # the VF pool turns autoprobe off while its VFs exist; restored first, so VFs made again bind as before
    probe = marker.get("autoprobe")
    if probe in ("0", "1") and pf_autoprobe(host) not in (None, probe):
        host.write_sysfs(f"/sys/bus/pci/devices/{host.config.pf_bdf}/sriov_drivers_autoprobe", probe)
        progress(f"{host.name}: sriov_drivers_autoprobe of {host.config.pf_bdf} back to {probe}")
    want = marker.get("numvfs")
    now = pf_numvfs(host)
    if isinstance(want, int) and now is not None and now != want:
        if loaded_srcversion(host) is not None:
            _release(host)
        pf = f"/sys/bus/pci/devices/{host.config.pf_bdf}"
        host.write_sysfs(f"{pf}/sriov_numvfs", "0")
        if want:
            host.write_sysfs(f"{pf}/sriov_numvfs", str(want))
        progress(f"{host.name}: sriov_numvfs of {host.config.pf_bdf} back from {now} to {want}")
    held = [b for b in marker.get("assignable") or [] if isinstance(b, str)]
    _restore_module(host, original, progress, held)
    clean_staging(host, keep=original)
    what = f"xen_pciback {original}, sriov_numvfs {want if isinstance(want, int) else 'unchanged'}"
    progress(f"{host.name}: recovered: {what}")
    return what


def read_marker(host: Host) -> dict | None:
    text = host.read_text(MARKER)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


# ------------------------------------------------------------------ preflight


# preflight refusals, each with its own exit code (docs/bad-input.md); 7: any other host problem
NOT_DOM0, KERNEL_MISMATCH, NO_SRIOV, TOO_FEW_VFS, PCIBACK_BUSY = 72, 73, 74, 75, 76


def not_dom0_reason(host: Host) -> Refusal | None:
    """Why the host is not a usable Xen dom0, or None. Reads only: safe before the host lock."""
    caps = host.read_text("/proc/xen/capabilities")
    if caps is None or "control_d" not in caps:
        return Refusal(f"{host.name} is not a Xen dom0 (/proc/xen/capabilities has no control_d)", NOT_DOM0)
    rc, _, err = host.query(["xl", "info"], timeout=60)
    if rc != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
        return Refusal(f"`xl info` failed on {host.name}: {last}", NOT_DOM0)
    return None


def pf_refusal(host: Host, max_vfs_needed: int) -> Refusal | None:
    """Why the host's PF cannot serve the tests (missing, no SR-IOV, no driver, VFs in use or bound
    elsewhere, fewer VFs than the inventory promises), or None. Reads only."""
    cfg = host.config
    try:
        state = sriov.read_pf(host, cfg.pf_bdf, wait_driver_s=sriov.DRIVER_WAIT_S)
    except HostError as e:
        return Refusal(e.message, NO_SRIOV)
    why = sriov.refusal(state, host.name)
    if why:
        return Refusal(why, NO_SRIOV if state.driver is None else PCIBACK_BUSY)
    if sriov.usable_vfs(state, 0) < max_vfs_needed:
        have = f"has {state.numvfs} VFs already (never recreated)" if state.numvfs else f"offers {state.totalvfs} VFs"
        return Refusal(f"PF {cfg.pf_bdf} on {host.name} {have}, tests need {max_vfs_needed}", TOO_FEW_VFS)
    return None


def preflight(host: Host, build: BuildResult, max_vfs_needed: int) -> Refusal | None:
    """None when the host can take this module and run the tests, else the refusal (reason and exit code).

    Never changes anything on the host.
    """
    name = host.name
    if build.status is not BuildStatus.OK or not build.module:
        return Refusal(f"no module to deploy (build {build.status})", HostError.exit_code)
    if not Path(build.module).is_file():
        return Refusal(f"module file {build.module} missing", HostError.exit_code)
    try:
        why = not_dom0_reason(host)
        if why:
            return why
        running = host.out(["uname", "-r"])
        want = vermagic_release(build.vermagic) or build.kernel_release
        if not want:
            return Refusal("module vermagic unknown; cannot match it to the host's kernel", KERNEL_MISMATCH)
        if running != want:
            return Refusal(f"{name} runs kernel {running}, module built for {want}: not loaded", KERNEL_MISMATCH)
        if host.config.kernel_release and host.config.kernel_release != running:
            return Refusal(
                f"{name} runs kernel {running}, inventory expects {host.config.kernel_release}", KERNEL_MISMATCH
            )
        why = pf_refusal(host, max_vfs_needed)
        if why:
            return why
        live = live_domids(host)
        busy = [d for d in pci_backend_domids(host) if d in live and d != 0]
        if busy:
            return Refusal(
                f"domain(s) {', '.join(map(str, busy))} on {name} use pciback; refusing to swap the module",
                PCIBACK_BUSY,
            )
    except HostError as e:
        return Refusal(e.message, e.exit_code)
    return None


# ------------------------------------------------------------------ deploy / restore


def _load_original(host: Host, original: str, progress: Progress) -> None:
    """Load what `original` names ("stock", "none" or an srcversion staged by an earlier deploy)."""
    if loaded_srcversion(host) is not None:
        host.run(["rmmod", "xen_pciback"], timeout=120)
    if original == "none":
        return
    if original not in ("stock", "out-of-tree"):
        ko = staged_module(host, original)
        if ko and host.exists(ko):
            host.run(["insmod", ko], timeout=120)
            return
        progress(f"{host.name}: original module {original} not available, loading the stock one")
    host.run(["modprobe", "xen-pciback"], timeout=120)


def _readd(host: Host, bdfs: list[str]) -> list[str]:
    failed = []
    for bdf in bdfs:
        rc, _, _ = host.run(["xl", "pci-assignable-add", bdf], check=False, timeout=120)
        if rc != 0:
            failed.append(bdf)
    return failed


def _release(host: Host) -> list[str]:
    held = assignable_devices(host)
    for bdf in held:
        host.run(["xl", "pci-assignable-remove", bdf], timeout=120)
    return held


def deploy(host: Host, module_path: Path, srcversion: str, progress: Progress = _noprogress) -> DeployResult:
    """Load `module_path` as xen_pciback on the host; on any failure put back what was loaded before."""
    t0 = time.monotonic()
    res = DeployResult(host=host.name)
    held: list[str] = []
    touched = False
    if not srcversion:
        res.status = DeployStatus.FAILED
        res.detail = (
            "module has no srcversion: build it with CONFIG_MODULE_SRCVERSION_ALL=y, else the load cannot be verified"
        )
        return res
    try:
        with timed(res.steps, "recover"):
            recover(host, progress)  # an earlier run left the host modified: put it back first
    except HostError as e:
        res.status = DeployStatus.FAILED
        res.detail = f"could not undo what an earlier run left on the host: {e.message}"
        return res
    try:
        with timed(res.steps, "check"):
            res.original, _ = loaded_state(host)
        progress(f"{host.name}: loaded now: {res.original}; uploading module {srcversion}")
        digest = hashlib.sha256(Path(module_path).read_bytes()).hexdigest()
        with timed(res.steps, "upload"):
            stage_dir = make_stage_dir(host, srcversion)
            staged = f"{stage_dir}/xen-pciback.ko"
            host.put(module_path, staged)
            if remote_sha256(host, staged) != digest:
                raise HostError(f"uploaded module {staged}: sha256 differs from the built one")
            staged_src = host.out(["modinfo", "-F", "srcversion", staged])
        if staged_src != srcversion:
            raise HostError(f"uploaded module has srcversion {staged_src}, expected {srcversion}")
        with timed(res.steps, "unload"):
            host.mkdir_p(MARKER_DIR)
            host.write_text(
                MARKER,
                json.dumps(
                    {
                        "original": res.original,
                        "deployed": srcversion,
                        "module": staged,
                        "since": now_iso(),
                        "numvfs": pf_numvfs(host),
                        "autoprobe": pf_autoprobe(host),
                        "assignable": assignable_devices(host),
                    }
                )
                + "\n",
            )
            touched = True
            held = _release(host)
            if held:
                progress(f"{host.name}: released {', '.join(held)} from pciback")
            if loaded_srcversion(host) is not None:
                host.run(["rmmod", "xen_pciback"], timeout=120)
        progress(f"{host.name}: insmod {staged}")
        with timed(res.steps, "load"):
            if remote_sha256(host, staged) != digest:  # right before the load: nothing swapped it meanwhile
                _upload_again(host, module_path, staged, digest, progress)
            host.run(["insmod", staged], timeout=120)
        with timed(res.steps, "check"):
            now = loaded_srcversion(host)
            res.srcversion = now or ""
            if now != srcversion:
                raise HostError(f"/sys/module/xen_pciback/srcversion is {now or 'absent'}, built {srcversion}")
            failed = _readd(host, held)
            if failed:
                raise HostError(f"could not make {', '.join(failed)} assignable again")
        res.status = DeployStatus.OK
        res.detail = f"xen_pciback {srcversion} loaded (was {res.original})"
        progress(f"{host.name}: {res.detail}")
    except KeyboardInterrupt:
        progress(f"{host.name}: deploy interrupted; restoring {res.original or 'original'}")
        _undo_deploy(host, res.original, touched, held, progress)
        raise
    except HostError as e:
        res.status = DeployStatus.FAILED
        res.detail = e.message
        why = without_host(e, host.name)
        progress(f"{host.name}: deploy failed: {why}; restoring {res.original or 'original'}")
        res.restored = not touched  # before the marker was written only the upload changed the host
        try:
            _undo_deploy(host, res.original, touched, held, progress)
            res.restored = True
        except HostError as e2:
            res.detail += f"; {'restore failed too' if touched else 'staging cleanup failed'}: {e2.message}"
    res.duration_s = round(time.monotonic() - t0, 2)
    return res


def _undo_deploy(host: Host, original: str, touched: bool, held: list[str], progress: Progress) -> None:
    """Put back what a deploy cut short had changed: the original module once it got that far
    (`touched`: the marker was written), and the upload. Ctrl-C waits for it."""
    with deferred_sigint(progress):
        if touched:
            _restore_module(host, original or "stock", progress, held)
        clean_staging(host, keep=original or "")


def _restore_module(host: Host, original: str, progress: Progress, held: list[str] | None = None) -> None:
    now_held = _release(host) if loaded_srcversion(host) is not None else []
    _load_original(host, original, progress)
    readd = list(dict.fromkeys((held or []) + now_held))
    if original != "none":
        failed = _readd(host, readd)
        if failed:
            progress(f"{host.name}: could not make {', '.join(failed)} assignable again")
    # verify
    cur = loaded_srcversion(host)
    if original == "none":
        if cur is not None:
            raise HostError(f"xen_pciback still loaded ({cur}) after restore")
    elif original == "stock":
        if not is_stock_loaded(host):
            raise HostError(
                f"after restore xen_pciback is not the stock module (srcversion {cur!r}, taint {loaded_taint(host)!r})"
            )
    elif cur != original:
        progress(f"{host.name}: original {original} could not be reloaded; {cur} is loaded")
    host.run(["rm", "-f", MARKER], check=False)


def restore(host: Host, deploy: DeployResult, progress: Progress = _noprogress) -> None:
    """Put the module that was loaded before `deploy` back; idempotent. Ctrl-C waits for it."""
    with deferred_sigint(progress):
        _restore(host, deploy, progress)


def _restore(host: Host, deploy: DeployResult, progress: Progress) -> None:
    if deploy.status not in (DeployStatus.OK, DeployStatus.FAILED) or deploy.restored:
        return
    with timed(deploy.steps, "restore"):
        original = deploy.original or "stock"
        progress(f"{host.name}: restoring xen_pciback ({original})")
        _restore_module(host, original, progress)
        clean_staging(host, keep=original)
        deploy.restored = True
        cur = loaded_srcversion(host)
    # Debian's own module carries no srcversion file: "stock" is told by its taint instead
    now = cur or ("loaded, no srcversion" if is_loaded(host) else "not loaded")
    progress(f"{host.name}: xen_pciback back to {original} ({now})")
