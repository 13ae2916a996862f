"""Usage metering: who used which app, how much, with what result, kept in the store.

Every request and realtime frame is recorded with the caller's key id, the app, the
surface (``realtime``, ``run``, ``stream``, ``queue``, ``video`` for live video
sessions, ``socket`` for raw WebSocket endpoints), a status (``ok``, a lower-case
error code such as ``invalid_input`` or ``rate_limited``, or ``dropped`` for a realtime
frame superseded by a newer one before it ran), the outputs it produced and the engine
time it used. Sessions that hold resources while open (video sessions, raw sockets) are
also charged the seconds they were open (``session_s``), recorded as they go. A batch's
``inference_ms`` is shared by its inputs: each is charged
``inference_ms / batch_size``, so a key's compute adds up to the engine's busy time.

Recording is an in-memory addition (O(1), on the event loop): tallies are kept per
(minute, key, app, surface, status) and written in one transaction every
``flush_interval_s`` seconds, sooner when many distinct tallies are pending, and on
shutdown, so no frame costs a database row and totals are exact. A killed process
loses at most the last interval. Queries flush first, so they include everything
recorded until then.

Where the tallies are written is a :class:`UsageStore`: :class:`SqliteUsage` (the data
dir's database) or :class:`framewire.gateway.stores.redis_usage.RedisUsage` (counters
every edge adds to, per key, app and minute). Both answer the same queries the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from framewire.gateway.db import Database, Migration

log = logging.getLogger("framewire.usage")

#: Stored resolution: one row per (minute, key, app, surface, status).
BUCKET_S = 60
#: Granularities a query may ask for, in seconds (None: one total per key and app).
GRANULARITIES: dict[str, int | None] = {"minute": 60, "hour": 3600, "day": 86400, "total": None}
#: Distinct pending tallies that trigger an early flush.
FLUSH_AT_PENDING = 5_000
#: Distinct pending tallies kept while the database refuses writes; beyond it new ones are lost (and logged).
MAX_PENDING = 200_000
SURFACES = ("realtime", "run", "stream", "queue", "video", "socket")
PURGE_INTERVAL_S = 3600.0

MIGRATIONS = (
    Migration(
        "usage_1",
        """
        CREATE TABLE usage (
            bucket INTEGER NOT NULL,
            key_id TEXT NOT NULL,
            app TEXT NOT NULL,
            surface TEXT NOT NULL,
            status TEXT NOT NULL,
            requests INTEGER NOT NULL,
            outputs INTEGER NOT NULL,
            compute_ms REAL NOT NULL,
            PRIMARY KEY (bucket, key_id, app, surface, status)
        ) WITHOUT ROWID;
        CREATE INDEX usage_key ON usage (key_id, bucket);
        """,
    ),
    Migration("usage_2", "ALTER TABLE usage ADD COLUMN session_s REAL NOT NULL DEFAULT 0;"),
)


def count_outputs(output: BaseModel | None) -> int:
    """Outputs of one result: its images when the output has an ``images`` list, else 1."""
    if output is None:
        return 0
    if "images" not in type(output).model_fields:  # a class lookup: getattr on a missing field costs an exception
        return 1
    images = output.images  # type: ignore[attr-defined]
    return len(images) if isinstance(images, list) else 1


@dataclass(slots=True)
class Tally:
    requests: int = 0
    outputs: int = 0
    compute_ms: float = 0.0
    session_s: float = 0.0

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.outputs += other.outputs
        self.compute_ms += other.compute_ms
        self.session_s += other.session_s


TallyKey = tuple[int, str, str, str, str]  # bucket, key_id, app, surface, status


def parse_time(value: str, name: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise). ValueError names ``name``."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: expected unix seconds or an ISO 8601 time, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


@dataclass(frozen=True)
class UsageQuery:
    key_id: str | None = None
    app: str | None = None
    start: float | None = None  # unix seconds, inclusive (rounded down to the minute)
    end: float | None = None  # unix seconds, exclusive
    granularity: str = "hour"

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end: must be after start")


@dataclass
class UsageRow:
    bucket: int | None
    key_id: str
    app: str
    requests: int = 0
    outputs: int = 0
    compute_ms: float = 0.0
    session_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    surfaces: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status not in ("ok", "dropped"))

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "app": self.app,
            "requests": self.requests,
            "outputs": self.outputs,
            "errors": self.errors,
            "compute_ms": round(self.compute_ms, 3),
            "session_s": round(self.session_s, 3),
            "statuses": dict(sorted(self.statuses.items())),
            "surfaces": dict(sorted(self.surfaces.items())),
        }


def report_json(query: UsageQuery, rows: list[UsageRow]) -> dict[str, Any]:
    """The ``GET /v1/usage`` body: a time series of per-key, per-app results, and totals."""
    series: dict[int | None, list[dict[str, Any]]] = {}
    total = UsageRow(None, "*", "*")
    for row in rows:
        series.setdefault(row.bucket, []).append(row.to_json())
        total.requests += row.requests
        total.outputs += row.outputs
        total.compute_ms += row.compute_ms
        total.session_s += row.session_s
        for status, n in row.statuses.items():
            total.statuses[status] = total.statuses.get(status, 0) + n
    totals = total.to_json()
    del totals["key_id"], totals["app"], totals["surfaces"]
    return {
        "granularity": query.granularity,
        "start": None if query.start is None else iso(query.start),
        "end": None if query.end is None else iso(query.end),
        "time_series": [
            {"bucket": None if bucket is None else iso(bucket), "results": results}
            for bucket, results in series.items()
        ],
        "totals": totals,
    }


#: One tally as stored: bucket, key_id, app, surface, status, requests, outputs, compute_ms, session_s.
TallyRow = tuple[int, str, str, str, str, int, int, float, float]


class UsageStore(Protocol):
    """Where usage tallies add up."""

    async def add(self, rows: Sequence[TallyRow]) -> None:
        """Add the rows to what is stored, all or none."""

    async def query(self, query: UsageQuery) -> list[UsageRow]: ...

    async def purge(self, before: float) -> int:
        """Delete usage older than ``before`` (unix seconds); returns how many records went."""


class SqliteUsage:
    """:class:`UsageStore` on the embedded :class:`Database`: one row per (minute, key, app, surface, status)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, rows: Sequence[TallyRow]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO usage (bucket, key_id, app, surface, status, requests, outputs, compute_ms, session_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (bucket, key_id, app, surface, status) DO UPDATE SET"
                " requests = requests + excluded.requests, outputs = outputs + excluded.outputs,"
                " compute_ms = compute_ms + excluded.compute_ms, session_s = session_s + excluded.session_s",
                rows,
            )

        await self.db.write(write)

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        return await self.db.read(lambda conn: select(conn, query))

    async def purge(self, before: float) -> int:
        cutoff = int(before) // BUCKET_S * BUCKET_S
        return await self.db.write(lambda conn: conn.execute("DELETE FROM usage WHERE bucket < ?", (cutoff,)).rowcount)


class UsageMeter:
    """Aggregates usage in memory and writes it to the store in batches (module docstring).

    Given a :class:`Database`, the tallies go to it (:class:`SqliteUsage`).
    """

    def __init__(
        self,
        store: UsageStore | Database,
        *,
        flush_interval_s: float = 5.0,
        retention_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store: UsageStore = SqliteUsage(store) if isinstance(store, Database) else store
        self.flush_interval_s = flush_interval_s
        self.retention_s = retention_s  # 0: keep usage forever
        self.clock = clock
        self._pending: dict[TallyKey, Tally] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.flush_failures = 0
        self.lost = 0  # tallies dropped because the database refused writes for too long

    # -- recording (event loop, O(1)) --------------------------------------------------

    def record(
        self,
        key_id: str,
        app: str,
        surface: str,
        status: str,
        *,
        outputs: int = 0,
        compute_ms: float = 0.0,
        count: int = 1,
        session_s: float = 0.0,
    ) -> None:
        bucket = int(self.clock()) // BUCKET_S * BUCKET_S
        key = (bucket, key_id, app, surface, status)
        tally = self._pending.get(key)
        if tally is None:
            if len(self._pending) >= MAX_PENDING:
                self.lost += count
                if self.lost == count:
                    log.error("usage could not be written for a long time; new usage is being lost")
                return
            tally = self._pending[key] = Tally()
            if len(self._pending) >= FLUSH_AT_PENDING:
                self._wake.set()
        tally.requests += count
        tally.outputs += outputs
        tally.compute_ms += compute_ms
        tally.session_s += session_s

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- writing -------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write every pending tally in one transaction; returns how many were written."""
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            rows: list[TallyRow] = [(*k, t.requests, t.outputs, t.compute_ms, t.session_s) for k, t in batch.items()]
            try:
                await self.store.add(rows)
            except BaseException:
                # Put the tallies back (added to anything recorded meanwhile): nothing is lost.
                self.flush_failures += 1
                for key, tally in batch.items():
                    current = self._pending.get(key)
                    if current is None:
                        self._pending[key] = tally
                    else:
                        current.add(tally)
                raise
            self.flushes += 1
            return len(rows)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-flush")

    async def _run(self) -> None:
        next_purge = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                now = self.clock()
                if self.retention_s > 0 and now >= next_purge:
                    next_purge = now + PURGE_INTERVAL_S
                    purged = await self.purge(now - self.retention_s)
                    if purged:
                        log.info("deleted %d usage rows older than %.0f s", purged, self.retention_s)
            except Exception:
                log.exception("could not write usage; it stays in memory and is retried")

    async def close(self) -> None:
        """Stop the periodic flush and write what is pending (call before closing the database)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    # -- reading -----------------------------------------------------------------------

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        """Usage matching ``query``, including what was recorded until now."""
        await self.flush()
        return await self.store.query(query)

    async def purge(self, before: float) -> int:
        """Delete usage older than ``before`` (unix seconds); returns the records deleted."""
        return await self.store.purge(before)


def select(conn: sqlite3.Connection, query: UsageQuery) -> list[UsageRow]:
    """Run ``query`` on a connection (the server's database thread, or the CLI's)."""
    width = GRANULARITIES[query.granularity]
    bucket_expr = "NULL" if width is None else f"(bucket / {width}) * {width}"
    where: list[str] = []
    params: list[object] = []
    if query.key_id is not None:
        where.append("key_id = ?")
        params.append(query.key_id)
    if query.app is not None:
        where.append("app = ?")
        params.append(query.app)
    if query.start is not None:
        where.append("bucket >= ?")
        params.append(int(query.start) // BUCKET_S * BUCKET_S)
    if query.end is not None:
        where.append("bucket < ?")
        params.append(query.end)
    sql = (
        f"SELECT {bucket_expr} AS b, key_id, app, surface, status, SUM(requests) AS requests,"
        " SUM(outputs) AS outputs, SUM(compute_ms) AS compute_ms, SUM(session_s) AS session_s FROM usage"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY b, key_id, app, surface, status ORDER BY b, key_id, app"
    )
    rows: dict[tuple[int | None, str, str], UsageRow] = {}
    for r in conn.execute(sql, params):
        key = (r["b"], r["key_id"], r["app"])
        row = rows.get(key)
        if row is None:
            row = rows[key] = UsageRow(r["b"], r["key_id"], r["app"])
        row.requests += r["requests"]
        row.outputs += r["outputs"]
        row.compute_ms += r["compute_ms"]
        row.session_s += r["session_s"]
        row.statuses[r["status"]] = row.statuses.get(r["status"], 0) + r["requests"]
        row.surfaces[r["surface"]] = row.surfaces.get(r["surface"], 0) + r["requests"]
    return list(rows.values())
