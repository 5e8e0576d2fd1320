"""Real resource limits for servers and process trees, through Linux cgroups (v1 or v2).

    with cgroups.CpuLimit("pg-shard-1", cpus=0.5) as cap:     # half a core, enforced by the kernel
        cap.add_tree(service_pid)                              # the postmaster and every backend
        ...
    with cgroups.MemoryLimit("binder", mb=2048) as box:
        box.add(os.getpid()); ...; box.peak_mb()

Processes forked after ``add`` inherit the group, so adding a server's parent process before the
load starts caps every worker it spawns later; ``add_tree`` also moves the children that exist now.
Where the machine does not allow it (no cgroup file system, not writable: Binder, macOS, most
containers), constructing a limit raises :class:`labkit.errors.ResourceLimitUnavailable` whose
message says why; :func:`available` asks the same question without raising, so a lesson can say
"this machine cannot cap CPU: measuring clients only" and go on.

Groups live under ``labkit/`` in each controller's hierarchy and are removed on ``close()`` (their
processes move back to the root group). :func:`remove_stale` deletes empty groups a killed process
left behind; ``labkit down`` calls it.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from types import TracebackType

import psutil

from labkit import config
from labkit.errors import BadParameter, ResourceLimitUnavailable

__all__ = ["CpuLimit", "MemoryLimit", "available", "remove_stale"]

ROOT = config.current().cgroup_root
PARENT = "labkit"
# CFS period: short, so a capped server is held back in short slices rather than for most of a 100 ms period
# (a backend holding a lock while throttled for ~95 ms stalls every client and makes short measurements
# jumpy); never so short that the quota would fall under the kernel's 1 ms minimum.
_PERIOD_US = 20_000
_MIN_QUOTA_US = 1000
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _v2() -> bool:
    return (ROOT / "cgroup.controllers").is_file()


def _base(controller: str) -> Path:
    """The directory labkit's groups of this controller live in."""
    return ROOT / PARENT if _v2() else ROOT / controller / PARENT


def available(controller: str = "cpu") -> tuple[bool, str]:
    """(True, "") when labkit can create and fill a ``controller`` ("cpu" or "memory") group here,
    else (False, the reason in words a learner can act on)."""
    if controller not in ("cpu", "memory"):
        raise BadParameter(f"controller {controller!r}: use 'cpu' or 'memory'")
    if not ROOT.is_dir():
        return False, f"{ROOT} does not exist (not Linux, or no cgroup file system mounted)"
    if _v2():
        controllers = (ROOT / "cgroup.controllers").read_text().split()
        if controller not in controllers:
            return False, f"the cgroup v2 hierarchy at {ROOT} has no {controller} controller"
        top = ROOT
    else:
        top = ROOT / controller
        if not top.is_dir():
            return False, f"no cgroup v1 {controller} controller at {top}"
    try:
        base = _base(controller)
        base.mkdir(exist_ok=True)
        if controller == "cpu" and not _v2():
            _weigh_parent(base)
        if _v2():
            _enable_v2_controller(controller)
        probe = base / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as exc:
        return False, (
            f"cgroups at {top} are not writable here ({exc.strerror}); this needs root on Linux "
            "(Binder and most containers do not allow it)"
        )
    return True, ""


def _weigh_parent(base: Path) -> None:
    """Give labkit's parent group the weight of one process per core per capped server it may hold.

    On cgroup v1 a group competes for CPU like ONE process of the root group (cpu.shares 1024): on a
    busy machine every capped server of every lesson would share one process's worth of CPU, and a
    cap of 0.25 core could never be reached. The caps (quotas), not this weight, bound each group."""
    shares = base / "cpu.shares"
    try:
        if int(shares.read_text()) < 16384:
            shares.write_text("16384")
    except (OSError, ValueError):
        pass  # the caps still hold; only the share under contention stays the default


def _enable_v2_controller(controller: str) -> None:
    for level in (ROOT, ROOT / PARENT):
        ctl = level / "cgroup.subtree_control"
        if controller not in ctl.read_text().split():
            ctl.write_text(f"+{controller}")


class _Limit:
    controller = ""

    def __init__(self, name: str) -> None:
        if not _NAME.match(name):
            raise BadParameter(f"cgroup name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        ok, why = available(self.controller)
        if not ok:
            raise ResourceLimitUnavailable(f"cannot limit {self.controller} on this machine: {why}")
        self.path = _base(self.controller) / f"{name}-{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        self.closed = False

    def add(self, pid: int) -> None:
        """Move one process into the group (its future children are born there)."""
        try:
            (self.path / "cgroup.procs").write_text(str(int(pid)))
        except ProcessLookupError:
            pass  # it exited meanwhile: nothing to limit
        except OSError as exc:
            if psutil.pid_exists(pid):
                raise ResourceLimitUnavailable(f"cannot move PID {pid} into {self.path}: {exc.strerror}") from exc

    def add_tree(self, pid: int) -> list[int]:
        """Move a process and all its current descendants; return the PIDs moved."""
        try:
            proc = psutil.Process(pid)
            pids = [proc.pid] + [c.pid for c in proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in pids:
            self.add(p)
        return pids

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """Move the group's processes back to the root group and delete the group."""
        if self.closed:
            return
        root_procs = (ROOT if _v2() else ROOT / self.controller) / "cgroup.procs"
        for _ in range(3):
            for pid in self.pids():
                try:
                    root_procs.write_text(str(pid))
                except OSError:
                    pass
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)  # a process forked while we moved: move again
        self.closed = True

    def __enter__(self) -> _Limit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"


class CpuLimit(_Limit):
    """At most ``cpus`` cores of CPU time (e.g. 0.5) for every process in the group (CFS quota)."""

    controller = "cpu"

    def __init__(self, name: str, cpus: float) -> None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0.01 <= cpus <= 1024:
            raise BadParameter(f"cpus={cpus!r}: give the cores the group may use, e.g. 0.5 or 2 (0.01..1024)")
        super().__init__(name)
        self.cpus = float(cpus)
        period = max(_PERIOD_US, math.ceil(_MIN_QUOTA_US / self.cpus))
        quota = max(_MIN_QUOTA_US, round(self.cpus * period))
        self.period_us, self.quota_us = period, quota
        if _v2():
            (self.path / "cpu.max").write_text(f"{quota} {period}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def throttled_seconds(self) -> float:
        """How long the kernel held the group back because it used up its quota."""
        stat = self.path / "cpu.stat"
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":  # v1: nanoseconds
                return int(value) / 1e9
            if key == "throttled_usec":  # v2: microseconds
                return int(value) / 1e6
        return 0.0


class MemoryLimit(_Limit):
    """At most ``mb`` megabytes of memory (RSS and page cache) for the whole group."""

    controller = "memory"

    def __init__(self, name: str, mb: float) -> None:
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not 8 <= mb <= 1 << 22:
            raise BadParameter(f"mb={mb!r}: give the memory limit in MB, e.g. 2048 (8 or more)")
        super().__init__(name)
        self.mb = float(mb)
        limit = int(self.mb * 1024 * 1024)
        if _v2():
            (self.path / "memory.max").write_text(str(limit))
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))

    def usage_mb(self) -> float:
        f = "memory.current" if _v2() else "memory.usage_in_bytes"
        return int((self.path / f).read_text()) / 2**20

    def peak_mb(self) -> float:
        """The highest usage since the group was made (v2 kernels older than 5.19 report the current)."""
        f = self.path / ("memory.peak" if _v2() else "memory.max_usage_in_bytes")
        if not f.exists():
            return self.usage_mb()
        return int(f.read_text()) / 2**20

    def oom_kills(self) -> int:
        """How many processes the kernel killed because the group hit its limit."""
        for name in ("memory.events", "memory.oom_control"):
            f = self.path / name
            if f.exists():
                for line in f.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key in ("oom_kill",):
                        return int(value)
        return 0


def remove_stale() -> list[str]:
    """Delete labkit groups whose creating process is gone and that hold no process; return their paths."""
    removed: list[str] = []
    for controller in ("cpu", "memory"):
        base = _base(controller)
        if not base.is_dir():
            continue
        for group in base.iterdir():
            if not group.is_dir():
                continue
            owner = group.name.rsplit("-", 1)[-1]
            if owner.isdigit() and psutil.pid_exists(int(owner)):
                continue
            try:
                if not (group / "cgroup.procs").read_text().split():
                    group.rmdir()
                    removed.append(str(group))
            except OSError:
                pass
        if _v2():
            break
    return removed
