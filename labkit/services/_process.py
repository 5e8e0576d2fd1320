"""Local processes: spawning real servers, free ports, named waits, and PID bookkeeping.

Every process labkit starts is recorded as (pid, create_time) so that a later `labkit down`, in another
Python process, can reap it without ever killing an unrelated process that reused the PID.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from labkit import config, paths
from labkit.errors import BinaryNotFound, PortInUse, ServiceFailed
from labkit.services.base import Health, Service

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


# ports ---------------------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """A port that is free on `host` right now (the kernel picks it; never a fixed default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def check_port(port: int | None, host: str = LOOPBACK, what: str = "server") -> int:
    """Return `port` if it is free (or a fresh free port when None); else raise PortInUse naming the fix."""
    if port is None:
        return free_port(host)
    if not 0 < int(port) < 65536:
        raise PortInUse(
            f"port {port} for {what} is not a valid TCP port: use 1-65535, or leave it out and labkit picks a free one"
        )
    if not port_is_free(port, host):
        owner = _port_owner(port)
        raise PortInUse(
            f"port {host}:{port} requested for {what} is already in use{owner}. "
            "Leave the port out so labkit picks a free one, or stop the program that holds it."
        )
    return int(port)


def reuse_or_pick_port(requested: int | None, previous: int | None, what: str) -> int:
    """The port to (re)start on: the one asked for (must be free), else the previous one if still free."""
    if requested is not None:
        return check_port(requested, what=what)
    if previous is not None and port_is_free(previous):
        return previous
    return free_port()


def _port_owner(port: int) -> str:
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                return f" by PID {c.pid} ({psutil.Process(c.pid).name()})"
    except (psutil.Error, PermissionError):
        pass
    return ""


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def new_password() -> str:
    return secrets.token_urlsafe(18)


# binaries ------------------------------------------------------------------------------------
def find_binary(name: str, extra_globs: Sequence[str] = (), hint: str = "") -> Path:
    """Find a server binary on PATH, in a conda env's bin, or in the usual OS locations."""
    env_var = f"LABKIT_{name.upper()}_BIN"
    configured = getattr(config.current(), f"{name}_bin", None)
    if configured:
        p = Path(configured)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise BinaryNotFound(f"{env_var}={p} is not an executable file: fix the path or unset it")
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates: list[Path] = []
    for prefix in filter(
        None, [os.environ.get("CONDA_PREFIX"), "/opt/conda", "/srv/conda/envs/notebook", "/usr/local", "/opt/homebrew"]
    ):
        candidates.append(Path(prefix) / "bin" / name)
    for pattern in extra_globs:
        candidates.extend(sorted(Path("/").glob(pattern.lstrip("/")), reverse=True))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise BinaryNotFound(
        f"'{name}' not found on PATH or in the usual places. {hint} "
        "Run `labkit doctor` for the install command for this machine.".strip()
    )


# users ---------------------------------------------------------------------------------------
def unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run servers as when we are root (Postgres refuses root). None when not root.

    `LABKIT_RUN_AS` names one; else the Debian `postgres` user if present; else a `labkit` system user,
    created on the spot (we are root).
    """
    if not paths.is_root():
        return None
    for name in filter(None, [config.current().run_as, "postgres", "labkit"]):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    useradd = shutil.which("useradd")
    if useradd:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "labkit"],
            check=False,
            capture_output=True,
        )
        try:
            return pwd.getpwnam("labkit")
        except KeyError:
            pass
    return pwd.getpwnam("nobody")


def give_to(path: Path, user: pwd.struct_passwd | None) -> None:
    """Make `path` (recursively) owned by `user` and every ancestor traversable, when running as root."""
    if user is None:
        return
    for root, _dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), user.pw_uid, user.pw_gid)
    for parent in [path, *path.parents]:
        st = parent.stat()
        if not st.st_mode & 0o001:
            if parent == Path("/") or str(parent) in ("/root", "/home"):
                raise ServiceFailed(
                    f"{path} is inside {parent}, which user '{user.pw_name}' cannot enter. "
                    "Set LABKIT_HOME to a directory outside it, e.g. /var/lib/labkit."
                )
            os.chmod(parent, st.st_mode | 0o011)


# waits ---------------------------------------------------------------------------------------
def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
    on_fail: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> T:
    """Poll `check` until it returns a truthy value; fail fast if `alive()` turns False.

    The error names what was awaited and carries `on_fail()` (usually the tail of the server's log).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    delay = interval
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - any failure of the probe means "not yet"
            last_exc = e
        if alive is not None and not alive():
            detail = on_fail() if on_fail else ""
            raise ServiceFailed(f"{what}: the process exited before it was ready.\n{detail}".rstrip())
        if time.monotonic() > deadline:
            detail = on_fail() if on_fail else ""
            why = f" (last error: {last_exc})" if last_exc else ""
            raise ServiceFailed(f"{what}: not ready after {timeout:.0f} s{why}.\n{detail}".rstrip())
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# processes -----------------------------------------------------------------------------------
def proc_ref(pid: int) -> dict[str, float]:
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def same_process(ref: dict[str, float]) -> psutil.Process | None:
    """The live process `ref` points to, or None if it exited or the PID now belongs to another one."""
    try:
        p = psutil.Process(int(ref["pid"]))
        if abs(p.create_time() - float(ref["create_time"])) > 0.05:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError, TypeError):
        return None


def reap(refs: list[dict[str, float]], grace: float = 5.0, sig: int = signal.SIGTERM) -> list[int]:
    """Stop the processes in `refs` (and their process groups): `sig`, then SIGKILL after `grace` s.

    Returns the PIDs that were alive. Paused (SIGSTOPped) processes are continued first so they can exit.
    """
    procs = [p for p in (same_process(r) for r in refs) if p is not None]
    for p in procs:
        for target in _group(p):
            try:
                target.send_signal(signal.SIGCONT)
                target.send_signal(sig)
            except psutil.Error:
                pass
    _, still = psutil.wait_procs(procs, timeout=grace)
    for p in still:
        for target in _group(p):
            try:
                target.kill()
            except psutil.Error:
                pass
    psutil.wait_procs(still, timeout=5)
    return [p.pid for p in procs]


def _group(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


class ManagedProcess:
    """A server process labkit started: own session (so a notebook's Ctrl-C does not hit it), log file."""

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        user: pwd.struct_passwd | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        if user is not None:
            os.chown(log_path, user.pw_uid, user.pw_gid)
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        except FileNotFoundError as e:
            raise BinaryNotFound(f"cannot run {self.argv[0]}: {e}. Run `labkit doctor`.") from e
        finally:
            log.close()
        self.ref = proc_ref(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            return False
        return same_process(self.ref) is not None

    def send(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        reap([self.ref], grace=grace, sig=sig)
        try:
            self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


class LocalService(Service):
    """Base of the local-process services: an instance directory, processes, logs, faults."""

    provider = "local"

    def __init__(self, name: str, *, instance_dir: Path | None = None) -> None:
        super().__init__(name)
        self.dir = instance_dir or (paths.instances_dir() / f"{name}-{secrets.token_hex(3)}")
        self.procs: list[ManagedProcess] = []
        self._restored_refs: list[dict[str, float]] = []

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def logs(self, lines: int = 50) -> str:
        return tail(self.log_path, lines)

    def pids(self) -> list[dict[str, float]]:
        return [p.ref for p in self.procs] + list(self._restored_refs)

    def _live(self) -> list[psutil.Process]:
        return [p for p in (same_process(r) for r in self.pids()) if p is not None]

    def running(self) -> bool:
        return bool(self._live())

    def query_health(self) -> Health:
        """Ask the running server a real question (subclasses: a query, a `version` command)."""
        raise NotImplementedError

    def query_version(self) -> str:
        raise NotImplementedError

    def health(self) -> Health:
        if self._endpoint is None:
            return Health(False, "not started")
        if not self.running():
            return Health(False, "process is not running (killed or stopped)")
        return self.query_health()

    def version(self) -> str:
        return self.query_version()

    def kill(self) -> None:
        """SIGKILL the server and its children (Postgres backends too), as a crash or the OOM killer would."""
        victims = [q for p in self._live() for q in _group(p)]
        for p in victims:
            try:
                p.kill()
            except psutil.Error:
                pass
        # children are reparented when their parent dies and may linger as zombies: gone means not running
        refs = []
        for p in victims:
            try:
                refs.append({"pid": p.pid, "create_time": p.create_time()})
            except psutil.Error:
                pass
        deadline = time.monotonic() + 5
        while any(same_process(r) for r in refs) and time.monotonic() < deadline:
            time.sleep(0.02)
        for mp in self.procs:
            try:
                mp.popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its sockets but answers nothing until resume()."""
        for p in self._live():
            p.suspend()

    def resume(self) -> None:
        for p in self._live():
            p.resume()

    def stop(self) -> None:
        reap(self.pids(), grace=10.0, sig=self._stop_signal())
        for mp in self.procs:
            try:
                mp.popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        self._restored_refs.clear()

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    def to_record(self) -> dict[str, Any]:
        rec = super().to_record()
        rec.update(pids=self.pids(), dir=str(self.dir), options=self.options())
        return rec

    def options(self) -> dict[str, Any]:
        """The constructor options, stored so another process can rebuild this service from a record."""
        return {}

    def _adopt(self, record: dict[str, Any]) -> None:
        """Take over a running server from a stack record written by another process."""
        super()._adopt(record)
        self._restored_refs = list(record.get("pids", []))

    def remove_data(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
