"""Servers that already run elsewhere (a class cluster, a managed database).

Endpoints come from environment variables, else from a JSON config file (`LABKIT_CONFIG`, default
`<labkit home>/external.json`):

    LABKIT_POSTGRES_DSN=postgresql://user:pw@db.example:5432/course
    LABKIT_MEMCACHED=cache.example:11211
    LABKIT_CASSANDRA=10.0.0.5,10.0.0.6:9042      LABKIT_CASSANDRA_DC=us

    {"postgres": {"dsn": "..."}, "memcached": {"address": "host:port"},
     "cassandra": {"contact_points": ["host"], "port": 9042, "local_dc": "us"}}

labkit never stops, kills or drops what it did not create: stop() only forgets the endpoint. On a server a class
shares, every learner works inside a namespace (:func:`namespace`: `LABKIT_NAMESPACE`, else `lk_<user>__<notebook>`):

- Postgres: a schema of that name, created if missing; the endpoint's DSN carries `options=-c search_path=<ns>`
  (and only that schema), so every connection opened from it creates, reads and drops tables inside it alone.
- memcached: every key a lesson, a MetaClient or a load driver writes is prefixed `<ns>:`; `flush_all` is refused.
- Cassandra: keyspaces are named `<ns>_<name>` (Endpoint.extra["keyspace_prefix"], :func:`keyspace`).

`labkit down --purge` (:func:`purge`) removes the learner's own namespace(s) and nothing else.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from labkit import config, paths
from labkit.errors import BadParameter, NotRunning, ProviderUnavailable
from labkit.services.base import Endpoint, Health, Service

ENV = {"postgres": "LABKIT_POSTGRES_DSN", "memcached": "LABKIT_MEMCACHED", "cassandra": "LABKIT_CASSANDRA"}
FIELD = {"postgres": "postgres_dsn", "memcached": "memcached", "cassandra": "cassandra"}  # in labkit.config
NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a Postgres schema, a key prefix and a keyspace prefix


# namespaces -----------------------------------------------------------------------------------
def _slug(text: str, limit: int) -> str:
    """Lower-case [a-z0-9_] with single underscores (so "__" can separate parts), at most `limit` long."""
    s = re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")
    if len(s) > limit:  # keep distinct long names distinct
        s = s[: limit - 7].rstrip("_") + "_" + hashlib.sha1(text.encode()).hexdigest()[:6]
    return s


def learner() -> str:
    """Who is running: the JupyterHub user, else the login name."""
    if os.environ.get("JUPYTERHUB_USER"):
        return os.environ["JUPYTERHUB_USER"]
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (some containers)
        return f"uid{os.getuid()}"


def notebook() -> str:
    """The notebook (LABKIT_NOTEBOOK; Jupyter sets JPY_SESSION_NAME in the kernel), else the script being run."""
    path = (
        config.current().notebook
        or os.environ.get("JPY_SESSION_NAME")
        or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    )
    stem = Path(path).stem if path and not path.startswith("-") else ""
    return stem or "python"


def user_prefix() -> str:
    """The start every derived namespace of this learner shares (what `labkit down --purge` looks for)."""
    return f"lk_{_slug(learner(), 12) or 'learner'}__"


def namespace() -> str:
    """This learner's namespace: LABKIT_NAMESPACE if set, else lk_<user>__<notebook>."""
    explicit = config.current().namespace
    if explicit:
        if not NAMESPACE_RE.match(explicit):
            raise BadParameter(
                f"LABKIT_NAMESPACE={explicit!r}: use 1-32 characters, lower-case letters, digits "
                "and _, starting with a letter (e.g. LABKIT_NAMESPACE=alice_lab09)"
            )
        return explicit
    return user_prefix() + (_slug(notebook(), 14) or "python")


def keyspace(endpoint: Endpoint, name: str) -> str:
    """The Cassandra keyspace a lesson should use for `name`: namespaced on a shared (external) cluster."""
    prefix = endpoint.extra.get("keyspace_prefix", "")
    ks = f"{prefix}{name}"
    if not re.match(r"^[A-Za-z0-9_]{1,48}$", ks):
        raise BadParameter(f"keyspace {ks!r}: Cassandra allows 1-48 letters, digits and _; use a shorter name")
    return ks


def _config() -> dict[str, Any]:
    path = str(config.current().external_config or paths.home() / "external.json")
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
    cfgenv = config.current()
    env = (getattr(cfgenv, FIELD[kind]) or "").strip()
    if kind == "postgres":
        dsn = env or cfg.get("dsn", "")
        if not dsn:
            raise ProviderUnavailable(
                f"no external Postgres configured: set "
                f"{ENV[kind]}=postgresql://user:pw@host:port/db "
                'or add {"postgres": {"dsn": ...}} to the external config'
            )
        try:
            u = urlsplit(dsn)
            port = u.port or 5432
        except ValueError:
            u, port = None, 0
        if u is None or u.scheme not in ("postgres", "postgresql") or not u.hostname:
            raise BadParameter(
                f"{ENV[kind]}: '{dsn}' is not a postgresql:// URL (e.g. postgresql://student:pw@db.example:5432/course)"
            )
        ns = namespace()
        return Endpoint(
            kind,
            name,
            "external",
            u.hostname,
            port,
            unquote(u.username or "") or None,
            unquote(u.password or "") or None,
            unquote((u.path or "/postgres").lstrip("/")) or "postgres",
            extra={"schema": ns, "namespace": ns, "dsn_params": dict(parse_qsl(u.query))},
        )
    if kind == "memcached":
        text = env or cfg.get("address", "")
        if not text:
            raise ProviderUnavailable(f"no external memcached configured: set {ENV[kind]}=host:port")
        host, port = _host_port(text, 11211, ENV[kind])
        ns = namespace()
        return Endpoint(kind, name, "external", host, port, extra={"key_prefix": f"{ns}:", "namespace": ns})
    if kind == "cassandra":
        if env:
            hosts = [h.strip() for h in env.split(",") if h.strip()]
            port = 9042
            if hosts and ":" in hosts[-1]:
                hosts[-1], port = _host_port(hosts[-1], 9042, ENV[kind])
            local_dc = cfgenv.cassandra_dc
        else:
            hosts, port, local_dc = list(cfg.get("contact_points", [])), int(cfg.get("port", 9042)), cfg.get("local_dc")
        if not hosts:
            raise ProviderUnavailable(
                f"no external Cassandra configured: set {ENV[kind]}=host1,host2[:port] "
                "and LABKIT_CASSANDRA_DC=<local datacenter>"
            )
        ns = namespace()
        return Endpoint(
            kind,
            name,
            "external",
            hosts[0],
            port,
            extra={
                "contact_points": hosts,
                "local_dc": local_dc,
                "port": port,
                "keyspace_prefix": f"{ns}_",
                "namespace": ns,
            },
        )
    raise BadParameter(f"the external provider does not know '{kind}'")


_PREFIX_USERS: dict[tuple[str, int], int] = {}


def _use_prefix(ep: Endpoint, delta: int) -> None:
    """While an external memcached is in use, every client of its address keys under the namespace."""
    from labkit.memcache_meta import register_prefix

    n = _PREFIX_USERS.get(ep.address, 0) + delta
    if n > 0:
        _PREFIX_USERS[ep.address] = n
        register_prefix(ep.address, ep.extra["key_prefix"])
    else:
        _PREFIX_USERS.pop(ep.address, None)
        register_prefix(ep.address, None)


class ExternalService(Service):
    """A server labkit does not own: it checks health and version, and never stops or drops anything."""

    provider = "external"

    def __init__(self, name: str, *, kind: str) -> None:
        super().__init__(name)
        from labkit.services import check_kind

        self.kind = check_kind(kind)  # type: ignore[misc]

    def start(self) -> Endpoint:
        ep = resolve(self.kind, self.name)
        if self.kind == "postgres":
            import psycopg
            from psycopg import sql

            try:
                with psycopg.connect(ep.postgres_dsn, connect_timeout=5, autocommit=True) as conn:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ep.extra["schema"])))
            except psycopg.Error as e:
                raise ProviderUnavailable(
                    f"external Postgres {ep.host}:{ep.port} does not answer or refuses the learner's schema "
                    f"{ep.extra['schema']!r}: {str(e).strip()}. Check the DSN; the instructor can allow schemas "
                    f"with GRANT CREATE ON DATABASE {ep.database} TO {ep.user}"
                ) from None
        self._endpoint = ep
        if self.kind == "memcached":
            _use_prefix(ep, +1)
        h = self.health()
        if not h.ok:
            self._endpoint = None
            raise ProviderUnavailable(
                f"external {self.kind} at {ep.host}:{ep.port}: {h.detail}. Check the address and that the server runs."
            )
        return ep

    def stop(self) -> None:
        if self._endpoint is not None and self.kind == "memcached":
            _use_prefix(self._endpoint, -1)
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

        cluster = Cluster(ep.contact_points, port=ep.port, connect_timeout=5)
        try:
            return str(cluster.connect().execute("SELECT release_version FROM system.local").one()[0])
        finally:
            cluster.shutdown()

    def kill(self) -> None:
        raise NotRunning(
            f"external {self.kind} '{self.name}' is not labkit's to kill: fault experiments need the "
            "local or docker provider"
        )

    pause = resume = kill

    def to_record(self) -> dict[str, Any]:
        rec = super().to_record()
        rec["options"] = {"kind": self.kind}
        return rec


# purge: `labkit down --purge` --------------------------------------------------------------------
def own_namespaces(names: list[str]) -> list[str]:
    """Which of `names` belong to this learner: LABKIT_NAMESPACE exactly when set, else lk_<user>__*."""
    if config.current().namespace:
        return [n for n in names if n == namespace()]
    return [n for n in names if n.startswith(user_prefix()) and len(n) > len(user_prefix())]


def memcached_keys(address: tuple[str, int], timeout: float = 10.0) -> list[bytes]:
    """Every key the server holds (`lru_crawler metadump all`, memcached >= 1.4.31), as stored."""
    for _ in range(50):
        with socket.create_connection(address, timeout=timeout) as s:
            s.sendall(b"lru_crawler metadump all\r\n")
            data = b""
            while not (
                data.endswith(b"END\r\n")
                or data.startswith((b"BUSY", b"ERROR", b"CLIENT_ERROR"))
                and data.endswith(b"\r\n")
            ):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        if data.startswith(b"BUSY"):  # another crawl runs: ask again shortly
            import time

            time.sleep(0.1)
            continue
        if not data.endswith(b"END\r\n"):
            raise ProviderUnavailable(
                f"memcached {address[0]}:{address[1]} cannot list its keys "
                f"({data[:80]!r}): it needs the LRU crawler (memcached 1.4.31+)"
            )
        return [
            unquote(line.split(b" ", 1)[0][4:].decode()).encode()
            for line in data.splitlines()
            if line.startswith(b"key=")
        ]
    raise ProviderUnavailable(f"memcached {address[0]}:{address[1]}: its LRU crawler stayed busy; try again")


def purge() -> dict[str, list[str]]:
    """Remove this learner's namespace(s) from the external servers that are configured: the schema(s)
    (DROP SCHEMA ... CASCADE), the memcached keys under the prefix, the Cassandra keyspaces. Nothing else."""
    out: dict[str, list[str]] = {"schemas": [], "keys": [], "keyspaces": []}
    try:
        ep = resolve("postgres", "postgres")
    except ProviderUnavailable:
        ep = None
    if ep is not None:
        import psycopg
        from psycopg import sql

        raw = dataclasses.replace(ep, extra={"dsn_params": ep.extra.get("dsn_params", {})})  # no search_path
        with psycopg.connect(raw.postgres_dsn, connect_timeout=5, autocommit=True) as conn:
            names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")]
            for ns in own_namespaces(names):
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(ns)))
                out["schemas"].append(ns)
    try:
        mep = resolve("memcached", "memcached")
    except ProviderUnavailable:
        mep = None
    if mep is not None:
        from labkit.memcache_meta import MetaClient

        keys = memcached_keys(mep.address)
        mine = {k.split(b":", 1)[0].decode(errors="replace") for k in keys if b":" in k}
        own = set(own_namespaces(sorted(mine)))
        with MetaClient(mep.address, key_prefix=b"") as mc:
            for k in keys:
                if b":" in k and k.split(b":", 1)[0].decode(errors="replace") in own:
                    mc.delete(k)
                    out["keys"].append(k.decode(errors="replace"))
    try:
        cep = resolve("cassandra", "cassandra")
    except ProviderUnavailable:
        cep = None
    if cep is not None:
        from cassandra.cluster import Cluster

        cluster = Cluster(cep.contact_points, port=cep.port, connect_timeout=5)
        try:
            session = cluster.connect()
            start = namespace() + "_" if config.current().namespace else user_prefix()
            for (ks,) in session.execute("SELECT keyspace_name FROM system_schema.keyspaces"):
                if ks.startswith(start) and len(ks) > len(start):
                    session.execute(f'DROP KEYSPACE IF EXISTS "{ks}"')
                    out["keyspaces"].append(ks)
        finally:
            cluster.shutdown()
    return out
