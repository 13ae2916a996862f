"""Usage metering: in-memory tallies written in batches, exact totals, survival across restarts."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from starlette.testclient import TestClient

from framewire import cli
from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import BatchRecord, LocalEngine
from framewire.gateway.app import MIGRATIONS, create_app
from framewire.gateway.db import Database
from framewire.gateway.platform.usage import (
    GRANULARITIES,
    SqliteUsage,
    TallyRow,
    UsageMeter,
    UsageQuery,
    UsageStore,
    parse_time,
)
from framewire.gateway.settings import Settings
from framewire.gateway.stores.redis_usage import RedisUsage
from tests.conftest import BatchingApp
from tests.gateway.stores import KINDS, database, state

ROOT = {"authorization": "Key root:rootsecret-0123456789"}
QUEUE = {"host": "queue.local"}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "framewire.db", MIGRATIONS)
    await database.open()
    yield database
    await database.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_many_records_become_one_transaction_of_tallies(db: Database) -> None:
    clock = Clock(1_800_000_000.0)
    meter = UsageMeter(db, clock=clock)
    for i in range(10_000):
        meter.record("k1", "app/a", "realtime", "ok", outputs=1, compute_ms=0.25)
        if i % 10 == 0:
            meter.record("k2", "app/a", "realtime", "dropped")
    clock.now += 60  # a new minute is a new tally
    meter.record("k1", "app/a", "realtime", "ok", outputs=1, compute_ms=0.25)
    assert meter.pending == 3
    commits = db.commits
    assert await meter.flush() == 3
    assert db.commits == commits + 1
    rows = await meter.query(UsageQuery(granularity="total"))
    by_key = {r.key_id: r for r in rows}
    assert by_key["k1"].requests == 10_001 and by_key["k1"].outputs == 10_001
    assert by_key["k1"].compute_ms == pytest.approx(10_001 * 0.25)
    assert by_key["k2"].statuses == {"dropped": 1_000} and by_key["k2"].errors == 0
    minutes = await meter.query(UsageQuery(key_id="k1", granularity="minute"))
    assert [r.requests for r in minutes] == [10_000, 1]


async def test_a_failed_write_keeps_the_tallies_for_the_next_flush(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter = UsageMeter(db)
    meter.record("k", "app/a", "run", "ok", compute_ms=2.0)
    real_write = db.write

    async def failing(fn: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(db, "write", failing)
    with pytest.raises(OSError):
        await meter.flush()
    meter.record("k", "app/a", "run", "ok", compute_ms=3.0)  # recorded while the write failed
    monkeypatch.setattr(db, "write", real_write)
    await meter.flush()
    (row,) = await meter.query(UsageQuery(granularity="total"))
    assert (row.requests, row.compute_ms, meter.flush_failures) == (2, 5.0, 1)


def test_query_times_and_granularity_are_checked_naming_the_field() -> None:
    assert parse_time("2026-01-01T00:00:00Z", "start") == parse_time("2026-01-01", "start") == 1767225600.0
    assert parse_time("1767225600", "start") == 1767225600.0
    with pytest.raises(ValueError, match="start"):
        parse_time("yesterday", "start")
    with pytest.raises(ValueError, match="granularity"):
        UsageQuery(granularity="week")
    with pytest.raises(ValueError, match="end"):
        UsageQuery(start=10, end=5)


def wait_completed(client: TestClient, status_url: str) -> None:
    path = "/" + status_url.split("/", 3)[3]
    deadline = time.monotonic() + 10
    while client.get(path, headers={**ROOT, **QUEUE}).json()["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_usage_of_a_scripted_workload_is_exact_and_survives_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(auth=True, api_keys=("root:rootsecret-0123456789",), data_dir=str(tmp_path))
    records: list[BatchRecord] = []
    engine = LocalEngine(AppRegistry([EchoApp(), BatchingApp()]), on_batch=records.append)
    with TestClient(create_app(settings, engine)) as client:
        key_a = client.post("/v1/keys", json={"name": "a"}, headers=ROOT).json()
        key_b = client.post("/v1/keys", json={"name": "b"}, headers=ROOT).json()
        a, b = {"authorization": f"Key {key_a['key']}"}, {"authorization": f"Key {key_b['key']}"}
        # Key a: 20 realtime frames answered, 2 that fail validation, 1 that is not msgpack.
        with client.websocket_connect("/framewire/echo/realtime", headers=a) as ws:
            for i in range(20):
                ws.send_bytes(msgpack.packb({"prompt": str(i), "request_id": i}))
                assert msgpack.unpackb(ws.receive_bytes())["request_id"] == i
            for _ in range(2):
                ws.send_bytes(msgpack.packb({"delay_ms": -1}))
                assert ws.receive_json()["error"] == "VALIDATION_ERROR"
            ws.send_bytes(b"\xc1")
            assert ws.receive_json()["error"] == "INVALID_MSGPACK"
        # Key b: 5 runs, 1 invalid run, 1 failing run, 3 queue jobs, 1 stream.
        for i in range(5):
            assert client.post("/test/batching/realtime", json={"n": i}, headers=b).status_code == 200
        assert client.post("/test/batching/realtime", json={"n": "x"}, headers=b).status_code == 422
        assert client.post("/test/batching/realtime", json={"n": -1}, headers=b).status_code == 500
        for i in range(3):
            submitted = client.post("/test/batching/realtime", json={"n": i}, headers={**b, **QUEUE}).json()
            wait_completed(client, submitted["status_url"])
        with client.stream("POST", "/test/batching/realtime/stream", json={"n": 7}, headers=b) as sse:
            assert '"n":7' in "".join(sse.iter_text())
    # Shut down: the last tallies were written on the way out. Read them back with the CLI.
    assert cli.main(["usage", "--granularity", "total", "--json", "--data-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(r["key_id"], r["app"]): r for r in report["time_series"][0]["results"]}
    engine_ms = {
        app: sum(r.inference_ms for r in records if r.endpoint_key.startswith(app))
        for app in ("framewire/echo", "test/batching")
    }
    row_a = rows[(key_a["id"], "framewire/echo")]
    assert (row_a["requests"], row_a["outputs"], row_a["errors"]) == (23, 20, 3)
    assert row_a["statuses"] == {"ok": 20, "validation_error": 2, "invalid_msgpack": 1}
    assert row_a["surfaces"] == {"realtime": 23}
    assert row_a["compute_ms"] == pytest.approx(engine_ms["framewire/echo"], abs=1e-3)
    row_b = rows[(key_b["id"], "test/batching")]
    assert row_b["surfaces"] == {"run": 7, "queue": 3, "stream": 1}
    assert row_b["statuses"] == {"ok": 9, "validation_error": 1, "internal_error": 1}
    assert row_b["outputs"] == 9
    assert row_b["compute_ms"] == pytest.approx(engine_ms["test/batching"], abs=1e-3)
    assert report["totals"]["requests"] == 34
    # After a restart the API reports the same totals, filtered by key and app (alias accepted).
    with TestClient(create_app(settings, LocalEngine(AppRegistry([EchoApp(), BatchingApp()])))) as client:
        again = client.get("/v1/usage?granularity=total&app=echo", headers=ROOT).json()
        assert again["time_series"][0]["results"] == [row_a]
        own = client.get("/v1/usage?granularity=day", headers={"authorization": f"Key {key_b['key']}"}).json()
        assert {r["key_id"] for s in own["time_series"] for r in s["results"]} == {key_b["id"]}
        other = client.get(f"/v1/usage?key_id={key_a['id']}", headers={"authorization": f"Key {key_b['key']}"})
        assert other.status_code == 403
        assert client.get("/v1/usage?granularity=week", headers=ROOT).status_code == 422


# -- the usage store: SQLite and Redis answer every query the same way ----------------------------


@pytest.fixture(params=KINDS)
async def usage_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageStore]:
    if request.param == "sqlite":
        async with database(tmp_path) as db:
            yield SqliteUsage(db)
    else:
        async with state(request.getfixturevalue("redis_url")) as conn:
            yield RedisUsage(conn)


DAY = 1_767_225_600  # 2026-01-01T00:00:00Z


def scripted_rows() -> list[TallyRow]:
    """Tallies over three days, two keys, two apps, several surfaces and statuses (two adds of some)."""
    rng = random.Random(7)
    rows: list[TallyRow] = []
    for _ in range(400):
        bucket = DAY + rng.randrange(0, 3 * 86400) // 60 * 60
        key, app = rng.choice(["k1", "k2"]), rng.choice(["app/a", "app/b"])
        surface, status = rng.choice(["realtime", "run", "queue"]), rng.choice(["ok", "ok", "dropped", "invalid_input"])
        session_s = rng.randint(0, 240) / 8 if surface == "realtime" else 0.0
        counts = (rng.randint(1, 50), rng.randint(0, 5), rng.randint(0, 999) / 4, session_s)
        rows.append((bucket, key, app, surface, status, *counts))
    return rows


QUERIES = [
    UsageQuery(granularity="total"),
    UsageQuery(granularity="day", key_id="k1"),
    UsageQuery(granularity="hour", app="app/b", start=DAY + 3000.5, end=DAY + 2 * 86400 + 125),
    UsageQuery(granularity="minute", start=DAY + 86400 - 600, end=DAY + 86400 + 600),
    UsageQuery(granularity="total", start=DAY + 3599, end=DAY + 86400 * 2 + 61),
    UsageQuery(granularity="day", key_id="nobody"),
]


async def test_usage_stores_answer_every_query_like_a_sum_of_minute_rows(usage_store: UsageStore) -> None:
    rows = scripted_rows()
    await usage_store.add(rows[:250])
    await usage_store.add(rows[250:])
    for query in QUERIES:
        expected: dict[tuple[int | None, str, str], list[float]] = {}
        width = GRANULARITIES[query.granularity]
        for bucket, key, app, _surface, _status, requests, outputs, compute_ms, session_s in rows:
            if query.key_id not in (None, key) or query.app not in (None, app):
                continue
            if (query.start is not None and bucket < int(query.start) // 60 * 60) or (
                query.end is not None and bucket >= query.end
            ):
                continue
            shown = None if width is None else bucket // width * width
            totals = expected.setdefault((shown, key, app), [0, 0, 0.0, 0.0])
            totals[0] += requests
            totals[1] += outputs
            totals[2] += compute_ms
            totals[3] += session_s
        got = {
            (r.bucket, r.key_id, r.app): [r.requests, r.outputs, r.compute_ms, r.session_s]
            for r in await usage_store.query(query)
        }
        assert got.keys() == expected.keys(), query
        for key, values in expected.items():
            assert got[key][:2] == values[:2] and got[key][2:] == pytest.approx(values[2:]), (query, key)


async def test_purged_usage_is_gone_from_every_query(usage_store: UsageStore) -> None:
    await usage_store.add(scripted_rows())
    assert await usage_store.purge(DAY + 86400) > 0
    minutes = await usage_store.query(UsageQuery(granularity="minute", end=DAY + 86400))
    assert minutes == []
    later = await usage_store.query(UsageQuery(granularity="minute", start=DAY + 86400))
    assert sum(r.requests for r in later) > 0


async def test_redis_the_same_flush_twice_counts_once(redis_url: str) -> None:
    async with state(redis_url) as conn:
        store = RedisUsage(conn)
        row: TallyRow = (DAY, "k", "app/a", "run", "ok", 3, 1, 2.5, 1.25)
        assert await store.add_once("flush-1", [row]) and not await store.add_once("flush-1", [row])
        assert await store.add_once("flush-2", [row])
        (total,) = await store.query(UsageQuery(granularity="total"))
        assert (total.requests, total.outputs, total.compute_ms, total.session_s) == (6, 2, 5.0, 2.5)


async def test_redis_edges_adding_at_once_lose_nothing(redis_url: str) -> None:
    async with state(redis_url) as one, state(redis_url) as two:
        meters = [UsageMeter(RedisUsage(one)), UsageMeter(RedisUsage(two))]
        for i in range(300):
            meters[i % 2].record("k", "app/a", "realtime", "ok", outputs=1, compute_ms=0.5)
        await asyncio.gather(*(m.flush() for m in meters))
        (total,) = await meters[0].query(UsageQuery(granularity="total"))
        assert (total.requests, total.outputs, total.compute_ms) == (300, 300, 150.0)
