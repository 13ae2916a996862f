"""The worker registry's contract, in memory and in Redis; the directory edges follow; the announcer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from framewire.cluster.directory import WorkerAddress
from framewire.cluster.registry import Announcer, Lease, MemoryRegistry, RedisRegistry, Registry, RegistryDirectory
from tests.gateway.stores import state

LEASE_S = 0.6


def lease(worker_id: str = "w1", port: int = 7100, state_: str = "ready", **kw: object) -> Lease:
    fields: dict[str, object] = dict(
        worker_id=worker_id, host="10.0.0.5", port=port, device="cuda:0", apps=("framewire/echo",), state=state_
    )
    fields.update(kw)
    return Lease(**fields)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    if request.param == "memory":
        yield MemoryRegistry(LEASE_S)
    else:
        async with state(request.getfixturevalue("redis_url"), start=True) as conn:
            await asyncio.sleep(0.05)
            yield RedisRegistry(conn, LEASE_S)


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_an_announced_lease_lives_until_it_lapses_or_is_withdrawn(registry: Registry) -> None:
    one = lease("w1", capacity={"framewire/echo": 8}, sessions=3)
    await registry.announce(one, publish=True)
    await registry.announce(lease("w2", port=7101), publish=True)
    found = await registry.leases()
    assert [x.worker_id for x in found] == ["w1", "w2"] and found[0] == one
    await registry.withdraw("w2")
    assert [x.worker_id for x in await registry.leases()] == ["w1"]
    await asyncio.sleep(LEASE_S / 2)
    await registry.announce(one, publish=False)  # renewed inside the lease: stays
    await asyncio.sleep(LEASE_S * 0.7)
    assert [x.worker_id for x in await registry.leases()] == ["w1"]
    await asyncio.sleep(LEASE_S * 0.5)  # not renewed: lapses (a killed worker)
    assert await registry.leases() == []


async def test_watchers_hear_published_changes_and_withdrawals(registry: Registry) -> None:
    heard: list[int] = []
    registry.watch(lambda: heard.append(1))
    if isinstance(registry, RedisRegistry):
        await asyncio.sleep(0.2)  # the subscription is up
    await registry.announce(lease(), publish=True)
    await until(lambda: len(heard) >= 1)
    await registry.announce(lease(), publish=False)  # a renewal alone: nothing to act on
    await registry.withdraw("w1")
    await until(lambda: len(heard) >= 2)
    await asyncio.sleep(0.1)
    assert len(heard) == 2


async def test_a_lease_round_trips_and_a_foreign_entry_is_refused() -> None:
    one = lease(capacity={"a/b": 4, "a/b/x": 1}, tls=True, sessions=2, calls=1, edges=3, pid=9, started_at=5.0)
    assert Lease.from_json(one.to_json()) == one
    assert one.address == WorkerAddress("10.0.0.5", 7100, label="w1", tls=True)
    for bad in ("{}", "[]", '{"worker_id": "w", "host": "h", "port": 0, "device": "d", "apps": [], "state": "x"}'):
        with pytest.raises(ValueError, match="not a worker lease"):
            Lease.from_json(bad)


async def test_redis_a_foreign_entry_is_skipped_and_a_lapsed_one_forgotten(redis_url: str) -> None:
    async with state(redis_url) as conn:
        registry = RedisRegistry(conn, LEASE_S)
        await registry.announce(lease("w1"), publish=False)
        await conn.client.set(conn.key("worker", "bad"), "not json")
        await conn.client.sadd(conn.key("workers"), "bad", "gone")
        assert [x.worker_id for x in await registry.leases()] == ["w1"]
        assert await conn.client.sismember(conn.key("workers"), "gone") == 0  # its key lapsed: dropped


async def test_a_directory_follows_the_registry_without_polling_for_changes() -> None:
    registry = MemoryRegistry(LEASE_S)
    directory = RegistryDirectory(registry, refresh_s=60.0)  # only notices can tell it in time
    changes: list[list[WorkerAddress]] = []
    directory.watch(lambda: changes.append(directory.addresses()))
    await directory.start()
    try:
        await registry.announce(lease("w1"), publish=True)
        await until(lambda: len(changes) == 1)
        await registry.announce(lease("w1", state_="draining"), publish=True)  # same address: no change
        await registry.announce(lease("w2", port=7101), publish=True)
        await until(lambda: len(changes) == 2)
        assert [a.port for a in changes[-1]] == [7100, 7101]
        await registry.withdraw("w1")
        await until(lambda: len(changes) == 3)
        assert [a.label for a in directory.addresses()] == ["w2"]
    finally:
        await directory.stop(1.0)


async def test_a_directory_drops_a_worker_whose_lease_lapsed() -> None:
    registry = MemoryRegistry(LEASE_S)
    directory = RegistryDirectory(registry)  # re-reads every half lease
    await registry.announce(lease("w1"), publish=False)
    await directory.start()
    try:
        assert [a.label for a in directory.addresses()] == ["w1"]
        await until(lambda: directory.addresses() == [], timeout_s=LEASE_S * 3)
    finally:
        await directory.stop(1.0)


async def test_an_announcer_renews_inside_the_lease_announces_changes_and_withdraws() -> None:
    registry = MemoryRegistry(LEASE_S)
    current = {"lease": lease("w1", state_="starting")}
    published: list[str] = []
    registry.watch(lambda: published.append(current["lease"].state))
    announcer = Announcer(registry, lambda: current["lease"])
    announcer.start()
    try:
        await until(lambda: published == ["starting"])
        await asyncio.sleep(LEASE_S * 2)  # renewals keep it alive, and publish nothing new
        assert [x.state for x in await registry.leases()] == ["starting"] and published == ["starting"]
        current["lease"] = lease("w1", state_="ready")
        announcer.poke()
        await until(lambda: published == ["starting", "ready"], timeout_s=LEASE_S / 3)
    finally:
        await announcer.stop()
    assert await registry.leases() == []
