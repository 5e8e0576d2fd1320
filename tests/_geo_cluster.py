"""One two-datacenter Cassandra (us:1, eu:1, 40 ms one way) shared by the tests of lessons 06 and 07.

Why not a fixture per module: a cluster start costs tens of seconds of CPU on CI; both lessons use the same
layout, so the first module to ask starts it and the session's end stops it. A start that failed is not retried
by every test (each attempt would wait out the whole start timeout).
"""

from __future__ import annotations

from typing import Any

import pytest

_STATE: dict[str, Any] = {}
START_TIMEOUT_S = 600  # generous: on a busy 2-core machine two JVMs can take minutes to come up


def shared_geo(request: pytest.FixtureRequest) -> Any:
    from labkit.services import cassandra as cmod

    try:
        cmod.find_java()
    except Exception as e:  # noqa: BLE001 - BinaryNotFound
        pytest.skip(f"lessons 06/07 need Java 17 for Cassandra: {e}")
    if "error" in _STATE:
        pytest.fail(f"the shared two-DC cluster did not start: {_STATE['error']}")
    if "geo" not in _STATE:
        from labkit.lessons import localized

        cluster = cmod.LocalCassandra("geo-tests", nodes="us:1,eu:1", inter_dc_delay_ms=40)
        try:
            cluster.start(timeout=START_TIMEOUT_S)
            geo = localized.connect(cluster)
        except Exception as e:
            _STATE["error"] = str(e).splitlines()[0]
            cluster.stop()
            raise
        _STATE["geo"] = geo

        def stop() -> None:
            geo.close()
            cluster.stop()
            cluster.remove_data()
            _STATE.clear()

        request.session.addfinalizer(stop)
    geo = _STATE["geo"]
    geo.cluster.set_inter_dc_delay(40)
    return geo
