"""What the toolstack did, observed: the host's Xen/xl/dom0 kernel (`xl info`, once per host session)
and the xenstore transactions libxl used to write a new domain's PCI backend, read from xenstored's
own access log — never assumed from a version number (DESIGN.md, "Two axes").

The race the series fixes needs libxl to write the backend one device per transaction (num_devs
1, 2, 3 in three commits, Xen >= 4.15); up to 4.14 libxl writes all devices and num_devs=N in one.

oxenstored logs every request with its connection and transaction id ("A12.7" is connection A12,
transaction 7; "A12" alone is outside a transaction) and the end of each transaction as `commit`
(or `conflict`, then libxl retries with a new id). A Cursor takes the log's inode and size before
`xl create` and reads only what was appended after; the lines are told apart by the domid in the
backend path, so another run's guest on the same host does not count.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field

from .errors import HostError
from .host import Host
from .results import Toolstack, XsCreation

ACCESS_LOG = "/var/log/xen/xenstored-access.log"
READ_LIMIT = 4 * 1024 * 1024  # a creation writes a few hundred lines; more than this is not ours to read

_OPS = ("t start", "t end", "w event", "is introduced", "reset watches")
# [20261201T22:59:49.527Z]  r(5):A59.6   write     /local/domain/0/backend/pci/3/0/num_devs 2
# (lines captured on the lab, Xen 4.17 oxenstored: tests/fixtures/xsobserve/). "r(5):" marks
# oxenstored replaying a transaction that conflicted, under a new id, on the client's behalf
LINE_RE = re.compile(
    r"^\[(?P<time>[^\]]+)\]\s+(?:r\((?P<replay>\d+)\):)?(?P<conn>[A-Z]+\d+)(?:\.(?P<tid>\d+))?\s+"
    r"(?P<op>" + "|".join(re.escape(o) for o in _OPS) + r"|[a-z]+)(?:\s+(?P<data>.*))?$"
)
NUM_DEVS_RE = re.compile(r"^/local/domain/0/backend/pci/(?P<domid>\d+)/0/num_devs$")
DEV_RE = re.compile(r"^/local/domain/0/backend/pci/(?P<domid>\d+)/0/dev-\d+$")


# ------------------------------------------------------------------ parsing (pure)


@dataclass
class XsOp:
    time: str
    conn: str
    tid: int  # 0: outside a transaction
    op: str  # write, commit, conflict, t start, ...
    path: str = ""
    value: str = ""


def parse_access_log(text: str) -> list[XsOp]:
    """Every line of an oxenstored access log that has a connection and an operation, in order."""
    out = []
    for line in text.splitlines():
        m = LINE_RE.match(line.strip())
        if not m:
            continue
        path, _, value = (m.group("data") or "").strip().partition(" ")
        conn = m.group("conn")
        if path and not path.startswith("/") and conn.startswith("D"):  # a domain's relative path
            path = f"/local/domain/{conn[1:]}/{path}"
        out.append(
            XsOp(
                time=m.group("time").strip(),
                conn=conn,
                tid=int(m.group("tid") or 0),
                op=m.group("op"),
                path=path,
                value=value.strip(),
            )
        )
    return out


@dataclass
class _Tx:
    num_devs: list[str] = field(default_factory=list)
    devices: int = 0


def creation_pattern(ops: list[XsOp], domid: int) -> XsCreation:
    """The committed transactions (and plain writes) that wrote domain `domid`'s backend num_devs,
    with the value each wrote, in commit order. A transaction that ended in `conflict` wrote nothing."""
    open_tx: dict[tuple[str, int], _Tx] = {}
    done: list[_Tx] = []
    conflicts = 0
    for op in ops:
        key = (op.conn, op.tid)
        if op.op == "write" and op.tid == 0:
            if _is(NUM_DEVS_RE, op.path, domid):
                done.append(_Tx(num_devs=[op.value]))
            continue
        if op.op == "write":
            tx = open_tx.setdefault(key, _Tx())
            if _is(NUM_DEVS_RE, op.path, domid):
                tx.num_devs.append(op.value)
            elif _is(DEV_RE, op.path, domid):
                tx.devices += 1
        elif op.op == "commit":
            tx = open_tx.pop(key, None)
            if tx and tx.num_devs:
                done.append(tx)
        elif op.op == "conflict":
            tx = open_tx.pop(key, None)
            conflicts += bool(tx and tx.num_devs)
        elif op.op == "endconn":  # a transaction the connection left open never committed
            for k in [k for k in open_tx if k[0] == op.conn]:
                open_tx.pop(k)
    values = []
    for tx in done:
        try:
            values.append(int(tx.num_devs[-1]))  # a transaction's last write is what it committed
        except ValueError:
            values.append(-1)
    res = XsCreation(observed=True, source=ACCESS_LOG, transactions=len(done), num_devs=values)
    res.devices_first = done[0].devices if done else 0
    res.detail = describe(res) + (f"; {conflicts} conflicting transaction(s) retried" if conflicts else "")
    return res


def _is(rx: re.Pattern[str], path: str, domid: int) -> bool:
    m = rx.match(path)
    return bool(m) and int(m.group("domid")) == domid


def describe(x: XsCreation) -> str:
    if not x.observed:
        return f"not observed: {x.detail}" if x.detail else "not observed"
    if not x.transactions:
        return "no committed transaction wrote num_devs"
    vals = ", ".join(map(str, x.num_devs))
    if x.transactions == 1:
        return f"all {x.num_devs[0]} device(s) in 1 transaction (num_devs={vals})"
    return f"{x.transactions} transactions wrote num_devs ({vals}): one per device"


def parse_xl_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


# ------------------------------------------------------------------ host side

_TOOLSTACKS: weakref.WeakKeyDictionary[Host, Toolstack] = weakref.WeakKeyDictionary()


def toolstack(host: Host) -> Toolstack:
    """Xen version, xl/libxl version and dom0 kernel of the host; read once per Host (session)."""
    cached = _TOOLSTACKS.get(host)
    if cached is not None:
        return cached
    ts = Toolstack()
    rc, out, err = host.query(["xl", "info"], timeout=60)
    if rc != 0:
        ts.detail = f"xl info failed: {(err.strip().splitlines() or [f'exit {rc}'])[-1]}"
    else:
        info = parse_xl_info(out)
        ts.xen_version = info.get("xen_version", "")
        ts.dom0_kernel = info.get("release", "")
        major, minor = info.get("xen_major", ""), info.get("xen_minor", "")
        # xl and libxl come from one package, built from the same Xen release (Debian: xen-utils-X.Y)
        rc, ver, _ = host.query(["dpkg-query", "-W", "-f", "${Version}", f"xen-utils-{major}.{minor}"], timeout=30)
        if rc == 0 and ver.strip():
            ts.xl_version = ver.strip()
        else:
            ts.xl_version = f"{major}.{minor}" if major else ""
            ts.detail = "xl/libxl version from the hypervisor's (no xen-utils package found)"
    # the machine as its firmware names it; under the lab, QEMU's machine type carries QEMU's version
    dmi = [host.read_text(f"/sys/class/dmi/id/{f}") for f in ("sys_vendor", "product_name", "product_version")]
    ts.machine = " ".join(v.strip() for v in dmi if v and v.strip())
    _TOOLSTACKS[host] = ts
    return ts


class Cursor:
    """The access log's end before `xl create`; `creation(domid)` reads what was appended since."""

    def __init__(self, host: Host, log: str = ACCESS_LOG):
        self.host = host
        self.log = log
        self.inode, self.size, self.why = self._stat(log)

    def _stat(self, path: str) -> tuple[str, int, str]:
        try:
            rc, out, err = self.host.query(["stat", "-c", "%i %s", path], timeout=30)
        except HostError as e:
            return "", 0, e.message
        if rc != 0:
            return "", 0, f"{path}: {err.strip() or 'cannot stat'} (xenstored access log off, or not oxenstored)"
        ino, size = out.split()
        return ino, int(size), ""

    def _read(self, path: str, start: int) -> str:
        # tail -c +K starts at byte K (1-based); head bounds what one creation can make us read
        rc, out, err = self.host.query(
            ["sh", "-c", 'tail -c +"$1" "$2" | head -c "$3"', "sh", str(start + 1), path, str(READ_LIMIT)], timeout=60
        )
        if rc != 0:
            raise HostError(f"reading {path}: {err.strip()}")
        return out

    def creation(self, domid: int) -> XsCreation:
        log = self.log
        if self.why:
            return XsCreation(source=log, detail=self.why)
        try:
            inode, size, why = self._stat(log)
            if why:
                return XsCreation(source=log, detail=why)
            if inode == self.inode and size >= self.size:
                text = self._read(log, self.size)
            else:  # rotated meanwhile (oxenstored renames log -> log.1): the old file's rest, then the new
                old_ino, _, _ = self._stat(log + ".1")
                text = (self._read(log + ".1", self.size) if old_ino == self.inode else "") + self._read(log, 0)
        except HostError as e:
            return XsCreation(source=log, detail=e.message)
        res = creation_pattern(parse_access_log(text), domid)
        res.source = log
        return res
