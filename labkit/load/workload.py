"""Workload model: which keys, which operations, how big, how many clients, how fast, how long.

A :class:`Workload` is a plain description; the runner turns it into a stream of :class:`Op` per
client. Key distributions sample key *ranks* (0 = most popular) with numpy, so a seed reproduces
the exact sequence of keys and operations.

    wl = Workload(keys=Zipf(n=10_000, s=0.99), mix={"get": 0.9, "set": 0.1},
                  clients=8, duration=5, seed=1)
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labkit.errors import BadParameter

__all__ = ["KeyDistribution", "Uniform", "Zipf", "HotSpot", "Trace", "Op", "OpMix", "Workload"]


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BadParameter(f"{name}={value!r}: must be an integer >= {minimum}")
    return int(value)


def _fraction(name: str, value: Any, *, open_low: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadParameter(f"{name}={value!r}: must be a number between 0 and 1") from None
    if not (0 < v <= 1 if open_low else 0 <= v <= 1) or math.isnan(v):
        raise BadParameter(f"{name}={value!r}: must be a fraction in {'(0' if open_low else '[0'}, 1]")
    return v


class KeyDistribution(abc.ABC):
    """Draws key ranks in [0, n): rank 0 is the most requested key."""

    n: int

    @abc.abstractmethod
    def pmf(self) -> np.ndarray:
        """Probability of each rank (length n); the model a lesson compares measurements with."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` ranks drawn independently (exact inverse-CDF sampling)."""
        cdf = self._cdf()
        idx = np.searchsorted(cdf, rng.random(size), side="right")
        # guard the last bucket against cdf[-1] being 1 - epsilon after rounding
        return np.minimum(idx, self.n - 1)

    def _cdf(self) -> np.ndarray:
        cached = getattr(self, "_cdf_cache", None)
        if cached is None:
            cached = np.cumsum(self.pmf())
            cached /= cached[-1]
            object.__setattr__(self, "_cdf_cache", cached)
        return cached

    def top_share(self, k: int) -> float:
        """Share of requests that go to the k most popular keys (e.g. a cache holding k items)."""
        k = max(0, min(int(k), self.n))
        return float(self._cdf()[k - 1]) if k else 0.0


@dataclass(frozen=True)
class Uniform(KeyDistribution):
    """Every key equally likely."""

    n: int

    def __post_init__(self) -> None:
        _positive_int("n (number of keys)", self.n)

    def pmf(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.integers(0, self.n, size)


@dataclass(frozen=True)
class Zipf(KeyDistribution):
    """Zipf's law over n keys: P(rank r) proportional to 1 / (r+1)**s. s=0 is uniform; s~1 is web-like."""

    n: int
    s: float = 0.99

    def __post_init__(self) -> None:
        _positive_int("n (number of keys)", self.n)
        try:
            s = float(self.s)
        except (TypeError, ValueError):
            raise BadParameter(f"Zipf s={self.s!r}: the exponent must be a number >= 0") from None
        if not s >= 0 or math.isinf(s):
            raise BadParameter(f"Zipf s={self.s!r}: the exponent must be >= 0 (0 = uniform, 0.99 = typical web skew)")

    def pmf(self) -> np.ndarray:
        w = np.arange(1, self.n + 1, dtype=np.float64) ** -float(self.s)
        return w / w.sum()


@dataclass(frozen=True)
class HotSpot(KeyDistribution):
    """A ``hot_keys`` fraction of the keys receives a ``hot_ops`` fraction of the operations."""

    n: int
    hot_keys: float = 0.2
    hot_ops: float = 0.8

    def __post_init__(self) -> None:
        _positive_int("n (number of keys)", self.n)
        _fraction("hot_keys", self.hot_keys)
        _fraction("hot_ops", self.hot_ops, open_low=False)
        if self.n_hot == self.n and self.hot_ops < 1:
            raise BadParameter(
                f"HotSpot: hot_keys={self.hot_keys} makes every key hot, so hot_ops must be 1; lower hot_keys"
            )

    @property
    def n_hot(self) -> int:
        return max(1, min(self.n, round(self.n * self.hot_keys)))

    def pmf(self) -> np.ndarray:
        p = np.empty(self.n)
        h = self.n_hot
        p[:h] = self.hot_ops / h
        if h < self.n:
            p[h:] = (1 - self.hot_ops) / (self.n - h)
        return p


class Trace(KeyDistribution):
    """Replays a recorded sequence of keys in order (cycling), e.g. from a log or a dataset.

    Keys may be any hashable values; ranks are assigned by frequency (0 = most frequent).
    """

    def __init__(self, keys: Sequence[Any]) -> None:
        if len(keys) == 0:
            raise BadParameter("Trace(keys): the trace is empty; pass at least one key")
        uniq, inverse, counts = np.unique(
            np.asarray(keys, dtype=object).astype(str), return_inverse=True, return_counts=True
        )
        order = np.argsort(-counts, kind="stable")
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(len(order))
        self.names = [str(x) for x in uniq[order]]
        self.sequence = rank_of[inverse]
        self.counts = counts[order]
        self.n = len(uniq)

    def pmf(self) -> np.ndarray:
        return self.counts / self.counts.sum()

    def sample(self, rng: np.random.Generator, size: int, *, start: int = 0) -> np.ndarray:
        idx = (np.arange(size) + start) % len(self.sequence)
        return self.sequence[idx]


@dataclass(frozen=True)
class OpMix:
    """Operation kinds and their shares, e.g. OpMix({"get": 0.9, "set": 0.1})."""

    shares: Mapping[str, float] = field(default_factory=lambda: {"read": 1.0})

    def __post_init__(self) -> None:
        if not self.shares:
            raise BadParameter("op mix is empty: give at least one operation, e.g. {'read': 0.9, 'write': 0.1}")
        for name, w in self.shares.items():
            if not isinstance(name, str) or not name:
                raise BadParameter(f"op mix name {name!r}: use a non-empty string such as 'get'")
            if not isinstance(w, (int, float)) or w < 0 or math.isnan(w):
                raise BadParameter(f"op mix share {name}={w!r}: shares must be numbers >= 0")
        if sum(self.shares.values()) <= 0:
            raise BadParameter("op mix shares sum to 0: give at least one positive share")

    @classmethod
    def read_write(cls, read_ratio: float, read: str = "read", write: str = "write") -> OpMix:
        """OpMix from a read ratio, e.g. read_write(0.95) -> 95% reads, 5% writes."""
        r = _fraction("read_ratio", read_ratio, open_low=False)
        return cls({read: r, write: 1 - r})

    @property
    def kinds(self) -> list[str]:
        return list(self.shares)

    def probabilities(self) -> np.ndarray:
        w = np.array(list(self.shares.values()), dtype=float)
        return w / w.sum()


class Op:
    """One operation handed to the lesson's function: ``kind`` ('get'), ``key`` ('key:42'),
    ``rank`` (42: 0 is the most popular key), ``value`` (bytes for writes, else None),
    ``client`` (which client issued it) and ``seq`` (its number within that client)."""

    __slots__ = ("kind", "key", "rank", "value", "client", "seq")

    def __init__(self, kind: str, key: str, rank: int, value: bytes | None, client: int, seq: int):
        self.kind, self.key, self.rank, self.value, self.client, self.seq = kind, key, rank, value, client, seq

    def __repr__(self) -> str:
        return f"Op({self.kind!r}, {self.key!r}, client={self.client}, seq={self.seq})"


_VALUE_BYTES = bytes(range(32, 127)) * 1024  # printable filler; memcached/Postgres take it as-is


@dataclass
class Workload:
    """What to run. Closed loop: ``clients`` each issue the next op when the last one returns.
    Open loop: set ``rate`` (ops/s in total): arrivals are Poisson, served by ``clients``
    connections, and latency counts queueing from the intended start (as real users feel it).

    Stop after ``duration`` seconds or ``ops`` operations (whichever comes first, at least one).
    ``write_kinds`` are the op kinds that carry a value of ``value_size`` bytes (an int or
    (min, max) range).
    """

    keys: KeyDistribution = field(default_factory=lambda: Uniform(1000))
    mix: OpMix | Mapping[str, float] = field(default_factory=OpMix)
    clients: int = 4
    rate: float | None = None
    duration: float | None = 5.0
    ops: int | None = None
    value_size: int | tuple[int, int] = 100
    key_format: str = "key:{}"
    write_kinds: Sequence[str] = ("set", "write", "put", "update", "insert")
    seed: int | None = 0
    max_in_flight: int = 10_000

    def __post_init__(self) -> None:
        if isinstance(self.mix, Mapping):
            self.mix = OpMix(dict(self.mix))
        self.validate()

    def validate(self) -> Workload:
        """Raise BadParameter naming the fix for any out-of-range setting."""
        if not isinstance(self.keys, KeyDistribution):
            raise BadParameter(f"keys={self.keys!r}: use Uniform(n), Zipf(n, s), HotSpot(n, ...) or Trace(keys)")
        if isinstance(self.clients, bool) or not isinstance(self.clients, (int, np.integer)) or self.clients < 1:
            raise BadParameter(f"clients={self.clients!r}: the number of concurrent clients must be an integer >= 1")
        if self.rate is not None:
            if not isinstance(self.rate, (int, float)) or not self.rate > 0 or math.isinf(self.rate):
                raise BadParameter(
                    f"rate={self.rate!r}: an open-loop target rate must be > 0 ops/s (or rate=None for a closed loop)"
                )
        if self.duration is None and self.ops is None:
            raise BadParameter("give duration= (seconds) or ops= (operation count) so the run ends")
        if self.duration is not None and (not isinstance(self.duration, (int, float)) or not self.duration > 0):
            raise BadParameter(f"duration={self.duration!r}: must be > 0 seconds")
        if self.ops is not None:
            _positive_int("ops", self.ops)
        sizes = self.value_size if isinstance(self.value_size, tuple) else (self.value_size, self.value_size)
        if (
            len(sizes) != 2
            or not all(isinstance(v, int) for v in sizes)
            or sizes[0] < 0
            or sizes[1] < sizes[0]
            or sizes[1] > len(_VALUE_BYTES)
        ):
            raise BadParameter(
                f"value_size={self.value_size!r}: use bytes as an int or a (min, max) "
                f"range with 0 <= min <= max <= {len(_VALUE_BYTES)}"
            )
        try:
            distinct = self.key_format.format(0) != self.key_format.format(1)
        except (IndexError, KeyError, ValueError, AttributeError):
            distinct = False
        if not distinct:
            raise BadParameter(
                f"key_format={self.key_format!r}: must contain one '{{}}' for the key rank, e.g. 'user:{{}}'"
            )
        _positive_int("max_in_flight", self.max_in_flight)
        return self

    @property
    def closed_loop(self) -> bool:
        return self.rate is None

    def describe(self) -> dict[str, Any]:
        """The parameters as a flat dict (goes into results and DataFrames)."""
        keys = self.keys
        d: dict[str, Any] = {"distribution": type(keys).__name__, "n_keys": keys.n}
        if isinstance(keys, Zipf):
            d["zipf_s"] = keys.s
        if isinstance(keys, HotSpot):
            d.update(hot_keys=keys.hot_keys, hot_ops=keys.hot_ops)
        assert isinstance(self.mix, OpMix)
        d.update(
            mix=dict(self.mix.shares),
            clients=self.clients,
            rate=self.rate,
            loop="closed" if self.closed_loop else "open",
            duration=self.duration,
            ops=self.ops,
            value_size=self.value_size,
            seed=self.seed,
        )
        return d

    def split(self, parts: int) -> list[Workload]:
        """Divide clients, rate and op count among worker processes (each gets its own seed)."""
        parts = _positive_int("processes", parts)
        if parts > self.clients:
            raise BadParameter(f"processes={parts} > clients={self.clients}: use at most one process per client")
        out = []
        for i in range(parts):
            c = self.clients // parts + (1 if i < self.clients % parts else 0)
            w = Workload(**{**{k: v for k, v in self.__dict__.items() if not k.startswith("_")}, "clients": c})
            if self.rate is not None:
                w.rate = self.rate * c / self.clients
            if self.ops is not None:
                w.ops = max(1, self.ops * c // self.clients)
            w.seed = None if self.seed is None else self.seed * 1000 + i
            out.append(w)
        return out

    def _key_cache(self) -> list[str | None] | None:
        cache = self.__dict__.get("_keycache")
        if cache is None and self.keys.n <= 1_000_000:
            cache = self.__dict__["_keycache"] = [None] * self.keys.n
        return cache

    def key_name(self, rank: int) -> str:
        return self.key_format.format(rank)

    def stream(self, client: int, *, chunk: int = 4096, client_offset: int = 0) -> Iterator[Op]:
        """An endless, reproducible stream of ops for one client (the runner decides when to stop)."""
        seq_seed = None if self.seed is None else [self.seed, client + client_offset]
        rng = np.random.default_rng(seq_seed)
        assert isinstance(self.mix, OpMix)
        kinds = self.mix.kinds
        probs = self.mix.probabilities()
        writes = {k for k in kinds if k in set(self.write_kinds)}
        lo, hi = self.value_size if isinstance(self.value_size, tuple) else (self.value_size,) * 2
        fmt = self.key_format.format
        names = self.keys.names if isinstance(self.keys, Trace) else None  # trace keys keep their names
        # formatting a key costs as much as the rest of an op: remember them when the key space is small
        # (one cache per workload, shared by its clients; ~8 bytes per key plus the keys used)
        keycache = self._key_cache()
        trace_pos = client * 7919  # trace replay: clients start at different points of the trace
        seq = 0
        while True:
            if isinstance(self.keys, Trace):
                ranks = self.keys.sample(rng, chunk, start=trace_pos)
                trace_pos += chunk
            else:
                ranks = self.keys.sample(rng, chunk)
            kind_idx = rng.choice(len(kinds), size=chunk, p=probs) if len(kinds) > 1 else np.zeros(chunk, int)
            sizes = rng.integers(lo, hi + 1, chunk) if hi > lo else None
            for i in range(chunk):
                kind = kinds[kind_idx[i]]
                r = int(ranks[i])
                value = None
                if kind in writes:
                    size = int(sizes[i]) if sizes is not None else lo
                    start = (seq * 31) % 95  # vary the bytes a little, cheaply
                    value = _VALUE_BYTES[start : start + size]
                if keycache is not None:
                    key = keycache[r]
                    if key is None:
                        key = keycache[r] = fmt(names[r] if names is not None else r)
                else:
                    key = fmt(r)
                yield Op(kind, key, r, value, client + client_offset, seq)
                seq += 1

    def arrivals(self, rng: np.random.Generator, chunk: int = 4096) -> Iterator[float]:
        """Open loop: Poisson arrival offsets in seconds from the start (exponential gaps at ``rate``)."""
        if self.rate is None:
            raise BadParameter("arrivals() needs an open-loop workload: set rate= (ops/s)")
        t = 0.0
        while True:
            for gap in rng.exponential(1.0 / self.rate, chunk):
                t += float(gap)
                yield t
