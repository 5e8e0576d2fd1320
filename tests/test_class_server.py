"""One real Postgres and one real memcached play the server a whole class shares (the external provider).

Before the class starts, "someone else" owns objects on it: tables named like the lesson's (users, posts, likes)
in the default schema, a schema of their own, and memcached keys (including `post:<id>` keys the lesson uses).
Two students then run lesson 09's experiments at the same time, each in its own process and namespace. Every
foreign object must survive untouched, each student's results must still be correct, and
`labkit down --purge` must remove one student's namespace and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

import labkit
from labkit.datasets import instagram
from labkit.errors import BadParameter
from labkit.lessons import caching
from labkit.memcache_meta import MetaClient
from labkit.services.external import memcached_keys

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = {"student_a": 3, "student_b": 4}  # namespace -> dataset seed (different data, same table names)

# What one student runs: lesson 09's experiments, checkpoints and exercise, on the class server.
STUDENT = r"""
import json, sys, time
import labkit
from labkit.datasets import instagram
from labkit.errors import BadParameter
from labkit.lessons import caching
from labkit.lessons._solutions import caching as solution

t0 = time.time()
st = labkit.stack("postgres", "memcached", provider="external", attach=False)
dsn, mc = st.endpoint("postgres").dsn, st.endpoint("memcached").address
data = caching.prepare(dsn, "ci", seed=int(sys.argv[1]))
df = caching.skew_sweep(st, data, skews=[1.1], reads=2000, warmup=1500)
with caching.PostStore(dsn) as store:
    lat = caching.latency_compare(mc, store, data, reads=300)
naive = caching.stale_set_race(mc, dsn, data, fixed=False, trials=3)
fixed = caching.stale_set_race(mc, dsn, data, fixed=True, trials=3)
caching.check_db_follows_hit_ratio(df)
caching.check_model_matches(df)
caching.check_race(naive, fixed)
caching.check_cache_aside(solution.read_post, solution.like_post, mc, dsn, data)
herd_keys = [caching.post_key(int(p)) for p in data.popularity_rank[:5]]
print(json.dumps({"schema": st.endpoint("postgres").extra["schema"], "start": t0, "end": time.time(),
                  "hit_ratios": df["hit_ratio"].round(3).tolist(), "posts": len(data.posts),
                  "users": len(data.users), "cache_hits": lat["cache hit"]["reads"], "keys": herd_keys}))
st.close()
"""


@pytest.fixture(scope="module")
def class_server():
    st = labkit.stack("postgres", "memcached", attach=False)
    yield st
    st.close()


def _foreign_state(dsn: str, mc_address: tuple[str, int], keys: list[str]) -> dict[str, object]:
    """Everything "someone else" put on the server, as it is now."""
    with psycopg.connect(dsn) as conn:
        tables = {
            t: conn.execute(f"SELECT array_agg(note ORDER BY id) FROM public.{t}").fetchone()[0]
            for t in ("users", "posts", "likes")
        }
        tables["other.results"] = conn.execute("SELECT array_agg(score ORDER BY id) FROM other.results").fetchone()[0]
    with MetaClient(mc_address, key_prefix=b"") as mc:
        cached = {k: (r.value if r.hit else None) for k in keys for r in [mc.get(k)]}
    return {"tables": tables, "keys": cached}


def _seed_foreign(dsn: str, mc_address: tuple[str, int], keys: list[str]) -> None:
    with psycopg.connect(dsn) as conn:
        for t in ("users", "posts", "likes"):
            conn.execute(f"CREATE TABLE public.{t} (id int PRIMARY KEY, note text)")
            conn.execute(
                f"INSERT INTO public.{t} SELECT g, 'owned by the instructor ' || g FROM generate_series(1, 5) g"
            )
        conn.execute("CREATE SCHEMA other")
        conn.execute("CREATE TABLE other.results (id int PRIMARY KEY, score float)")
        conn.execute("INSERT INTO other.results VALUES (1, 0.5), (2, 0.75)")
    with MetaClient(mc_address, key_prefix=b"") as mc:
        for k in keys:
            assert mc.set(k, b"someone else's value of " + k.encode()).stored


def _env(home: str, namespace: str, dsn: str, mc: tuple[str, int]) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LABKIT_HOME": home,
        "LABKIT_NAMESPACE": namespace,
        "LABKIT_POSTGRES_DSN": dsn,
        "LABKIT_MEMCACHED": f"{mc[0]}:{mc[1]}",
        "LABKIT_PROFILE": "ci",
    }


def test_two_students_side_by_side_leave_foreign_objects_untouched(class_server, capsys):
    pg, mc = class_server.endpoint("postgres"), class_server.endpoint("memcached")
    # the lesson's own key names (post:<id> of the hottest posts), a foreign app's keys, another learner's keys
    hot = [int(p) for p in instagram.generate("ci", seed=3).popularity_rank[:5]]
    foreign_keys = [caching.post_key(p) for p in hot] + ["session:42", "lk_carol__09_caching:post:1"]
    _seed_foreign(pg.dsn, mc.address, foreign_keys)
    before = _foreign_state(pg.dsn, mc.address, foreign_keys)

    home = tempfile.mkdtemp(prefix="labkit-class-", dir="/tmp")
    os.chmod(home, 0o755)  # the students' private memcached runs as an unprivileged user
    procs = {
        ns: subprocess.Popen(
            [sys.executable, "-c", STUDENT, str(seed)],
            env=_env(home, ns, pg.dsn, mc.address),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for ns, seed in STUDENTS.items()
    }
    out = {}
    for ns, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, f"{ns} failed:\n{stdout[-2000:]}\n{stderr[-3000:]}"
        lines = stdout.strip().splitlines()
        assert lines[:-1].count("PASS  exercise: cache-aside read path and invalidation on write") == 1
        assert sum(line.startswith("PASS  ") for line in lines) >= 5, stdout
        out[ns] = json.loads(lines[-1])
    a, b = out["student_a"], out["student_b"]
    assert max(a["start"], b["start"]) < min(a["end"], b["end"]), "the two students did not run at the same time"

    # each student worked in their own schema, on their own data
    with psycopg.connect(pg.dsn) as conn:
        for ns, seed in STUDENTS.items():
            assert out[ns]["schema"] == ns
            tag = conn.execute(f"SELECT tag FROM {ns}.labkit_datasets").fetchone()[0]
            assert json.loads(tag)["seed"] == seed
            n_posts = conn.execute(f"SELECT count(*) FROM {ns}.posts").fetchone()[0]
            assert n_posts == out[ns]["posts"]
        public = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert public == {"users", "posts", "likes"}  # nothing of labkit's in the default schema
    # every foreign table row and memcached key is exactly as it was
    after = _foreign_state(pg.dsn, mc.address, foreign_keys)
    assert after == before
    # the students' cache entries live under their own prefixes
    keys = memcached_keys(mc.address)
    for ns in STUDENTS:
        assert any(k.startswith(f"{ns}:post:".encode()) for k in keys), ns

    # `labkit down --purge` as student A removes A's namespace only
    res = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "down", "--purge"],
        env=_env(home, "student_a", pg.dsn, mc.address),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert "purge: removed namespace student_a" in res.stdout
    with psycopg.connect(pg.dsn) as conn:
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
    assert "student_a" not in schemas and {"student_b", "other", "public"} <= schemas
    keys = memcached_keys(mc.address)
    assert not any(k.startswith(b"student_a:") for k in keys)
    assert any(k.startswith(b"student_b:") for k in keys)
    assert _foreign_state(pg.dsn, mc.address, foreign_keys) == before
    with capsys.disabled():
        print(
            f"\nclass server: 2 students side by side ({a['end'] - a['start']:.0f} s, "
            f"{b['end'] - b['start']:.0f} s), "
            f"hit ratios A {a['hit_ratios']} B {b['hit_ratios']}; foreign objects surviving: 4 tables "
            f"({sum(len(v) for v in before['tables'].values())} rows), {len(foreign_keys)} memcached keys"
        )


def test_a_namespace_must_be_a_plain_identifier(class_server, monkeypatch):
    pg = class_server.endpoint("postgres")
    monkeypatch.setenv("LABKIT_POSTGRES_DSN", pg.dsn)
    for bad in ("Robert'); DROP TABLE users;--", "1abc", "a" * 40, "public schema"):
        monkeypatch.setenv("LABKIT_NAMESPACE", bad)
        with pytest.raises(BadParameter, match="LABKIT_NAMESPACE=.*use 1-32 characters"):
            labkit.stack("postgres", provider="external", attach=False)


def test_external_refuses_options_it_cannot_apply(class_server, monkeypatch):
    mc = class_server.endpoint("memcached")
    monkeypatch.setenv("LABKIT_MEMCACHED", f"{mc.host}:{mc.port}")
    monkeypatch.setenv("LABKIT_NAMESPACE", "student_c")
    with pytest.raises(BadParameter, match="cannot apply memory_mb=.*provider='local'"):
        labkit.stack("memcached", provider="external", attach=False, memcached={"memory_mb": 8})
    assert MetaClient(mc.address).key_prefix == b""  # nothing left registered for a refused stack
