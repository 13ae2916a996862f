"""The embedded store (SQLite on its own thread); the job stores' contract is in test_job_contract.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from framewire.gateway.db import Database, DatabaseClosed, Migration


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
