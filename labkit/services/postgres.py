"""Postgres: a real server as a local process (initdb + postgres) or a testcontainers container.

    with LocalPostgres("pg") as pg:
        psycopg.connect(pg.endpoint.dsn)

As root (Colab, CI) the server runs as an unprivileged user, because Postgres refuses to run as root.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from labkit import paths, profile
from labkit.errors import BadParameter, ServiceFailed
from labkit.services import _docker
from labkit.services._process import (
    LOOPBACK,
    LocalService,
    ManagedProcess,
    find_binary,
    give_to,
    new_password,
    reuse_or_pick_port,
    tail,
    unprivileged_user,
    wait_for,
)
from labkit.services.base import Endpoint, Health, check_int

PG_GLOBS = (
    "/usr/lib/postgresql/*/bin/{name}",
    "/usr/local/opt/postgresql*/bin/{name}",
    "/opt/homebrew/opt/postgresql*/bin/{name}",
    "/Applications/Postgres.app/Contents/Versions/*/bin/{name}",
)
PG_HINT = (
    "Install PostgreSQL: `apt-get install postgresql` (Debian/Ubuntu/Colab), `brew install postgresql@16` "
    "(macOS), or `conda install -c conda-forge postgresql` (conda, Binder)."
)
USER = "labkit"
DATABASE = "labkit"


def pg_binary(name: str) -> Path:
    return find_binary(name, [g.format(name=name) for g in PG_GLOBS], PG_HINT)


def fetch_value(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] | None = None) -> Any:
    """The first column of the first row of ``query`` (a count, a version, a sequence's value)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise ServiceFailed(f"Postgres returned no row for {query!r}")
    return row[0]


def query_version(endpoint: Endpoint, timeout: float = 3.0) -> str:
    with psycopg.connect(endpoint.postgres_dsn, connect_timeout=max(1, int(timeout))) as conn:
        return str(fetch_value(conn, "SHOW server_version"))


def query_health(endpoint: Endpoint, timeout: float = 2.0) -> Health:
    try:
        with psycopg.connect(endpoint.postgres_dsn, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1").fetchone()
        return Health(True, "answers SELECT 1")
    except psycopg.Error as e:
        return Health(False, f"no answer: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")


def check_options(
    port: Any, shared_buffers_mb: Any, max_connections: Any, settings: Any, password: Any
) -> tuple[int, int, dict[str, str]]:
    """Validated (shared_buffers_mb, max_connections, settings) for both providers."""
    if port is not None:
        check_int("port", port, 1024, 65535, " (or leave it out for a free port)")
    buffers = check_int(
        "shared_buffers_mb",
        shared_buffers_mb if shared_buffers_mb is not None else int(profile.pick(128, 64, 32)),
        1,
        65536,
        " MB (Postgres' shared_buffers)",
    )
    conns = check_int(
        "max_connections",
        max_connections,
        5,
        10_000,
        " (a lab needs 20 or more; lesson 10's 200 readers share a pool of connections)",
    )
    if settings is not None and (
        not isinstance(settings, dict)
        or not all(
            isinstance(k, str)
            and k.replace("_", "").replace(".", "").isalnum()
            and isinstance(v, (str, int, float))
            and "\n" not in str(v)
            for k, v in settings.items()
        )
    ):
        raise BadParameter(f"settings={settings!r}: give a dict of Postgres settings, e.g. {{'work_mem': '8MB'}}")
    if password is not None and (not isinstance(password, str) or not password or "\n" in password):
        raise BadParameter("password: give a non-empty one-line string, or leave it out for a generated one")
    return buffers, conns, {k: str(v) for k, v in (settings or {}).items()}


TEMPLATE_FORMAT = 1  # bump when the template's contents change (initdb flags, the databases in it)


def data_template(run_as: Any) -> Path:
    """A Postgres data directory made once per Postgres build and server user, then copied for every new server.

    It holds what initdb makes (user ``labkit``, SCRAM auth, UTF8, C locale) plus the ``labkit`` database,
    created in single-user mode (no port, no password on the wire). Each copy gets its own password on first
    start. Kept under the cache directory (``LABKIT_CACHE``), so ``labkit down`` leaves it; a new Postgres
    build gets a new template. Built in a private directory and renamed into place: a half-built template is
    never used, and two processes building at once both end with a complete one.
    """
    postgres = pg_binary("postgres")
    st = postgres.stat()
    owner = run_as.pw_uid if run_as is not None else os.getuid()
    build = f"{TEMPLATE_FORMAT}|{postgres.resolve()}|{st.st_size}|{st.st_mtime_ns}|{owner}"
    key = hashlib.sha256(build.encode()).hexdigest()[:16]
    root = paths.cache_dir() / "postgres-templates"
    final = root / key
    if (final / "data" / "PG_VERSION").exists() and (final / "password").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".build-{key}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        password = new_password()
        (tmp / "password").write_text(password + "\n")
        os.chmod(tmp / "password", 0o600)
        pwfile = tmp / "pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        give_to(tmp, run_as)
        kw: dict[str, Any] = {}
        if run_as is not None:
            kw.update(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
        initdb = [
            pg_binary("initdb"),
            "-D",
            tmp / "data",
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]
        single = [postgres, "--single", "-D", tmp / "data", "-c", "fsync=off", "postgres"]
        for argv, stdin, what in (
            (initdb, None, "initdb"),
            (single, f"CREATE DATABASE {DATABASE};\n", "creating the labkit database (postgres --single)"),
        ):
            res = subprocess.run(
                [str(a) for a in argv], input=stdin, capture_output=True, text=True, cwd=tmp, timeout=120, **kw
            )
            if res.returncode != 0 or "ERROR" in res.stderr:
                raise ServiceFailed(
                    f"{what} failed while preparing Postgres' data template in {tmp} (exit {res.returncode}):\n"
                    f"{(res.stdout + res.stderr)[-2000:]}\nCheck that this Postgres installation works "
                    f"(`{postgres} --version`), then run again."
                )
        pwfile.unlink()
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: use its template
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class LocalPostgres(LocalService):
    """A real `postgres` process with its own data directory, a free port on 127.0.0.1 and a password."""

    kind = "postgres"

    def __init__(
        self,
        name: str = "postgres",
        *,
        port: int | None = None,
        shared_buffers_mb: int | None = None,
        max_connections: int = 200,
        settings: dict[str, str] | None = None,
        password: str | None = None,
        instance_dir: Path | None = None,
    ) -> None:
        super().__init__(name, instance_dir=instance_dir)
        self.shared_buffers_mb, self.max_connections, self.settings = check_options(
            port, shared_buffers_mb, max_connections, settings, password
        )
        self.requested_port = port
        self.port = port
        self.password = password or new_password()
        self.run_as = unprivileged_user()

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def options(self) -> dict[str, Any]:
        return {
            "port": self.requested_port,
            "shared_buffers_mb": self.shared_buffers_mb,
            "max_connections": self.max_connections,
            "settings": self.settings,
            "password": self.password,
        }

    def _copy_template(self) -> str:
        """Make this server's data directory from the cached template; returns the template's password.

        Why: initdb writes ~1,000 files and fsyncs nothing here but still costs most of a cold start
        (about 0.8 s of 1.4 s on 2 cores); copying its result costs a tenth of that."""
        tmpl = data_template(self.run_as)
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmpl / "data", self.data_dir, symlinks=True)
        give_to(self.dir, self.run_as)
        return (tmpl / "password").read_text().strip()

    def _set_password(self, ep: Endpoint) -> None:
        """Give the copied cluster this server's own password (sent as a SCRAM verifier, never in clear)."""
        with psycopg.connect(ep.postgres_dsn, autocommit=True, connect_timeout=5) as conn:
            verifier = conn.pgconn.encrypt_password(self.password.encode(), USER.encode(), b"scram-sha-256")
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(USER), verifier.decode()))

    def _stat_statements_available(self) -> bool:
        try:
            out = subprocess.run(
                [str(pg_binary("pg_config")), "--pkglibdir"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            return bool(out) and any(Path(out).glob("pg_stat_statements.*"))
        except Exception:  # noqa: BLE001 - no pg_config: run without the extension
            return False

    def start(self) -> Endpoint:
        if self.running():
            return self.endpoint
        fresh = not (self.data_dir / "PG_VERSION").exists()
        template_password = self._copy_template() if fresh else self.password
        # Backends of a server that was SIGKILLed may still hold its shared memory for a moment.
        wait_for(f"old Postgres '{self.name}' processes to exit", lambda: not self._stale_postmaster(), 15)
        self.port = reuse_or_pick_port(self.requested_port, self.port, what=f"Postgres '{self.name}'")
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            "shared_buffers": f"{self.shared_buffers_mb}MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "dynamic_shared_memory_type": "posix",
            **self.settings,
        }
        if self._stat_statements_available():
            settings.setdefault("shared_preload_libraries", "pg_stat_statements")
        argv: list[Any] = [pg_binary("postgres"), "-D", self.data_dir]
        for k, v in settings.items():
            argv += ["-c", f"{k}={v}"]
        self.procs = [ManagedProcess(argv, self.log_path, user=self.run_as, cwd=self.dir)]
        self._restored_refs = []
        ep = self._endpoint = Endpoint(
            kind=self.kind,
            name=self.name,
            provider=self.provider,
            host=LOOPBACK,
            port=self.port,
            user=USER,
            password=template_password,
            database=DATABASE,
        )
        proc = self.procs[0]
        try:
            wait_for(
                f"Postgres '{self.name}' on {LOOPBACK}:{self.port} to answer a query",
                lambda: query_health(ep, timeout=1.0).ok,
                timeout=60,
                alive=proc.alive,
                on_fail=lambda: tail(self.log_path),
            )
            if fresh:
                self._set_password(ep)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        self._endpoint = Endpoint(
            kind=self.kind,
            name=self.name,
            provider=self.provider,
            host=LOOPBACK,
            port=self.port,
            user=USER,
            password=self.password,
            database=DATABASE,
            extra={"data_dir": str(self.data_dir)},
        )
        return self._endpoint

    def _stale_postmaster(self) -> bool:
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 0)
            return True
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False

    def _stop_signal(self) -> int:
        return signal.SIGINT  # Postgres "fast" shutdown: roll back sessions, checkpoint, exit.

    def query_health(self) -> Health:
        return query_health(self.endpoint)

    def query_version(self) -> str:
        return query_version(self.endpoint)


class DockerPostgres(_docker.DockerService):
    """testcontainers' PostgresContainer on the configured image (LABKIT_IMAGE_POSTGRES, default the official
    postgres image), published on 127.0.0.1 only, with a generated password. The official image's contract:
    POSTGRES_USER/PASSWORD/DB, initdb on the first start, port 5432; server settings as `-c` arguments."""

    kind = "postgres"
    IMAGE_KIND = "postgres"

    def __init__(
        self,
        name: str = "postgres",
        *,
        port: int | None = None,
        shared_buffers_mb: int | None = None,
        max_connections: int = 200,
        settings: dict[str, str] | None = None,
        password: str | None = None,
        image: str | None = None,
    ) -> None:
        super().__init__(name, image)
        # port: the container's is published on a free host port (port= is for the local provider)
        self.shared_buffers_mb, self.max_connections, self.settings = check_options(
            port, shared_buffers_mb, max_connections, settings, password
        )
        self.password = password or new_password()

    def start(self) -> Endpoint:
        _docker.require_docker()  # testcontainers talks to the daemon as soon as a container is built
        again = self._restart_stopped(5432, "a query", 120)
        if again is not None:
            return again
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.8
            from testcontainers.postgres import PostgresContainer

        # as the local provider: pg_stat_statements preloaded (the official image and CI's both ship it)
        settings = {
            "max_connections": str(self.max_connections),
            "shared_buffers": f"{self.shared_buffers_mb}MB",
            "shared_preload_libraries": "pg_stat_statements",
            **self.settings,
        }
        args = ["postgres"] + [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
        c = PostgresContainer(self.image, username=USER, password=self.password, dbname=DATABASE, driver=None)
        c.with_command(args)
        return self._launch(c, 5432, "a query", 120, user=USER, password=self.password, database=DATABASE)

    def query_health(self) -> Health:
        return query_health(self.endpoint)

    def query_version(self) -> str:
        return query_version(self.endpoint)


LOCAL = LocalPostgres
DOCKER = DockerPostgres
