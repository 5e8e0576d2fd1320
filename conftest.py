"""Test-run set-up for tests/ and notebooks/ (nbval).

The whole run uses its own LABKIT_HOME, so it never touches a learner's `labkit up` stack, and
ends by stopping everything labkit started, asserting by PID that nothing is left."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("LABKIT_TEST_HOME_SET"):
        return
    from labkit import paths

    # Downloads (Cassandra jars) are shared with the normal home; servers and records are not.
    os.environ.setdefault("LABKIT_CACHE", str(paths.cache_dir()))
    home = Path(tempfile.mkdtemp(prefix="labkit-test-", dir="/tmp" if os.path.isdir("/tmp") else None))
    home.chmod(0o755)  # an unprivileged Postgres (when we are root) must reach its data directory
    os.environ["LABKIT_HOME"] = str(home)
    os.environ["LABKIT_TEST_HOME_SET"] = "1"
    os.environ.setdefault("LABKIT_PROFILE", "ci")
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.hookimpl(tryfirst=True)  # before -m selects: `make docker-test` runs `-m "docker or notebook"`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Never re-run a notebook cell (``make test`` re-runs a failed test once), and mark every cell `notebook`.

    pytest-rerunfailures tears the failed item's parents down before the rerun: for an nbval cell that
    is the notebook's kernel, so the cell would re-run in a fresh kernel and it and every later cell fail
    with NameError, hiding the real failure. A notebook's claims must hold the first time."""
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.flaky(reruns=0))
            item.add_marker(pytest.mark.notebook)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop whatever the run left (a failed test's servers) and fail loudly if a server survives."""
    if not os.environ.get("LABKIT_TEST_HOME_SET") or hasattr(session.config, "workerinput"):
        return
    from labkit import paths
    from labkit.services import stack as stacks

    report = stacks.down()
    left = stacks.strays([str(paths.instances_dir())])
    if report["pids"] or report["strays"]:
        print(f"\nlabkit: the test run left servers behind; stopped PIDs {report['pids'] + report['strays']}")
    if left:
        print(f"\nlabkit: processes still alive after cleanup: {[p.pid for p in left]}")
        session.exitstatus = 1
    oom = [r["notebook"] for r in _BUDGET["rows"] if r["oom_kills"]]  # type: ignore[attr-defined]
    if oom:
        print(f"\nlabkit: the OOM killer struck inside the {_budget_mb():g} MB memory budget in: {', '.join(oom)}")
        session.exitstatus = 1


# -- the Binder budget, enforced: LABKIT_MEMORY_BUDGET_MB (CI sets 2048) --------------------------------------------
# Each notebook's kernel, and so every server it starts (children are born in their parent's cgroup), runs in a
# memory cgroup of that size: a notebook that needs more than Binder gives is killed by the kernel's OOM killer and
# fails here too. Only notebook items are limited (other tests may need more, e.g. a 4-node two-DC cluster); the
# pytest process itself stays outside. Where cgroups are not writable the run says so and goes on unlimited.
_BUDGET: dict[str, object] = {"boxes": {}, "rows": [], "why": ""}


def _budget_mb() -> float | None:
    raw = os.environ.get("LABKIT_MEMORY_BUDGET_MB", "").strip()
    return float(raw) if raw else None


def _kernel_pid(item: pytest.Item) -> int | None:
    """The PID of the nbval kernel running this notebook item (started by its file's setup)."""
    km = getattr(getattr(item.parent, "kernel", None), "km", None)
    prov = getattr(km, "provisioner", None)
    pid = getattr(prov, "pid", None) or getattr(getattr(prov, "process", None), "pid", None)
    if pid:
        return int(pid)
    import psutil

    kids = [p for p in psutil.Process().children() if "ipykernel" in " ".join(p.cmdline())]
    return kids[-1].pid if kids else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):  # type: ignore[no-untyped-def]
    yield
    budget = _budget_mb()
    if budget is None or not item.path.suffix == ".ipynb" or item.parent in _BUDGET["boxes"]:  # type: ignore[operator]
        return
    from labkit import cgroups

    ok, why = cgroups.available("memory")
    if not ok:
        _BUDGET["why"] = why
        return
    pid = _kernel_pid(item)
    if pid is None:
        _BUDGET["why"] = f"no kernel process found for {item.path.name}"
        return
    from labkit.errors import ResourceLimitUnavailable

    try:
        box = cgroups.MemoryLimit(f"nb-{item.path.stem[:40]}", mb=budget)
        box.add_tree(pid)
    except ResourceLimitUnavailable as exc:  # e.g. a cgroup tree that turned read-only: say so, run unlimited
        _BUDGET["why"] = str(exc)
        return
    _BUDGET["boxes"][item.parent] = (box, _PssPeak(box.pids), time.monotonic())  # type: ignore[index]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    boxes: dict = _BUDGET["boxes"]  # type: ignore[assignment]
    if item.parent in boxes:
        boxes[item.parent][1].sample()  # after every cell too: a short notebook may end between two samples
    yield
    if item.parent not in boxes or (nextitem is not None and nextitem.parent is item.parent):
        return
    box, pss, t0 = boxes.pop(item.parent)
    pss.stop()
    row = {
        "notebook": item.path.name,
        "cgroup_peak_mb": round(box.peak_mb()),
        "pss_peak_mb": round(pss.peak),
        "oom_kills": box.oom_kills(),
        "seconds": round(time.monotonic() - t0),
    }
    box.close()
    _BUDGET["rows"].append(row)  # type: ignore[attr-defined]


class _PssPeak:
    """The peak of the summed PSS of a cgroup's processes, sampled every second in a thread (pages mapped by
    several processes, like the JDK's libraries in every Cassandra node, count once in all)."""

    def __init__(self, pids) -> None:  # type: ignore[no-untyped-def]
        import threading

        self.pids, self.peak = pids, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def sample(self) -> None:
        import psutil

        total = 0.0
        for pid in self.pids():
            try:
                info = psutil.Process(pid).memory_full_info()
            except psutil.Error:
                continue
            total += getattr(info, "pss", info.rss) / 2**20
        self.peak = max(self.peak, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    budget = _budget_mb()
    if budget is None:
        return
    tr = terminalreporter
    if _BUDGET["why"]:
        tr.write_line(f"memory budget {budget:g} MB NOT enforced for some or all notebooks: {_BUDGET['why']}")
    rows: list = _BUDGET["rows"]  # type: ignore[assignment]
    if not rows:
        return
    tr.section(f"memory budget: each notebook's kernel and servers in a {budget:g} MB cgroup")
    tr.write_line(f"{'notebook':<34} {'peak PSS MB':>11} {'cgroup peak MB':>14} {'OOM kills':>9} {'seconds':>7}")
    for r in rows:
        tr.write_line(
            f"{r['notebook']:<34} {r['pss_peak_mb']:>11} {r['cgroup_peak_mb']:>14} "
            f"{r['oom_kills']:>9} {r['seconds']:>7}"
        )
    tr.write_line(
        "(cgroup peak includes page cache, which the kernel reclaims before it kills; PSS is what processes hold)"
    )
