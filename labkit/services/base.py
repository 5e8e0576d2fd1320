"""The service contract every provider implements: Endpoint, Health and Service."""

from __future__ import annotations

import abc
import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urlencode


@dataclass(frozen=True)
class Endpoint:
    """Where a running service answers. A plain value: safe to print, store as JSON and compare.

    For Postgres `dsn` is a libpq URL; for Cassandra `contact_points` and `local_dc` are in `extra`.
    On a shared (external) Postgres `extra["schema"]` is the learner's namespace: the DSN carries
    `options=-c search_path=<schema>`, so every connection opened from it (labkit's, a lesson's, a
    learner's own psycopg.connect(dsn)) creates and drops tables only inside that schema.
    """

    kind: str
    name: str
    provider: str
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    database: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def dsn(self) -> str | None:
        if self.kind != "postgres":
            return None
        auth = quote(self.user or "postgres")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        url = f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.database or 'postgres')}"
        params = dict(self.extra.get("dsn_params") or {})
        if self.extra.get("schema"):
            search_path = f"-c search_path={self.extra['schema']}"
            params["options"] = " ".join(filter(None, [params.get("options"), search_path]))
        return f"{url}?{urlencode(params, quote_via=quote)}" if params else url

    @property
    def postgres_dsn(self) -> str:
        """The libpq URL of a Postgres endpoint (``dsn``, typed ``str``); BadParameter for any other kind."""
        dsn = self.dsn
        if dsn is None:
            from labkit.errors import BadParameter

            raise BadParameter(f"{self.kind} '{self.name}' has no DSN: pass a Postgres endpoint")
        return dsn

    @property
    def contact_points(self) -> list[str]:
        return list(self.extra.get("contact_points", [self.host]))

    @property
    def local_dc(self) -> str | None:
        return self.extra.get("local_dc")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.kind == "postgres":
            d["dsn"] = self.dsn
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Endpoint:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_int(name: str, value: Any, lo: int, hi: int, hint: str = "") -> int:
    """`value` as an int within [lo, hi], else BadParameter naming the range (bools and floats are refused)."""
    from labkit.errors import BadParameter

    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise BadParameter(f"{name}={value!r}: give a whole number from {lo} to {hi}{hint}") from None
    if not lo <= n <= hi:
        raise BadParameter(f"{name}={n}: use {lo} to {hi}{hint}")
    return int(n)


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ok


class Service(abc.ABC):
    """One server (or one cluster, for Cassandra) that a provider runs or points at.

    Use it as a context manager when you own it: `with LocalPostgres("pg") as pg: pg.endpoint.dsn`.
    """

    kind: ClassVar[str]
    provider: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name
        self._endpoint: Endpoint | None = None

    # lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def start(self) -> Endpoint:
        """Start the server and wait until it answers a real request; return its endpoint."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server and every process it owns. Calling it twice is harmless."""

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            from labkit.errors import NotRunning

            raise NotRunning(f"{self.kind} '{self.name}' is not started: call start() or use labkit.stack()")
        return self._endpoint

    @abc.abstractmethod
    def health(self) -> Health:
        """Ask the server a real question (a query, a `version` command) and say whether it answered."""

    @abc.abstractmethod
    def version(self) -> str:
        """The real server's version string, as the server reports it."""

    def logs(self, lines: int = 50) -> str:
        return ""

    # fault injection -------------------------------------------------------------------------
    def kill(self) -> None:
        raise NotImplementedError(f"{self.provider} {self.kind} cannot be killed by labkit")

    def pause(self) -> None:
        raise NotImplementedError(f"{self.provider} {self.kind} cannot be paused by labkit")

    def resume(self) -> None:
        raise NotImplementedError(f"{self.provider} {self.kind} cannot be resumed by labkit")

    # records: how a stack file remembers a service so another process can attach or reap it --
    def to_record(self) -> dict[str, Any]:
        """What a stack record keeps of this service; providers add their processes, containers, layout."""
        return {
            "kind": self.kind,
            "name": self.name,
            "provider": self.provider,
            "endpoint": self.endpoint.to_dict() if self._endpoint else None,
        }

    def adopt(self, record: dict[str, Any]) -> None:
        """Take over a server that another process started, from its `to_record()`: afterwards health, logs,
        faults and stop act on that server. Providers extend the `_adopt` hook (processes, containers)."""
        self._adopt(record)

    def _adopt(self, record: dict[str, Any]) -> None:
        if record.get("endpoint"):
            self._endpoint = Endpoint.from_dict(record["endpoint"])

    def pids(self) -> list[dict[str, float]]:
        """Processes this service owns, as {"pid", "create_time"} pairs (local provider only)."""
        return []

    def remove_data(self) -> None:
        """Delete the server's data directory after stop(); services without data of their own keep nothing."""
        return None

    def status(self) -> dict[str, Any]:
        """What `labkit status` shows: where it answers, its processes, whether it answers a real request now,
        and what a learner connects with (a DSN, contact points)."""
        ep = self._endpoint
        entry: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "provider": self.provider,
            "host": ep.host if ep else None,
            "port": ep.port if ep else None,
            "pids": [r["pid"] for r in self.pids()],
        }
        if self.kind == "postgres":
            entry["dsn"] = ep.dsn if ep else None
        if self.kind == "cassandra":
            extra = ep.extra if ep else {}
            entry.update(
                contact_points=extra.get("contact_points"),
                local_dc=extra.get("local_dc"),
                datacenters=extra.get("datacenters"),
            )
        try:
            entry["healthy"] = bool(self.health().ok)
        except Exception as e:  # noqa: BLE001 - a status line, never a crash
            entry["healthy"] = False
            entry["detail"] = str(e)
        return entry

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self._endpoint.host}:{self._endpoint.port}" if self._endpoint else "not started"
        return f"<{type(self).__name__} {self.name!r} {where}>"
