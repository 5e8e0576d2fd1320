"""Reference solution of lesson 06's exercise (never imported by a notebook; the tests run it)."""

from __future__ import annotations

from typing import Any


def save_profile(sessions: dict[str, Any], user_id: int, home: str, profile: str) -> None:
    """Write through the home region's client into the home continent's keyspace, at LOCAL_QUORUM."""
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    st = SimpleStatement(
        f"INSERT INTO geo_{home}.users (id, home, profile) VALUES (%s, %s, %s)",
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
    )
    sessions[home].execute(st, (user_id, home, profile))
