"""Reference solution of lesson 01's exercise: weekly cohort retention in SQL."""

from __future__ import annotations


def cohort_retention_sql() -> str:
    # cohort = each user's first week (a window over the user's events); a user counts once per week
    # they were active; retention divides by the cohort's size, i.e. its users active in week 0
    return """
    WITH firsts AS (
        SELECT DISTINCT user_id, week, min(week) OVER (PARTITION BY user_id) AS cohort
        FROM events_weekly
    ), counts AS (
        SELECT cohort, week - cohort AS age, count(*) AS active FROM firsts GROUP BY cohort, week - cohort
    )
    SELECT c.cohort, c.age, c.active::float8 / s.active AS retention
    FROM counts c JOIN counts s ON s.cohort = c.cohort AND s.age = 0
    ORDER BY c.cohort, c.age
    """
