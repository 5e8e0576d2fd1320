"""One two-datacenter Cassandra (us:1, eu:1, 40 ms one way) shared by the tests of lessons 06 and 07.

Why not a fixture per module: a cluster start costs tens of seconds of CPU on CI; both lessons use the same
layout, so the first module to ask starts it and the session's end stops it.
"""
from __future__ import annotations

from typing import Any

import pytest

_STATE: dict[str, Any] = {}


def shared_geo(request: pytest.FixtureRequest) -> Any:
    from labkit.services import cassandra as cmod

    try:
        cmod.find_java()
    except Exception as e:  # noqa: BLE001 - BinaryNotFound
        pytest.skip(f"lessons 06/07 need Java 17 for Cassandra: {e}")
    if "geo" not in _STATE:
        import labkit
        from labkit.lessons import localized

        st = labkit.stack("cassandra", attach=False, cassandra={"nodes": "us:1,eu:1", "inter_dc_delay_ms": 40})
        geo = localized.connect(st.service("cassandra"))
        _STATE["geo"] = geo

        def stop() -> None:
            geo.close()
            st.close()
            _STATE.clear()

        request.session.addfinalizer(stop)
    geo = _STATE["geo"]
    geo.cluster.set_inter_dc_delay(40)
    return geo
