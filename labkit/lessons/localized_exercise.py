"""Lesson 06's exercise self-check: the learner's ``save_profile`` runs against the real cluster; every profile
must land in its home continent's keyspace only, and the link must carry almost nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from labkit.checkpoints import checkpoint
from labkit.datasets.geo_store import Geo, user_home
from labkit.errors import CheckpointFailed

__all__ = ["check_save_profile"]


def check_save_profile(
    save_profile: Callable[[dict[str, Any], int, str, str], None], geo: Geo, users: int = 60
) -> None:
    """Run the learner's ``save_profile(sessions, user_id, home, profile)`` for users of both continents; check
    every row is in its home continent's keyspace only, and that the link carried almost nothing."""
    try:
        _check_save_profile(save_profile, geo, users)
    except NotImplementedError:
        print("Not attempted yet: write save_profile in the cell above, then run this cell again.")


def _check_save_profile(save_profile: Callable[..., None], geo: Geo, users: int) -> None:
    ids = list(range(5_000_000, 5_000_000 + users))
    token = f"ex-{time.time_ns()}"
    before = geo.link_bytes()
    for uid in ids:
        save_profile(geo.sessions, uid, user_home(uid), token + "x" * 1000)
    crossed = geo.link_bytes() - before
    for uid in ids:
        home = user_home(uid)
        away = "eu" if home == "us" else "us"
        got = (
            geo.sessions[home]
            .execute(geo.statement(home, f"SELECT profile FROM geo_{home}.users WHERE id = ?", "LOCAL_ONE"), (uid,))
            .one()
        )
        if got is None or not got[0].startswith(token):
            raise CheckpointFailed(
                f"user {uid} (home {home}) is not in geo_{home}.users after save_profile: write "
                f"it with sessions['{home}'] into the keyspace geo_{home}"
            )
        other = (
            geo.sessions[away]
            .execute(geo.statement(away, f"SELECT profile FROM geo_{away}.users WHERE id = ?", "LOCAL_ONE"), (uid,))
            .one()
        )
        if other is not None and other[0].startswith(token):
            raise CheckpointFailed(
                f"user {uid} (home {home}) was also written to geo_{away}: a profile lives on its home continent only"
            )
    checkpoint(
        "exercise: profiles stay on their home continent (KB across the link per 1000 saves)",
        crossed / users * 1000 / 1024,
        at_most=100.0,
        context="a global keyspace would ship every ~1 KB profile across (~1000 KB per 1000 saves)",
    )
