"""memcached: a real server as a local process or a testcontainers container.

with LocalMemcached("mc", memory_mb=16) as mc:
    pymemcache.Client(mc.endpoint.address).set("k", b"v")
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import psutil

from labkit import profile
from labkit.errors import BadParameter
from labkit.services import _docker
from labkit.services._process import (
    LOOPBACK,
    LocalService,
    ManagedProcess,
    find_binary,
    reuse_or_pick_port,
    tail,
    unprivileged_user,
    wait_for,
)
from labkit.services.base import Endpoint, Health, check_int

MC_HINT = (
    "Install memcached: `apt-get install memcached` (Debian/Ubuntu/Colab), `brew install memcached` (macOS), "
    "or `conda install -c conda-forge memcached` (conda, Binder)."
)


def ask(address: tuple[str, int], command: bytes, timeout: float = 2.0) -> bytes:
    """Send one text-protocol command and read its reply up to END/the first line."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(command)
        data = b""
        while not (data.endswith(b"END\r\n") or (data.endswith(b"\r\n") and not command.startswith(b"stats"))):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def query_version(endpoint: Endpoint) -> str:
    reply = ask(endpoint.address, b"version\r\n").decode().strip()
    if not reply.startswith("VERSION "):
        raise ConnectionError(f"unexpected reply to `version`: {reply!r}")
    return reply.split(" ", 1)[1]


def query_stats(endpoint: Endpoint) -> dict[str, str]:
    lines = ask(endpoint.address, b"stats\r\n").decode().splitlines()
    return {p[1]: p[2] for p in (line.split(" ", 2) for line in lines) if len(p) == 3 and p[0] == "STAT"}


def query_health(endpoint: Endpoint) -> Health:
    try:
        return Health(True, f"answers `version` ({query_version(endpoint)})")
    except OSError as e:
        return Health(False, f"no answer: {e}")


def check_sizes(
    memory_mb: Any, max_item_mb: Any, threads: Any = 1, port: Any = None, extra_args: Any = None
) -> tuple[int, int, int]:
    """Validated (memory_mb, max_item_mb, threads): memcached itself refuses an item limit above half its memory."""
    ram_mb = psutil.virtual_memory().total // 2**20
    memory = check_int(
        "memory_mb",
        memory_mb if memory_mb is not None else int(profile.pick(64, 32, 32)),
        2,
        ram_mb,
        f" MB (-m; this machine has {ram_mb} MB; 8 or more is typical)",
    )
    item = check_int(
        "max_item_mb",
        max_item_mb if max_item_mb is not None else min(2, memory // 2),
        1,
        min(1024, memory // 2),
        f" MB: memcached allows at most half of memory_mb ({memory} MB)",
    )
    nthreads = check_int("threads", threads, 1, 64, " worker threads (-t)")
    if port is not None:
        check_int("port", port, 1024, 65535, " (or leave it out for a free port)")
    if extra_args is not None and (
        not isinstance(extra_args, (list, tuple)) or not all(isinstance(a, str) for a in extra_args)
    ):
        raise BadParameter(f"extra_args={extra_args!r}: give a list of strings, e.g. ['-o', 'modern']")
    return memory, item, nthreads


class LocalMemcached(LocalService):
    """A real `memcached` on 127.0.0.1 with a chosen memory size (`-m`) and a max item size (`-I`)."""

    kind = "memcached"

    def __init__(
        self,
        name: str = "memcached",
        *,
        memory_mb: int | None = None,
        max_item_mb: int | None = None,
        threads: int = 2,
        port: int | None = None,
        extra_args: list[str] | None = None,
        instance_dir: Path | None = None,
    ) -> None:
        super().__init__(name, instance_dir=instance_dir)
        self.memory_mb, self.max_item_mb, self.threads = check_sizes(memory_mb, max_item_mb, threads, port, extra_args)
        self.requested_port = port
        self.port = port
        self.extra_args = list(extra_args or [])

    def options(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_mb,
            "max_item_mb": self.max_item_mb,
            "threads": self.threads,
            "port": self.requested_port,
            "extra_args": self.extra_args,
        }

    def start(self) -> Endpoint:
        if self.running():
            return self.endpoint
        binary = find_binary("memcached", ["/usr/bin/memcached", "/usr/sbin/memcached"], MC_HINT)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = reuse_or_pick_port(self.requested_port, self.port, what=f"memcached '{self.name}'")
        argv: list[Any] = [
            binary,
            "-l",
            LOOPBACK,
            "-p",
            self.port,
            "-U",
            "0",
            "-m",
            self.memory_mb,
            "-I",
            f"{self.max_item_mb}m",
            "-t",
            self.threads,
            "-c",
            "4096",
            # the pid file puts the instance dir on the command line: `labkit down` finds strays by it
            "-P",
            self.dir / "memcached.pid",
            *self.extra_args,
        ]
        run_as = unprivileged_user()
        if run_as is not None:  # memcached refuses root unless told which user to become
            argv += ["-u", run_as.pw_name]
            os.chmod(self.dir, 0o777)
        self.procs = [ManagedProcess(argv, self.log_path, cwd=self.dir)]
        self._restored_refs = []
        ep = self._endpoint = Endpoint(
            kind=self.kind,
            name=self.name,
            provider=self.provider,
            host=LOOPBACK,
            port=self.port,
            extra={"memory_mb": self.memory_mb},
        )
        try:
            wait_for(
                f"memcached '{self.name}' on {LOOPBACK}:{self.port} to answer `version`",
                lambda: query_health(ep).ok,
                timeout=15,
                alive=self.procs[0].alive,
                on_fail=lambda: tail(self.log_path),
            )
        except BaseException:
            self.stop()
            raise
        return self._endpoint

    def query_health(self) -> Health:
        return query_health(self.endpoint)

    def query_version(self) -> str:
        return query_version(self.endpoint)


class DockerMemcached(_docker.DockerService):
    """testcontainers' MemcachedContainer on the configured image (LABKIT_IMAGE_MEMCACHED, default the official
    memcached image), published on 127.0.0.1 only; memory and item size go to memcached as arguments."""

    kind = "memcached"
    IMAGE_KIND = "memcached"

    def __init__(
        self,
        name: str = "memcached",
        *,
        memory_mb: int | None = None,
        max_item_mb: int | None = None,
        threads: int = 2,
        port: int | None = None,
        extra_args: list[str] | None = None,
        image: str | None = None,
    ) -> None:
        super().__init__(name, image)
        # port: the container's is published on a free host port (port= is for the local provider)
        self.memory_mb, self.max_item_mb, self.threads = check_sizes(memory_mb, max_item_mb, threads, port, extra_args)
        self.extra_args = list(extra_args or [])

    def start(self) -> Endpoint:
        _docker.require_docker()  # testcontainers talks to the daemon as soon as a container is built
        again = self._restart_stopped(11211, "`version`", 30)
        if again is not None:
            return again
        try:
            from testcontainers.community.memcached import MemcachedContainer
        except ImportError:  # testcontainers < 4.8
            from testcontainers.memcached import MemcachedContainer

        c = MemcachedContainer(self.image).with_command(
            [
                "memcached",
                "-m",
                str(self.memory_mb),
                "-I",
                f"{self.max_item_mb}m",
                "-t",
                str(self.threads),
                "-c",
                "4096",
                "-U",
                "0",
                *self.extra_args,
            ]
        )
        return self._launch(c, 11211, "`version`", 30, extra={"memory_mb": self.memory_mb})

    def query_health(self) -> Health:
        return query_health(self.endpoint)

    def query_version(self) -> str:
        return query_version(self.endpoint)


LOCAL = LocalMemcached
DOCKER = DockerMemcached
