"""The embedded store: one SQLite file, WAL, named migrations, one thread for all calls.

Every call runs on the database's own thread, never on the event loop. Writes that
arrive together are committed together (group commit): the thread takes everything
queued, runs each write in its own savepoint inside one transaction, commits once and
only then resolves the callers. A write whose function raises is rolled back alone.

A write that fails because the file cannot be written (disk full, I/O error, read-only)
raises :class:`StoreUnwritable`, and :attr:`Database.write_error` says why for
:data:`WRITE_ERROR_WINDOW_S` after the last such failure (small writes may still fit on a
nearly full disk, so one success proves little): readiness reports it.

Modules that own tables declare a list of :class:`Migration` and the composition root
passes them all to :class:`Database`; a migration is applied once, in list order, and
recorded by name in ``schema_migrations``. The file holds inputs, results and key hashes:
it and its ``-wal``/``-shm`` companions are readable by the server's user only (0600), and
a data folder created here is 0700. Durability: WAL with ``synchronous=NORMAL``
survives a killed process (the kernel keeps the log); a power cut may lose the last
commits (``synchronous=FULL`` would not, at several times the cost per commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("framewire.db")

T = TypeVar("T")

#: Most calls one transaction takes from the queue (bounds the time a commit holds callers).
MAX_GROUP = 256
#: How long after a write failed for lack of space (or I/O) the database counts as unwritable.
WRITE_ERROR_WINDOW_S = 10.0

_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class Migration:
    """One schema step: ``name`` (lower-case, unique forever) and the SQL script it runs."""

    name: str
    sql: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"migration name {self.name!r} must match {_NAME.pattern}")


@dataclass(eq=False)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    write: bool
    future: Future[Any]


class DatabaseClosed(RuntimeError):
    pass


class StoreUnwritable(RuntimeError):
    """A write failed because the database cannot be written now (disk full, I/O error, read-only)."""


def _unwritable(exc: sqlite3.Error) -> StoreUnwritable:
    error = StoreUnwritable(f"the database cannot be written ({exc})")
    error.__cause__ = exc
    return error


class Database:
    """A SQLite database used from asyncio; see the module docstring for the contract."""

    def __init__(self, path: str | Path, migrations: Sequence[Migration] = ()) -> None:
        names = [m.name for m in migrations]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate migration names in {names}")
        self.path = Path(path)
        self.migrations = tuple(migrations)
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0  # transactions committed (for tests and metrics)
        self._write_error: tuple[float, str] | None = None  # (monotonic time, reason) of the last failure
        self.write_error_window_s = WRITE_ERROR_WINDOW_S

    @property
    def write_error(self) -> str | None:
        """Why a write failed for lack of a writable database in the last ``write_error_window_s``, or None."""
        failed = self._write_error
        if failed is None or time.monotonic() - failed[0] > self.write_error_window_s:
            return None
        return failed[1]

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Create the file (and its folder), apply pending migrations, start the thread."""
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="framewire-db", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._calls.put(None)
        await asyncio.to_thread(self._thread.join)

    # -- calls -----------------------------------------------------------------------

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread and return its result."""
        return await asyncio.wrap_future(self._submit(fn, write=False))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in a transaction; returns once it is committed."""
        return await asyncio.wrap_future(self._submit(fn, write=True))

    def write_blocking(self, fn: Callable[[sqlite3.Connection], T], timeout_s: float = 30.0) -> T:
        """:meth:`write` for threads other than the event loop's."""
        result: T = self._submit(fn, write=True).result(timeout_s)
        return result

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool) -> Future[Any]:
        if self._closed or self._thread is None:
            raise DatabaseClosed("the database is closed")
        future: Future[Any] = Future()
        self._calls.put(_Call(fn, write, future))
        return future

    # -- the database thread -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # SQLite gives the -wal and -shm files the database file's mode: make that owner-only first.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for path in (
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            self.path.with_name(self.path.name + "-shm"),
        ):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)  # made by an older version, or by another umask
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("SQLite at %s refused WAL (journal_mode=%s); writes will be slower", self.path, mode)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        for migration in self.migrations:
            if migration.name in done:
                continue
            # One script, one transaction: the step and its record land together or not at all.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{migration.sql}\n;"
                f"INSERT INTO schema_migrations (name, applied_at) VALUES ('{migration.name}', {time.time()});\n"
                "COMMIT;"
            )
            log.info("applied migration %s to %s", migration.name, self.path)

    def _main(self, ready: Future[None]) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            self._migrate(conn)
        except BaseException as exc:  # reported to open(); the server does not come up
            if conn is not None:
                conn.close()
            self._closed = True
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while True:
                first = self._calls.get()
                if first is None:
                    break
                group = [first]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        nxt = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                self._run_group(conn, group)
                if stop:
                    break
        finally:
            conn.close()
            while True:  # fail whatever arrived after close
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None and call.future.set_running_or_notify_cancel():
                    call.future.set_exception(DatabaseClosed("the database is closed"))

    def _run_group(self, conn: sqlite3.Connection, group: list[_Call]) -> None:
        # A caller cancelled before we start is skipped; once running, a call completes.
        group = [c for c in group if c.future.set_running_or_notify_cancel()]
        writes = [c for c in group if c.write]
        outcomes: list[tuple[_Call, bool, Any]] = []
        if writes:
            unwritable: str | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                for call in writes:
                    conn.execute("SAVEPOINT call")
                    try:
                        value = call.fn(conn)
                    except sqlite3.OperationalError as exc:  # e.g. "database or disk is full"
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back: every write of it failed
                        conn.execute("ROLLBACK TO call")
                        unwritable = str(exc)
                        outcomes.append((call, False, _unwritable(exc)))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO call")
                        outcomes.append((call, False, exc))
                    else:
                        outcomes.append((call, True, value))
                    conn.execute("RELEASE call")
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:  # the commit itself failed (disk full, I/O error)
                log.exception("SQLite transaction failed")
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                unwritable = str(exc)
                outcomes = [(call, False, _unwritable(exc)) for call in writes]
            if unwritable is not None:
                if self.write_error is None:
                    log.error("the database %s cannot be written: %s", self.path, unwritable)
                self._write_error = (time.monotonic(), unwritable)
        for call in group:
            if call.write:
                continue
            try:
                outcomes.append((call, True, call.fn(conn)))
            except Exception as exc:
                outcomes.append((call, False, exc))
        for call, ok, value in outcomes:
            if ok:
                call.future.set_result(value)
            else:
                call.future.set_exception(value)
