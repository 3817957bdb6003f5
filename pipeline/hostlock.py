"""A lock held on the Xen host itself, so that two runs (from one machine or two) never
change the same host's module, VFs or domains at the same time.

The lock is a directory, LOCK_DIR, created with `mkdir` (atomic on the host) and an
owner file inside it: run id, local hostname, pid, start time and a random token. A
second run waits for it, printing who holds it, up to `HostConfig.lock_timeout_s`,
then fails with HostLocked.

A lock is stale, and broken, when its owner ran on this machine and that pid is gone,
or when it is older than `HostConfig.lock_stale_s` (the host's clock, the directory's
mtime). Breaking happens under a second, short-lived lock (BREAK_DIR) and re-reads the
owner first, so two runs breaking the same stale lock cannot remove a fresh one. A
lock without an owner file (its holder died between mkdir and writing it) counts as
stale after OWNERLESS_GRACE_S.

The owner also records this machine's boot id and the process's start time, and the
holder refreshes HEARTBEAT every HEARTBEAT_S: a holder on this machine is dead when
its pid is gone, its pid now belongs to another process (other start time) or the
machine rebooted (other boot id); a holder elsewhere is dead when its heartbeat is
older than HEARTBEAT_STALE_S. Only a lock without a heartbeat (an older version's)
waits for lock_stale_s.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from .errors import HostError, HostLocked, without_host
from .host import Host
from .results import now_iso
from .util import STATE_DIR, Progress
from .util import noprogress as _noprogress

LOCK_PARENT = STATE_DIR
LOCK_DIR = f"{LOCK_PARENT}/lock"
OWNER = f"{LOCK_DIR}/owner.json"
BREAK_DIR = f"{LOCK_PARENT}/lock.break"
HEARTBEAT = f"{LOCK_DIR}/heartbeat"
HEARTBEAT_S = 30.0
HEARTBEAT_STALE_S = 300.0  # ten missed beats: the holder is gone (or cut off from the host)
OWNERLESS_GRACE_S = 60
POLL_S = 2.0
REPORT_EVERY_S = 30.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def proc_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _describe(owner: dict | None) -> str:
    if not owner:
        return "an unknown run (no owner file)"
    return (
        f"run {owner.get('run_id') or '?'} (machine {owner.get('hostname')}, pid {owner.get('pid')}, "
        f"since {owner.get('started')})"
    )


@dataclass
class HostLock:
    host: Host
    run_id: str
    progress: Progress = _noprogress
    timeout_s: float | None = None  # None: the host's lock_timeout_s
    token: str = ""
    held: bool = False

    # ------------------------------------------------------------ host side

    def _mkdir(self, path: str) -> bool:
        rc, _, err = self.host.run(["mkdir", path], check=False, timeout=30)
        if rc == 0:
            return True
        if "File exists" in err:
            return False
        raise HostError(f"cannot create lock {path}: {err.strip() or f'exit {rc}'}", host=self.host.name)

    def _owner(self) -> dict | None:
        text = self.host.read_text(OWNER)
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _age(self, path: str) -> float | None:
        """Seconds since `path` was last modified, by the host's clock; None when it is gone."""
        rc, out, _ = self.host.run(["sh", "-c", 'stat -c %Y "$1" && date +%s', "sh", path], check=False, timeout=30)
        nums = out.split()
        if rc != 0 or len(nums) != 2:
            return None
        return float(int(nums[1]) - int(nums[0]))

    def stale_reason(self, owner: dict | None) -> str | None:
        """Why the current lock may be broken, or None when its holder may still be running."""
        age = self._age(LOCK_DIR)
        if age is None:
            return None  # released meanwhile
        if owner is None:
            return f"no owner file after {age:.0f} s" if age > OWNERLESS_GRACE_S else None
        here = owner.get("hostname") == socket.gethostname()
        if here and owner.get("boot_id") and owner["boot_id"] != boot_id():
            return "this machine rebooted since it was taken (boot id differs)"
        if here and isinstance(owner.get("pid"), int):
            if not _pid_alive(owner["pid"]):
                return f"its process {owner['pid']} on this machine is gone"
            started = owner.get("proc_start")
            if isinstance(started, int) and proc_start(owner["pid"]) not in (None, started):
                return f"pid {owner['pid']} on this machine is now another process (start time differs)"
            return None  # a holder alive on this machine is never broken
        if owner.get("heartbeat_s"):
            beat = self._age(HEARTBEAT)
            beat = age if beat is None else beat
            if beat > HEARTBEAT_STALE_S:
                return f"its heartbeat stopped {beat:.0f} s ago (beats every {owner['heartbeat_s']:g} s)"
            return None
        limit = self.host.config.lock_stale_s
        if age > limit:
            return f"it is {age:.0f} s old (lock_stale_s {limit})"
        return None

    def _break(self, owner: dict | None, why: str) -> None:
        if not self._mkdir(BREAK_DIR):
            age = self._age(BREAK_DIR)
            if age is not None and age > OWNERLESS_GRACE_S:  # a breaker that died mid-way
                self.host.run(["rmdir", BREAK_DIR], check=False, timeout=30)
            return  # somebody else is breaking it; try again on the next poll
        try:
            now = self._owner()
            same = (now or {}).get("token") == (owner or {}).get("token")
            if same and self.host.exists(LOCK_DIR):
                self.progress(f"host {self.host.name}: breaking the stale lock of {_describe(owner)}: {why}")
                self.host.run(["rm", "-rf", "--", LOCK_DIR], timeout=30)
        finally:
            self.host.run(["rmdir", BREAK_DIR], check=False, timeout=30)

    # ------------------------------------------------------------ API

    def try_acquire(self) -> bool:
        self.host.mkdir_p(LOCK_PARENT)
        if not self._mkdir(LOCK_DIR):
            return False
        self.token = uuid.uuid4().hex
        owner = {
            "run_id": self.run_id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started": now_iso(),
            "token": self.token,
            "boot_id": boot_id(),
            "proc_start": proc_start(os.getpid()),
            "heartbeat_s": HEARTBEAT_S,
        }
        self.host.write_text(OWNER, json.dumps(owner) + "\n")
        self.host.run(["touch", "--", HEARTBEAT], check=False, timeout=30)
        self.held = True
        self._start_heartbeat()
        return True

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    self.host.run(["touch", "-c", "--", HEARTBEAT], check=False, timeout=30)
                except Exception:  # noqa: BLE001 - a missed beat is retried; the run goes on
                    pass

        # in the caller's context: a retry inside a beat goes on the run's record (absorbed.py)
        run_beat = contextvars.copy_context().run
        self._beater = threading.Thread(target=run_beat, args=(beat,), name=f"hostlock-{self.host.name}", daemon=True)
        self._beater.start()

    def acquire(self) -> HostLock:
        name = self.host.name
        timeout = self.host.config.lock_timeout_s if self.timeout_s is None else self.timeout_s
        t0 = time.monotonic()
        last_report = None
        while True:
            if self.try_acquire():
                if last_report is not None:
                    self.progress(f"host {name}: lock acquired after {time.monotonic() - t0:.0f} s")
                return self
            owner = self._owner()
            why = self.stale_reason(owner)
            if why:
                self._break(owner, why)
                continue
            waited = time.monotonic() - t0
            if waited >= timeout:
                raise HostLocked(
                    f"locked by {_describe(owner)}; gave up after {waited:.0f} s "
                    f"(lock_timeout_s {timeout:g}); if that run is gone, remove {LOCK_DIR} on the host",
                    host=name,
                )
            if last_report is None or time.monotonic() - last_report >= REPORT_EVERY_S:
                self.progress(
                    f"host {name}: locked by {_describe(owner)}; waiting (up to {timeout:g} s, {waited:.0f} s so far)"
                )
                last_report = time.monotonic()
            time.sleep(min(POLL_S, max(0.1, timeout - waited)))

    def release(self) -> None:
        """Remove the lock if it is still ours (a breaker may have judged it stale)."""
        if not self.held:
            return
        self.held = False
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
            self._beater.join(timeout=35)
        owner = self._owner()
        if owner is not None and owner.get("token") == self.token:
            self.host.run(["rm", "-rf", "--", LOCK_DIR], check=False, timeout=30)

    def __enter__(self) -> HostLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        try:
            self.release()
        except HostError as e:  # host unreachable: the next run finds the lock stale
            self.progress(f"host {self.host.name}: could not release the lock: {without_host(e, self.host.name)}")
