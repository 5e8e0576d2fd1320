"""Stack records: the JSON file per stack in ``<labkit home>/stacks/`` (written under a lock), reaping the
servers of dead owners and strays, ``labkit down``, and services rebuilt from a record (``labkit status``,
``labkit logs``, attaching to the shared stack). Re-exported by ``labkit.services.stack``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from labkit import paths
from labkit.errors import StateError, UnknownService
from labkit.services import service_class
from labkit.services._process import proc_ref, reap, same_process
from labkit.services.base import Service

SHARED_ID = "shared"


# records -----------------------------------------------------------------------------------
def record_path(stack_id: str) -> Path:
    return paths.stacks_dir() / f"{stack_id}.json"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise read-modify-write of stack records between processes (a notebook and `labkit up`)."""
    with open(paths.stacks_dir() / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
            raise ValueError("not a stack record (no 'services' object)")
        return data
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as e:
        raise StateError(
            f"stack record {path} is corrupt ({e}). Run `labkit down` to stop whatever it started "
            f"(it also finds labkit's servers by process scan) and remove it."
        ) from None


def write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


def all_records() -> list[tuple[Path, dict[str, Any] | StateError]]:
    out: list[tuple[Path, dict[str, Any] | StateError]] = []
    for p in sorted(paths.stacks_dir().glob("*.json")):
        try:
            out.append((p, read_record(p)))
        except FileNotFoundError:
            continue
        except StateError as e:
            out.append((p, e))
    return out


def owner_alive(record: dict[str, Any]) -> bool:
    owner = record.get("owner")
    return owner is None or same_process(owner) is not None


def record_alive_pids(record: dict[str, Any]) -> list[int]:
    return [r["pid"] for s in record["services"].values() for r in s.get("pids", []) if same_process(r)]


def is_stale(record: dict[str, Any]) -> bool:
    """A record whose local servers are all gone (a reboot, a crash) while it still lists some."""
    local = [s for s in record["services"].values() if s.get("provider") == "local"]
    return bool(local) and not record_alive_pids(record)


# reaping -----------------------------------------------------------------------------------
def strays(markers: list[str]) -> list[psutil.Process]:
    """Processes whose command line names one of `markers` (instance directories of labkit's servers)."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if p.pid != me and any(m in cmd for m in markers) and "labkit.services._watchdog" not in cmd:
            found.append(p)
    return found


def reap_record(record: dict[str, Any], remove_data: bool = True) -> list[int]:
    """Stop every process a record lists (and any stray that names its directories); returns the PIDs."""
    refs = [r for s in record["services"].values() for r in s.get("pids", [])]
    stopped = reap(refs)
    dirs = [s["dir"] for s in record["services"].values() if s.get("dir")]
    if dirs:
        extra = strays(dirs)
        stopped += reap([proc_ref(p.pid) for p in extra if p.is_running()])
    for s in record["services"].values():
        for name in s.get("containers", []):
            _remove_container(name)
        for name in s.get("networks", []):
            _remove_network(name)
    if remove_data:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    wd = record.get("watchdog")
    if wd and same_process(wd) and wd.get("pid") != os.getpid():
        reap([wd], grace=1)
    return sorted(set(stopped))


def _remove_container(name: str) -> None:
    try:
        import docker

        docker.from_env(timeout=5).containers.get(name).remove(force=True)
    except Exception:  # noqa: BLE001 - gone already, or no daemon
        pass


def _remove_network(name: str) -> None:
    try:
        from labkit.services import _docker

        _docker.client().networks.get(name).remove()
    except Exception:  # noqa: BLE001 - gone already, or no daemon
        pass


def reap_orphans() -> list[int]:
    """Reap the servers of private stacks whose owner process died (a killed kernel or test run)."""
    stopped: list[int] = []
    with _locked():
        for path, rec in all_records():
            if isinstance(rec, StateError) or rec.get("id") == SHARED_ID or owner_alive(rec):
                continue
            stopped += reap_record(rec)
            path.unlink(missing_ok=True)
    return stopped


def down(remove_data: bool = True) -> dict[str, Any]:
    """Stop everything labkit started under this home: every stack, corrupt records' servers, strays."""
    report: dict[str, Any] = {"stacks": [], "pids": [], "corrupt": [], "strays": [], "containers": []}
    with _locked():
        for path, rec in all_records():
            if isinstance(rec, StateError):
                report["corrupt"].append(str(path))
            else:
                report["pids"] += reap_record(rec, remove_data=remove_data)
                report["stacks"].append(rec.get("id", path.stem))
            path.unlink(missing_ok=True)
        from labkit.services import _docker

        # containers and networks labelled with this home that no record names (a crash mid-start)
        report["containers"] = _docker.remove_labelled()["containers"]
        leftover = strays([str(paths.instances_dir())])
        report["strays"] = reap([proc_ref(p.pid) for p in leftover if p.is_running()])
        if remove_data:
            for d in paths.instances_dir().iterdir():
                shutil.rmtree(d, ignore_errors=True)
    return report


def restore(srec: dict[str, Any]) -> Service:
    """Rebuild a Service object from its record (another process started it)."""
    cls = service_class(srec["kind"], srec["provider"])
    opts = dict(srec.get("options", {}))
    if srec["provider"] == "local":
        opts["instance_dir"] = Path(srec["dir"])
    svc = cls(srec["name"], **opts)
    svc.adopt(srec)
    return svc


def status() -> list[dict[str, Any]]:
    """`labkit status`: one entry per recorded service (its stack, address, PIDs, DSN, health), or per
    corrupt record an {"stack", "error"} entry. Orphans of killed kernels are reaped first."""
    reap_orphans()
    out: list[dict[str, Any]] = []
    for path, rec in all_records():
        if isinstance(rec, StateError):
            out.append({"stack": path.stem, "error": str(rec)})
            continue
        for name, srec in rec["services"].items():
            try:
                entry = restore(srec).status()
            except Exception as e:  # noqa: BLE001 - an unreadable record still gets its status line
                ep = srec.get("endpoint") or {}
                entry = {"name": name, "kind": srec["kind"], "provider": srec["provider"], "host": ep.get("host")}
                entry.update(port=ep.get("port"), pids=[r["pid"] for r in srec.get("pids", [])], healthy=False)
                entry["detail"] = str(e)
            out.append({"stack": rec["id"], "shared": rec.get("shared", False), **entry})
    return out


def recorded_service(name: str) -> Service:
    """The running service called `name` in any recorded stack (for `labkit logs`), or UnknownService."""
    records = [rec for _, rec in all_records() if isinstance(rec, dict)]
    for rec in records:
        if name in rec["services"]:
            return restore(rec["services"][name])
    names = sorted({n for rec in records for n in rec["services"]})
    raise UnknownService(
        f"no running service named '{name}' (running: {', '.join(names) or 'none'}). `labkit status` lists them."
    )
