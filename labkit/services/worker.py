"""A background worker as a labkit service: ``python -m <module> <args...>`` run as a recorded local process.

    st.add("worker", name="worker-1", module="labkit.lessons.task_queue", args=[dsn, "worker-1", "100"])

Lesson 08's task-queue workers run this way, so a test or a notebook can kill one mid-task
(``st.service("worker-1").kill()``), and ``st.close()``, ``labkit down`` and a killed kernel's watchdog reap them
like every server (the instance directory is on the command line for the stray scan).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from labkit import paths
from labkit.errors import BadParameter
from labkit.services._process import LOOPBACK, LocalService, ManagedProcess, tail, wait_for
from labkit.services.base import Endpoint, Health


class LocalWorker(LocalService):
    """A Python module run as a long-lived process; healthy while it runs and has written its ready file."""

    kind = "worker"

    def __init__(
        self,
        name: str = "worker",
        *,
        module: str = "",
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        instance_dir: Path | None = None,
    ) -> None:
        super().__init__(name, instance_dir=instance_dir)
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise BadParameter(f"module={module!r}: give the dotted name of a module to run with `python -m`")
        self.module, self.args = module, [str(a) for a in (args or [])]
        self.env = {str(k): str(v) for k, v in (env or {}).items()}

    def options(self) -> dict[str, Any]:
        return {"module": self.module, "args": self.args, "env": self.env}

    @property
    def ready_file(self) -> Path:
        return self.dir / "ready"

    def start(self) -> Endpoint:
        if self.running():
            return self.endpoint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = {**os.environ, **self.env, "_LABKIT_WORKER_READY": str(self.ready_file)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.source_root()), env.get("PYTHONPATH")]))
        self.procs = [
            ManagedProcess(
                [sys.executable, "-m", self.module, *self.args, "--instance", self.dir],
                self.log_path,
                cwd=self.dir,
                env=env,
            )
        ]
        self._endpoint = Endpoint(
            kind=self.kind,
            name=self.name,
            provider=self.provider,
            host=LOOPBACK,
            port=0,
            extra={"module": self.module, "pid": self.procs[0].pid},
        )
        try:
            wait_for(
                f"worker '{self.name}' ({self.module}) to start",
                self.ready_file.exists,
                timeout=60,
                alive=self.procs[0].alive,
                on_fail=lambda: tail(self.log_path),
            )
        except BaseException:
            self.stop()
            raise
        return self._endpoint

    def query_health(self) -> Health:
        return Health(True, f"process {self.procs[0].pid if self.procs else '?'} running")

    def query_version(self) -> str:
        return f"Python {platform.python_version()}"


LOCAL = LocalWorker
DOCKER = LocalWorker  # course code: a local process next to any database
