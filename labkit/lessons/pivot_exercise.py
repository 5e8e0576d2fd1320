"""Lesson 01's exercise self-check: the learner's cohort-retention query, run on the real server and compared
with the reference query of :mod:`labkit.lessons.pivot_queries` cohort by cohort, week by week."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from labkit.errors import CheckpointFailed
from labkit.lessons.pivot_queries import cohort_retention, frame

__all__ = ["check_retention_query"]


def check_retention_query(make_sql: Callable[[], str], dsn: str, tol: float = 1e-9) -> None:
    """Run the learner's cohort-retention query on the server and compare it with the reference.

    ``make_sql()`` returns a query over ``events_weekly(event_id, user_id, ts, kind, week)`` with columns
    ``cohort, age, retention``. Prints PASS, "Not attempted yet", or the first cohort/week that differs.
    """
    try:
        sql = make_sql()
    except NotImplementedError:
        print("Not attempted yet: write cohort_retention_sql() and run this cell again")
        return
    if not isinstance(sql, str) or not sql.strip():
        raise CheckpointFailed(f"cohort_retention_sql() returned {sql!r}: return the SQL query as a string")
    reference = cohort_retention(dsn)
    ref = reference.set_index(["cohort", "age"])["retention"]
    try:
        mine = frame(dsn, sql)
    except psycopg.Error as exc:
        raise CheckpointFailed(f"Postgres rejected your query: {str(exc).strip()}") from None
    missing = {"cohort", "age", "retention"} - set(mine.columns)
    if missing:
        raise CheckpointFailed(
            f"your query has no column(s) {sorted(missing)}: name them cohort, age, retention "
            f"(it returned {list(mine.columns)})"
        )
    got = mine.set_index(["cohort", "age"])["retention"].astype(float)
    if got.index.duplicated().any():
        first = mine[mine.duplicated(["cohort", "age"])].iloc[0]
        c, a = first["cohort"], first["age"]
        raise CheckpointFailed(f"your query returns cohort {c}, week {a} more than once: group by cohort and age")
    for c, a, want in reference[["cohort", "age", "retention"]].itertuples(index=False, name=None):
        if (c, a) not in got.index:
            raise CheckpointFailed(f"cohort {c}, week {a}: missing from your result (reference retention {want:.3f})")
        if not abs(got[(c, a)] - want) <= tol:
            raise CheckpointFailed(
                f"cohort {c}, week {a}: your retention is {got[(c, a)]:.4f}, the reference "
                f"{want:.4f} (active users of the cohort that week / the cohort's size)"
            )
    extra = sorted(set(got.index) - set(ref.index))
    if extra:
        raise CheckpointFailed(
            f"cohort {extra[0][0]}, week {extra[0][1]}: in your result but no user of that cohort was active that week"
        )
    print("PASS  exercise: your cohort-retention query matches the reference on every cohort and week")
