"""Test-run set-up for tests/ and notebooks/ (nbval).

The whole run uses its own LABKIT_HOME, so it never touches a learner's `labkit up` stack, and
ends by stopping everything labkit started, asserting by PID that nothing is left."""

from __future__ import annotations

import os
import tempfile
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Never re-run a notebook cell (``make test`` re-runs a failed test once).

    pytest-rerunfailures tears the failed item's parents down before the rerun: for an nbval cell that
    is the notebook's kernel, so the cell would re-run in a fresh kernel and it and every later cell fail
    with NameError, hiding the real failure. A notebook's claims must hold the first time."""
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.flaky(reruns=0))


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
