"""Docker via testcontainers: is a daemon there, which images, and the container plumbing the docker services share.

Images come from configuration: ``LABKIT_IMAGE_POSTGRES``, ``LABKIT_IMAGE_MEMCACHED``, ``LABKIT_IMAGE_CASSANDRA``
and ``LABKIT_IMAGE_PYTHON`` (the latency proxy of multi-datacenter Cassandra); the defaults are the official
images, pinned by tag. CI points them at images it builds itself (.ci/images/build) that honour the same
contract (environment variables, ports, arguments), so a pass there means a pass on a laptop.

Every container and network labkit creates carries the label ``labkit.home=<labkit home>`` and a name known
before it starts (recorded in the stack file first): `labkit down` and a stack's watchdog remove them by name,
and `remove_labelled()` catches any that a crash left unrecorded. labkit reaps its own containers, so
testcontainers' Ryuk (a reaper container that removes everything when the starting Python exits, which would
also kill the background stack of `labkit up`) is turned off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
from typing import Any

from labkit.errors import ProviderUnavailable
from labkit.services._process import LOOPBACK
from labkit.services.base import Endpoint, Health, Service

DEFAULT_IMAGES: dict[str, str] = {
    "postgres": "postgres:16-alpine",
    "memcached": "memcached:1.6-alpine",
    "cassandra": "cassandra:5.0",
    "python": "python:3.12-slim",
}
LABEL_HOME = "labkit.home"
LABEL_SERVICE = "labkit.service"


def image(kind: str) -> str:
    """The image for `kind`: LABKIT_IMAGE_<KIND> when set, else the pinned official image."""
    from labkit import config

    return getattr(config.current(), f"image_{kind}") or DEFAULT_IMAGES[kind]


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
        raise ProviderUnavailable(
            f"the docker provider needs a running Docker daemon: {why}. "
            "Start Docker, or use LABKIT_PROVIDER=local (real servers as local processes)."
        )
    configure_testcontainers()


def host_namespace_refusal() -> str | None:
    """Why Docker tests must not run here, or None. On a machine that has a /.dockerenv file, the only safe place
    for labkit's Docker engine and its tests is the network namespace `.ci/docker-up` creates (LABKIT_NETNS):
    from the host's own namespace a bridge address (what testcontainers aims at there) leaves the machine."""
    if not os.path.exists("/.dockerenv"):
        return None
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        mine = None
    from labkit import config

    netns = config.current().netns or ""
    if mine is not None and netns:
        try:
            if os.stat(f"/var/run/netns/{netns}").st_ino == mine:
                return None
        except OSError:
            pass
    return (
        "refusing to run Docker tests: this machine has a /.dockerenv file and this process is not inside "
        "labkit's Docker network namespace. Run them with `make docker-test` (or .ci/docker-up, then "
        ".ci/docker-exec COMMAND, then .ci/docker-down)."
    )


def configure_testcontainers() -> None:
    """labkit publishes every port on 127.0.0.1 of the daemon's host and talks to it there itself.

    testcontainers would otherwise guess: inside something that looks like a container (a /.dockerenv file) it
    aims at the bridge gateway, an address that is not this machine's loopback. Ryuk is off (see the module doc).
    """
    from testcontainers.core.config import ConnectionMode
    from testcontainers.core.config import testcontainers_config as cfg

    cfg.tc_host_override = LOOPBACK
    cfg.connection_mode_override = ConnectionMode.docker_host
    cfg.ryuk_disabled = True


@functools.lru_cache(maxsize=1)
def client() -> Any:
    import docker

    return docker.from_env(timeout=30)


def home_label() -> str:
    from labkit import paths

    return str(paths.home())


def labels(service: str) -> dict[str, str]:
    return {LABEL_HOME: home_label(), LABEL_SERVICE: service}


def container_name(service: str, part: str = "") -> str:
    """A unique, recognisable name: labkit-<home hash>-<service>[-<part>]-<random>."""
    tag = hashlib.sha1(home_label().encode()).hexdigest()[:6]
    base = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{service}-{part}" if part else service)
    return f"labkit-{tag}-{base}-{secrets.token_hex(3)}"


def prepare(container: Any, name: str, service: str) -> Any:
    """Name and label a testcontainers container before it starts."""
    container.with_name(name)
    container.with_kwargs(**{**getattr(container, "_kwargs", {}), "labels": labels(service)})
    return container


def start_on_loopback(container: Any, port: int) -> Any:
    """Publish `port` on 127.0.0.1 only (a random host port) and start the container."""
    require_docker()
    container.ports[f"{port}/tcp"] = (LOOPBACK, None)
    container.start()
    return container


def published_port(name: str, port: int) -> int:
    """The 127.0.0.1 port the daemon published for a container's `port` (read from the daemon)."""
    c = client().containers.get(name)
    c.reload()
    return int(c.ports[f"{port}/tcp"][0]["HostPort"])


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


def logs_by_name(name: str, lines: int = 50) -> str:
    try:
        return client().containers.get(name).logs(tail=lines).decode("utf-8", "replace")
    except Exception as e:  # noqa: BLE001
        return f"(logs of {name} unavailable: {e})"


def stop(container: Any) -> None:
    if container is not None:
        try:
            container.stop()
        except Exception:  # noqa: BLE001 - already gone
            pass


def remove(names: list[str]) -> list[str]:
    """Force-remove containers by name (volumes too); returns the names that existed."""
    gone = []
    for name in names:
        try:
            client().containers.get(name).remove(force=True, v=True)
            gone.append(name)
        except Exception:  # noqa: BLE001 - gone already, or no daemon
            pass
    return gone


def remove_labelled(home: str | None = None) -> dict[str, list[str]]:
    """Remove every container and network labelled with this labkit home (crash leftovers included)."""
    found: dict[str, list[str]] = {"containers": [], "networks": []}
    if not docker_available()[0]:
        return found
    flt = {"label": f"{LABEL_HOME}={home or home_label()}"}
    try:
        for c in client().containers.list(all=True, filters=flt):
            c.remove(force=True, v=True)
            found["containers"].append(c.name)
        for n in client().networks.list(filters=flt):
            n.remove()
            found["networks"].append(n.name)
    except Exception:  # noqa: BLE001 - a daemon that went away: nothing more to remove
        pass
    return found


def labelled(home: str | None = None) -> list[str]:
    """Names of the containers labelled with this labkit home (running or not)."""
    if not docker_available()[0]:
        return []
    return sorted(
        c.name for c in client().containers.list(all=True, filters={"label": f"{LABEL_HOME}={home or home_label()}"})
    )


def signal(name: str, sig: str) -> None:
    client().containers.get(name).kill(signal=sig)


def pause(name: str) -> None:
    client().containers.get(name).pause()


def unpause(name: str) -> None:
    client().containers.get(name).unpause()


def state(name: str) -> str:
    """The container's state as the daemon reports it: running, paused, exited, ... or "missing"."""
    try:
        c = client().containers.get(name)
        c.reload()
        return str(c.status)
    except Exception:  # noqa: BLE001
        return "missing"


class DockerService(Service):
    """Base of the docker services: one testcontainers container, named and labelled before it starts and
    recorded by name, so another process (`labkit down`, a watchdog, `labkit up`'s clients) can act on it.
    Subclasses build the container and say how to ask the server."""

    provider = "docker"
    IMAGE_KIND = ""

    def __init__(self, name: str, image: str | None = None) -> None:
        super().__init__(name)
        self.image = image or image_for(self.IMAGE_KIND)
        self.container: Any = None
        self.container_name = container_name(name)
        self._adopted_names: list[str] = []

    def query_health(self) -> Health:
        raise NotImplementedError

    def _launch(self, container: Any, port: int, what: str, timeout: float, **endpoint: Any) -> Endpoint:
        """Start `container` with `port` published on 127.0.0.1, record its endpoint, wait until it answers."""
        from labkit.services._process import wait_for

        self.container = start_on_loopback(prepare(container, self.container_name, self.name), port)
        host, host_port = LOOPBACK, published_port(self.container_name, port)
        self._endpoint = Endpoint(
            kind=self.kind, name=self.name, provider=self.provider, host=host, port=host_port, **endpoint
        )
        wait_for(
            f"{self.kind} container '{self.name}' to answer {what}",
            lambda: self.query_health().ok,
            timeout,
            on_fail=lambda: container_logs(self.container),
        )
        return self._endpoint

    def query_version(self) -> str:
        raise NotImplementedError

    def _restart_stopped(self, port: int, what: str, timeout: float) -> Endpoint | None:
        """After kill(): start the same container again (same data); None when there is none to restart."""
        from labkit.services._process import wait_for

        st = state(self.container_name)
        if self._endpoint is None or st == "missing":
            return None
        if st == "paused":
            unpause(self.container_name)
        elif st != "running":
            client().containers.get(self.container_name).start()
        # a restarted container may get another host port
        self._endpoint = Endpoint.from_dict(
            {**self._endpoint.to_dict(), "port": published_port(self.container_name, port)}
        )
        wait_for(
            f"{self.kind} container '{self.name}' to answer {what} again",
            lambda: self.query_health().ok,
            timeout,
            on_fail=lambda: logs_by_name(self.container_name),
        )
        return self._endpoint

    def _names(self) -> list[str]:
        return [self.container_name, *[n for n in self._adopted_names if n != self.container_name]]

    def stop(self) -> None:
        stop(self.container)
        self.container = None
        remove(self._names())
        self._adopted_names = []

    def health(self) -> Health:
        if self._endpoint is None:
            return Health(False, "not started")
        st = state(self.container_name)
        if st != "running":
            return Health(False, f"container {self.container_name} is {st}")
        return self.query_health()

    def version(self) -> str:
        return self.query_version()

    def logs(self, lines: int = 50) -> str:
        return logs_by_name(self.container_name, lines)

    def kill(self) -> None:
        signal(self.container_name, "SIGKILL")

    def pause(self) -> None:
        pause(self.container_name)

    def resume(self) -> None:
        unpause(self.container_name)

    def to_record(self) -> dict[str, Any]:
        rec = super().to_record()
        rec["containers"] = self._names()  # known before the container starts: a crash mid-start is reaped too
        rec["image"] = self.image
        return rec

    def _adopt(self, record: dict[str, Any]) -> None:
        super()._adopt(record)
        names = list(record.get("containers", []))
        if names:
            self.container_name = names[0]
        self._adopted_names = names


def image_for(kind: str) -> str:
    return image(kind) if kind else ""
