"""A deterministic Burbn-era product event log: check-ins, plans, points, photos, filters, likes, comments.

Burbn (2010) was a check-in app with plans, points and photo posting. Its founders saw that people used
one feature -- posting photos with filters -- and cut the rest; Instagram launched in October 2010. This
generator writes a fictional event log of such an app, with one **documented, planted effect** whose
size the learner controls, so the lesson can ask: does the data support the pivot, and does our SQL
recover exactly what was planted?

The model (all draws from one seeded ``numpy`` generator, so a seed gives the same log everywhere):

- ``users`` sign up over ``weeks`` weeks (a growing app: later weeks get a little more sign-ups).
- A share ``PHOTO_SHARE`` (30 %) of users are *photo users*: their first event is a photo post and they
  keep using photo features. Everyone else never posts a photo. This share does not depend on the
  strength: photo users exist even when photos make no difference.
- Retention: a user stays active each further week with probability ``q``; ``q = Q_BASE`` (0.6) for
  everyone else and ``Q_BASE + Q_BOOST * strength`` (up to 0.9) for photo users. So at week k after
  sign-up the expected retention is ``q**k`` exactly -- the generator's *truth*.
- Engagement: an active week has ``1 + Poisson(lam)`` events; ``lam = LAM_BASE`` for everyone else and
  ``LAM_BASE * (1 + strength)`` for photo users.
- Feature mix: everyone else uses Burbn's features and the social ones; photo users' mix moves from
  Burbn's features to photo posts and filters as the strength grows (see :func:`photo_user_mix`).

At ``strength=0`` photo users retain exactly like everyone else and photo features are a small share of
the events: the data does *not* support the pivot. At ``strength=1`` photo users retain far better and
photo features are most of what people do.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labkit.errors import BadParameter

__all__ = [
    "BURBN_FEATURES",
    "EPOCH",
    "FAMILIES",
    "KINDS",
    "PHOTO_FEATURES",
    "PHOTO_SHARE",
    "BurbnLog",
    "generate",
    "other_user_mix",
    "photo_user_mix",
    "sizes",
]

KINDS = ("checkin", "plan", "points", "photo_post", "filter", "like", "comment")
BURBN_FEATURES = ("checkin", "plan", "points")
PHOTO_FEATURES = ("photo_post", "filter")
SOCIAL_FEATURES = ("like", "comment")
FAMILIES = {
    **{k: "burbn" for k in BURBN_FEATURES},
    **{k: "photo" for k in PHOTO_FEATURES},
    **{k: "social" for k in SOCIAL_FEATURES},
}

PHOTO_SHARE = 0.30  # share of users who post photos from their first day
Q_BASE = 0.60  # weekly probability that a user comes back (everyone at strength 0)
Q_BOOST = 0.30  # extra weekly return probability of photo users at strength 1
LAM_BASE = 3.0  # mean extra events in an active week (each active week has 1 + Poisson(lam))
EPOCH = dt.datetime(2010, 3, 1, tzinfo=dt.UTC)  # a Monday: week 0 of the (fictional) log
WEEK_SECONDS = 7 * 24 * 3600

# users per profile: ~1e5 events in ci/light, > 1e6 in full at strength 1 (about 15 events per user)
_USERS = {"full": 80_000, "ci": 6_000, "light": 6_000}


def sizes(profile: str | None = None) -> dict[str, int]:
    """Default users and weeks of a profile (``LABKIT_PROFILE``)."""
    from labkit import profile as _profile

    p = profile or _profile.current()
    if p not in _USERS:
        raise BadParameter(f"profile {p!r} unknown: use one of {', '.join(_USERS)}")
    return {"users": _USERS[p], "weeks": 12}


def other_user_mix() -> np.ndarray:
    """Probabilities over KINDS of a user who never posts photos (independent of the strength)."""
    w = np.array([3.0, 2.0, 2.0, 0.0, 0.0, 2.0, 1.0])
    return w / w.sum()


def photo_user_mix(strength: float) -> np.ndarray:
    """Probabilities over KINDS of a photo user: Burbn features give way to photos as strength grows."""
    s = float(strength)
    w = np.array(
        [
            3.0 * (1 - s) + 0.2 * s,
            2.0 * (1 - s) + 0.2 * s,
            2.0 * (1 - s) + 0.2 * s,
            1.0 + 4.0 * s,
            1.0 + 4.0 * s,
            2.0,
            1.0,
        ]
    )
    return w / w.sum()


@dataclass
class BurbnLog:
    """The generated log (rows ready for COPY) and the generator's truth about it."""

    rows: list[tuple[int, int, dt.datetime, str]]  # (event_id, user_id, ts, kind), ordered by ts
    user_cohort: np.ndarray  # sign-up week per user (index = user_id - 1)
    user_is_photo: np.ndarray  # bool per user
    users: int
    weeks: int
    strength: float
    seed: int
    q_photo: float
    q_other: float
    lam_photo: float
    lam_other: float
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return len(self.rows)

    def true_retention(self, week: int, photo: bool) -> float:
        """Expected share of a group's users still active ``week`` weeks after sign-up: q**week."""
        return (self.q_photo if photo else self.q_other) ** int(week)

    def true_gap(self, week: int) -> float:
        """Expected retention of photo users minus everyone else's at ``week`` weeks after sign-up."""
        return self.true_retention(week, True) - self.true_retention(week, False)

    def expected_family_share(self) -> dict[str, float]:
        """Expected share of events per feature family (burbn/photo/social), given who signed up when.

        Computed from the model's parameters and the realised sign-ups, not from the drawn events: what
        the SQL measures should come out within sampling noise of it.
        """
        horizon = self.weeks - self.user_cohort  # weeks each user can be seen
        fam = {"burbn": 0.0, "photo": 0.0, "social": 0.0}
        for photo, q, lam, mix in (
            (True, self.q_photo, self.lam_photo, photo_user_mix(self.strength)),
            (False, self.q_other, self.lam_other, other_user_mix()),
        ):
            h = horizon[self.user_is_photo == photo]
            active_weeks = float(np.sum((1 - q**h) / (1 - q))) if q < 1 else float(h.sum())
            n_events = active_weeks * (1 + lam)
            by_kind = n_events * mix
            if photo:  # each photo user's first event is a photo post instead of a draw from the mix
                by_kind = by_kind - len(h) * mix
                by_kind[KINDS.index("photo_post")] += len(h)
            for k, v in zip(KINDS, by_kind):
                fam[FAMILIES[k]] += float(v)
        total = sum(fam.values())
        return {k: v / total for k, v in fam.items()}

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "weeks": self.weeks,
            "events": self.events,
            "strength": self.strength,
            "seed": self.seed,
            "photo users": int(self.user_is_photo.sum()),
        }


def _check(users: Any, weeks: Any, strength: Any) -> None:
    if isinstance(users, bool) or not isinstance(users, (int, np.integer)) or not 50 <= users <= 5_000_000:
        raise BadParameter(f"users={users!r}: give the number of users as an integer in 50..5,000,000")
    if isinstance(weeks, bool) or not isinstance(weeks, (int, np.integer)) or not 6 <= weeks <= 104:
        raise BadParameter(f"weeks={weeks!r}: the log needs 6..104 weeks (retention is read at week 4)")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise BadParameter(
            f"strength={strength!r}: the planted effect's strength is a number in [0, 1] "
            "(0 = photos make no difference, 1 = the full Burbn story)"
        )


def generate(
    users: int | None = None, weeks: int | None = None, *, strength: float = 1.0, seed: int = 2010
) -> BurbnLog:
    """Generate the log. ``users``/``weeks`` default to the profile's sizes."""
    d = sizes()
    users = d["users"] if users is None else users
    weeks = d["weeks"] if weeks is None else weeks
    _check(users, weeks, strength)
    s = float(strength)
    rng = np.random.default_rng(seed)
    # sign-up week: a growing app, weight 1 + w/weeks for week w
    w = 1.0 + np.arange(weeks) / weeks
    cohort = rng.choice(weeks, size=users, p=w / w.sum())
    is_photo = rng.random(users) < PHOTO_SHARE
    q = np.where(is_photo, Q_BASE + Q_BOOST * s, Q_BASE)
    lam = np.where(is_photo, LAM_BASE * (1 + s), LAM_BASE)
    # active weeks: age 0 always; then geometric survival, cut at the end of the log
    lifetime = rng.geometric(1 - q)  # P(lifetime > k) = q**k
    active = np.minimum(lifetime, weeks - cohort)
    # one row per (user, active week)
    uw_user = np.repeat(np.arange(users), active)
    starts = np.repeat(np.cumsum(active) - active, active)
    uw_age = np.arange(len(uw_user)) - starts
    uw_week = cohort[uw_user] + uw_age
    n_ev = 1 + rng.poisson(lam[uw_user])
    # one row per event
    ev_user = np.repeat(uw_user, n_ev)
    ev_week = np.repeat(uw_week, n_ev)
    first_of_week = np.zeros(len(ev_user), dtype=bool)
    first_of_week[np.cumsum(n_ev) - n_ev] = True
    ev_age0 = np.repeat(uw_age == 0, n_ev)
    photo_ev = is_photo[ev_user]
    kinds = np.empty(len(ev_user), dtype=np.int8)
    cdf_other = np.cumsum(other_user_mix())
    cdf_photo = np.cumsum(photo_user_mix(s))
    u = rng.random(len(ev_user))
    kinds[~photo_ev] = np.minimum(np.searchsorted(cdf_other, u[~photo_ev], side="right"), len(KINDS) - 1)
    kinds[photo_ev] = np.minimum(np.searchsorted(cdf_photo, u[photo_ev], side="right"), len(KINDS) - 1)
    # a photo user's very first event is a photo post: that is how they joined
    kinds[photo_ev & ev_age0 & first_of_week] = KINDS.index("photo_post")
    # within its week, an event happens at a uniformly random second; the first event of a user's
    # sign-up week comes first (it is the sign-up)
    offs = rng.integers(0, WEEK_SECONDS - 1, len(ev_user))
    signup = ev_age0 & first_of_week
    offs[signup] = rng.integers(0, 3600, int(signup.sum()))
    secs = ev_week.astype(np.int64) * WEEK_SECONDS + offs
    # the sign-up event comes before that user's other events of the same week (events are grouped by
    # user, so each sign-up's time repeats over its week's events)
    first_sec = np.repeat(secs[signup], n_ev[uw_age == 0])
    secs[ev_age0] = np.maximum(secs[ev_age0], first_sec + (~signup[ev_age0]))
    order = np.lexsort((ev_user, secs))
    names = np.array(KINDS, dtype=object)
    ts = [EPOCH + dt.timedelta(seconds=int(x)) for x in secs[order]]
    rows = list(zip(range(1, len(order) + 1), (ev_user[order] + 1).tolist(), ts, names[kinds[order]].tolist()))
    return BurbnLog(
        rows=rows,
        user_cohort=cohort,
        user_is_photo=is_photo,
        users=users,
        weeks=weeks,
        strength=s,
        seed=seed,
        q_photo=Q_BASE + Q_BOOST * s,
        q_other=Q_BASE,
        lam_photo=LAM_BASE * (1 + s),
        lam_other=LAM_BASE,
    )
