"""Fixtures shared by the tests: one private stack for the whole run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def stack():
    """One Postgres and one memcached for the whole run (private: never the shared stack)."""
    import labkit

    st = labkit.stack("postgres", "memcached", attach=False)
    yield st
    st.close()


@pytest.fixture(scope="session")
def pg(stack):
    return stack.endpoint("postgres")


@pytest.fixture(scope="session")
def mc(stack):
    return stack.endpoint("memcached")


def docker_or_skip() -> None:
    from labkit.services import docker_available

    ok, why = docker_available()
    if not ok:
        pytest.skip(f"Docker provider test skipped: {why}")
