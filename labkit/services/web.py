"""Web servers as labkit services: gunicorn (pre-fork WSGI) and uvicorn (ASGI), real processes.

    st.add("web", name="sync", server="gunicorn", app="labkit.webapp.wsgi:app", workers=2, preload=True,
           env={"LABKIT_WEB_DSN": dsn})
    st.add("web", name="async", server="uvicorn", app="labkit.webapp.asgi:app", workers=1)

They are recorded in the stack like Postgres or memcached, so ``st.close()``, ``labkit down`` and the
watchdog of a killed kernel reap the master and its workers; the instance directory is on the command line
(gunicorn's ``--pid`` file, uvicorn's ``--app-dir``) so a stray worker is found by the process scan too.
The app runs as a local process whatever the provider of the databases: it is this course's own code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import psutil

from labkit import paths
from labkit.errors import BadParameter, BinaryNotFound
from labkit.services._process import LOOPBACK, LocalService, ManagedProcess, reuse_or_pick_port, tail, wait_for
from labkit.services.base import Endpoint, Health

SERVERS = ("gunicorn", "uvicorn")
_HINT = {"gunicorn": "pip install gunicorn", "uvicorn": "pip install uvicorn"}


def get_json(endpoint: Endpoint, path: str, timeout: float = 5.0) -> Any:
    """GET a path of a running server and decode its JSON answer (health checks, /stats)."""
    from labkit.webapp.httpclient import HttpConnection

    conn = HttpConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        r = conn.request("GET", path)
    finally:
        conn.close()
    if r.status != 200:
        raise ConnectionError(f"GET {path} answered HTTP {r.status}: {r.body[:200]!r}")
    return r.json()


class LocalWebServer(LocalService):
    """A real gunicorn or uvicorn serving one of labkit's apps on 127.0.0.1 (a free port)."""

    kind = "web"

    def __init__(
        self,
        name: str = "web",
        *,
        server: str = "gunicorn",
        app: str | None = None,
        workers: int = 2,
        preload: bool = True,
        env: dict[str, str] | None = None,
        port: int | None = None,
        instance_dir: Path | None = None,
    ) -> None:
        super().__init__(name, instance_dir=instance_dir)
        if server not in SERVERS:
            raise BadParameter(f"server={server!r}: use one of {', '.join(SERVERS)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            raise BadParameter(f"workers={workers!r}: use an integer from 1 to 64")
        self.server, self.workers, self.preload = server, workers, bool(preload)
        self.app = app or ("labkit.webapp.wsgi:app" if server == "gunicorn" else "labkit.webapp.asgi:app")
        if ":" not in self.app:
            raise BadParameter(f"app={self.app!r}: give 'module:attribute', e.g. 'labkit.webapp.wsgi:app'")
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.requested_port = port
        self.port = port

    def options(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "app": self.app,
            "workers": self.workers,
            "preload": self.preload,
            "env": self.env,
            "port": self.requested_port,
        }

    def _argv(self) -> list[Any]:
        py = sys.executable
        if self.server == "gunicorn":
            argv: list[Any] = [
                py,
                "-m",
                "gunicorn",
                self.app,
                "--bind",
                f"{LOOPBACK}:{self.port}",
                "--workers",
                self.workers,
                "--worker-class",
                "sync",
                "--backlog",
                "2048",
                "--timeout",
                "120",
                "--graceful-timeout",
                "3",
                "--pid",
                self.dir / "gunicorn.pid",
                "--worker-tmp-dir",
                self.dir,
                "--log-level",
                "warning",
            ]
            return argv + (["--preload"] if self.preload else [])
        return [
            py,
            "-m",
            "uvicorn",
            self.app,
            "--host",
            LOOPBACK,
            "--port",
            self.port,
            "--workers",
            self.workers,
            "--app-dir",
            self.dir,
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "3",
            "--backlog",
            "2048",
        ]

    def start(self) -> Endpoint:
        if self.running():
            return self.endpoint
        try:
            __import__(self.server)
        except ImportError:
            raise BinaryNotFound(f"{self.server} is not installed in this Python: {_HINT[self.server]}") from None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = reuse_or_pick_port(self.requested_port, self.port, what=f"{self.server} '{self.name}'")
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.source_root()), env.get("PYTHONPATH")]))
        self.procs = [ManagedProcess(self._argv(), self.log_path, cwd=self.dir, env=env)]
        self._endpoint = Endpoint(
            kind=self.kind,
            name=self.name,
            provider=self.provider,
            host=LOOPBACK,
            port=self.port,
            extra={"server": self.server, "app": self.app, "workers": self.workers},
        )
        try:
            wait_for(
                f"{self.server} '{self.name}' on {LOOPBACK}:{self.port} to answer GET /health",
                lambda: self.query_health().ok,
                timeout=60,
                alive=self.procs[0].alive,
                on_fail=lambda: tail(self.log_path),
            )
            if self.workers > 1:  # every worker forked and serving, not just the first one
                wait_for(
                    f"{self.server} '{self.name}' to fork {self.workers} workers",
                    lambda: len(self.worker_pids()) >= self.workers,
                    timeout=30,
                    alive=self.procs[0].alive,
                    on_fail=lambda: tail(self.log_path),
                )
        except BaseException:
            self.stop()
            raise
        return self._endpoint

    def master(self) -> psutil.Process | None:
        live = self._live()
        return live[0] if live else None

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the master's children (or the master itself, one process)."""
        m = self.master()
        if m is None:
            return []
        try:
            kids = [p.pid for p in m.children() if "resource_tracker" not in " ".join(p.cmdline())]
        except psutil.Error:
            return []
        return sorted(kids) if self.workers > 1 or kids else [m.pid]

    def query_health(self) -> Health:
        try:
            info = get_json(self.endpoint, "/health")
            return Health(True, f"answers GET /health ({info.get('server')})")
        except (OSError, ValueError) as e:
            return Health(False, f"no answer: {e}")

    def query_version(self) -> str:
        return str(get_json(self.endpoint, "/health").get("server"))

    def stats(self) -> dict[str, Any]:
        """GET /stats from whichever worker takes the request."""
        return get_json(self.endpoint, "/stats")


LOCAL = LocalWebServer
DOCKER = LocalWebServer  # the app is the course's own Python code: a local process next to any database
