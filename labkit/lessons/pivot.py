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

The parts live in their own modules (``pivot_loads``: the log into Postgres, timed; ``pivot_queries``: the SQL;
``pivot_exercise``: the learner's check). This module keeps the run, its result, verdict, claims and plot, and
re-exports the rest: ``pivot.X`` works for all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.checkpoints import checkpoint
from labkit.datasets import burbn
from labkit.errors import BadParameter
from labkit.lessons.pivot_exercise import check_retention_query
from labkit.lessons.pivot_loads import (
    INSERT_SQL,
    SCHEMA,
    WEEKLY_VIEW,
    check_copy_faster,
    load_table,
    plot_loads,
    time_loads,
)
from labkit.lessons.pivot_queries import (
    COHORT_RETENTION_SQL,
    FEATURE_SHARE_SQL,
    GROUP_RETENTION_SQL,
    cohort_retention,
    feature_share,
    group_retention,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AT_WEEK",
    "COHORT_RETENTION_SQL",
    "FEATURE_SHARE_SQL",
    "GROUP_RETENTION_SQL",
    "INSERT_SQL",
    "MIN_GAP",
    "SCHEMA",
    "WEEKLY_VIEW",
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


# -- plots ----------------------------------------------------------------------------------------


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
