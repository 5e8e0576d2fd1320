"""Docker via testcontainers: is a daemon there, and small helpers shared by the docker services."""
from __future__ import annotations

import functools
from typing import Any

from labkit.errors import ProviderUnavailable
from labkit.services._process import LOOPBACK
from labkit.services.base import Endpoint, Health, Service


@functools.lru_cache(maxsize=1)
def docker_available() -> tuple[bool, str]:
    """(True, version) when a Docker daemon answers a ping; else (False, the reason)."""
    try:
        import docker
    except ImportError:
        return False, "the `docker` Python package is not installed (pip install testcontainers)"
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        return True, f"Docker {client.version().get('Version', '?')}"
    except Exception as e:  # noqa: BLE001 - any failure means "no daemon we can use"
        text = str(e)
        if "FileNotFoundError" in text or "No such file" in text:
            return False, "no Docker daemon answers (no Docker socket: the engine is not installed or not running)"
        if "Permission denied" in text:
            return False, "the Docker socket refuses this user (add it to the `docker` group)"
        return False, f"no Docker daemon answers ({type(e).__name__}: {text.splitlines()[0][:120] if text else ''})"


def require_docker() -> None:
    ok, why = docker_available()
    if not ok:
        raise ProviderUnavailable(f"the docker provider needs a running Docker daemon: {why}. "
                                  "Start Docker, or use LABKIT_PROVIDER=local (real servers as local processes).")


def start_on_loopback(container: Any, port: int) -> Any:
    """Publish `port` on 127.0.0.1 only (a random host port) and start the container."""
    require_docker()
    container.ports[f"{port}/tcp"] = (LOOPBACK, None)
    container.start()
    return container


def loopback_address(container: Any, port: int) -> tuple[str, int]:
    return LOOPBACK, int(container.get_exposed_port(port))


def container_logs(container: Any, lines: int = 50) -> str:
    if container is None:
        return ""
    try:
        out, err = container.get_logs()
        text = (out or b"").decode("utf-8", "replace") + (err or b"").decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])
    except Exception as e:  # noqa: BLE001
        return f"(logs unavailable: {e})"


def stop(container: Any) -> None:
    if container is not None:
        try:
            container.stop()
        except Exception:  # noqa: BLE001 - already gone
            pass


def signal(container: Any, sig: str) -> None:
    container.get_wrapped_container().kill(signal=sig)


def pause(container: Any) -> None:
    container.get_wrapped_container().pause()


def unpause(container: Any) -> None:
    container.get_wrapped_container().unpause()


class DockerService(Service):
    """Base of the docker services: one testcontainers container, recorded by name so another process
    (`labkit down`, a watchdog) can remove it. Subclasses start it and say how to ask the server."""

    provider = "docker"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.container: Any = None
        self._adopted_names: list[str] = []

    def query_health(self) -> Health:
        raise NotImplementedError

    def _launch(self, container: Any, port: int, what: str, timeout: float, **endpoint: Any) -> Endpoint:
        """Start `container` with `port` published on 127.0.0.1, record its endpoint, wait until it answers."""
        from labkit.services._process import wait_for

        self.container = start_on_loopback(container, port)
        host, host_port = loopback_address(self.container, port)
        self._endpoint = Endpoint(kind=self.kind, name=self.name, provider=self.provider, host=host,
                                  port=host_port, **endpoint)
        wait_for(f"{self.kind} container '{self.name}' to answer {what}", lambda: self.query_health().ok, timeout,
                 on_fail=lambda: container_logs(self.container))
        return self._endpoint

    def query_version(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        stop(self.container)
        self.container = None
        for name in self._adopted_names:
            try:
                import docker

                docker.from_env(timeout=5).containers.get(name).remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._adopted_names = []

    def health(self) -> Health:
        if self._endpoint is None or (self.container is None and not self._adopted_names):
            return Health(False, "not started")
        return self.query_health()

    def version(self) -> str:
        return self.query_version()

    def logs(self, lines: int = 50) -> str:
        return container_logs(self.container, lines)

    def kill(self) -> None:
        signal(self.container, "SIGKILL")

    def pause(self) -> None:
        pause(self.container)

    def resume(self) -> None:
        unpause(self.container)

    def to_record(self) -> dict[str, Any]:
        rec = super().to_record()
        names = list(self._adopted_names)
        if self.container is not None:
            names.append(self.container.get_wrapped_container().name)
        rec["containers"] = names
        return rec

    def _adopt(self, record: dict[str, Any]) -> None:
        if record.get("endpoint"):
            self._endpoint = Endpoint.from_dict(record["endpoint"])
        self._adopted_names = list(record.get("containers", []))
