"""The stores under test, embedded and on Redis, built the way the server builds them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from framewire.gateway.app import MIGRATIONS
from framewire.gateway.db import Database
from framewire.state.connection import StateConnection, StateOptions

KINDS = ("sqlite", "redis")


@contextlib.asynccontextmanager
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(tmp_path / "framewire.db", MIGRATIONS)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def state(url: str, *, start: bool = False) -> AsyncIterator[StateConnection]:
    """A connected state-plane connection (with its health watch and notices when ``start``)."""
    conn = StateConnection(StateOptions(url, timeout_s=1.0, health_interval_s=0.1))
    await conn.connect()
    if start:
        conn.start()
    try:
        yield conn
    finally:
        await conn.close()
