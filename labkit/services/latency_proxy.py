"""A userspace TCP latency proxy: inject one-way delay and jitter on any TCP link, without netem or root.

    with LatencyProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", mc_port), delay_ms=20) as px:
        client = pymemcache.Client(px.address)       # every request/response now takes >= 40 ms more
        px.set_delay(50, jitter_ms=5)                # change it while it runs

Each proxy runs as its own process (``python -m labkit.services.latency_proxy --config FILE``) so that a
stack started by ``labkit up`` in the background keeps its proxies after the starting Python exits. One
process can serve several routes. The process polls its JSON config file (``{"routes": [{"listen":
[host, port], "target": [host, port], "delay_ms": [up, down], "jitter_ms": [up, down]}]}``) every 50 ms, so
changing the file changes the delays at run time; `LatencyProxy.set_delay` rewrites it atomically.

A route with ``"blocked": true`` is a network partition: the proxy resets every connection on it and
closes new ones at once, so nothing crosses until the route is unblocked (``partition()`` / ``heal()``).
The process counts the bytes it forwards per route and direction and writes them to ``<config>.stats``
(JSON, rewritten within one poll of a change), so a lesson can measure the traffic crossing a link
(``LatencyProxy.stats()``).

"up" is client->server, "down" server->client. Each chunk read from one side is stamped with the time it
may be sent (arrival + delay + jitter) and put on a queue; a writer task sends it when due. Many chunks are
in flight at once, so delay does not cap throughput; the release time never goes backwards, so the byte
order of a stream is preserved even with jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from labkit.errors import BadParameter, ServiceFailed

_POLL_S = 0.05
_STATS_EVERY_S = 0.2  # the stats file is rewritten at least this often, so a reader can wait for a fresh one
_CHUNK = 64 * 1024


def _pair(v: float | tuple[float, float] | list[float], what: str) -> list[float]:
    """One number means the same one-way value in both directions; a pair is (up, down)."""
    vals = [float(v), float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]
    if len(vals) != 2 or any(x < 0 for x in vals):
        raise BadParameter(f"{what} must be a number >= 0 or an (up, down) pair of them, got {v!r}")
    return vals


# --- the proxy process ----------------------------------------------------------------------------
class _Route:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.listen = (spec["listen"][0], int(spec["listen"][1]))
        self.target = (spec["target"][0], int(spec["target"][1]))
        self.bytes = [0, 0]  # forwarded up (client->server) and down
        self.connections = 0
        self.refused = 0  # connections closed at once because the route was blocked
        self.blocked = False
        self.open: set[asyncio.StreamWriter] = set()
        self.update(spec)
        self.server: asyncio.base_events.Server | None = None

    def update(self, spec: dict[str, Any]) -> None:
        self.delay = [x / 1000 for x in _pair(spec.get("delay_ms", 0.0), "delay_ms")]
        self.jitter = [x / 1000 for x in _pair(spec.get("jitter_ms", 0.0), "jitter_ms")]
        self.blocked = bool(spec.get("blocked", False))
        if self.blocked:  # a partition: tear down what is open; nothing queued is delivered
            for w in list(self.open):
                _reset(w)
            self.open.clear()

    def stats(self) -> dict[str, int]:
        return {
            "up": self.bytes[0],
            "down": self.bytes[1],
            "connections": self.connections,
            "refused": self.refused,
            "blocked": int(self.blocked),
        }

    def due(self, direction: int) -> float:
        j = self.jitter[direction]
        return time.monotonic() + max(0.0, self.delay[direction] + (random.uniform(-j, j) if j else 0.0))

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        peer = cwriter.get_extra_info("peername")
        if self.blocked:
            self.refused += 1
            _reset(cwriter)
            return
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError as e:
            print(
                f"{time.strftime('%H:%M:%S')} {self.listen} <- {peer}: target {self.target} refused ({e})", flush=True
            )
            cwriter.close()
            return
        # one line per connection: which peers cross this proxy (the inter-DC routing check reads it)
        print(f"{time.strftime('%H:%M:%S')} {self.listen[0]}:{self.listen[1]} <- {peer[0]}:{peer[1]}", flush=True)
        for w in (cwriter, swriter):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        both = (cwriter, swriter)
        self.connections += 1
        self.open.update(both)
        try:
            await asyncio.gather(
                self._pipe(creader, swriter, 0, both), self._pipe(sreader, cwriter, 1, both), return_exceptions=True
            )
        finally:
            for w in both:
                self.open.discard(w)
                w.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: int,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                when, data = await queue.get()
                wait = when - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.blocked or writer.is_closing():
                    return  # partitioned while in flight: the bytes are lost, like dropped packets
                if not data:  # EOF travels with the same delay as the data before it
                    if direction == 1:
                        writer.close()  # the server hung up: close the client side
                    elif writer.can_write_eof():
                        writer.write_eof()  # half-close: the server may still answer
                    return
                writer.write(data)
                self.bytes[direction] += len(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        last = 0.0
        try:
            while True:
                data = await reader.read(_CHUNK)
                last = max(last, self.due(direction))  # never overtake an earlier chunk
                queue.put_nowait((last, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            for w in both:  # a reset on one side tears down the whole connection
                w.close()
        finally:
            sender.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset (SO_LINGER 0), as a cut link looks to both ends."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.close()


def _write_stats(path: Path, routes: dict[tuple[str, int], _Route]) -> None:
    data: dict[str, Any] = {f"{h}:{p}": r.stats() for (h, p), r in routes.items()}
    data["_at"] = time.time()  # readers wait for a snapshot taken after they asked
    tmp = path.with_suffix(".stats.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _owner_alive(owner: tuple[int, float] | None) -> bool:
    if owner is None:
        return True
    import psutil

    try:
        return abs(psutil.Process(owner[0]).create_time() - owner[1]) < 0.05
    except psutil.Error:
        return False


async def _serve(config: Path, owner: tuple[int, float] | None = None) -> None:
    routes: dict[tuple[str, int], _Route] = {}
    mtime = -1.0
    last_stats: dict[Any, Any] | None = None
    last_write = 0.0
    stats_path = config.with_suffix(".stats")
    while True:
        if not _owner_alive(owner):
            return  # the Python process that started this proxy died: do not outlive it
        try:
            st = config.stat().st_mtime_ns
        except FileNotFoundError:
            return  # the owner removed the config: shut down
        if st != mtime:
            mtime = st
            try:
                spec = json.loads(config.read_text())
            except (OSError, ValueError):
                spec = None  # a writer in progress; the atomic rename makes this rare
                mtime = -1.0
            if spec is not None:
                for r in spec.get("routes", []):
                    key = (r["listen"][0], int(r["listen"][1]))
                    if key in routes:
                        routes[key].update(r)
                    else:
                        route = _Route(r)
                        route.server = await asyncio.start_server(
                            route.handle, *route.listen, reuse_address=True, backlog=512
                        )
                        routes[key] = route
                ready = config.with_suffix(".ready")
                if not ready.exists():
                    _write_stats(stats_path, routes)
                    ready.write_text(str(os.getpid()))
        now_stats = {k: r.stats() for k, r in routes.items()}
        if now_stats != last_stats or time.time() - last_write > _STATS_EVERY_S:
            _write_stats(stats_path, routes)
            last_stats, last_write = now_stats, time.time()
        await asyncio.sleep(_POLL_S)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="labkit TCP latency proxy")
    ap.add_argument("--config", required=True, type=Path, help="JSON file with the routes; polled for changes")
    ap.add_argument("--owner", help="PID:create_time of a process; exit when it is gone")
    args = ap.parse_args(argv)
    owner = None
    if args.owner:
        pid, created = args.owner.split(":")
        owner = (int(pid), float(created))
    asyncio.run(_serve(args.config, owner))


# --- the Python handle ----------------------------------------------------------------------------
def write_config(path: Path, routes: list[dict[str, Any]]) -> None:
    """Atomically replace the config a proxy process polls."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".proxy-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"routes": routes}, f)
    os.replace(tmp, path)


class LatencyProxy:
    """A latency proxy process in front of one TCP server. `address` is where clients connect."""

    def __init__(
        self,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        target: tuple[str, int] = ("127.0.0.1", 0),
        delay_ms: float | tuple[float, float] = 0.0,
        jitter_ms: float | tuple[float, float] = 0.0,
        *,
        workdir: Path | None = None,
        tied_to_this_process: bool = True,
    ) -> None:
        from labkit.services._process import free_port

        if not target[1]:
            raise BadParameter("target must be (host, port) of the server to put the proxy in front of")
        host, port = listen
        self.listen = (host, int(port) or free_port(host))
        self.target = (target[0], int(target[1]))
        self.delay_ms = _pair(delay_ms, "delay_ms")
        self.jitter_ms = _pair(jitter_ms, "jitter_ms")
        self._own_dir = workdir is None
        if workdir is None:  # under labkit's instances: `labkit down` finds a stray proxy by this path
            from labkit import paths

            workdir = Path(tempfile.mkdtemp(prefix="proxy-", dir=paths.instances_dir()))
        self.workdir = workdir
        self.config = self.workdir / f"proxy-{self.listen[1]}.json"
        self.blocked = False
        self.proc: Any = None
        # a notebook's proxy dies with its kernel; a stack's (labkit up) is reaped by the stack instead
        self.tied = tied_to_this_process

    @property
    def address(self) -> tuple[str, int]:
        return self.listen

    def _route(self) -> dict[str, Any]:
        return {
            "listen": list(self.listen),
            "target": list(self.target),
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "blocked": self.blocked,
        }

    def start(self) -> LatencyProxy:
        self.proc = start_proxy_process(self.config, [self._route()], owner_pid=os.getpid() if self.tied else None)
        return self

    def set_delay(self, delay_ms: float | tuple[float, float], jitter_ms: float | tuple[float, float] = 0.0) -> None:
        """Change the one-way delay (ms) while the proxy runs; applies to chunks read from now on."""
        self.delay_ms = _pair(delay_ms, "delay_ms")
        self.jitter_ms = _pair(jitter_ms, "jitter_ms")
        write_config(self.config, [self._route()])
        time.sleep(2 * _POLL_S)  # the process picks it up within one poll

    def partition(self) -> None:
        """Cut the link: open connections are reset, new ones closed at once, until heal()."""
        self.blocked = True
        write_config(self.config, [self._route()])
        wait_applied(self.config)

    def heal(self) -> None:
        """Forward again after partition(); clients reconnect by themselves."""
        self.blocked = False
        write_config(self.config, [self._route()])
        wait_applied(self.config)

    def stats(self) -> dict[str, int]:
        """Bytes forwarded so far: ``up`` (client->server), ``down``, plus connection counts."""
        return read_stats(self.config)[f"{self.listen[0]}:{self.listen[1]}"]

    def pids(self) -> list[dict[str, float]]:
        return [self.proc.ref] if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=2.0)
            self.proc = None
        if self._own_dir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_applied(config: Path, timeout: float = 5.0) -> None:
    """Wait until the proxy process has read the config just written (it rewrites its stats then)."""
    target = [
        (r["listen"][0], int(r["listen"][1]), bool(r.get("blocked", False)))
        for r in json.loads(config.read_text())["routes"]
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = read_stats(config, fresh=False)
        except ServiceFailed:
            st = {}
        if all(bool(st.get(f"{h}:{p}", {}).get("blocked")) == b for h, p, b in target):
            return
        time.sleep(_POLL_S / 2)
    raise ServiceFailed(f"the latency proxy did not apply {config} within {timeout:.0f} s: is it running?")


def read_stats(config: Path, fresh: bool = True, timeout: float = 10.0) -> dict[str, dict[str, int]]:
    """Per-route counters the proxy process wrote (``"host:port" -> {"up", "down", ...}``).

    With ``fresh`` it waits for a snapshot taken after this call, so every byte forwarded before the call is in
    it, even when a loaded machine delays the proxy process."""
    path = config.with_suffix(".stats")
    asked = time.time()
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ServiceFailed(f"no proxy statistics at {path}: the latency proxy is not running") from None
        except ValueError:
            data = None  # replaced under us: read again
        if data is not None and (not fresh or data.get("_at", 0) > asked):
            data.pop("_at", None)
            return data
        if time.monotonic() > deadline:
            raise ServiceFailed(f"the latency proxy wrote no statistics for {timeout:.0f} s ({path}): is it running?")
        time.sleep(_POLL_S / 2)


def start_proxy_process(
    config: Path, routes: list[dict[str, Any]], timeout: float = 15.0, owner_pid: int | None = None
) -> Any:
    """Start a proxy process serving `routes`; wait until every listen address accepts connections.

    With `owner_pid` the proxy exits by itself once that process is gone (no orphan after a killed kernel).
    """
    from labkit.services._process import ManagedProcess, proc_ref, tail, wait_for

    config.parent.mkdir(parents=True, exist_ok=True)
    config.with_suffix(".ready").unlink(missing_ok=True)
    write_config(config, routes)
    log = config.with_suffix(".log")
    env = dict(os.environ)
    # the child must import this very labkit, also when it is not installed (a source checkout)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "labkit.services.latency_proxy", "--config", str(config)]
    if owner_pid is not None:
        ref = proc_ref(owner_pid)
        argv += ["--owner", f"{ref['pid']}:{ref['create_time']!r}"]
    proc = ManagedProcess(argv, log, env=env)
    try:
        wait_for(
            f"latency proxy ({len(routes)} routes)",
            # the process writes .ready after every listening socket is bound (a test connection
            # would make the proxy dial a target that may not run yet)
            lambda: config.with_suffix(".ready").exists(),
            timeout,
            alive=proc.alive,
            on_fail=lambda: tail(log),
        )
    except ServiceFailed:
        proc.stop(grace=1.0)
        raise
    return proc


if __name__ == "__main__":
    main()
