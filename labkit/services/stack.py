"""The Stack: the set of servers a notebook, a test run or `labkit up` uses, recorded so nothing is orphaned.

Every stack is a JSON record in `<labkit home>/stacks/`:
- `shared.json`: the stack `labkit up` starts in the background; it has no owner and lives until `labkit down`.
- `<id>.json`: a private stack owned by one Python process (a kernel, a test run). A watchdog process reaps its
  servers when that owner dies, even by SIGKILL; `reap_orphans()` does the same from any later labkit call.

`labkit.stack()` attaches to the shared stack's services when they are up, and starts the missing ones itself.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import inspect
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from labkit import paths
from labkit.errors import BadParameter, LabkitError, StateError, UnknownService
from labkit.services import check_kind, choose_provider, service_class
from labkit.services._process import proc_ref, reap, same_process
from labkit.services.base import Endpoint, Health, Service

SHARED_ID = "shared"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # a name becomes part of a directory and a container name
_open_stacks: set[Stack] = set()  # closed at interpreter exit (strong refs: an unnamed stack counts too)


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


# options -------------------------------------------------------------------------------------
def option_names(kind: str) -> list[str]:
    """The options a service kind takes (the same for the local and docker providers)."""
    names: set[str] = set()
    for prov in ("local", "docker"):
        for p in inspect.signature(service_class(kind, prov).__init__).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "instance_dir":
                names.add(p.name)
    return sorted(names)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadParameter(
            f"service name {name!r}: use 1-63 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (e.g. name='cache-2')"
        )
    return name


def check_options(kind: str, provider: str, options: Any) -> dict[str, Any]:
    """Refuse options `kind` does not take, by name, listing the valid ones (nothing is silently ignored)."""
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise BadParameter(
            f"options for {kind} must be a dict of option names to values, got {options!r} "
            f"(e.g. {{'memory_mb': 64}}); valid options: {', '.join(option_names(kind))}"
        )
    if provider == "external":
        if options:
            raise BadParameter(
                f"the external provider points at a {kind} that already runs: it cannot apply "
                f"{', '.join(f'{k}=' for k in sorted(options))}. Drop these options, or run this "
                f"{kind} yourself with provider='local'"
            )
        return options
    valid = option_names(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise BadParameter(
            f"{kind} has no option {', '.join(repr(u) for u in unknown)}: valid options are {', '.join(valid)}"
        )
    for k, v in options.items():  # no option of any kind means anything as NaN or infinity
        if isinstance(v, float) and not math.isfinite(v):
            raise BadParameter(f"{kind} option {k}={v}: give a finite number")
    return options


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits a constructor's type hint (int, float, str, dict, list, Path, Optional, Union)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        try:
            import operator

            operator.index(value)
            return not isinstance(value, bool)
        except TypeError:
            return False
    if origin in (dict, list, tuple):
        return isinstance(value, origin)
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def _check_types(kind: str, cls: type[Service], options: dict[str, Any]) -> None:
    try:
        params = inspect.signature(cls, eval_str=True).parameters  # the constructor's, annotations resolved
        hints = {n: p.annotation for n, p in params.items() if p.annotation is not inspect.Parameter.empty}
    except Exception:  # noqa: BLE001 - unresolvable hints: the constructor checks on its own
        return
    for k, v in options.items():
        if k in hints and not _matches(v, hints[k]):
            want = str(hints[k]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise BadParameter(
                f"{kind} option {k}={v!r}: expected {want}; valid options: {', '.join(option_names(kind))}"
            )


def build(kind: str, name: str, provider: str, options: dict[str, Any]) -> Service:
    """Construct (not start) a service: every option is checked here, before anything runs."""
    kind = check_kind(kind)
    check_name(name)
    check_options(kind, provider, options)
    cls = service_class(kind, provider)
    if provider != "external":
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            other = sorted(set(options) - set(params))
            if other:
                raise BadParameter(
                    f"{kind} option {', '.join(other)} does not apply to the {provider} provider "
                    f"(the {'docker' if provider == 'local' else 'local'} provider's only): drop it"
                )
        _check_types(kind, cls, options)
    try:
        if provider == "external":
            from labkit.services.external import ExternalService

            return ExternalService(name, kind=kind)
        return cls(name, **options)
    except LabkitError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # a value of the wrong type deep in a constructor
        raise BadParameter(
            f"{kind} options {options!r} are not valid ({e}): give numbers as int/float and "
            f"text as str; valid options: {', '.join(option_names(kind))}"
        ) from None


# the Stack ---------------------------------------------------------------------------------
class Stack:
    """Servers for one notebook or test run. `add` starts one; `service`/`endpoint` look one up.

    It stops only what it started itself; services attached from the shared stack are left running.
    """

    def __init__(self, stack_id: str, *, shared: bool, provider: str | None = None) -> None:
        self.id = stack_id
        self.shared = shared
        self.provider = choose_provider(provider)
        self.services: dict[str, Service] = {}
        self.owned: set[str] = set()
        self.closed = False
        self.path = record_path(stack_id)

    # creation ------------------------------------------------------------------------------
    @classmethod
    def private(cls, provider: str | None = None) -> Stack:
        st = cls(f"{os.getpid()}-{secrets.token_hex(3)}", shared=False, provider=provider)
        with _locked():
            write_record(st.path, st._record())
        _open_stacks.add(st)
        return st

    @classmethod
    def open_shared(cls, provider: str | None = None) -> Stack:
        """The shared stack of `labkit up`: loaded when recorded (stale records are cleaned), else created."""
        path = record_path(SHARED_ID)
        with _locked():
            rec: dict[str, Any] | None = None
            if path.exists():
                rec = read_record(path)
                if is_stale(rec):
                    reap_record(rec)
                    path.unlink(missing_ok=True)
                    rec = None
            st = cls(SHARED_ID, shared=True, provider=provider or (rec or {}).get("provider"))
            if rec is not None:
                for name, srec in rec["services"].items():
                    st.services[name] = restore(srec)
                    st.owned.add(name)
            write_record(path, st._record())
        return st

    def _record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "shared": self.shared,
            "provider": self.provider,
            "owner": None if self.shared else proc_ref(os.getpid()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "watchdog": getattr(self, "_watchdog_ref", None),
            "services": {n: s.to_record() for n, s in self.services.items() if n in self.owned},
        }

    def save(self) -> None:
        """Re-record the owned services (after a restart their PIDs changed)."""
        if not self.closed:
            with _locked():
                write_record(self.path, self._record())

    def _spawn_watchdog(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labkit.services._watchdog", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "LABKIT_HOME": str(paths.home())},
        )
        self._watchdog_ref = proc_ref(proc.pid)
        self._watchdog = proc
        self.save()

    # services ------------------------------------------------------------------------------
    def add(self, kind: str, name: str | None = None, *, provider: str | None = None, **options: Any) -> Service:
        """Start a server of `kind` (postgres, memcached, cassandra) named `name` and record it."""
        if self.closed:
            raise LabkitError("this stack is closed: call labkit.stack() for a new one")
        kind = check_kind(kind)
        name = check_name(kind if name is None else name)
        if name in self.services:
            raise UnknownService(
                f"this stack already has a service named '{name}': pass another name=, "
                f"e.g. st.add('{kind}', name='{name}-2')"
            )
        prov = choose_provider(provider or self.provider)
        svc = build(kind, name, prov, options)
        self.services[name] = svc
        self.owned.add(name)
        if not self.shared and getattr(self, "_watchdog", None) is None:
            self._spawn_watchdog()  # only stacks that own servers need one
        try:
            self.save()  # recorded before it starts: a crash mid-start still leaves a trail to reap
            svc.start()
        except BaseException:
            with contextlib.suppress(Exception):
                svc.stop()
            self.services.pop(name, None)
            self.owned.discard(name)
            self.save()
            raise
        self.save()
        return svc

    def attach(self, name: str, svc: Service) -> None:
        self.services[name] = svc

    def remove(self, name: str) -> None:
        """Stop (if owned) and forget one service."""
        svc = self.service(name)
        if name in self.owned:
            svc.stop()
            svc.remove_data()
            self.owned.discard(name)
        del self.services[name]
        self.save()

    def restart(self, name: str) -> Endpoint:
        """Start a service again after kill() or stop() (same data directory) and re-record its PIDs."""
        ep = self.service(name).start()
        self.save()
        return ep

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            have = ", ".join(self.services) or "none"
            raise UnknownService(
                f"no service named '{name}' in this stack (it has: {have}). "
                f"Start it with st.add('{name.split('-')[0]}', name='{name}')."
            ) from None

    def endpoint(self, name: str) -> Endpoint:
        return self.service(name).endpoint

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return {n: s.endpoint for n, s in self.services.items()}

    def health(self) -> dict[str, Health]:
        return {n: s.health() for n, s in self.services.items()}

    def __getattr__(self, item: str) -> Service:
        if item.startswith("_") or item not in ("postgres", "memcached", "cassandra"):
            raise AttributeError(item)
        return self.service(item)

    def __getitem__(self, name: str) -> Service:
        return self.service(name)

    # shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop what this stack started and forget its record. Attached shared services keep running."""
        if self.closed:
            return
        for name in list(self.owned):
            svc = self.services[name]
            with contextlib.suppress(Exception):
                svc.stop()
            svc.remove_data()
        self.owned.clear()
        self.closed = True
        with _locked():
            self.path.unlink(missing_ok=True)
        wd = getattr(self, "_watchdog", None)
        if wd is not None:
            wd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                wd.wait(timeout=2)
        _open_stacks.discard(self)

    stop = close

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = [
            f"{n}={'own' if n in self.owned else 'attached'}:{s.endpoint.host}:{s.endpoint.port}"
            for n, s in self.services.items()
            if s._endpoint
        ]
        return f"<Stack {self.id} {self.provider} {' '.join(parts)}>"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{n}</td><td>{s.provider}</td><td>{s.endpoint.host}:{s.endpoint.port}</td>"
            f"<td>{'started here' if n in self.owned else 'attached (labkit up)'}</td></tr>"
            for n, s in self.services.items()
            if s._endpoint
        )
        return f"<table><tr><th>service</th><th>provider</th><th>address</th><th>owner</th></tr>{rows}</table>"


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


def _compatible(srec: dict[str, Any], options: dict[str, Any]) -> bool:
    have = srec.get("options", {})
    return all(k not in have or have[k] == v for k, v in options.items())


def stack(*kinds: str, provider: str | None = None, attach: bool = True, **options: dict[str, Any]) -> Stack:
    """Servers for a notebook: attach to `labkit up`'s shared stack where it has them, start the rest here.

        st = labkit.stack("postgres", "memcached")
        st = labkit.stack("cassandra", cassandra={"nodes": "us:2,eu:1"})

    `options` maps a kind to its constructor options. What this call starts is stopped by st.close(), at
    interpreter exit, or by a watchdog if this process is killed.
    """
    kinds = tuple(check_kind(k) for k in (kinds or ("postgres", "memcached")))
    if len(set(kinds)) != len(kinds):
        raise BadParameter(
            f"labkit.stack{kinds}: each kind once; for a second server of a kind use st.add(kind, name='<kind>-2')"
        )
    unknown = set(options) - set(kinds)
    if unknown:
        raise UnknownService(
            f"options given for {', '.join(sorted(unknown))} which is not among the requested "
            f"services {kinds}: add it to the list or drop its options"
        )
    prov = choose_provider(provider)
    for kind in kinds:  # every option checked before anything starts
        build(kind, kind, prov, options.get(kind, {}))
    reap_orphans()
    shared: dict[str, Any] | None = None
    if attach and record_path(SHARED_ID).exists():
        rec = read_record(record_path(SHARED_ID))
        if not is_stale(rec):
            shared = rec
    st = Stack.private(provider)
    try:
        for kind in kinds:
            srec = (shared or {}).get("services", {}).get(kind)
            # an external service is not attached: its namespace belongs to this learner and notebook
            if srec and srec.get("provider") != "external" and _compatible(srec, options.get(kind, {})):
                svc = restore(srec)
                if svc.health().ok:
                    st.attach(kind, svc)
                    continue
            st.add(kind, **options.get(kind, {}))
    except BaseException:
        st.close()
        raise
    return st


@atexit.register
def _close_open_stacks() -> None:
    for st in list(_open_stacks):
        with contextlib.suppress(Exception):
            st.close()
