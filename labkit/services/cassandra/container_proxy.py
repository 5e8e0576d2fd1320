"""The docker provider's inter-DC latency proxies: one small container per Cassandra node, each running
labkit.services.latency_proxy from a copy of its source on a Python image, with a config file the proxy polls
(so a new delay applies while the cluster runs)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from labkit.errors import ServiceFailed
from labkit.services import _docker
from labkit.services._process import wait_for

STORAGE = 7000  # Cassandra's storage (internode) port inside a container


def proxy_sources(instance_dir: Path) -> Path:
    """labkit.services.latency_proxy and the one module it imports, as a package the proxy image can run."""
    src = Path(__file__).resolve().parents[2]  # labkit/
    dst = instance_dir / "proxy-src" / "labkit"
    (dst / "services").mkdir(parents=True, exist_ok=True)
    (dst / "__init__.py").write_text("")
    (dst / "services" / "__init__.py").write_text("")
    shutil.copy(src / "errors.py", dst / "errors.py")
    shutil.copy(src / "services" / "latency_proxy.py", dst / "services" / "latency_proxy.py")
    return dst.parent


def write_proxy_configs(instance_dir: Path, nodes: list[dict[str, Any]], delay_ms: float, jitter_ms: float) -> None:
    """One route per node: its proxy address forwards to its storage port after the delay."""
    from labkit.services.latency_proxy import write_config

    conf = instance_dir / "proxy-conf"
    conf.mkdir(parents=True, exist_ok=True)
    for n in nodes:
        write_config(
            conf / f"{n['name']}.json",
            [
                {
                    "listen": [n["proxy"], STORAGE],
                    "target": [n["address"], STORAGE],
                    "delay_ms": delay_ms,
                    "jitter_ms": jitter_ms,
                }
            ],
        )


def proxy_container(image: str, instance_dir: Path, node_name: str, src: Path) -> Any:
    """The (not yet started) proxy container of one node."""
    from testcontainers.core.container import DockerContainer

    c = DockerContainer(image)
    c.with_volume_mapping(str(src), "/labkit-proxy-src", "ro")
    c.with_volume_mapping(str(instance_dir / "proxy-conf"), "/labkit-proxy-conf", "rw")
    c.with_env("PYTHONPATH", "/labkit-proxy-src")
    c.with_command(
        ["python3", "-m", "labkit.services.latency_proxy", "--config", f"/labkit-proxy-conf/{node_name}.json"]
    )
    return c


def wait_proxy(instance_dir: Path, n: dict[str, Any], deadline: float) -> None:
    """A proxy is up when it has bound its route: it then writes <config>.ready (latency_proxy._serve)."""
    ready = instance_dir / "proxy-conf" / f"{n['name']}.ready"

    def up() -> bool:
        st = _docker.state(n["proxy_container"])
        if st not in ("running", "created"):
            raise ServiceFailed(
                f"latency proxy container of {n['name']} is {st}:\n{_docker.logs_by_name(n['proxy_container'])}"
            )
        return ready.exists()

    wait_for(
        f"the latency proxy of Cassandra node {n['name']} to listen",
        up,
        max(5.0, min(60.0, deadline - time.monotonic())),
        interval=0.2,
    )
