"""Lesson 01 -- the pivot: let the data decide.

Burbn's founders looked at what people actually did in their app and kept the one thing they loved:
photos with filters. This lesson does the same on a seeded Burbn-era event log
(:mod:`labkit.datasets.burbn`) in a real Postgres:

- :func:`time_loads`: load the log three ways, each timed as an operation of ``labkit.load.run``: one
  INSERT statement per row in autocommit (one commit per row: what naive application code does),
  ``executemany`` in batches (one transaction per batch), and ``COPY`` (psycopg's ``cursor.copy``).
- :func:`analyze`: the questions, answered in SQL on the server (window functions, no pandas): the
  share of events per feature, weekly cohort retention, and the retention of photo users against
  everyone else, where a *photo user* is someone who posted a photo in their sign-up week (deciding the
  group by the first week avoids survivorship bias: people who stay longer have more chances to post).
- :func:`verdict`: the data supports the pivot when photo users' week-4 retention is at least
  ``MIN_GAP`` above everyone else's and photo features are a larger share of events than Burbn's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from labkit.checkpoints import checkpoint
from labkit.datasets import burbn
from labkit.errors import BadParameter, CheckpointFailed
from labkit.services.postgres import fetch_value

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AT_WEEK",
    "MIN_GAP",
    "PivotResult",
    "analyze",
    "check_copy_faster",
    "check_no_effect",
    "check_pivot_supported",
    "check_recovers_truth",
    "check_retention_query",
    "cohort_retention",
    "defaults",
    "feature_share",
    "group_retention",
    "load_table",
    "plot_loads",
    "plot_retention",
    "run_pivot",
    "time_loads",
    "verdict",
]

AT_WEEK = 4  # retention is compared 4 weeks after sign-up
MIN_GAP = 0.10  # photo users must retain at least 10 points better to call it a pivot

SCHEMA = """
DROP VIEW IF EXISTS events_weekly;
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (event_id bigint NOT NULL, user_id int NOT NULL, ts timestamptz NOT NULL, kind text NOT NULL);
"""
# week number since the log's first Monday; the view saves every query from repeating it
WEEKLY_VIEW = """
CREATE OR REPLACE VIEW events_weekly AS
SELECT event_id, user_id, ts, kind,
       floor(extract(epoch FROM ts - TIMESTAMPTZ '2010-03-01 00:00:00+00') / 604800)::int AS week
FROM events
"""
INSERT_SQL = "INSERT INTO {table} (event_id, user_id, ts, kind) VALUES (%s, %s, %s, %s)"

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


def defaults() -> dict[str, Any]:
    """The notebook's knobs for the current profile."""
    from labkit import profile

    d = burbn.sizes()
    return {
        "users": d["users"],
        "weeks": d["weeks"],
        "seed": 2010,
        "strength": 1.0,
        "insert_rows": int(profile.pick(5000, 1000)),
        "batch": 1000,
        "copy_chunk": 10_000,
    }


def load_table(conn: Any, rows: list[tuple[Any, ...]], table: str = "events") -> None:
    """(Re)create ``table`` and COPY ``rows`` into it (untimed: for tests and exercises)."""
    with conn.cursor() as cur:
        cur.execute(SCHEMA.format(table=table))
        with cur.copy(f"COPY {table} (event_id, user_id, ts, kind) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        if table == "events":
            cur.execute(WEEKLY_VIEW)
            cur.execute("ANALYZE events")
    if not conn.autocommit:
        conn.commit()


def time_loads(
    dsn: str,
    log: burbn.BurbnLog,
    *,
    insert_rows: int = 1000,
    batch: int = 1000,
    copy_chunk: int = 10_000,
    max_seconds: float = 20.0,
) -> pd.DataFrame:
    """Load rows three ways, each timed by ``labkit.load.run``; one row per method with rows/s.

    Row INSERT and executemany load a sample (``insert_rows``, and 10x as many in batches) into their own
    tables; COPY loads the whole log into ``events``, the table the analysis reads. Each method runs
    until its rows are in or ``max_seconds`` pass; rows/s counts what was loaded in the time it took.
    """
    import pandas as pd

    from labkit.load import Workload, run
    from labkit.load.drivers import PostgresDriver

    if insert_rows < 1 or batch < 1 or copy_chunk < 1:
        raise BadParameter("insert_rows, batch and copy_chunk must be >= 1 rows")
    rows = log.rows
    drv = PostgresDriver(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in ("events_insert", "events_batch", "events"):
            conn.execute(SCHEMA.format(table=t))
    n_insert = min(insert_rows, len(rows))
    n_batches = max(1, min(len(rows), 10 * insert_rows) // batch)
    n_chunks = -(-len(rows) // copy_chunk)

    def row_insert(ctx: Any, op: Any) -> None:  # one statement, one commit (autocommit)
        ctx.conn.execute(INSERT_SQL.format(table="events_insert"), rows[op.seq])

    def batched(ctx: Any, op: Any) -> None:  # executemany, one transaction per batch
        part = rows[op.seq * batch : (op.seq + 1) * batch]
        with ctx.conn.transaction(), ctx.conn.cursor() as cur:
            cur.executemany(INSERT_SQL.format(table="events_batch"), part)
        ctx.count("rows", len(part))

    def copy(ctx: Any, op: Any) -> None:  # COPY FROM STDIN, one chunk per operation
        part = rows[op.seq * copy_chunk : (op.seq + 1) * copy_chunk]
        with ctx.conn.cursor() as cur, cur.copy("COPY events (event_id, user_id, ts, kind) FROM STDIN") as cp:
            for r in part:
                cp.write_row(r)
        ctx.count("rows", len(part))

    out = []
    for name, fn, n_ops, rows_per_op in (
        ("row INSERT (autocommit)", row_insert, n_insert, 1),
        (f"executemany ({batch} rows/txn)", batched, n_batches, batch),
        ("COPY", copy, n_chunks, copy_chunk),
    ):
        res = run(fn, Workload(clients=1, ops=n_ops, duration=max_seconds), driver=drv, name=name)
        if res.error_count:
            raise RuntimeError(f"{name}: {res.error_count} errors while loading ({res.errors}); {res.notes}")
        loaded = res.counters.get("rows", res.ops * rows_per_op) if rows_per_op > 1 else res.ops
        out.append({"method": name, "rows": int(loaded), "seconds": res.duration, "rows_per_s": loaded / res.duration})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(WEEKLY_VIEW)
        conn.execute("ANALYZE events")
        n = fetch_value(conn, "SELECT count(*) FROM events")
    if n != len(rows):
        raise RuntimeError(f"COPY loaded {n} rows of {len(rows)}: the run stopped early (max_seconds={max_seconds})")
    return pd.DataFrame(out)


def _frame(dsn: str, sql: str) -> pd.DataFrame:
    import pandas as pd

    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description or []])


def feature_share(dsn: str) -> pd.DataFrame:
    """Events per kind and their share of all events, with each kind's family (burbn/photo/social)."""
    df = _frame(dsn, FEATURE_SHARE_SQL)
    df["family"] = df["kind"].map(burbn.FAMILIES)
    return df


def cohort_retention(dsn: str) -> pd.DataFrame:
    """Weekly cohort retention (cohort, age, users, retention), computed by Postgres."""
    return _frame(dsn, COHORT_RETENTION_SQL)


def group_retention(dsn: str) -> pd.DataFrame:
    """Retention of photo users and everyone else at each age (photo_user, age, active, eligible, retention)."""
    return _frame(dsn, GROUP_RETENTION_SQL)


@dataclass
class PivotResult:
    """One run: the log's truth, the load timings and what the SQL found."""

    log: burbn.BurbnLog
    loads: pd.DataFrame | None
    shares: pd.DataFrame
    cohorts: pd.DataFrame
    groups: pd.DataFrame
    extras: dict[str, Any] = field(default_factory=dict)

    def family_share(self) -> dict[str, float]:
        s = self.shares.groupby("family")["share"].sum()
        return {f: float(s.get(f, 0.0)) for f in ("burbn", "photo", "social")}

    def retention(self, photo: bool, week: int = AT_WEEK) -> float:
        g = self.groups[(self.groups["photo_user"] == photo) & (self.groups["age"] == week)]
        if g.empty:
            raise BadParameter(f"no users of this group were seen {week} weeks after sign-up: use more weeks")
        return float(g["retention"].iloc[0])

    def gap(self, week: int = AT_WEEK) -> float:
        """Measured retention of photo users minus everyone else's, ``week`` weeks after sign-up."""
        return self.retention(True, week) - self.retention(False, week)

    def supports_pivot(self) -> bool:
        fam = self.family_share()
        return self.gap() >= MIN_GAP and fam["photo"] > fam["burbn"]

    def table(self) -> pd.DataFrame:
        """Measured against the generator's truth, rounded for reading."""
        import pandas as pd

        fam, truth = self.family_share(), self.log.expected_family_share()
        rows = [
            (f"retention at week {AT_WEEK}, photo users", self.retention(True), self.log.true_retention(AT_WEEK, True)),
            (
                f"retention at week {AT_WEEK}, everyone else",
                self.retention(False),
                self.log.true_retention(AT_WEEK, False),
            ),
            (f"retention gap at week {AT_WEEK}", self.gap(), self.log.true_gap(AT_WEEK)),
            ("share of events: photo features", fam["photo"], truth["photo"]),
            ("share of events: Burbn features", fam["burbn"], truth["burbn"]),
        ]
        return pd.DataFrame(rows, columns=["quantity", "measured in SQL", "generator's truth"]).round(3)


def analyze(dsn: str, log: burbn.BurbnLog, loads: pd.DataFrame | None = None) -> PivotResult:
    """Ask Postgres the lesson's questions about the loaded ``events`` table."""
    return PivotResult(log, loads, feature_share(dsn), cohort_retention(dsn), group_retention(dsn))


def run_pivot(
    dsn: str,
    *,
    users: int | None = None,
    weeks: int | None = None,
    seed: int = 2010,
    strength: float = 1.0,
    insert_rows: int | None = None,
    batch: int = 1000,
    copy_chunk: int = 10_000,
) -> PivotResult:
    """Generate the log, load it (timing three methods), analyze it in SQL."""
    d = defaults()
    log = burbn.generate(users, weeks, strength=strength, seed=seed)
    loads = time_loads(dsn, log, insert_rows=insert_rows or d["insert_rows"], batch=batch, copy_chunk=copy_chunk)
    return analyze(dsn, log, loads)


def verdict(res: PivotResult) -> str:
    """One sentence: does the data support the pivot, and why."""
    fam = res.family_share()
    why = (
        f"photo users' week-{AT_WEEK} retention is {res.gap():+.0%} vs everyone else "
        f"(need ≥ +{MIN_GAP:.0%}); photo features are {fam['photo']:.0%} of events, Burbn's own {fam['burbn']:.0%}"
    )
    return ("The data SUPPORTS the pivot: " if res.supports_pivot() else "The data does NOT support the pivot: ") + why


# -- checkpoints ----------------------------------------------------------------------------------


def _ctx(res: PivotResult) -> str:
    return f"seed={res.log.seed}, strength={res.log.strength:g}, {res.log.users} users, {res.log.events} events"


def check_copy_faster(loads: pd.DataFrame, factor: float = 10.0) -> None:
    """COPY loads at least ``factor`` times more rows per second than one INSERT (and commit) per row."""
    rate = dict(zip(loads["method"], loads["rows_per_s"]))
    copy_rate = rate["COPY"]
    row_rate = next(v for k, v in rate.items() if k.startswith("row INSERT"))
    checkpoint(
        f"COPY loads at least {factor:g}x more rows/s than row-by-row INSERT",
        copy_rate / row_rate,
        at_least=factor,
        context=f"COPY {copy_rate:,.0f} rows/s vs row INSERT {row_rate:,.0f} rows/s",
    )


def check_recovers_truth(res: PivotResult, gap_tol: float = 0.06, share_tol: float = 0.03) -> None:
    """The SQL finds the planted effect: retention gap and photo share within tolerance of the truth."""
    truth_gap = res.log.true_gap(AT_WEEK)
    checkpoint(
        f"SQL recovers the week-{AT_WEEK} retention gap within {gap_tol:.2f} of the generator's truth",
        abs(res.gap() - truth_gap),
        at_most=gap_tol,
        context=f"measured {res.gap():.3f} vs truth {truth_gap:.3f}, {_ctx(res)}",
    )
    truth_share = res.log.expected_family_share()["photo"]
    measured = res.family_share()["photo"]
    checkpoint(
        f"SQL recovers the photo features' share of events within {share_tol:.2f} of the truth",
        abs(measured - truth_share),
        at_most=share_tol,
        context=f"measured {measured:.3f} vs truth {truth_share:.3f}, {_ctx(res)}",
    )


def check_pivot_supported(res: PivotResult) -> None:
    """With the effect planted, the data supports the pivot on both counts."""
    fam = res.family_share()
    checkpoint(
        f"photo users retain at least {MIN_GAP:.0%} better at week {AT_WEEK}",
        res.gap(),
        at_least=MIN_GAP,
        context=_ctx(res),
    )
    checkpoint(
        "photo features are a larger share of events than Burbn's check-ins, plans and points",
        fam["photo"] - fam["burbn"],
        at_least=1e-9,
        context=f"photo {fam['photo']:.3f} vs burbn {fam['burbn']:.3f}, {_ctx(res)}",
    )


def check_no_effect(res: PivotResult) -> None:
    """With strength 0 the same analysis must NOT report a pivot (no effect where none was planted)."""
    checkpoint(
        f"at strength 0 no retention gap of {MIN_GAP:.0%} or more is reported",
        res.gap(),
        at_most=MIN_GAP - 1e-9,
        context=_ctx(res),
    )
    checkpoint(
        "at strength 0 the data does not support the pivot",
        float(res.supports_pivot()),
        at_most=0,
        context=verdict(res),
    )


# -- exercise -------------------------------------------------------------------------------------


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
        mine = _frame(dsn, sql)
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


# -- plots ----------------------------------------------------------------------------------------


def plot_loads(loads: pd.DataFrame) -> Any:
    """Rows per second per load method (log scale: they differ by orders of magnitude)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    ax.barh(loads["method"], loads["rows_per_s"], color=["C3", "C1", "C2"][: len(loads)])
    ax.set_xscale("log")
    ax.set_xlabel("rows loaded per second (log scale)")
    for i, v in enumerate(loads["rows_per_s"]):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def plot_retention(res: PivotResult) -> Any:
    """Left: the cohort retention heatmap. Right: photo users vs everyone else, with the generator's truth."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    piv = res.cohorts.pivot(index="cohort", columns="age", values="retention")
    im = ax1.imshow(piv.to_numpy(dtype=float), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax1.set_xlabel("weeks since sign-up")
    ax1.set_ylabel("sign-up cohort (week of 2010 log)")
    ax1.set_yticks(range(len(piv.index)), [str(c) for c in piv.index], fontsize=7)
    fig.colorbar(im, ax=ax1, label="retention (share of cohort active)")
    for photo, color, label in ((True, "C1", "photo users"), (False, "C0", "everyone else")):
        g = res.groups[res.groups["photo_user"] == photo]
        ax2.plot(g["age"], g["retention"], "o", color=color, label=f"{label} (SQL)")
        ages = np.arange(0, int(g["age"].max()) + 1)
        ax2.plot(
            ages,
            [res.log.true_retention(int(a), photo) for a in ages],
            "-",
            color=color,
            alpha=0.5,
            label=f"{label} (generator's truth)",
        )
    ax2.axvline(AT_WEEK, color="grey", ls=":", lw=1)
    ax2.set_xlabel("weeks since sign-up")
    ax2.set_ylabel("retention (share of users active)")
    ax2.set_ylim(0, 1.02)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig
