"""API keys kept in the embedded store: create, list, update, revoke, verify.

A key is ``<id>:<secret>``: the id is public (it names the key in logs, usage and job
ownership), the secret is 32 random bytes (URL-safe base64), shown once when the key is
created and never stored. The store keeps ``SHA-256(secret)``. A slow password KDF
(bcrypt, scrypt, argon2) exists to make guessing a *low-entropy* password expensive;
a 256-bit random secret cannot be guessed at any speed, so a single fast hash is as safe
and costs a microsecond per request instead of tens of milliseconds. No pepper either:
the database alone is then a complete backup of the keys, and a lost server file cannot
invalidate them.

Verification never touches the database. :class:`KeyStore` mirrors every active key in
memory (id → hash, scope, limits) and answers :meth:`KeyStore.verify` from there, on the
event loop, without I/O. The mirror is safe because it is never stale for longer than
it takes to notice a change: every change made through this process (admin API) updates
it as soon as the change is committed, and changes made by another process sharing the
database (``framewire keys revoke`` while the server runs) bump a generation counter
(SQLite triggers) that :meth:`KeyStore.watch` polls every ``poll_s`` seconds (1 s by
default), reloading the mirror when it moved. Unknown ids never reach the database, so
guessing keys costs the server nothing but a dictionary lookup.

Where keys are kept is a :class:`KeyBackend`: :class:`SqliteKeys` (the data dir's
database) or :class:`framewire.gateway.stores.redis_keys.RedisKeys` (shared by every
edge). A Redis backend also publishes each change, so every edge reloads its mirror
(and closes a revoked key's sessions) within milliseconds; the generation poll stays
as the guarantee when a notice is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from framewire.gateway.db import Database, Migration
from framewire.gateway.platform.auth import NO_LIMITS, Limits, Principal, StaticKeys
from framewire.state.connection import StateUnavailable

log = logging.getLogger("framewire.keys")

HASH_ALG = "sha256"
#: What a key's id may look like (ids we create are UUIDs; ``:`` separates id and secret).
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

MIGRATIONS = (
    Migration(
        "keys_1",
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            secret_hash BLOB NOT NULL,
            hash_alg TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            apps TEXT,
            admin INTEGER NOT NULL DEFAULT 0,
            requests_per_s REAL,
            max_sessions INTEGER,
            frames_per_s REAL,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE TABLE api_keys_generation (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL
        );
        INSERT INTO api_keys_generation (id, generation) VALUES (1, 0);
        CREATE TRIGGER api_keys_inserted AFTER INSERT ON api_keys
            BEGIN UPDATE api_keys_generation SET generation = generation + 1 WHERE id = 1; END;
        CREATE TRIGGER api_keys_updated AFTER UPDATE ON api_keys
            BEGIN UPDATE api_keys_generation SET generation = generation + 1 WHERE id = 1; END;
        CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys
            BEGIN UPDATE api_keys_generation SET generation = generation + 1 WHERE id = 1; END;
        """,
    ),
)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


@dataclass(frozen=True)
class KeyRecord:
    """A stored key, without its secret."""

    id: str
    name: str
    apps: tuple[str, ...] | None
    admin: bool
    limits: Limits
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def principal(self) -> Principal:
        apps = None if self.apps is None else frozenset(self.apps)
        return Principal(self.id, apps, admin=self.admin, limits=self.limits)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "apps": None if self.apps is None else list(self.apps),
            "admin": self.admin,
            "limits": dataclasses.asdict(self.limits),
            "created_at": _iso(self.created_at),
            "revoked_at": None if self.revoked_at is None else _iso(self.revoked_at),
        }


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


@dataclass(frozen=True)
class NewKey:
    """What ``keys create`` asks for. ``apps`` None: every app."""

    name: str = ""
    apps: tuple[str, ...] | None = None
    admin: bool = False
    limits: Limits = NO_LIMITS

    def __post_init__(self) -> None:
        check_limits(self.limits)
        if self.apps is not None:
            if not self.apps:
                raise ValueError("apps: give at least one app, or leave it out for every app")
            for i, app in enumerate(self.apps):
                if not app.strip() or len(app) > 200:
                    raise ValueError(f"apps[{i}]: expected an app id or alias, got {app!r}")
        if len(self.name) > 200:
            raise ValueError("name: at most 200 characters")


def check_limits(limits: Limits) -> None:
    """Raise ValueError naming the field when a limit is out of range."""
    for name in ("requests_per_s", "frames_per_s"):
        value = getattr(limits, name)
        if value is not None and not (value > 0 and value < float("inf")):
            raise ValueError(f"{name}: must be a number > 0 (leave it out for no limit), got {value!r}")
    if limits.max_sessions is not None and limits.max_sessions < 0:
        raise ValueError(f"max_sessions: must be >= 0 (leave it out for no limit), got {limits.max_sessions}")


def _record(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        apps=None if row["apps"] is None else tuple(json.loads(row["apps"])),
        admin=bool(row["admin"]),
        limits=Limits(row["requests_per_s"], row["max_sessions"], row["frames_per_s"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


@dataclass(frozen=True)
class _Entry:
    secret_hash: bytes
    principal: Principal


class KeyBackend(Protocol):
    """Where keys are kept. Every change moves a generation counter other processes can watch."""

    async def load(self) -> tuple[int, list[tuple[bytes, KeyRecord]]]:
        """The generation, then every active key with its secret's hash (read in that order)."""

    async def generation(self) -> int: ...

    async def insert(self, record: KeyRecord, secret_hash: bytes) -> None: ...

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def list(self, *, include_revoked: bool) -> list[KeyRecord]:
        """Records in creation order."""

    async def revoke(self, key_id: str, at: float) -> KeyRecord | None:
        """Mark the key revoked (if it is not already); its record, None if unknown."""

    async def write(self, key_id: str, new: NewKey) -> None:
        """Replace the key's name, scope, admin flag and limits."""

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` when another process changed the keys (nothing where only polling tells)."""


class SqliteKeys:
    """:class:`KeyBackend` on the embedded :class:`Database` (triggers move the generation)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self) -> tuple[int, list[tuple[bytes, KeyRecord]]]:
        def read(conn: sqlite3.Connection) -> tuple[int, list[tuple[bytes, KeyRecord]]]:
            (generation,) = conn.execute("SELECT generation FROM api_keys_generation WHERE id = 1").fetchone()
            rows = conn.execute("SELECT * FROM api_keys WHERE revoked_at IS NULL").fetchall()
            return int(generation), [(bytes(r["secret_hash"]), _record(r)) for r in rows]

        return await self.db.read(read)

    async def generation(self) -> int:
        return await self.db.read(
            lambda conn: int(conn.execute("SELECT generation FROM api_keys_generation WHERE id = 1").fetchone()[0])
        )

    async def insert(self, record: KeyRecord, secret_hash: bytes) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO api_keys (id, secret_hash, hash_alg, name, apps, admin, requests_per_s, max_sessions,"
                " frames_per_s, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    secret_hash,
                    HASH_ALG,
                    record.name,
                    None if record.apps is None else json.dumps(list(record.apps)),
                    int(record.admin),
                    record.limits.requests_per_s,
                    record.limits.max_sessions,
                    record.limits.frames_per_s,
                    record.created_at,
                ),
            )

        await self.db.write(insert)

    async def get(self, key_id: str) -> KeyRecord | None:
        row = await self.db.read(lambda conn: conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone())
        return None if row is None else _record(row)

    async def list(self, *, include_revoked: bool) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self.db.read(
            lambda conn: conn.execute(f"SELECT * FROM api_keys{where} ORDER BY created_at").fetchall()
        )
        return [_record(r) for r in rows]

    async def revoke(self, key_id: str, at: float) -> KeyRecord | None:
        def update(conn: sqlite3.Connection) -> sqlite3.Row | None:
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, key_id))
            row: sqlite3.Row | None = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            return row

        row = await self.db.write(update)
        return None if row is None else _record(row)

    async def write(self, key_id: str, new: NewKey) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE api_keys SET name = ?, apps = ?, admin = ?, requests_per_s = ?, max_sessions = ?,"
                " frames_per_s = ? WHERE id = ?",
                (
                    new.name,
                    None if new.apps is None else json.dumps(list(new.apps)),
                    int(new.admin),
                    new.limits.requests_per_s,
                    new.limits.max_sessions,
                    new.limits.frames_per_s,
                    key_id,
                ),
            )

        await self.db.write(write)

    def watch(self, on_change: Callable[[], None]) -> None:
        return None  # other processes' changes are seen by polling the generation


class KeyStore:
    """Keys in a :class:`KeyBackend`, verified from an in-memory mirror (see the module docstring).

    Given a :class:`Database`, the keys live in it (:class:`SqliteKeys`).
    """

    def __init__(self, backend: KeyBackend | Database, *, poll_s: float = 1.0) -> None:
        self.backend: KeyBackend = SqliteKeys(backend) if isinstance(backend, Database) else backend
        self.poll_s = poll_s
        self._active: dict[str, _Entry] = {}
        self._generation = -1
        self._listeners: list[Callable[[], None]] = []
        self._poked: asyncio.Event | None = None
        self.reloads = 0

    # -- verification (in memory, on the event loop) --------------------------------

    def verify(self, key: str) -> Principal | None:
        key_id, sep, secret = key.partition(":")
        entry = self._active.get(key_id) if sep else None
        if entry is None or not hmac.compare_digest(entry.secret_hash, hash_secret(secret)):
            return None
        return entry.principal

    def principal(self, key_id: str) -> Principal | None:
        entry = self._active.get(key_id)
        return None if entry is None else entry.principal

    def active_count(self) -> int:
        return len(self._active)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) after the mirror has been reloaded."""
        self._listeners.append(listener)

    # -- the mirror --------------------------------------------------------------------

    async def reload(self) -> None:
        generation, rows = await self.backend.load()
        self._active = {rec.id: _Entry(h, rec.principal()) for h, rec in rows}
        self._generation = generation
        self.reloads += 1
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("key change listener failed")

    async def refresh(self) -> bool:
        """Reload when another process changed the keys; True if it did."""
        generation = await self.backend.generation()
        if generation == self._generation:
            return False
        await self.reload()
        return True

    async def watch(self) -> None:
        """Follow changes made by other processes until cancelled: at each notice, and every ``poll_s``."""
        poked = self._poked = asyncio.Event()
        self.backend.watch(poked.set)
        unreachable = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await poked.wait()
            poked.clear()
            try:
                if await self.refresh():
                    log.info("API keys changed in the store; %d active", len(self._active))
                unreachable = False
            except StateUnavailable as exc:  # Redis is away: keep the last mirror, reload when it is back
                if not unreachable:
                    log.error("cannot check the API keys for changes; keeping the last %d: %s", len(self._active), exc)
                unreachable = True
            except Exception:  # the database failed; keep the last mirror and try again
                log.exception("could not check the API keys for changes")

    # -- administration ------------------------------------------------------------------

    async def create(self, new: NewKey) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and the full ``id:secret`` (shown once)."""
        key_id, secret = str(uuid.uuid4()), new_secret()
        record = KeyRecord(key_id, new.name, new.apps, new.admin, new.limits, time.time(), None)
        await self.backend.insert(record, hash_secret(secret))
        await self.reload()
        return record, f"{key_id}:{secret}"

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self.backend.get(key_id)

    async def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        return await self.backend.list(include_revoked=include_revoked)

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke a key at once (it keeps its record, for usage and audit); None if unknown."""
        record = await self.backend.revoke(key_id, time.time())
        await self.reload()
        return record

    async def update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Change a key's ``name``, ``apps``, ``admin`` or limits; None if unknown.

        Raises ValueError naming the field for a bad value, LookupError for a revoked key.
        """
        current = await self.get(key_id)
        if current is None:
            return None
        if not current.active:
            raise LookupError(f"key {key_id} is revoked; create a new key instead")
        limits = current.limits
        for name in ("requests_per_s", "max_sessions", "frames_per_s"):
            if name in changes:
                limits = dataclasses.replace(limits, **{name: changes[name]})
        new = NewKey(
            name=changes.get("name", current.name),
            apps=tuple(changes["apps"])
            if changes.get("apps") is not None
            else (None if "apps" in changes else current.apps),
            admin=changes.get("admin", current.admin),
            limits=limits,
        )
        await self.backend.write(key_id, new)
        await self.reload()
        return await self.get(key_id)


class KeyChain:
    """Keys from the command line (``--api-key``: admin, unlimited) first, then the store."""

    def __init__(self, static: StaticKeys, store: KeyStore) -> None:
        self.static = static
        self.store = store

    def verify(self, key: str) -> Principal | None:
        return self.static.verify(key) or self.store.verify(key)

    def principal(self, key_id: str) -> Principal | None:
        return self.static.principal(key_id) or self.store.principal(key_id)


def valid_key_id(key_id: str) -> bool:
    return bool(_ID.match(key_id))


def parse_apps(values: Sequence[str] | None) -> tuple[str, ...] | None:
    """``--app`` values (repeatable, comma lists) as a scope; None/empty: every app."""
    if not values:
        return None
    apps = tuple(item.strip() for value in values for item in value.split(",") if item.strip())
    return apps or None
