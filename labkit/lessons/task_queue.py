"""Lesson 08, part 2 — a Postgres-backed task queue: take the slow part off the request path, lose nothing.

A request handler only INSERTs a task row (a few ms); worker processes take tasks with
``SELECT ... FOR UPDATE SKIP LOCKED`` (no two workers get the same row, none waits for another's lock) and
record the result **in the same transaction** that marks the task done. If a worker dies mid-task, Postgres
rolls its transaction back: the row lock is released and the task is queued again for another worker.
Every attempt is logged separately (autocommit), so a task that ran twice is on record.

    python -m labkit.lessons.task_queue DSN NAME TASK_MS [--unsafe] [--dep HOST:PORT] --instance DIR  # a worker

With ``--dep`` the slow part is a real call to the slow dependency (``GET /?ms=TASK_MS``), the same call the
``/notify`` route makes inline; without it, a sleep of TASK_MS.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter

__all__ = ["QueueOutcome", "check_no_task_lost", "enqueue", "kill_mid_task", "reset", "view_outcome", "worker_main"]

SCHEMA = """
DROP TABLE IF EXISTS task_results, task_attempts, tasks;
CREATE TABLE tasks (id bigserial PRIMARY KEY, payload int NOT NULL, status text NOT NULL DEFAULT 'queued',
                    created_at timestamptz NOT NULL DEFAULT clock_timestamp(), done_at timestamptz);
CREATE TABLE task_attempts (task_id bigint NOT NULL, worker text NOT NULL,
                            started_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE task_results (task_id bigint PRIMARY KEY, worker text NOT NULL,
                           completed_at timestamptz NOT NULL DEFAULT clock_timestamp());
"""
TAKE = "SELECT id, payload FROM tasks WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"


def reset(dsn: str) -> None:
    """(Re)create the queue's tables, empty."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def enqueue(dsn: str, n: int) -> None:
    """Put ``n`` tasks on the queue (what the web handler's INSERT does, in bulk)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tasks (payload) SELECT g FROM generate_series(1, %s) g", (n,))


def worker_main(dsn: str, name: str, task_ms: float, unsafe: bool = False, dep: str | None = None) -> None:
    """Take tasks until killed. Safe: take, work and record in ONE transaction. ``unsafe``: mark the task
    taken and commit first, then work and record (at-most-once: a crash in between loses the task).
    ``dep`` (``host:port``): do the slow part as a call to the slow dependency instead of a sleep."""
    import psycopg

    from labkit.webapp.httpclient import HttpConnection

    host, _, port = (dep or "").rpartition(":")
    dep_conn = HttpConnection(host, int(port)) if dep else None

    log = psycopg.connect(dsn, autocommit=True)
    conn = psycopg.connect(dsn)
    ready = os.environ.get("_LABKIT_WORKER_READY")
    if ready:
        open(ready, "w").close()

    def work(task_id: int) -> None:
        if dep_conn is not None:  # the slow part: a call to a slow service (a push notification, a resize...)
            dep_conn.request("GET", f"/?ms={round(task_ms)}")
        else:
            time.sleep(task_ms / 1000)
        conn.execute("INSERT INTO task_results (task_id, worker) VALUES (%s, %s)", (task_id, name))
        conn.execute("UPDATE tasks SET status = 'done', done_at = clock_timestamp() WHERE id = %s", (task_id,))

    while True:
        with conn.transaction():
            row = conn.execute(TAKE).fetchone()
            if row is not None:
                log.execute("INSERT INTO task_attempts (task_id, worker) VALUES (%s, %s)", (row[0], name))
                if unsafe:
                    conn.execute("UPDATE tasks SET status = 'taken' WHERE id = %s", (row[0],))
                else:
                    work(row[0])  # the row stays locked until this transaction commits
        if row is None:
            time.sleep(0.02)
        elif unsafe:
            with conn.transaction():
                work(row[0])


@dataclass
class QueueOutcome:
    """What the queue's tables say after the run."""

    enqueued: int
    completed: int
    attempts: int
    retried: int  # tasks attempted more than once (the killed worker's task, run again)
    killed_task: int | None
    killed_worker: str
    workers: int
    unsafe: bool
    seconds: float

    @property
    def lost(self) -> int:
        return self.enqueued - self.completed

    def row(self) -> dict[str, Any]:
        return {
            "tasks enqueued": self.enqueued,
            "completed": self.completed,
            "lost": self.lost,
            "attempts": self.attempts,
            "tasks run twice (on record)": self.retried,
            "workers": self.workers,
            "worker killed mid-task": self.killed_worker,
            "seconds": round(self.seconds, 1),
        }


def _counts(conn: Any) -> tuple[int, int, int, int]:
    enq = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    done = conn.execute("SELECT count(*) FROM task_results").fetchone()[0]
    att = conn.execute("SELECT count(*) FROM task_attempts").fetchone()[0]
    retried = conn.execute(
        "SELECT count(*) FROM (SELECT task_id FROM task_attempts GROUP BY task_id HAVING count(*) > 1) t"
    ).fetchone()[0]
    return enq, done, att, retried


def kill_mid_task(
    st: Any, *, tasks: int = 40, workers: int = 3, task_ms: float = 100, unsafe: bool = False, timeout: float = 60.0
) -> QueueOutcome:
    """Start ``workers`` worker processes, enqueue ``tasks``, SIGKILL one worker while it holds a task, let the
    others finish, and count: enqueued, completed, attempts, tasks run twice."""
    import psycopg

    if tasks < 1 or workers < 2 or task_ms <= 0:
        raise BadParameter(
            f"need tasks >= 1, workers >= 2 (one is killed) and task_ms > 0 (got {tasks}, {workers}, {task_ms})"
        )
    dsn = st.endpoint("postgres").dsn
    reset(dsn)
    names = [f"queue-worker-{i + 1}" for i in range(workers)]
    t0 = time.perf_counter()
    killed_task = None
    try:
        for n in names:
            st.add(
                "worker",
                name=n,
                provider="local",
                module="labkit.lessons.task_queue",
                args=[dsn, n, str(task_ms), *(["--unsafe"] if unsafe else [])],
            )
        enqueue(dsn, tasks)
        victim = names[0]
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + timeout
            while killed_task is None and time.monotonic() < deadline:  # wait until the victim holds a task
                row = conn.execute(
                    "SELECT a.task_id FROM task_attempts a LEFT JOIN task_results r USING (task_id) "
                    "WHERE a.worker = %s AND r.task_id IS NULL LIMIT 1",
                    (victim,),
                ).fetchone()
                if row:
                    svc = st.service(victim)
                    svc.pause()  # freeze it first, then make sure it still holds the task
                    finished = conn.execute("SELECT 1 FROM task_results WHERE task_id = %s", (row[0],)).fetchone()
                    # the unsafe worker's take must have committed ('taken'), else the kill only rolls it back
                    status = conn.execute("SELECT status FROM tasks WHERE id = %s", (row[0],)).fetchone()
                    if finished or (unsafe and (status is None or status[0] != "taken")):
                        svc.resume()
                        time.sleep(0.001)
                        continue
                    killed_task = int(row[0])
                    svc.kill()
                else:
                    time.sleep(0.005)
            last, since = -1, time.monotonic()
            while time.monotonic() < deadline:  # the others drain the queue (or nothing moves any more)
                enq, done, _, _ = _counts(conn)
                if done >= enq:
                    break
                if done != last:
                    last, since = done, time.monotonic()
                elif time.monotonic() - since > 1.0 + 5 * task_ms / 1000:
                    break
                time.sleep(0.05)
            enq, done, att, retried = _counts(conn)
    finally:
        for n in names:
            if n in st.services:
                st.remove(n)
    return QueueOutcome(enq, done, att, retried, killed_task, names[0], workers, unsafe, time.perf_counter() - t0)


def view_outcome(out: QueueOutcome) -> Any:
    """The panel's view: one row of counts."""
    import pandas as pd

    return pd.DataFrame([out.row()])


def check_no_task_lost(out: QueueOutcome) -> None:
    """Claims: after a worker was killed mid-task, every task completed (0 lost), and the killed worker's task
    is on record as run twice (retried, not silently duplicated)."""
    ctx = (
        f"{out.enqueued} tasks, {out.workers} workers, {out.killed_worker} killed holding task {out.killed_task}"
        f"{' (unsafe worker)' if out.unsafe else ''}"
    )
    checkpoint("0 tasks lost after killing a queue worker mid-task", out.lost, at_most=0, context=ctx)
    checkpoint("the killed worker's task ran again, on record", out.retried, at_least=1, context=ctx)


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:]]
    if "--instance" in argv:  # the service's instance directory, on the command line for labkit's process scan
        i = argv.index("--instance")
        del argv[i : i + 2]
    dep_address = None
    if "--dep" in argv:
        i = argv.index("--dep")
        dep_address = argv[i + 1]
        del argv[i : i + 2]
    unsafe_mode = "--unsafe" in argv
    argv = [a for a in argv if a != "--unsafe"]
    worker_main(argv[0], argv[1], float(argv[2]), unsafe_mode, dep_address)
