"""The JobStore contract, run against the embedded (SQLite) store and the Redis Streams store.

Tests marked with one kind check what only that kind has: SQLite's recovery after a
restart, Redis's claims that lapse and are taken over by another edge.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from framewire.gateway.requests.job_store import (
    MAX_LOGS_PER_JOB,
    CancelResult,
    IdempotencyConflict,
    JobStatus,
    JobStore,
    LogEntry,
    NewJob,
    Priority,
    QueueFull,
    SqliteJobStore,
)
from framewire.gateway.requests.outcomes import Outcome
from framewire.gateway.stores.redis_jobs import RedisJobStore
from framewire.state.connection import StateConnection
from tests.gateway.stores import KINDS, database, state


def redis_store(conn: StateConnection, consumer: str = "edge-a", lease_s: float = 30.0) -> RedisJobStore:
    return RedisJobStore(conn, consumer, claim_lease_s=lease_s, reclaim_interval_s=0.0, delivery_lease_s=30.0)


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "sqlite":
        async with database(tmp_path) as db:
            yield SqliteJobStore(db)
    else:
        async with state(request.getfixturevalue("redis_url")) as conn:
            yield redis_store(conn)


def new_job(priority: Priority = Priority.NORMAL, app: str = "a/b", **kw: object) -> NewJob:
    fields: dict[str, object] = dict(
        id=str(uuid.uuid4()),
        app_path=app,
        endpoint_path=app,
        app_key=app,
        owner="k1",
        priority=priority,
        input={"n": 1},
        base_url="http://h",
    )
    fields.update(kw)
    return NewJob(**fields)  # type: ignore[arg-type]


async def test_submit_respects_the_queue_limit_and_positions_follow_priority(store: JobStore) -> None:
    low, low_position = await store.submit(new_job(Priority.LOW), 10)
    first = (await store.submit(new_job(), 10))[0]
    second, second_position = await store.submit(new_job(), 10)
    assert (low_position, second_position) == (0, 1)  # at submit time
    assert [await store.queue_position(j) for j in (first, second, low)] == [0, 1, 2]
    with pytest.raises(QueueFull):
        await store.submit(new_job(), 3)
    other_app = (await store.submit(new_job(app="c/d"), 3))[0]
    assert await store.queue_position(other_app) == 0
    assert await store.queue_lengths() == {"a/b": 3, "c/d": 1}
    claimed = await store.claim("a/b", 2, 0.0)
    assert [j.id for j in claimed] == [first.id, second.id]
    assert all(j.status == JobStatus.IN_PROGRESS and j.attempts == 1 for j in claimed)
    (last,) = await store.claim("a/b", 5, 0.0)
    assert last.id == low.id and await store.claim("a/b", 5, 0.0) == []
    snap = await store.snapshot(first.id, with_logs=True)
    assert snap is not None and snap.position is None
    assert snap.logs is not None and "attempt 1" in snap.logs[-1].message


async def test_a_stale_attempt_cannot_complete_and_a_job_completes_once(store: JobStore) -> None:
    job = (await store.submit(new_job(webhook_url="http://hook"), 10))[0]
    (run,) = await store.claim("a/b", 1, 0.0)
    stale = await store.complete(job.id, run.attempts + 1, Outcome({"late": True}), b"{}")
    fresh = await store.complete(job.id, run.attempts, Outcome({"ok": True}), b'{"ok": true}')
    twice = await store.complete(job.id, run.attempts, Outcome({"again": True}), b"{}")
    not_queued = await store.complete(job.id, None, Outcome({"cancelled": True}), b"{}")
    assert (stale, fresh, twice, not_queued) == (False, True, False, False)
    done = await store.get(job.id)
    assert done is not None and done.status == JobStatus.COMPLETED
    assert done.outcome is not None and done.outcome.body == {"ok": True}
    deliveries = await store.due_deliveries(10**10, 10)
    assert [d.body for d in deliveries] == [b'{"ok": true}']  # one webhook, from the completion
    assert deliveries[0].job_id == job.id and deliveries[0].url == "http://hook" and deliveries[0].owner == "k1"


async def test_release_requeues_without_using_an_attempt(store: JobStore) -> None:
    job = (await store.submit(new_job(), 10))[0]
    (run,) = await store.claim("a/b", 1, 0.0)
    assert await store.release(job.id, run.attempts)
    assert not await store.release(job.id, run.attempts)  # no longer running
    assert await store.queue_position(job) == 0
    (again,) = await store.claim("a/b", 1, 0.0)
    assert again.id == job.id and again.attempts == 1


async def test_cancel_flags_depend_on_the_state(store: JobStore) -> None:
    queued = (await store.submit(new_job(), 10))[0]
    running = (await store.submit(new_job(), 10))[0]
    assert await store.request_cancel("missing") == CancelResult.NOT_FOUND
    await store.claim("a/b", 1, 0.0)  # takes `queued` (first in line)
    assert await store.request_cancel(queued.id) == CancelResult.SIGNALLED
    assert await store.request_cancel(running.id) == CancelResult.REMOVED
    assert await store.complete(running.id, None, Outcome(None, 499, "cancelled", "request_cancelled"), None)
    assert await store.request_cancel(running.id) == CancelResult.ALREADY_COMPLETED
    assert await store.claim("a/b", 5, 0.0) == []  # the cancelled job never runs
    assert await store.queue_lengths() == {}


async def test_renewal_reports_lost_and_cancelled_jobs(store: JobStore) -> None:
    a = (await store.submit(new_job(), 10))[0]
    b = (await store.submit(new_job(), 10))[0]
    ra, rb = await store.claim("a/b", 2, 0.0)
    held = [(ra.id, ra.attempts), (rb.id, rb.attempts)]
    assert (await store.renew(held)).lost == []
    await store.request_cancel(b.id)
    assert await store.complete(a.id, ra.attempts, Outcome({"ok": True}), None)
    renewal = await store.renew(held)
    assert renewal.lost == [a.id] and renewal.cancelled == [b.id]
    assert (await store.renew([(b.id, rb.attempts + 1)])).lost == [b.id]  # not that attempt's


async def test_expired_and_purged_jobs(store: JobStore) -> None:
    late = (await store.submit(new_job(start_deadline=5.0), 10))[0]
    (await store.submit(new_job(start_deadline=10**10), 10))[0]
    assert [j.id for j in await store.expired(6.0)] == [late.id]
    claimed = await store.claim("a/b", 5, 6.0)  # claims only the one still in time
    assert len(claimed) == 1 and claimed[0].id != late.id
    assert await store.complete(late.id, None, Outcome(None), None)
    assert await store.expired(6.0) == []
    assert await store.purge(completed_before=10**10) == 1
    assert await store.get(late.id) is None
    assert await store.snapshot(late.id, with_logs=True) is None


async def test_status_snapshots_leave_the_result_out(store: JobStore) -> None:
    job, _ = await store.submit(new_job(), 10)
    (run,) = await store.claim("a/b", 1, 0.0)
    assert await store.complete(job.id, run.attempts, Outcome({"big": "x" * 1000}, metrics={"t": 1}), None)
    full = await store.snapshot(job.id, with_logs=True)
    light = await store.snapshot(job.id, with_logs=False, with_result=False)
    assert full is not None and full.job.outcome is not None and full.job.outcome.body == {"big": "x" * 1000}
    assert full.logs is not None and full.position is None
    assert light is not None and light.job.outcome is not None and light.job.outcome.body is None
    assert light.job.outcome.metrics == {"t": 1} and light.logs is None


async def test_an_idempotency_key_returns_the_first_job_and_refuses_another_request(store: JobStore) -> None:
    first, _ = await store.submit(new_job(idempotency_key="k-1", fingerprint="f1"), 10)
    again, position = await store.submit(new_job(idempotency_key="k-1", fingerprint="f1"), 10)
    assert again.id == first.id and position == 0
    assert await store.queue_lengths() == {"a/b": 1}
    with pytest.raises(IdempotencyConflict) as caught:
        await store.submit(new_job(idempotency_key="k-1", fingerprint="f2"), 10)
    assert caught.value.job_id == first.id
    other_owner, _ = await store.submit(new_job(idempotency_key="k-1", fingerprint="f1", owner="k2"), 10)
    assert other_owner.id != first.id  # keys are scoped to their owner
    (run,) = await store.claim("a/b", 1, 0.0)
    assert await store.complete(run.id, run.attempts, Outcome({"ok": True}), None)
    done, _ = await store.submit(new_job(idempotency_key="k-1", fingerprint="f1"), 10)
    assert done.id == first.id and done.status == JobStatus.COMPLETED


async def test_logs_are_kept_in_order_and_bounded(store: JobStore) -> None:
    job, _ = await store.submit(new_job(), 10)
    await store.add_logs([(job.id, LogEntry(float(i), "INFO", f"line {i}")) for i in range(MAX_LOGS_PER_JOB + 5)])
    await store.add_logs([("missing", LogEntry(1.0, "INFO", "nobody"))])  # a job that does not exist: ignored
    lines = await store.logs(job.id)
    assert len(lines) == MAX_LOGS_PER_JOB
    assert lines[0].message == "line 5" and lines[-1] == LogEntry(float(MAX_LOGS_PER_JOB + 4), "INFO", "line 204")
    assert await store.logs("missing") == []


async def test_the_webhook_outbox_retries_then_finishes(store: JobStore) -> None:
    job, _ = await store.submit(new_job(webhook_url="http://hook"), 10)
    (run,) = await store.claim("a/b", 1, 0.0)
    assert await store.complete(job.id, run.attempts, Outcome({"ok": True}), b"body")
    (delivery,) = await store.due_deliveries(10**9 * 3, 10)
    await store.delivery_retry(delivery.id, 10**9 * 5, "HTTP 500")
    assert await store.next_delivery_at() == 10**9 * 5
    assert await store.due_deliveries(10**9 * 4, 10) == []
    (again,) = await store.due_deliveries(10**9 * 5, 10)
    assert again.id == delivery.id and again.attempts == 1
    await store.delivery_done(again.id, delivered=True, error=None)
    assert await store.due_deliveries(10**10, 10) == [] and await store.next_delivery_at() is None


# -- SQLite only: one process; a restart puts what it was running back in the queue ----------------


async def test_sqlite_recovery_after_a_restart_runs_a_job_again_as_a_new_attempt(tmp_path: Path) -> None:
    async with database(tmp_path) as db:
        store = SqliteJobStore(db)
        job = (await store.submit(new_job(), 10))[0]
        (run1,) = await store.claim("a/b", 1, 0.0)
        assert await store.recover(max_attempts=3) == ([job.id], [])  # as after a crash
        (run2,) = await store.claim("a/b", 1, 0.0)
        assert run2.attempts == 2
        assert not await store.complete(job.id, run1.attempts, Outcome({"late": True}), None)
        assert await store.complete(job.id, run2.attempts, Outcome({"ok": True}), None)
        for _ in range(2):
            await store.submit(new_job(), 10)
        for _ in range(2):
            await store.claim("a/b", 1, 0.0)
            await store.recover(max_attempts=2)
        await store.claim("a/b", 1, 0.0)
        again, spent = await store.recover(max_attempts=2)
        assert len(spent) == 1 and len(again) == 1


# -- Redis only: many edges; a claim that is not renewed lapses and another edge takes the job over ---


async def test_redis_a_lapsed_claim_is_taken_over_and_the_old_owner_cannot_complete(redis_url: str) -> None:
    async with state(redis_url) as conn:
        a, b = redis_store(conn, "edge-a", lease_s=0.3), redis_store(conn, "edge-b", lease_s=0.3)
        job, _ = await a.submit(new_job(webhook_url="http://hook"), 10)
        (run_a,) = await a.claim("a/b", 1, 0.0)
        assert await b.claim("a/b", 1, 0.0) == []  # held, fresh
        await asyncio.sleep(0.2)
        assert (await a.renew([(job.id, run_a.attempts)])).lost == []  # renewed inside the lease
        await asyncio.sleep(0.2)
        assert await b.claim("a/b", 1, 0.0) == []  # 0.4 s since the claim, 0.2 s since the renewal
        await asyncio.sleep(0.35)  # a stops renewing (it died)
        (run_b,) = await b.claim("a/b", 1, 0.0)
        assert run_b.id == job.id and run_b.attempts == 2
        assert (await a.renew([(job.id, run_a.attempts)])).lost == [job.id]
        assert not await a.complete(job.id, run_a.attempts, Outcome({"from": "a"}), b"a")
        assert not await a.complete(job.id, run_b.attempts, Outcome({"from": "a"}), b"a")  # not a's claim
        assert await b.complete(job.id, run_b.attempts, Outcome({"from": "b"}), b"b")
        done = await a.get(job.id)
        assert done is not None and done.outcome is not None and done.outcome.body == {"from": "b"}
        assert [d.body for d in await a.due_deliveries(10**10, 10)] == [b"b"]
        logs = [e.message for e in await a.logs(job.id)]
        assert any("went away" in line and "attempt 2" in line for line in logs)
        assert await conn.client.xlen(a._stream("a/b", Priority.NORMAL)) == 0  # acked and deleted


async def test_redis_a_released_job_is_taken_by_the_next_claim_anywhere(redis_url: str) -> None:
    async with state(redis_url) as conn:
        a, b = redis_store(conn, "edge-a"), redis_store(conn, "edge-b")
        job, _ = await a.submit(new_job(), 10)
        (run,) = await a.claim("a/b", 1, 0.0)
        assert await a.release(job.id, run.attempts)  # a clean stop of edge a
        (again,) = await b.claim("a/b", 1, 0.0)
        assert again.id == job.id and again.attempts == 1


async def test_redis_a_delivery_in_flight_is_hidden_from_other_edges(redis_url: str) -> None:
    async with state(redis_url) as conn:
        a, b = redis_store(conn, "edge-a"), redis_store(conn, "edge-b")
        job, _ = await a.submit(new_job(webhook_url="http://hook"), 10)
        (run,) = await a.claim("a/b", 1, 0.0)
        assert await a.complete(job.id, run.attempts, Outcome({"ok": True}), b"body")
        now = 10.0**9 * 3
        assert len(await a.due_deliveries(now, 10)) == 1
        assert await b.due_deliveries(now + 1, 10) == []  # a posts it now
        assert len(await b.due_deliveries(now + a.delivery_lease_s + 1, 10)) == 1  # a died mid-post


async def test_redis_other_edges_hear_of_queued_changed_and_cancelled_jobs(redis_url: str) -> None:
    heard: list[str] = []

    class Listener:
        def changed(self, job_id: str) -> None:
            heard.append(f"changed {job_id}")

        def cancel_requested(self, job_id: str) -> None:
            heard.append(f"cancel {job_id}")

        def queued(self, app_key: str) -> None:
            heard.append(f"queued {app_key}")

    async with state(redis_url, start=True) as listening, state(redis_url) as conn:
        redis_store(listening, "edge-b").watch(Listener())
        await asyncio.sleep(0.3)  # the subscription is up
        a = redis_store(conn, "edge-a")
        job, _ = await a.submit(new_job(), 10)
        (run,) = await a.claim("a/b", 1, 0.0)
        assert await a.request_cancel(job.id) == CancelResult.SIGNALLED
        assert await a.complete(job.id, run.attempts, Outcome({"ok": True}), None)
        expected = ["queued a/b", f"changed {job.id}", f"cancel {job.id}", f"changed {job.id}", f"changed {job.id}"]
        for _ in range(100):
            if heard == expected:
                break
            await asyncio.sleep(0.02)
        assert heard == expected
