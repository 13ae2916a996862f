"""API keys: lifecycle, hashing at rest, the in-memory mirror, tokens, the CLI.

The key store's contract runs against both backends (SQLite, Redis): two backends over
the same keys stand for two processes (a server and ``framewire keys``, or two edges).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from framewire import cli
from framewire.gateway.app import MIGRATIONS
from framewire.gateway.db import Database
from framewire.gateway.platform.auth import Authenticator, AuthError, Limits, StaticKeys, TokenIssuer
from framewire.gateway.platform.keys import KeyBackend, KeyChain, KeyStore, NewKey, SqliteKeys
from framewire.gateway.stores.redis_keys import RedisKeys
from tests.gateway.stores import KINDS, database, state

SECRET = "token-secret-0123456789abcdef0123456789"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "framewire.db", MIGRATIONS)
    await database.open()
    yield database
    await database.close()


@pytest.fixture(params=KINDS)
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[KeyBackend, KeyBackend]]:
    """Two backends over the same keys."""
    if request.param == "sqlite":
        async with database(tmp_path) as one, database(tmp_path) as two:
            yield SqliteKeys(one), SqliteKeys(two)
    else:
        url = request.getfixturevalue("redis_url")
        async with state(url) as one, state(url) as two:
            yield RedisKeys(one), RedisKeys(two)


async def test_key_lifecycle_create_verify_update_revoke(backends: tuple[KeyBackend, KeyBackend]) -> None:
    store = KeyStore(backends[0])
    await store.reload()
    record, key = await store.create(NewKey("ci", ("echo",), False, Limits(requests_per_s=5)))
    key_id, _, secret = key.partition(":")
    assert key_id == record.id and len(secret) >= 43  # 32 random bytes, URL-safe base64
    principal = store.verify(key)
    assert principal is not None and principal.key_id == key_id and principal.apps == frozenset({"echo"})
    assert principal.limits.requests_per_s == 5 and not principal.admin
    assert store.verify(f"{key_id}:wrong") is None and store.verify(key_id) is None and store.verify("") is None

    updated = await store.update(key_id, {"frames_per_s": 30.0, "apps": None})
    assert updated is not None and updated.apps is None and updated.limits == Limits(5, None, 30.0)
    assert store.principal(key_id) is not None and store.principal(key_id).limits.frames_per_s == 30.0  # type: ignore[union-attr]

    revoked = await store.revoke(key_id)
    assert revoked is not None and revoked.revoked_at is not None
    assert store.verify(key) is None and store.principal(key_id) is None  # at once, no poll needed
    assert [r.id for r in await store.list()] == []
    assert [r.id for r in await store.list(include_revoked=True)] == [key_id]
    with pytest.raises(LookupError, match="revoked"):
        await store.update(key_id, {"name": "again"})
    assert await store.revoke("no-such-key") is None


async def test_the_secret_is_not_in_the_database_files(db: Database, tmp_path: Path) -> None:
    store = KeyStore(db)
    await store.reload()
    _, key = await store.create(NewKey("x"))
    secret = key.partition(":")[2]
    await db.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("framewire.db"))
    assert key.partition(":")[0].encode() in stored  # the id is there: the files were read
    assert secret.encode() not in stored
    conn = sqlite3.connect(tmp_path / "framewire.db")
    (hash_alg,) = conn.execute("SELECT hash_alg FROM api_keys").fetchone()
    conn.close()
    assert hash_alg == "sha256"


async def test_changes_by_another_process_reach_the_mirror_on_refresh(
    backends: tuple[KeyBackend, KeyBackend],
) -> None:
    server = KeyStore(backends[0])
    await server.reload()
    other = KeyStore(backends[1])  # e.g. `framewire keys create` meanwhile, or another edge
    record, key = await other.create(NewKey("late", limits=Limits(requests_per_s=2.5)))
    assert server.verify(key) is None
    assert await server.refresh() is True
    principal = server.verify(key)
    assert principal is not None and principal.limits == Limits(requests_per_s=2.5)
    assert await server.refresh() is False  # nothing new: no reload
    await other.update(record.id, {"requests_per_s": None, "admin": True})
    assert await server.refresh() is True
    changed = server.principal(record.id)
    assert changed is not None and changed.admin and changed.limits == Limits()
    await other.revoke(record.id)
    assert await server.refresh() is True and server.verify(key) is None
    assert [r.id for r in await server.list(include_revoked=True)] == [record.id]


async def test_redis_a_revocation_on_one_edge_reaches_every_edge_at_once(redis_url: str) -> None:
    async with state(redis_url, start=True) as edge_a, state(redis_url, start=True) as edge_b:
        a, b = KeyStore(RedisKeys(edge_a), poll_s=30.0), KeyStore(RedisKeys(edge_b), poll_s=30.0)
        await b.reload()
        changes: list[float] = []
        b.on_change(lambda: changes.append(time.monotonic()))
        watching = asyncio.create_task(b.watch())
        try:
            await asyncio.sleep(0.3)  # b's subscription is up
            record, key = await a.create(NewKey("shared"))
            for _ in range(100):
                if b.verify(key) is not None:
                    break
                await asyncio.sleep(0.01)
            assert b.verify(key) is not None  # long before the 30 s poll
            revoked_at = time.monotonic()
            await a.revoke(record.id)
            for _ in range(100):
                if b.verify(key) is None:
                    break
                await asyncio.sleep(0.01)
            assert b.verify(key) is None and changes[-1] - revoked_at < 1.0
        finally:
            watching.cancel()


async def test_redis_keeps_only_the_secret_hash(redis_url: str) -> None:
    async with state(redis_url) as conn:
        store = KeyStore(RedisKeys(conn))
        record, key = await store.create(NewKey("x"))
        secret = key.partition(":")[2]
        stored = await conn.client.hgetall(conn.key("key", record.id))
        assert stored["hash_alg"] == "sha256" and secret not in json.dumps(stored)


async def test_bad_scopes_and_limits_name_the_field() -> None:
    with pytest.raises(ValueError, match="requests_per_s"):
        NewKey(limits=Limits(requests_per_s=0))
    with pytest.raises(ValueError, match="max_sessions"):
        NewKey(limits=Limits(max_sessions=-1))
    with pytest.raises(ValueError, match="apps"):
        NewKey(apps=())


async def test_tokens_end_with_their_key_and_only_narrow_its_scope(backends: tuple[KeyBackend, KeyBackend]) -> None:
    store = KeyStore(backends[0])
    await store.reload()
    record, key = await store.create(NewKey("browser", ("echo", "lcm"), False, Limits(max_sessions=1)))
    auth = Authenticator(True, KeyChain(StaticKeys(["root:pw"]), store), TokenIssuer(SECRET))
    principal = auth.request({"authorization": f"Key {key}"})
    token = auth.tokens.issue(principal, ["echo"], 60)
    via_token = auth.request({}, token)
    assert via_token.limits.max_sessions == 1  # the key's limits follow its tokens
    assert via_token.may_use(["framewire/echo"]) and not via_token.may_use(["framewire/lcm"])
    await store.update(record.id, {"apps": ["lcm"]})  # the key loses echo: so does the token
    assert not auth.request({}, token).may_use(["framewire/echo"])
    await store.revoke(record.id)
    with pytest.raises(AuthError, match="revoked") as err:
        auth.request({"authorization": f"Bearer {token}"})
    assert err.value.status == 401
    assert auth.request({"authorization": "Key root:pw"}).admin  # --api-key keys keep working


def test_cli_creates_lists_and_revokes_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    args = [
        "keys",
        "create",
        "--name",
        "ops",
        "--admin",
        "--app",
        "echo,lcm",
        "--max-sessions",
        "3",
        "--data-dir",
        data,
    ]
    assert cli.main(args) == 0
    key = capsys.readouterr().out.strip()
    key_id = key.partition(":")[0]
    assert cli.main(["keys", "list", "--json", "--data-dir", data]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "id": key_id,
            "name": "ops",
            "apps": ["echo", "lcm"],
            "admin": True,
            "limits": {"requests_per_s": None, "max_sessions": 3, "frames_per_s": None},
            "created_at": listed[0]["created_at"],
            "revoked_at": None,
        }
    ]
    assert key.partition(":")[2] not in json.dumps(listed)
    assert cli.main(["keys", "revoke", key_id, "--data-dir", data]) == 0
    assert capsys.readouterr().out.startswith(f"revoked {key_id}")
    assert cli.main(["keys", "list", "--data-dir", data]) == 0
    assert key_id not in capsys.readouterr().out
    assert cli.main(["keys", "revoke", "nope", "--data-dir", data]) == 1
    assert cli.main(["keys", "create", "--requests-per-s", "0", "--data-dir", data]) == 2
    assert "requests_per_s" in capsys.readouterr().err
