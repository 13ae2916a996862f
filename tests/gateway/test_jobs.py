"""The embedded store and the SQLite job store, without a server."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from framewire.gateway.db import Database, DatabaseClosed, Migration
from framewire.gateway.requests.job_store import (
    MIGRATIONS,
    CancelResult,
    JobStatus,
    NewJob,
    Priority,
    QueueFull,
    SqliteJobStore,
)
from framewire.gateway.requests.outcomes import Outcome


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    db = Database(tmp_path / "jobs.db", MIGRATIONS)
    await db.open()
    try:
        yield SqliteJobStore(db)
    finally:
        await db.close()


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


async def test_migrations_run_once_and_are_recorded(tmp_path: Path) -> None:
    steps = [Migration("t_1", "CREATE TABLE t (x INTEGER)"), Migration("t_2", "ALTER TABLE t ADD COLUMN y TEXT")]
    for _ in range(2):  # a second open applies nothing and does not fail
        db = Database(tmp_path / "m.db", steps)
        await db.open()
        names = await db.read(lambda c: [r[0] for r in c.execute("SELECT name FROM schema_migrations ORDER BY name")])
        mode = await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        await db.close()
    assert names == ["t_1", "t_2"] and mode == "wal"
    with pytest.raises(ValueError, match="duplicate"):
        Database(tmp_path / "x.db", [steps[0], steps[0]])
    with pytest.raises(ValueError, match="must match"):
        Migration("Bad Name", "")


async def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    db = Database(tmp_path / "f.db", [Migration("bad_1", "CREATE TABLE u (x); INSERT INTO nowhere VALUES (1);")])
    with pytest.raises(sqlite3.OperationalError):
        await db.open()
    conn = sqlite3.connect(tmp_path / "f.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "u" not in tables


async def test_the_database_files_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    """It holds inputs, results and key hashes; an older file made 0644 is tightened too."""
    old = tmp_path / "old" / "framewire.db"
    old.parent.mkdir()
    sqlite3.connect(old).close()
    old.chmod(0o644)
    for path in (tmp_path / "new" / "framewire.db", old):
        db = Database(path, [Migration("p_1", "CREATE TABLE p (x)")])
        await db.open()
        try:
            await db.write(lambda conn: conn.execute("INSERT INTO p VALUES (1)"))
            files = [p for p in path.parent.iterdir() if p.name.startswith("framewire.db")]
            assert {p.name for p in files} >= {"framewire.db", "framewire.db-wal", "framewire.db-shm"}
            assert all(p.stat().st_mode & 0o777 == 0o600 for p in files), [oct(p.stat().st_mode) for p in files]
        finally:
            await db.close()
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


async def test_concurrent_writes_share_commits_and_a_failing_one_rolls_back_alone(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.db", [Migration("g_1", "CREATE TABLE g (x INTEGER UNIQUE)")])
    await db.open()

    def insert(x: int) -> Callable[[sqlite3.Connection], None]:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO g VALUES (?)", (x,))

        return run

    outcomes = await asyncio.gather(*(db.write(insert(i % 150)) for i in range(200)), return_exceptions=True)
    count = await db.read(lambda c: c.execute("SELECT COUNT(*) FROM g").fetchone()[0])
    commits = db.commits
    await db.close()
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failures) == 50 and all(isinstance(f, sqlite3.IntegrityError) for f in failures)
    assert count == 150
    assert commits < 100  # grouped: far fewer commits than writes
    with pytest.raises(DatabaseClosed):
        await db.read(lambda c: None)


async def test_submit_respects_the_queue_limit_and_positions_follow_priority(store: SqliteJobStore) -> None:
    low, low_position = await store.submit(new_job(Priority.LOW), 10)
    first = (await store.submit(new_job(), 10))[0]
    second, second_position = await store.submit(new_job(), 10)
    assert (low_position, second_position) == (0, 1)  # at submit time
    assert [await store.queue_position(j) for j in (first, second, low)] == [0, 1, 2]
    with pytest.raises(QueueFull):
        (await store.submit(new_job(), 3))[0]
    other_app = (await store.submit(new_job(app="c/d"), 3))[0]
    assert await store.queue_position(other_app) == 0
    claimed = await store.claim("a/b", 2, 0.0)
    assert [j.id for j in claimed] == [first.id, second.id]
    assert all(j.status == JobStatus.IN_PROGRESS and j.attempts == 1 for j in claimed)


async def test_only_the_current_attempt_completes_a_job(store: SqliteJobStore) -> None:
    job = (await store.submit(new_job(webhook_url="http://hook"), 10))[0]
    (run1,) = await store.claim("a/b", 1, 0.0)
    again, spent = await store.recover(max_attempts=3)  # as after a crash
    assert again == [job.id] and spent == []
    (run2,) = await store.claim("a/b", 1, 0.0)
    assert run2.attempts == 2
    stale = await store.complete(job.id, run1.attempts, Outcome({"late": True}), b"{}")
    fresh = await store.complete(job.id, run2.attempts, Outcome({"ok": True}), b'{"ok": true}')
    twice = await store.complete(job.id, run2.attempts, Outcome({"again": True}), b"{}")
    assert (stale, fresh, twice) == (False, True, False)
    done = await store.get(job.id)
    assert done is not None and done.outcome is not None and done.outcome.body == {"ok": True}
    deliveries = await store.due_deliveries(10**10, 10)
    assert [d.body for d in deliveries] == [b'{"ok": true}']  # one webhook, from the completion


async def test_recover_gives_up_on_jobs_that_used_every_attempt(store: SqliteJobStore) -> None:
    job = (await store.submit(new_job(), 10))[0]
    for _ in range(2):
        await store.claim("a/b", 1, 0.0)
        await store.recover(max_attempts=2)
    await store.claim("a/b", 1, 0.0)
    again, spent = await store.recover(max_attempts=2)
    assert again == [] and spent == [job.id]


async def test_release_requeues_without_using_an_attempt(store: SqliteJobStore) -> None:
    job = (await store.submit(new_job(), 10))[0]
    (run,) = await store.claim("a/b", 1, 0.0)
    assert await store.release(job.id, run.attempts)
    (again,) = await store.claim("a/b", 1, 0.0)
    assert again.attempts == 1


async def test_cancel_flags_depend_on_the_state(store: SqliteJobStore) -> None:
    queued = (await store.submit(new_job(), 10))[0]
    running = (await store.submit(new_job(), 10))[0]
    assert await store.request_cancel("missing") == CancelResult.NOT_FOUND
    await store.claim("a/b", 1, 0.0)  # takes `queued` (first in line)
    assert await store.request_cancel(queued.id) == CancelResult.SIGNALLED
    assert await store.request_cancel(running.id) == CancelResult.REMOVED
    assert await store.complete(running.id, None, Outcome(None, 499, "cancelled", "request_cancelled"), None)
    assert await store.request_cancel(running.id) == CancelResult.ALREADY_COMPLETED


async def test_expired_and_purged_jobs(store: SqliteJobStore) -> None:
    late = (await store.submit(new_job(start_deadline=5.0), 10))[0]
    (await store.submit(new_job(start_deadline=10**10), 10))[0]
    assert [j.id for j in await store.expired(6.0)] == [late.id]
    assert await store.claim("a/b", 5, 6.0) != []  # claims only the one still in time
    assert await store.complete(late.id, None, Outcome(None), None)
    assert await store.purge(completed_before=10**10) == 1
    assert await store.get(late.id) is None


async def test_status_snapshots_leave_the_result_out(store: SqliteJobStore) -> None:
    job, _ = await store.submit(new_job(), 10)
    (run,) = await store.claim("a/b", 1, 0.0)
    assert await store.complete(job.id, run.attempts, Outcome({"big": "x" * 1000}, metrics={"t": 1}), None)
    full = await store.snapshot(job.id, with_logs=True)
    light = await store.snapshot(job.id, with_logs=False, with_result=False)
    assert full is not None and full.job.outcome is not None and full.job.outcome.body == {"big": "x" * 1000}
    assert full.logs is not None and full.position is None
    assert light is not None and light.job.outcome is not None and light.job.outcome.body is None
    assert light.job.outcome.metrics == {"t": 1} and light.logs is None
