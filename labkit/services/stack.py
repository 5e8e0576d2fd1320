"""The Stack: the set of servers a notebook, a test run or `labkit up` uses, recorded so nothing is orphaned.

Every stack is a JSON record in `<labkit home>/stacks/`:
- `shared.json`: the stack `labkit up` starts in the background; it has no owner and lives until `labkit down`.
- `<id>.json`: a private stack owned by one Python process (a kernel, a test run). A watchdog process reaps its
  servers when that owner dies, even by SIGKILL; `reap_orphans()` does the same from any later labkit call.

`labkit.stack()` attaches to the shared stack's services when they are up, and starts the missing ones itself.

The records and reaping live in ``stack_records``, option checking in ``stack_options``; this module keeps the
Stack and ``stack()`` and re-exports the rest (``labkit.services.stack.X`` works for all of it).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import subprocess
import sys
import time
from typing import Any

from labkit import paths
from labkit.errors import BadParameter, LabkitError, UnknownService
from labkit.services import check_kind, choose_provider
from labkit.services._process import proc_ref
from labkit.services.base import Endpoint, Health, Service
from labkit.services.stack_options import NAME_RE, build, check_name, check_options, option_names
from labkit.services.stack_records import (
    SHARED_ID,
    _locked,
    all_records,
    down,
    is_stale,
    owner_alive,
    read_record,
    reap_orphans,
    reap_record,
    record_alive_pids,
    record_path,
    recorded_service,
    restore,
    status,
    strays,
    write_record,
)

__all__ = [
    "SHARED_ID",
    "NAME_RE",
    "record_path",
    "read_record",
    "write_record",
    "all_records",
    "owner_alive",
    "record_alive_pids",
    "is_stale",
    "strays",
    "reap_record",
    "reap_orphans",
    "down",
    "option_names",
    "check_name",
    "check_options",
    "build",
    "Stack",
    "restore",
    "status",
    "recorded_service",
    "stack",
]

_open_stacks: set[Stack] = set()  # closed at interpreter exit (strong refs: an unnamed stack counts too)


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
