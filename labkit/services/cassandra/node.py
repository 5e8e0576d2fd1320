"""One node of a local Cassandra cluster: its JVM, directories, log and addresses; faults act on this JVM only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from labkit.errors import NotRunning
from labkit.services._process import ManagedProcess, reap, same_process, tail

if TYPE_CHECKING:
    from labkit.services.cassandra.local import LocalCassandra


def log_tail(path: Path, lines: int = 25) -> str:
    """The end of a node's log without Java stack frames, so the error itself stays in view."""
    kept = [ln for ln in tail(path, 400).splitlines() if not ln.lstrip().startswith(("at ", "... "))]
    return "\n".join(kept[-lines:])


@dataclass
class CassandraNode:
    """One node of a local cluster: its own JVM, directories, log and addresses. Faults act on this JVM only."""

    name: str
    dc: str
    rack: str
    address: str
    proxy_address: str
    jmx_port: int
    token: int
    dir: Path
    cluster: LocalCassandra = field(repr=False)
    proc: ManagedProcess | None = field(default=None, repr=False)
    ref: dict[str, float] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "system.log"

    @property
    def native_port(self) -> int:
        return self.cluster.native_port

    def logs(self, lines: int = 50) -> str:
        return tail(self.log_path, lines)

    def process(self) -> psutil.Process | None:
        return same_process(self.ref) if self.ref else None

    def alive(self) -> bool:
        if self.proc is not None and self.proc.popen.poll() is not None:
            return False
        return self.process() is not None

    def kill(self) -> None:
        """SIGKILL this node's JVM (a crash)."""
        p = self.process()
        if p is not None:
            try:
                p.kill()
                p.wait(10)
            except psutil.Error:
                pass
        if self.proc is not None:
            self.proc.popen.poll()

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets but answers nothing (a GC pause or a hung machine)."""
        p = self.process()
        if p is None:
            raise NotRunning(f"node {self.name} is not running: start it with node('{self.name}').start()")
        p.suspend()

    def resume(self) -> None:
        p = self.process()
        if p is not None:
            p.resume()

    def start(self, timeout: float = 120.0) -> None:
        """(Re)start this node's JVM, e.g. after kill(); its data is kept. Waits until it serves CQL."""
        if self.alive():
            return
        self.cluster._launch(self)
        self.cluster._wait_node(self, timeout)
        self.cluster._save_layout()

    def stop(self) -> None:
        if self.ref:
            reap([self.ref], grace=20.0)
        if self.proc is not None:
            self.proc.popen.poll()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dc": self.dc,
            "rack": self.rack,
            "address": self.address,
            "proxy_address": self.proxy_address,
            "jmx_port": self.jmx_port,
            "token": self.token,
            "dir": str(self.dir),
            "ref": self.ref,
        }
