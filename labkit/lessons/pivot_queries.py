"""Lesson 01's questions, answered in SQL on the server (window functions, no pandas): the share of events
per feature, weekly cohort retention, and the retention of photo users against everyone else.

A *photo user* posted a photo in their sign-up week: deciding the group by the first week avoids survivorship
bias (people who stay longer have more chances to post). The queries read ``events_weekly``
(:mod:`labkit.lessons.pivot_loads`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from labkit.datasets import burbn

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COHORT_RETENTION_SQL",
    "FEATURE_SHARE_SQL",
    "GROUP_RETENTION_SQL",
    "cohort_retention",
    "feature_share",
    "frame",
    "group_retention",
]

FEATURE_SHARE_SQL = """
SELECT kind, count(*) AS events, count(*)::float8 / sum(count(*)) OVER () AS share
FROM events GROUP BY kind ORDER BY events DESC
"""


# cohort = the week of a user's first event; age = weeks since then; retention = active users of the
# cohort at that age over the cohort's size (its users active at age 0: everyone, by definition)
COHORT_RETENTION_SQL = """
WITH ev AS (
    SELECT user_id, week, min(week) OVER (PARTITION BY user_id) AS cohort FROM events_weekly
), active AS (
    SELECT DISTINCT cohort, user_id, week - cohort AS age FROM ev
)
SELECT cohort, age, count(*) AS users,
       count(*)::float8 / first_value(count(*)) OVER (PARTITION BY cohort ORDER BY age) AS retention
FROM active GROUP BY cohort, age ORDER BY cohort, age
"""


# retention by group at each age, over the users whose cohort is old enough to be seen at that age
GROUP_RETENTION_SQL = """
WITH ev AS (
    SELECT user_id, week, kind, min(week) OVER (PARTITION BY user_id) AS cohort FROM events_weekly
), usr AS (
    SELECT user_id, cohort, bool_or(kind = 'photo_post' AND week = cohort) AS photo_user
    FROM ev GROUP BY user_id, cohort
), last AS (
    SELECT max(week) AS week FROM ev
), sizes AS (
    SELECT photo_user, cohort, sum(count(*)) OVER (PARTITION BY photo_user ORDER BY cohort) AS upto
    FROM usr GROUP BY photo_user, cohort
), act AS (
    SELECT u.photo_user, a.age, count(*) AS active
    FROM (SELECT DISTINCT user_id, week - cohort AS age FROM ev) a JOIN usr u USING (user_id)
    GROUP BY u.photo_user, a.age
)
SELECT act.photo_user, act.age, act.active, e.upto AS eligible, act.active::float8 / e.upto AS retention
FROM act CROSS JOIN last
JOIN LATERAL (SELECT upto FROM sizes s WHERE s.photo_user = act.photo_user AND s.cohort <= last.week - act.age
              ORDER BY s.cohort DESC LIMIT 1) e ON true
ORDER BY act.photo_user DESC, act.age
"""


def frame(dsn: str, sql: str) -> pd.DataFrame:
    """Run ``sql`` on the server; its rows as a DataFrame named by the query's columns."""
    import pandas as pd

    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description or []])


def feature_share(dsn: str) -> pd.DataFrame:
    """Events per kind and their share of all events, with each kind's family (burbn/photo/social)."""
    df = frame(dsn, FEATURE_SHARE_SQL)
    df["family"] = df["kind"].map(burbn.FAMILIES)
    return df


def cohort_retention(dsn: str) -> pd.DataFrame:
    """Weekly cohort retention (cohort, age, users, retention), computed by Postgres."""
    return frame(dsn, COHORT_RETENTION_SQL)


def group_retention(dsn: str) -> pd.DataFrame:
    """Retention of photo users and everyone else at each age (photo_user, age, active, eligible, retention)."""
    return frame(dsn, GROUP_RETENTION_SQL)
