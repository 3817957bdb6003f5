"""The commands of the scripted dom0 (tests/fakedom0), run inside its root, one program for all:
xl, xenstore-ls/-list/-rm, modprobe/rmmod/insmod/modinfo, uname -r and tee for /sys (what the
kernel does on a write there). Named by argv[0] (the /fakebin links). Builtin modules only (no
re, json, pathlib): every command the host runs starts a Python, and the test waits for each.

State is the fake root itself (the /sys tree: the loaded module, the PF, its VFs and their
drivers) and /fakedom0/state (marshal: domains, xenstore, rules). Every change is logged to
/fakedom0/log as a `! ` line, after the `$ ` line enter.sh wrote for the session's command.
A rule of the state makes the commands whose line (`name args...`; a sysfs write: `tee PATH =
VALUE`) starts and ends with its strings fail, or sends SIGINT to the test (a Ctrl-C while
that command runs on the host); its first `skip` matches excepted, `times` times.
"""

import fcntl
import glob
import marshal
import os
import subprocess
import sys
import uuid

STATE = "/fakedom0/state"
LOG = "/fakedom0/log"
SYS_MODULE = "/sys/module/xen_pciback"
DEVICES = "/sys/bus/pci/devices"
BE = "/local/domain/0/backend/pci"
CONSOLE = "/var/log/xen/console"
KO_MAGIC = b"pvfake-ko\0"  # the test's stand-ins for built modules: this, then key=value\0 fields
SIGINT = 2
BOOT_ID = "/proc/sys/kernel/random/boot_id"


class Fail(Exception):
    def __init__(self, message, rc=1):
        super().__init__(message)
        self.rc = rc


def event(what):
    with open(LOG, "a") as fh:
        fh.write(f"! {what}\n")


def read(path):
    with open(path) as fh:
        return fh.read()


def write(path, text, mode="w"):
    with open(path, mode) as fh:
        fh.write(text)


# ------------------------------------------------------------------ sysfs


def dev(bdf):
    return f"{DEVICES}/{bdf}"


def driver_of(bdf):
    link = f"{dev(bdf)}/driver"
    return os.readlink(link).rsplit("/", 1)[-1] if os.path.islink(link) else None


def bind(bdf, driver):
    link = f"{dev(bdf)}/driver"
    if os.path.islink(link):
        os.unlink(link)
    if driver:
        os.symlink(f"../../drivers/{driver}", link)


def vf_bdfs(st):
    pf = dev(st["pf"])
    n = int(read(f"{pf}/sriov_numvfs").strip() or 0)
    return [os.readlink(f"{pf}/virtfn{i}").rsplit("/", 1)[-1] for i in range(n)]


def loaded():
    return os.path.exists(f"{SYS_MODULE}/initstate")


def remove_dir(path):
    """A sysfs directory of ours: files and links only."""
    for name in os.listdir(path):
        os.unlink(f"{path}/{name}")
    os.rmdir(path)


def write_sysfs(st, path, value):
    """What the kernel does on a write to these files; others are written as they are."""
    pf = dev(st["pf"])
    if path == f"{pf}/sriov_numvfs":
        want, now = int(value), int(read(path))
        if want and now:
            raise Fail(f"tee: {path}: Device or resource busy")  # the kernel wants 0 first
        if want > int(read(f"{pf}/sriov_totalvfs")):
            raise Fail(f"tee: {path}: Numerical result out of range")
        for i, bdf in enumerate(vf_bdfs(st)):
            os.unlink(f"{pf}/virtfn{i}")
            remove_dir(dev(bdf))
        probe = read(f"{pf}/sriov_drivers_autoprobe").strip() == "1"
        for i, bdf in enumerate(st["vfs"][:want]):
            os.mkdir(dev(bdf))
            write(f"{dev(bdf)}/driver_override", "(null)\n")
            os.symlink(f"../{st['pf']}", f"{dev(bdf)}/physfn")
            os.symlink(f"../{bdf}", f"{pf}/virtfn{i}")
            if probe:  # the PF's driver takes its VFs
                bind(bdf, driver_of(st["pf"]))
        write(path, f"{want}\n")
        event(f"vfs {want}")
    elif path == f"{pf}/sriov_drivers_autoprobe":
        write(path, f"{value}\n")
        event(f"autoprobe {value}")
    elif path.endswith("/driver_override"):
        if not os.path.isdir(os.path.dirname(path)):
            raise Fail(f"tee: {path}: No such file or directory")
        write(path, f"{value or '(null)'}\n")
    else:
        write(path, f"{value}\n")


def tee(st, args, value):
    for p in args:
        write_sysfs(st, p, value.strip())
    return value


# ------------------------------------------------------------------ modules


def ko_fields(path):
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise Fail(f"modinfo: ERROR: Module {path} not found. ({e.strerror})") from None
    if not data.startswith(KO_MAGIC):
        raise Fail(f"modinfo: ERROR: could not get modinfo from '{path}': Invalid argument")
    return dict(f.split("=", 1) for f in data[len(KO_MAGIC) :].decode().split("\0") if "=" in f)


def load(st, label, srcversion, publishes, taint):
    os.makedirs(SYS_MODULE)
    write(f"{SYS_MODULE}/initstate", "live\n")
    write(f"{SYS_MODULE}/taint", f"{taint}\n")
    if srcversion:  # Debian's own module has none
        write(f"{SYS_MODULE}/srcversion", f"{srcversion}\n")
    st["module"] = {"label": label, "publishes": publishes}
    event(f"load {label}" + (f" {srcversion}" if srcversion else ""))


def insmod(st, args):
    (path,) = args
    if not os.path.isfile(path):
        raise Fail(f"insmod: ERROR: could not load module {path}: No such file or directory")
    f = ko_fields(path)
    if f.get("vermagic", "").split(" ")[0] != st["release"]:
        raise Fail(f"insmod: ERROR: could not insert module {path}: Invalid module format")
    if loaded():
        raise Fail(f"insmod: ERROR: could not insert module {path}: File exists")
    load(st, f.get("pvfake.label", "?"), f["srcversion"], f.get("pvfake.publishes", "all"), "O")
    return ""


def modprobe(st, args):
    if args != ["xen-pciback"]:
        raise Fail(f"modprobe: FATAL: not scripted: {' '.join(args)}")
    if not loaded():
        load(st, "stock", "", st["stock_publishes"], "")
    return ""


def rmmod(st, args):
    if args not in (["xen_pciback"], ["xen-pciback"]):
        raise Fail(f"rmmod: ERROR: not scripted: {' '.join(args)}")
    if not loaded():
        raise Fail("rmmod: ERROR: Module xen_pciback is not currently loaded")
    if any(d["pci"] for d in st["domains"].values()):
        raise Fail("rmmod: ERROR: Module xen_pciback is in use")
    for bdf in assignable(st):
        bind(bdf, None)
    remove_dir(SYS_MODULE)
    st["module"] = None
    event("unload")
    return ""


def modinfo(st, args):
    opts, names = {}, []
    it = iter(args)
    for a in it:
        if a in ("-F", "-k"):
            opts[a] = next(it)
        else:
            names.append(a)
    (name,) = names
    field = opts["-F"]
    if name == "xen-pcifront" and field == "filename":
        return "(builtin)\n"
    if name == "xen-pciback":  # Debian's module file: no srcversion
        return {"srcversion": "\n", "filename": f"/lib/modules/{st['release']}/xen-pciback.ko\n"}[field]
    value = ko_fields(name).get(field)
    return f"{value}\n" if value is not None else ""


def uname(st, args):
    if args == ["-r"]:
        return st["release"] + "\n"
    os.execv("/usr/bin/uname", ["uname", *args])
    return ""


# ------------------------------------------------------------------ xenstore


def _natural(s):
    digits = s.lstrip("abcdefghijklmnopqrstuvwxyz_-")
    return (s[: len(s) - len(digits)], int(digits) if digits.isdigit() else -1, s)


def xs_children(st, path):
    pre = path.rstrip("/") + "/"
    return sorted({k[len(pre) :].split("/")[0] for k in st["xenstore"] if k.startswith(pre)}, key=_natural)


def xs_exists(st, path):
    return path in st["xenstore"] or bool(xs_children(st, path))


def xenstore_ls(st, args):
    if args[:1] != ["-f"] or len(args) != 2:
        raise Fail(f"xenstore-ls: not scripted: {' '.join(args)}")
    path = args[1].rstrip("/")
    if not xs_exists(st, path):
        raise Fail(f"xenstore-ls: could not access path {path}: No such file or directory")
    out = []

    def walk(p):
        for c in xs_children(st, p):
            q = f"{p}/{c}"
            out.append(f'{q} = "{st["xenstore"].get(q, "")}"\n')
            walk(q)

    walk(path)
    return "".join(out)


def xenstore_list(st, args):
    (path,) = args
    if not xs_exists(st, path):
        raise Fail(f"xenstore-list: could not access path {path}: No such file or directory")
    return "".join(c + "\n" for c in xs_children(st, path))


def xenstore_rm(st, args):
    (path,) = args
    for k in [k for k in st["xenstore"] if k == path or k.startswith(path.rstrip("/") + "/")]:
        del st["xenstore"][k]
    return ""


# ------------------------------------------------------------------ xl


def assignable(st):
    return sorted(b for b in os.listdir(DEVICES) if driver_of(b) == "pciback")


def used_by(st, bdf):
    return next((n for n, d in st["domains"].items() if bdf in d["pci"]), None)


def publish(st, name):
    """pciback's backend for the domain, and the guest's next marker: the series' module (`all`)
    configures every device; the control (`first`, the bug) only the first one of a creation."""
    d = st["domains"][name]
    base = f"{BE}/{d['domid']}/0"
    xs = st["xenstore"]
    for k in [k for k in xs if k.startswith(base + "/")]:
        del xs[k]
    xs.update({base: "", f"{base}/num_devs": str(len(d["pci"])), f"{base}/state": "4"})
    for i, bdf in enumerate(d["pci"]):
        xs[f"{base}/dev-{i}"] = bdf
        if bdf in d["seen"]:
            xs[f"{base}/vdev-{i}"] = f"0000:00:{i:02x}.0"
            xs[f"{base}/state-{i}"] = "3"
    d["seq"] += 1
    guest_bdfs = ",".join(f"0000:00:{i:02x}.0" for i in range(len(d["seen"])))
    write(f"{CONSOLE}/guest-{name}.log", f"PVLAB_MARKER seq={d['seq']} count={len(d['seen'])} bdfs={guest_bdfs}\n", "a")


def xl_config(path):
    """name and pci of an xl config as the pipeline writes it (templates/xl-guest.cfg.j2)."""
    name, pci = None, []
    for line in read(path).splitlines():
        key, _, value = line.partition(" = ")
        if key == "name":
            name = value.strip('"')
        elif key == "pci":
            pci = [v.strip().strip('"') for v in value.strip("[] ").split(",") if v.strip()]
    return name, pci


def xl(st, args):
    cmd, rest = args[0], args[1:]
    doms = st["domains"]
    if cmd == "info":
        return (
            f"host                   : fakedom0\nrelease                : {st['release']}\n"
            "xen_major              : 4\nxen_minor              : 17\nxen_version            : 4.17.5-fake\n"
        )
    if cmd == "list":
        lines = ["Name                                        ID   Mem VCPUs\tState\tTime(s)"]
        lines.append("Domain-0                                     0  1024     2     r-----      10.0")
        lines += [f"{n:<40} {d['domid']:>5}   256     1     -b----       0.1" for n, d in doms.items()]
        return "\n".join(lines) + "\n"
    if cmd == "pci-assignable-list":
        return "".join(b + "\n" for b in assignable(st))
    if cmd in ("pci-assignable-add", "pci-assignable-remove"):
        (bdf,) = rest
        if not os.path.isdir(dev(bdf)):
            raise Fail(f"libxl: error: {bdf}: no such PCI device")
        if cmd == "pci-assignable-add":
            if not loaded():
                raise Fail("libxl: error: xen-pciback is not loaded")
            bind(bdf, "pciback")
        else:
            if driver_of(bdf) != "pciback":
                raise Fail(f"libxl: error: {bdf} is not assignable")
            if used_by(st, bdf):
                raise Fail(f"libxl: error: {bdf} is assigned to domain {used_by(st, bdf)}")
            bind(bdf, None)
        event(f"assignable {'+' if cmd.endswith('add') else '-'} {bdf}")
        return ""
    if cmd == "create":
        (cfg,) = rest
        name, pci = xl_config(cfg)
        if name in doms:
            raise Fail(f"libxl: error: domain {name} already exists")
        for bdf in pci:
            if driver_of(bdf) != "pciback" or used_by(st, bdf):
                raise Fail(f"libxl: error: PCI device {bdf} is not assignable")
        if not loaded():
            raise Fail("libxl: error: xen-pciback is not loaded")
        first = st["module"]["publishes"] != "all"
        doms[name] = {"domid": st["next_domid"], "pci": pci, "seen": pci[:1] if first else list(pci), "seq": 0}
        st["next_domid"] += 1
        os.makedirs(CONSOLE, exist_ok=True)
        write(f"{CONSOLE}/guest-{name}.log", "PVLAB_BOOT\n", "a")
        publish(st, name)
        event(f"create {name} {len(pci)} vfs, guest sees {len(doms[name]['seen'])}")
        return ""
    if cmd == "domid":
        (name,) = rest
        if name not in doms:
            raise Fail(f"libxl: error: {name}: no such domain")
        return f"{doms[name]['domid']}\n"
    if cmd == "destroy":
        (name,) = rest
        if name not in doms:
            raise Fail(f"libxl: error: {name}: invalid domain identifier")
        d = doms.pop(name)
        xenstore_rm(st, [f"{BE}/{d['domid']}"])
        event(f"destroy {name}")
        return ""
    if cmd in ("pci-attach", "pci-detach"):
        name, bdf = rest
        d = doms.get(name)
        if d is None:
            raise Fail(f"libxl: error: {name}: no such domain")
        if cmd == "pci-attach":
            if driver_of(bdf) != "pciback" or used_by(st, bdf):
                raise Fail(f"libxl: error: PCI device {bdf} is not assignable")
            d["pci"].append(bdf)
            if st["module"]["publishes"] == "all":
                d["seen"].append(bdf)
        else:
            if bdf not in d["pci"]:
                raise Fail(f"libxl: error: {bdf} is not attached to {name}")
            d["pci"].remove(bdf)
            d["seen"] = [b for b in d["seen"] if b != bdf]
        publish(st, name)
        event(f"{cmd[4:]} {name} {bdf}, guest sees {len(d['seen'])}")
        return ""
    raise Fail(f"xl: not scripted: {' '.join(args)}")


COMMANDS = {
    "xl": xl,
    "xenstore-ls": xenstore_ls,
    "xenstore-list": xenstore_list,
    "xenstore-rm": xenstore_rm,
    "insmod": insmod,
    "modprobe": modprobe,
    "rmmod": rmmod,
    "modinfo": modinfo,
    "uname": uname,
    "tee": tee,
}


def reboot(st):
    """What a host that rebooted has lost: its domains, its VFs, our module (stock again, as at
    boot) and everything under /run; it has a new boot id."""
    pf = dev(st["pf"])
    for i, bdf in enumerate(vf_bdfs(st)):
        os.unlink(f"{pf}/virtfn{i}")
        remove_dir(dev(bdf))
    write(f"{pf}/sriov_numvfs", "0\n")
    write(f"{pf}/sriov_drivers_autoprobe", "1\n")
    st["domains"], st["xenstore"] = {}, {}
    if loaded():
        remove_dir(SYS_MODULE)
    os.makedirs(SYS_MODULE)
    write(f"{SYS_MODULE}/initstate", "live\n")
    write(f"{SYS_MODULE}/taint", "\n")
    st["module"] = {"label": "stock", "publishes": st["stock_publishes"]}
    for name in os.listdir("/run"):
        path = f"/run/{name}"
        subprocess.run(["rm", "-rf", "--", path], check=True)
    write(BOOT_ID, f"{uuid.uuid4()}\n")


def scripted(st, line):
    """The test's rules for this command: a failure to return instead of running it, or a Ctrl-C."""
    for rule in st["rules"]:
        if not (line.startswith(rule["start"]) and line.endswith(rule["end"])):
            continue
        rule["seen"] += 1
        if not rule["skip"] < rule["seen"] <= rule["skip"] + rule["times"]:
            continue
        if rule["action"] == "sigint":
            event(f"sigint at {line}")
            os.kill(rule["pid"], SIGINT)
        elif rule["action"] == "scribble":
            for path in sorted(glob.glob("/run/pciback-verify/stage/*/xen-pciback.ko")):
                with open(path, "r+b") as fh:
                    data = bytearray(fh.read())
                    data[len(data) // 2] ^= 0xFF
                    fh.seek(0)
                    fh.write(data)
                event(f"scribble {path} at {line.split()[0]}")
        elif rule["action"] == "reboot":
            event(f"reboot at {line}")
            reboot(st)
            return Fail("Connection reset by peer (the host rebooted)", rc=255)
        else:
            event(f"fail {line}")
            return Fail(rule["stderr"] or f"{line.split()[0]}: failed (scripted)")
    return None


def main():
    name = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if name == "tee" and not any(a.startswith("/sys/") for a in args):
        os.execv("/usr/bin/tee", ["tee", *args])
    with open("/fakedom0/lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(STATE, "rb") as fh:
            st = marshal.load(fh)
        # a sysfs write is told by its value too (on stdin): `tee PATH = VALUE`
        value = sys.stdin.read() if name == "tee" else None
        line = " ".join([name, *args]) + (f" = {value.strip()}" if value is not None else "")
        try:
            failed = scripted(st, line)
            if failed:
                raise failed
            out = COMMANDS[name](st, args, value) if value is not None else COMMANDS[name](st, args)
            rc = 0
        except Fail as e:
            out, rc = "", e.rc
            sys.stderr.write(f"{e}\n")
        with open(STATE + ".new", "wb") as fh:
            marshal.dump(st, fh)
        os.replace(STATE + ".new", STATE)
    sys.stdout.write(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
