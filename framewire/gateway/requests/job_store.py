"""Durable queue jobs: the :class:`JobStore` interface and its SQLite implementation.

A job moves ``IN_QUEUE`` → ``IN_PROGRESS`` → ``COMPLETED`` (fal's three states; a
failure or a cancellation is ``COMPLETED`` with ``error``/``error_type``). Once
:meth:`JobStore.submit` returns, the job is on disk. Each run of a job is an *attempt*;
only the current attempt may complete it, so a job completes exactly once even when a
crash makes it run again. A job's webhook is queued in the outbox in the same
transaction that completes the job, so no completion loses its webhook.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from framewire.gateway.db import Database, Migration
from framewire.gateway.requests.outcomes import Outcome


class JobStatus(enum.StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(enum.IntEnum):
    """Engine priorities (lower runs first); sync runs use 0."""

    NORMAL = 1
    LOW = 2


#: Log entries kept per job (older ones are dropped first).
MAX_LOGS_PER_JOB = 200


@dataclass(frozen=True)
class NewJob:
    id: str
    app_path: str  # the [ns/]owner/alias the client used; URLs are built from it
    endpoint_path: str  # the full path submitted to, e.g. owner/alias/sub
    app_key: str  # the engine app that runs it (aliases share one)
    owner: str  # key id of the submitter
    priority: Priority
    input: dict[str, Any]
    base_url: str  # scheme://host the client used, for URLs in outputs
    webhook_url: str | None = None
    start_deadline: float | None = None  # wall clock; fail if not started by then


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    app_path: str
    endpoint_path: str
    app_key: str
    owner: str
    status: JobStatus
    priority: Priority
    input: dict[str, Any]
    base_url: str
    webhook_url: str | None
    start_deadline: float | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    attempts: int
    cancel_requested: bool
    outcome: Outcome | None


@dataclass(frozen=True)
class LogEntry:
    timestamp: float
    level: str
    message: str


@dataclass(frozen=True)
class Snapshot:
    """A job with what its status needs, read together: queue position (if queued), logs (if asked)."""

    job: Job
    position: int | None
    logs: list[LogEntry] | None


@dataclass(frozen=True)
class Delivery:
    """One webhook in the outbox."""

    id: int
    job_id: str
    owner: str
    url: str
    body: bytes
    attempts: int


class QueueFull(Exception):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"the queue holds {length} jobs; the limit is {limit}")
        self.length = length
        self.limit = limit


class CancelResult(enum.Enum):
    NOT_FOUND = "NOT_FOUND"
    REMOVED = "REMOVED"  # was queued: now COMPLETED as cancelled
    SIGNALLED = "SIGNALLED"  # running: the dispatcher stops waiting for it
    ALREADY_COMPLETED = "ALREADY_COMPLETED"


class JobStore(Protocol):
    """Where jobs, their logs and their webhook outbox live. All methods are async."""

    async def submit(self, job: NewJob, max_queue_length: int) -> tuple[Job, int]:
        """Persist a queued job; returns it with its queue position.

        Raises :class:`QueueFull` when the app's queue is full.
        """

    async def get(self, job_id: str) -> Job | None: ...

    async def snapshot(self, job_id: str, with_logs: bool, with_result: bool = True) -> Snapshot | None:
        """The job, its queue position and (optionally) its logs, in one read.

        Without ``with_result`` the outcome's body is None (status polls do not need it).
        """

    async def queue_position(self, job: Job) -> int:
        """Jobs of the same app that will start before ``job`` (0 = next)."""

    async def claim(self, app_key: str, limit: int, now: float) -> list[Job]:
        """Move up to ``limit`` queued jobs of an app to IN_PROGRESS, best first, as a new attempt."""

    async def complete(
        self,
        job_id: str,
        attempt: int | None,
        outcome: Outcome,
        webhook_body: bytes | None,
        logs: Sequence[LogEntry] = (),
    ) -> bool:
        """Complete the job if ``attempt`` is still its current one (None: only if queued).

        Queues ``webhook_body`` for delivery when the job has a webhook URL. Returns False
        when the job was already completed or has been retried since.
        """

    async def release(self, job_id: str, attempt: int) -> bool:
        """Put a running job back in the queue without counting the attempt (shutdown)."""

    async def request_cancel(self, job_id: str) -> CancelResult:
        """Flag a job as cancelled by its caller (the dispatcher completes it)."""

    async def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a restart: put jobs left IN_PROGRESS back in the queue.

        Returns (requeued ids, ids that already used ``max_attempts`` and must fail).
        """

    async def expired(self, now: float) -> list[Job]:
        """Queued jobs whose start deadline has passed."""

    async def add_logs(self, entries: Sequence[tuple[str, LogEntry]]) -> None: ...

    async def logs(self, job_id: str) -> list[LogEntry]: ...

    async def purge(self, completed_before: float) -> int:
        """Delete jobs completed before the time given; returns how many."""

    async def queue_lengths(self) -> dict[str, int]: ...

    async def due_deliveries(self, now: float, limit: int) -> list[Delivery]: ...

    async def delivery_done(self, delivery_id: int, *, delivered: bool, error: str | None) -> None:
        """Record a final outcome: delivered, or given up after the last try."""

    async def delivery_retry(self, delivery_id: int, next_attempt_at: float, error: str) -> None: ...

    async def next_delivery_at(self) -> float | None: ...


MIGRATIONS = (
    Migration(
        "jobs_1",
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            app_path TEXT NOT NULL,
            endpoint_path TEXT NOT NULL,
            app_key TEXT NOT NULL,
            owner TEXT NOT NULL,
            status TEXT NOT NULL,
            priority INTEGER NOT NULL,
            input TEXT NOT NULL,
            base_url TEXT NOT NULL,
            webhook_url TEXT,
            start_deadline REAL,
            created_at REAL NOT NULL,
            started_at REAL,
            completed_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            http_status INTEGER,
            error TEXT,
            error_type TEXT,
            metrics TEXT
        );
        CREATE INDEX jobs_queue ON jobs (app_key, status, priority, seq);
        CREATE INDEX jobs_completed ON jobs (status, completed_at);
        CREATE INDEX jobs_deadline ON jobs (start_deadline) WHERE status = 'IN_QUEUE' AND start_deadline IS NOT NULL;
        CREATE TABLE job_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_seq INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
            timestamp REAL NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE INDEX job_logs_job ON job_logs (job_seq, id);
        CREATE TABLE webhook_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            url TEXT NOT NULL,
            body BLOB NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            last_error TEXT,
            created_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);
        """,
    ),
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _job(row: sqlite3.Row) -> Job:
    outcome = None
    if row["status"] == JobStatus.COMPLETED:
        # Status reads leave the (possibly large) result out. (sqlite3.Row: "in" tests values, not keys.)
        has_result = "result" in row.keys()  # noqa: SIM118
        outcome = Outcome(
            body=json.loads(row["result"]) if has_result and row["result"] is not None else None,
            http_status=row["http_status"] or 200,
            error=row["error"],
            error_type=row["error_type"],
            metrics=json.loads(row["metrics"]) if row["metrics"] else None,
        )
    return Job(
        seq=row["seq"],
        id=row["id"],
        app_path=row["app_path"],
        endpoint_path=row["endpoint_path"],
        app_key=row["app_key"],
        owner=row["owner"],
        status=JobStatus(row["status"]),
        priority=Priority(row["priority"]),
        input=json.loads(row["input"]),
        base_url=row["base_url"],
        webhook_url=row["webhook_url"],
        start_deadline=row["start_deadline"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        outcome=outcome,
    )


_STATUS_COLUMNS = (
    "seq, id, app_path, endpoint_path, app_key, owner, status, priority, input, base_url, webhook_url,"
    " start_deadline, created_at, started_at, completed_at, attempts, cancel_requested, http_status, error,"
    " error_type, metrics"
)


def _position(conn: sqlite3.Connection, job: Job) -> int:
    (ahead,) = conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE app_key = ? AND status = 'IN_QUEUE'"
        " AND (priority < ? OR (priority = ? AND seq < ?))",
        (job.app_key, int(job.priority), int(job.priority), job.seq),
    ).fetchone()
    return int(ahead)


def _logs(conn: sqlite3.Connection, job_seq: int) -> list[LogEntry]:
    rows = conn.execute(
        "SELECT timestamp, level, message FROM job_logs WHERE job_seq = ? ORDER BY id", (job_seq,)
    ).fetchall()
    return [LogEntry(r["timestamp"], r["level"], r["message"]) for r in rows]


def _insert_logs(conn: sqlite3.Connection, job_seq: int, entries: Sequence[LogEntry]) -> None:
    if not entries:
        return
    conn.executemany(
        "INSERT INTO job_logs (job_seq, timestamp, level, message) VALUES (?, ?, ?, ?)",
        [(job_seq, e.timestamp, e.level, e.message) for e in entries],
    )
    (count,) = conn.execute("SELECT COUNT(*) FROM job_logs WHERE job_seq = ?", (job_seq,)).fetchone()
    if count > MAX_LOGS_PER_JOB:
        conn.execute(
            "DELETE FROM job_logs WHERE id IN (SELECT id FROM job_logs WHERE job_seq = ? ORDER BY id LIMIT ?)",
            (job_seq, count - MAX_LOGS_PER_JOB),
        )


class SqliteJobStore:
    """:class:`JobStore` on the embedded :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def submit(self, job: NewJob, max_queue_length: int) -> tuple[Job, int]:
        now = time.time()

        def insert(conn: sqlite3.Connection) -> tuple[Job, int]:
            (length,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE app_key = ? AND status = 'IN_QUEUE'", (job.app_key,)
            ).fetchone()
            if length >= max_queue_length:
                raise QueueFull(length, max_queue_length)
            row = conn.execute(
                "INSERT INTO jobs (id, app_path, endpoint_path, app_key, owner, status, priority, input, base_url,"
                " webhook_url, start_deadline, created_at) VALUES (?, ?, ?, ?, ?, 'IN_QUEUE', ?, ?, ?, ?, ?, ?)"
                " RETURNING *",
                (
                    job.id,
                    job.app_path,
                    job.endpoint_path,
                    job.app_key,
                    job.owner,
                    int(job.priority),
                    _dumps(job.input),
                    job.base_url,
                    job.webhook_url,
                    job.start_deadline,
                    now,
                ),
            ).fetchone()
            new = _job(row)
            return new, _position(conn, new)

        return await self.db.write(insert)

    async def get(self, job_id: str) -> Job | None:
        def select(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _job(row)

        return await self.db.read(select)

    async def snapshot(self, job_id: str, with_logs: bool, with_result: bool = True) -> Snapshot | None:
        columns = "*" if with_result else _STATUS_COLUMNS

        def select(conn: sqlite3.Connection) -> Snapshot | None:
            row = conn.execute(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = _job(row)
            position = _position(conn, job) if job.status == JobStatus.IN_QUEUE else None
            return Snapshot(job, position, _logs(conn, job.seq) if with_logs else None)

        return await self.db.read(select)

    async def queue_position(self, job: Job) -> int:
        return await self.db.read(lambda conn: _position(conn, job))

    async def claim(self, app_key: str, limit: int, now: float) -> list[Job]:
        def take(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', attempts = attempts + 1, started_at = ?"
                " WHERE seq IN (SELECT seq FROM jobs WHERE app_key = ? AND status = 'IN_QUEUE'"
                " AND (start_deadline IS NULL OR start_deadline > ?) ORDER BY priority, seq LIMIT ?) RETURNING *",
                (now, app_key, now, limit),
            ).fetchall()
            jobs = sorted((_job(r) for r in rows), key=lambda j: (j.priority, j.seq))
            for job in jobs:
                _insert_logs(conn, job.seq, [LogEntry(now, "INFO", f"Running on {app_key} (attempt {job.attempts})")])
            return jobs

        if limit <= 0:
            return []
        return await self.db.write(take)

    async def complete(
        self,
        job_id: str,
        attempt: int | None,
        outcome: Outcome,
        webhook_body: bytes | None,
        logs: Sequence[LogEntry] = (),
    ) -> bool:
        now = time.time()

        def finish(conn: sqlite3.Connection) -> bool:
            args: tuple[int, ...] = ()
            if attempt is None:
                where = "status = 'IN_QUEUE'"
            else:
                where, args = "status = 'IN_PROGRESS' AND attempts = ?", (attempt,)
            row = conn.execute(
                "UPDATE jobs SET status = 'COMPLETED', completed_at = ?, result = ?, http_status = ?, error = ?,"
                f" error_type = ?, metrics = ? WHERE id = ? AND {where} RETURNING seq, webhook_url, owner",
                (
                    now,
                    _dumps(outcome.body),
                    outcome.http_status,
                    outcome.error,
                    outcome.error_type,
                    _dumps(outcome.metrics) if outcome.metrics is not None else None,
                    job_id,
                    *args,
                ),
            ).fetchone()
            if row is None:
                return False
            _insert_logs(conn, row["seq"], logs)
            if row["webhook_url"] and webhook_body is not None:
                conn.execute(
                    "INSERT INTO webhook_outbox (job_id, owner, url, body, next_attempt_at, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, row["owner"], row["webhook_url"], webhook_body, now, now),
                )
            return True

        return await self.db.write(finish)

    async def release(self, job_id: str, attempt: int) -> bool:
        def requeue(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET status = 'IN_QUEUE', attempts = attempts - 1, started_at = NULL"
                " WHERE id = ? AND status = 'IN_PROGRESS' AND attempts = ?",
                (job_id, attempt),
            )
            return cur.rowcount == 1

        return await self.db.write(requeue)

    async def request_cancel(self, job_id: str) -> CancelResult:
        def flag(conn: sqlite3.Connection) -> CancelResult:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return CancelResult.NOT_FOUND
            if row["status"] == JobStatus.COMPLETED:
                return CancelResult.ALREADY_COMPLETED
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return CancelResult.REMOVED if row["status"] == JobStatus.IN_QUEUE else CancelResult.SIGNALLED

        return await self.db.write(flag)

    async def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        def requeue(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            rows = conn.execute("SELECT id, attempts FROM jobs WHERE status = 'IN_PROGRESS'").fetchall()
            again = [r["id"] for r in rows if r["attempts"] < max_attempts]
            spent = [r["id"] for r in rows if r["attempts"] >= max_attempts]
            for job_id in again:
                row = conn.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', started_at = NULL WHERE id = ? RETURNING seq", (job_id,)
                ).fetchone()
                entry = LogEntry(time.time(), "WARN", "The server stopped while this request ran; it runs again")
                _insert_logs(conn, row["seq"], [entry])
            return again, spent

        return await self.db.write(requeue)

    async def expired(self, now: float) -> list[Job]:
        def select(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE status = 'IN_QUEUE' AND start_deadline IS NOT NULL AND start_deadline <= ?"
                " LIMIT 1000",
                (now,),
            ).fetchall()
            return [_job(r) for r in rows]

        return await self.db.read(select)

    async def add_logs(self, entries: Sequence[tuple[str, LogEntry]]) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            for job_id, entry in entries:
                row = conn.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is not None:
                    _insert_logs(conn, row["seq"], [entry])

        if entries:
            await self.db.write(insert)

    async def logs(self, job_id: str) -> list[LogEntry]:
        def select(conn: sqlite3.Connection) -> list[LogEntry]:
            row = conn.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return [] if row is None else _logs(conn, row["seq"])

        return await self.db.read(select)

    async def purge(self, completed_before: float) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            cur = conn.execute("DELETE FROM jobs WHERE status = 'COMPLETED' AND completed_at < ?", (completed_before,))
            conn.execute("DELETE FROM webhook_outbox WHERE state != 'pending' AND finished_at < ?", (completed_before,))
            return cur.rowcount

        return await self.db.write(delete)

    async def queue_lengths(self) -> dict[str, int]:
        def select(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT app_key, COUNT(*) AS n FROM jobs WHERE status = 'IN_QUEUE' GROUP BY app_key"
            ).fetchall()
            return {r["app_key"]: r["n"] for r in rows}

        return await self.db.read(select)

    # -- webhook outbox ----------------------------------------------------------------

    async def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        def select(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                "SELECT id, job_id, owner, url, body, attempts FROM webhook_outbox"
                " WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [Delivery(r["id"], r["job_id"], r["owner"], r["url"], bytes(r["body"]), r["attempts"]) for r in rows]

        return await self.db.read(select)

    async def delivery_done(self, delivery_id: int, *, delivered: bool, error: str | None) -> None:
        state = "delivered" if delivered else "failed"

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhook_outbox SET state = ?, attempts = attempts + 1, last_error = ?, finished_at = ?"
                " WHERE id = ?",
                (state, error, time.time(), delivery_id),
            )

        await self.db.write(update)

    async def delivery_retry(self, delivery_id: int, next_attempt_at: float, error: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (next_attempt_at, error, delivery_id),
            )

        await self.db.write(update)

    async def next_delivery_at(self) -> float | None:
        def select(conn: sqlite3.Connection) -> float | None:
            (at,) = conn.execute("SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE state = 'pending'").fetchone()
            return None if at is None else float(at)

        return await self.db.read(select)
