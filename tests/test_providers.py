"""Choosing a provider, and the external provider: same endpoints and contract as the local one.

The docker provider's tests on a real engine are in tests/test_docker_*.py (CI: `make docker-test`)."""

from __future__ import annotations

import json
import os

import psycopg
import pytest
from pymemcache.client.base import Client

import labkit
from labkit.errors import BadParameter, NotRunning, ProviderUnavailable
from labkit.memcache_meta import MetaClient
from labkit.services import choose_provider, docker_available
from labkit.services.external import ExternalService


def test_provider_choice_follows_the_daemon(monkeypatch):
    monkeypatch.delenv("LABKIT_PROVIDER", raising=False)
    assert choose_provider() == ("docker" if docker_available()[0] else "local")
    monkeypatch.setenv("LABKIT_PROVIDER", "local")
    assert choose_provider() == "local"


def test_docker_provider_is_refused_clearly_without_a_daemon(monkeypatch, tmp_path):
    """No daemon behind DOCKER_HOST (here a socket path that does not exist): a clear refusal naming the way out."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    docker_available.cache_clear()
    try:
        assert not docker_available()[0]
        with pytest.raises(ProviderUnavailable, match="LABKIT_PROVIDER=local"):
            labkit.stack("memcached", provider="docker", attach=False)
    finally:
        monkeypatch.undo()
        docker_available.cache_clear()


def test_external_provider_uses_given_servers_and_never_stops_them(stack, monkeypatch):
    """Point the external provider at the real servers of this run, as a class cluster would be."""
    pg, mc = stack.endpoint("postgres"), stack.endpoint("memcached")
    monkeypatch.setenv("LABKIT_POSTGRES_DSN", pg.dsn)
    monkeypatch.setenv("LABKIT_MEMCACHED", f"{mc.host}:{mc.port}")
    monkeypatch.delenv("LABKIT_NAMESPACE", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "Tester")
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/tester/providers.ipynb")
    with labkit.stack("postgres", "memcached", provider="external", attach=False) as ext:
        e = ext.endpoint("postgres")
        assert (e.host, e.port, e.provider) == (pg.host, pg.port, "external")
        assert ext.service("postgres").version() == stack.service("postgres").version()
        assert ext.service("memcached").health().ok
        with pytest.raises(NotRunning, match="not labkit's to kill"):
            ext.service("postgres").kill()
        ns = e.extra["schema"]
        assert ns == "lk_tester__providers"
        with psycopg.connect(e.dsn) as conn:  # labkit created only the learner's schema, and works inside it
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (ns,)).fetchone() == (1,)
            assert conn.execute("SELECT current_schemas(false)").fetchone() == ([ns],)
        with MetaClient(ext.endpoint("memcached").address) as m:  # a bare address: the prefix still applies
            m.set("k", b"v")
            with pytest.raises(BadParameter, match="flush_all would empty a memcached other learners share"):
                m.flush_all()
        assert Client(mc.address).get(f"{ns}:k") == b"v" and Client(mc.address).get("k") is None
    assert MetaClient(mc.address).key_prefix == b""  # closed: this process's clients of it are plain again
    assert stack.service("postgres").health().ok and stack.service("memcached").health().ok


def test_external_provider_from_a_config_file(stack, tmp_path, monkeypatch):
    mc = stack.endpoint("memcached")
    cfg = tmp_path / "external.json"
    cfg.write_text(json.dumps({"memcached": {"address": f"{mc.host}:{mc.port}"}}))
    monkeypatch.setenv("LABKIT_CONFIG", str(cfg))
    monkeypatch.delenv("LABKIT_MEMCACHED", raising=False)
    svc = ExternalService("memcached", kind="memcached")
    assert svc.start().port == mc.port
    svc.stop()
    assert stack.service("memcached").health().ok


def test_external_provider_errors_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("LABKIT_POSTGRES_DSN", raising=False)
    with pytest.raises(ProviderUnavailable, match="LABKIT_POSTGRES_DSN"):
        ExternalService("postgres", kind="postgres").start()
    monkeypatch.setenv("LABKIT_MEMCACHED", "cache.example:notaport")
    with pytest.raises(BadParameter, match="host:port"):
        ExternalService("memcached", kind="memcached").start()
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    monkeypatch.setenv("LABKIT_CONFIG", str(bad))
    monkeypatch.delenv("LABKIT_MEMCACHED")
    with pytest.raises(BadParameter, match="not valid JSON"):
        ExternalService("memcached", kind="memcached").start()
    monkeypatch.setenv("LABKIT_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.setenv("LABKIT_MEMCACHED", "127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(ProviderUnavailable, match="Check the address"):
        ExternalService("memcached", kind="memcached").start()


def test_setup_files_list_what_the_local_provider_needs():
    """conda and Binder users get the real servers from conda-forge; CI from apt."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in ("environment.yml", "binder/environment.yml"):
        text = open(os.path.join(root, path)).read()
        for pkg in (
            "postgresql",
            "memcached",
            "openjdk=17",
            "maven",
            "jupyterlab",
            "ipywidgets",
            "psycopg",
            "pymemcache",
            "cassandra-driver",
        ):
            assert f"- {pkg}" in text, f"{path} does not list {pkg}"
    assert "LABKIT_PROFILE=light" in open(os.path.join(root, "binder/start")).read()
    assert "labkit fetch cassandra" in open(os.path.join(root, "binder/postBuild")).read()
    ci = open(os.path.join(root, ".ci/run")).read()
    assert "apt-get install" in ci and "make test" in ci
    readme = open(os.path.join(root, "README.md")).read()
    assert "make test" in readme and "make lab" in readme
