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


class DockerEngine:
    """The Docker tests' own view of the engine, through the Docker SDK rather than labkit's helpers: what labkit
    claims about its containers is checked by asking the daemon directly."""

    LABEL_HOME = "labkit.home"  # the label labkit puts on every container and network it creates (its contract)

    def __init__(self) -> None:
        import docker

        self.client = docker.from_env(timeout=30)

    def state(self, name: str) -> str:
        """running, paused, exited, ... as the daemon reports it, or "missing"."""
        from docker.errors import NotFound

        try:
            return str(self.client.containers.get(name).status)
        except NotFound:
            return "missing"

    def labelled(self, home: str | None = None) -> list[str]:
        """Names of the containers labelled with a labkit home (default: this run's home), running or not."""
        from labkit import paths

        flt = {"label": f"{self.LABEL_HOME}={home or paths.home()}"}
        return sorted(c.name for c in self.client.containers.list(all=True, filters=flt))


@pytest.fixture(scope="session")
def docker_engine() -> DockerEngine:
    """The Docker tests' guard: never from the host namespace of a machine with a /.dockerenv (CI's engine lives in a
    namespace of its own: `make docker-test`), fail when LABKIT_REQUIRE_DOCKER is set and no engine answers (CI),
    else skip with the reason."""
    import os

    from labkit.services import docker_available, host_namespace_refusal

    refusal = host_namespace_refusal()
    ok, why = docker_available()
    if refusal and ok:
        pytest.fail(refusal)
    if not ok:
        if os.environ.get("LABKIT_REQUIRE_DOCKER"):
            pytest.fail(f"LABKIT_REQUIRE_DOCKER is set but {why}")
        pytest.skip(f"Docker provider test skipped: {why}")
    return DockerEngine()
