"""The meta-protocol client against a real memcached: leases (W/Z), serve-stale (X), CAS, quiet mode."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from labkit.errors import BadParameter
from labkit.memcache_meta import (
    AsyncMetaClient,
    MetaClient,
    MetaError,
    ResponseReader,
    encode_delete,
    encode_get,
    encode_set,
    validate_key,
)


@pytest.fixture(scope="module")
def mc_address(mc) -> tuple[str, int]:  # noqa: ANN001 - the run's memcached (tests/conftest.py)
    return tuple(mc.address)  # type: ignore[return-value]


@pytest.fixture
def key() -> str:
    return f"t:{uuid.uuid4().hex}"


# -- the shared core, without a server ------------------------------------------------------------


def test_encoding_and_parsing_core() -> None:
    assert encode_get("k", vivify=30, cas=True) == b"mg k c N30 v\r\n"
    assert encode_set("k", b"abc", ttl=5, cas=7, invalidate=True) == b"ms k 3 T5 C7 I\r\nabc\r\n"
    assert encode_delete("k", invalidate=True, ttl=10) == b"md k I T10\r\n"
    r = ResponseReader()
    r.feed(b"VA 3 c9 t-1 W\r\nab")
    assert r.next() is None  # value not complete yet
    r.feed(b"c\r\nEN\r\n")
    first = r.next()
    assert (first.value, first.cas, first.ttl, first.win) == (b"abc", 9, -1, True)
    assert r.next().status == "EN"
    r.feed(b"CLIENT_ERROR bad command line format\r\n")
    assert isinstance(r.next(), MetaError)


@pytest.mark.parametrize(
    "bad, fix", [("has space", "space"), ("x" * 251, "shorter"), ("tab\there", "control"), ("", "non-empty")]
)
def test_bad_keys_name_the_fix(bad: str, fix: str) -> None:
    with pytest.raises(BadParameter, match=fix):
        validate_key(bad)


def test_binary_keys_allowed_with_b_flag() -> None:
    assert validate_key(b"a b\x00", binary=True) == b"YSBiAA=="


def test_bad_flag_values() -> None:
    with pytest.raises(BadParameter, match="TTL"):
        encode_get("k", vivify=-5)
    with pytest.raises(BadParameter, match="mode"):
        encode_set("k", b"v", mode="upsert")
    with pytest.raises(BadParameter, match="invalidate"):
        encode_delete("k", ttl=5)


# -- against a real memcached ---------------------------------------------------------------------


def test_set_get_delete_roundtrip(mc_address: tuple[str, int], key: str) -> None:
    with MetaClient(mc_address) as mc:
        assert mc.get(key).hit is False
        stored = mc.set(key, b"hello", ttl=100, return_cas=True)
        assert stored.ok and stored.cas
        got = mc.get(key)
        assert got.hit and got.value == b"hello" and got.cas == stored.cas
        assert 0 < got.ttl <= 100
        assert mc.delete(key).ok
        assert mc.get(key).status == "EN"
        assert mc.delete(key).status == "NF"
        assert mc.version().startswith("1.")
        assert int(mc.stats()["curr_connections"]) >= 1


def test_lease_first_miss_wins_second_sees_z(mc_address: tuple[str, int], key: str) -> None:
    with MetaClient(mc_address) as a, MetaClient(mc_address) as b:
        first = a.get(key, vivify=30)
        assert first.win and not first.hit and not first.lease_taken
        second = b.get(key, vivify=30)
        assert second.lease_taken and not second.win and not second.hit
        # the winner fills the cache; everyone now hits
        assert a.set(key, b"computed", ttl=60).ok
        third = b.get(key, vivify=30)
        assert third.hit and third.value == b"computed" and not third.win and not third.lease_taken


def test_invalidate_gives_one_refresher_and_stale_reads(mc_address: tuple[str, int], key: str) -> None:
    with MetaClient(mc_address) as mc:
        mc.set(key, b"v1", ttl=60)
        assert mc.delete(key, invalidate=True, ttl=30).ok
        refresher = mc.get(key, vivify=30)
        assert refresher.stale and refresher.win and refresher.value == b"v1"
        others = [mc.get(key, vivify=30) for _ in range(3)]
        assert all(o.stale and o.lease_taken and not o.win and o.value == b"v1" for o in others)
        mc.set(key, b"v2", ttl=60)
        fresh = mc.get(key)
        assert fresh.value == b"v2" and not fresh.stale


def test_cas_mismatch_fails_and_match_succeeds(mc_address: tuple[str, int], key: str) -> None:
    with MetaClient(mc_address) as mc:
        mc.set(key, b"v1")
        seen = mc.get(key)
        mc.set(key, b"other writer")
        assert mc.set(key, b"mine", cas=seen.cas).status == "EX"
        current = mc.get(key)
        assert mc.set(key, b"mine", cas=current.cas).ok
        assert mc.get(key).value == b"mine"
        assert mc.set(f"{key}:absent", b"x", cas=1).status == "NF"


def test_modes_and_quiet(mc_address: tuple[str, int], key: str) -> None:
    with MetaClient(mc_address) as mc:
        assert mc.set(key, b"a", mode="add").ok
        assert mc.set(key, b"b", mode="add").status == "NS"
        assert mc.set(key, b"c", mode="append").ok
        assert mc.get(key).value == b"ac"
        assert mc.get(f"{key}:none", quiet=True).status == "EN"
        assert mc.set(f"{key}:q", b"q", quiet=True).ok
        assert mc.get(f"{key}:q", quiet=True).value == b"q"
        assert mc.noop().status == "MN"


def test_binary_key_roundtrip(mc_address: tuple[str, int]) -> None:
    raw = b"\x00bin key\xff" + uuid.uuid4().bytes
    with MetaClient(mc_address) as mc:
        assert mc.set(raw, b"v", binary=True).ok
        assert mc.get(raw, binary=True).value == b"v"


def test_async_twin_concurrent_lease(mc_address: tuple[str, int], key: str) -> None:
    async def scenario() -> list[tuple[bool, bool]]:
        async with AsyncMetaClient(mc_address) as c1, AsyncMetaClient(mc_address) as c2:
            results = await asyncio.gather(*[(c1 if i % 2 else c2).get(key, vivify=30) for i in range(20)])
            assert (await c1.set(key, b"x")).ok
            assert (await c2.get(key)).value == b"x"
            await c1.delete(key, invalidate=True)
            stale = await asyncio.gather(*[c2.get(key, vivify=30) for _ in range(10)])
            assert sum(r.win for r in stale) == 1 and all(r.stale for r in stale)
            assert (await c1.version()).startswith("1.")
            return [(r.win, r.lease_taken) for r in results]

    results = asyncio.run(scenario())
    assert sum(w for w, _ in results) == 1, results  # exactly one winner among 20 concurrent misses
    assert sum(z for _, z in results) == 19


def test_refused_connection_raises_os_error() -> None:
    async def scenario() -> None:
        c = AsyncMetaClient(("127.0.0.1", 1))  # nothing listens on port 1
        with pytest.raises(OSError):
            await c.get("k")

    asyncio.run(scenario())
    with pytest.raises(OSError):
        MetaClient(("127.0.0.1", 1)).get("k")


def test_killed_server_raises_connection_error_on_an_open_connection(stack) -> None:  # noqa: ANN001
    """A client connected to a memcached that is then SIGKILLed: the next request fails with ConnectionError
    (an OSError) that names the server, on the sync and the async client alike; none hangs."""
    svc = stack.add("memcached", name="doomed")
    try:
        addr = svc.endpoint.address

        async def scenario() -> None:
            c = await AsyncMetaClient(addr, timeout=5).connect()
            assert (await c.set("k", b"v")).ok
            svc.kill()
            with pytest.raises(OSError):
                await c.get("k")
            await c.close()

        with MetaClient(addr, timeout=5) as sync:
            assert sync.set("k", b"v").ok
            asyncio.run(scenario())
            with pytest.raises(OSError, match=f"{addr[1]}|closed|reset|refused"):
                sync.get("k")
    finally:
        stack.remove("doomed")
