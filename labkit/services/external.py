"""Servers that already run elsewhere (a class cluster, a managed database).

Endpoints come from environment variables, else from a JSON config file (`LABKIT_CONFIG`, default
`<labkit home>/external.json`):

    LABKIT_POSTGRES_DSN=postgresql://user:pw@db.example:5432/course
    LABKIT_MEMCACHED=cache.example:11211
    LABKIT_CASSANDRA=10.0.0.5,10.0.0.6:9042      LABKIT_CASSANDRA_DC=us

    {"postgres": {"dsn": "..."}, "memcached": {"address": "host:port"},
     "cassandra": {"contact_points": ["host"], "port": 9042, "local_dc": "us"}}

labkit never stops, kills or drops what it did not create: stop() only forgets the endpoint. For Postgres it
works inside its own schema (`labkit`, created if absent, via the DSN's search_path); for memcached it keys under
the `labkit:` prefix (Endpoint.extra["key_prefix"]).
"""
from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote, urlsplit

from labkit import paths
from labkit.errors import BadParameter, NotRunning, ProviderUnavailable
from labkit.services.base import Endpoint, Health, Service

ENV = {"postgres": "LABKIT_POSTGRES_DSN", "memcached": "LABKIT_MEMCACHED", "cassandra": "LABKIT_CASSANDRA"}
SCHEMA = "labkit"


def _config() -> dict[str, Any]:
    path = os.environ.get("LABKIT_CONFIG") or str(paths.home() / "external.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise BadParameter(f"external config {path} is not valid JSON ({e}): fix it or remove it") from None
    if not isinstance(data, dict):
        raise BadParameter(f"external config {path} must be a JSON object keyed by service kind")
    return data


def _host_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", str(default_port))
    try:
        return host, int(port)
    except ValueError:
        raise BadParameter(f"{what}: '{text}' is not host:port (e.g. cache.example:11211)") from None


def resolve(kind: str, name: str) -> Endpoint:
    """The endpoint of an external `kind` from the environment or the config file; a clear error if absent."""
    cfg = _config().get(kind, {})
    env = os.environ.get(ENV[kind], "").strip()
    if kind == "postgres":
        dsn = env or cfg.get("dsn", "")
        if not dsn:
            raise ProviderUnavailable(f"no external Postgres configured: set {ENV[kind]}=postgresql://user:pw@host:port/db "
                                      "or add {\"postgres\": {\"dsn\": ...}} to the external config")
        u = urlsplit(dsn)
        if u.scheme not in ("postgres", "postgresql") or not u.hostname:
            raise BadParameter(f"{ENV[kind]}: '{dsn}' is not a postgresql:// URL")
        return Endpoint(kind, name, "external", u.hostname, u.port or 5432, unquote(u.username or "") or None,
                        unquote(u.password or "") or None, (u.path or "/postgres").lstrip("/") or "postgres",
                        extra={"schema": SCHEMA})
    if kind == "memcached":
        text = env or cfg.get("address", "")
        if not text:
            raise ProviderUnavailable(f"no external memcached configured: set {ENV[kind]}=host:port")
        host, port = _host_port(text, 11211, ENV[kind])
        return Endpoint(kind, name, "external", host, port, extra={"key_prefix": "labkit:"})
    if kind == "cassandra":
        if env:
            hosts = [h.strip() for h in env.split(",") if h.strip()]
            port = 9042
            if hosts and ":" in hosts[-1]:
                hosts[-1], port = _host_port(hosts[-1], 9042, ENV[kind])
            local_dc = os.environ.get("LABKIT_CASSANDRA_DC")
        else:
            hosts, port, local_dc = list(cfg.get("contact_points", [])), int(cfg.get("port", 9042)), cfg.get("local_dc")
        if not hosts:
            raise ProviderUnavailable(f"no external Cassandra configured: set {ENV[kind]}=host1,host2[:port] "
                                      "and LABKIT_CASSANDRA_DC=<local datacenter>")
        return Endpoint(kind, name, "external", hosts[0], port,
                        extra={"contact_points": hosts, "local_dc": local_dc, "port": port})
    raise BadParameter(f"the external provider does not know '{kind}'")


class ExternalService(Service):
    """A server labkit does not own: it checks health and version, and never stops or drops anything."""

    provider = "external"

    def __init__(self, name: str, *, kind: str, **_: Any) -> None:
        super().__init__(name)
        self.kind = kind  # type: ignore[misc]

    def start(self) -> Endpoint:
        ep = resolve(self.kind, self.name)
        if self.kind == "postgres":
            import psycopg

            try:
                with psycopg.connect(ep.dsn, connect_timeout=5, autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            except psycopg.Error as e:
                raise ProviderUnavailable(f"external Postgres {ep.host}:{ep.port} does not answer or refuses "
                                          f"labkit's schema: {e}".strip()) from None
        self._endpoint = ep
        h = self.health()
        if not h.ok:
            self._endpoint = None
            raise ProviderUnavailable(f"external {self.kind} at {ep.host}:{ep.port}: {h.detail}. "
                                      "Check the address and that the server runs.")
        return ep

    def stop(self) -> None:
        self._endpoint = None  # not ours to stop

    def health(self) -> Health:
        if self._endpoint is None:
            return Health(False, "not configured")
        try:
            self.version()
            return Health(True, "answers")
        except Exception as e:  # noqa: BLE001
            return Health(False, f"no answer: {e}")

    def version(self) -> str:
        ep = self.endpoint
        if self.kind == "postgres":
            from labkit.services.postgres import query_version

            return query_version(ep)
        if self.kind == "memcached":
            from labkit.services.memcached import query_version as mc_version

            return mc_version(ep)
        from cassandra.cluster import Cluster

        cluster = Cluster(ep.contact_points, port=ep.port)
        try:
            return str(cluster.connect().execute("SELECT release_version FROM system.local").one()[0])
        finally:
            cluster.shutdown()

    def kill(self) -> None:
        raise NotRunning(f"external {self.kind} '{self.name}' is not labkit's to kill: fault experiments need the "
                         "local or docker provider")

    pause = resume = kill

    def to_record(self) -> dict[str, Any]:
        rec = super().to_record()
        rec["options"] = {"kind": self.kind}
        return rec
