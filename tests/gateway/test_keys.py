"""API keys: lifecycle, hashing at rest, the in-memory mirror, tokens, the CLI."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from framewire import cli
from framewire.gateway.app import MIGRATIONS
from framewire.gateway.db import Database
from framewire.gateway.platform.auth import Authenticator, AuthError, Limits, StaticKeys, TokenIssuer
from framewire.gateway.platform.keys import KeyChain, KeyStore, NewKey

SECRET = "token-secret-0123456789abcdef0123456789"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "framewire.db", MIGRATIONS)
    await database.open()
    yield database
    await database.close()


async def test_key_lifecycle_create_verify_update_revoke(db: Database) -> None:
    store = KeyStore(db)
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


async def test_changes_by_another_process_reach_the_mirror_on_refresh(db: Database, tmp_path: Path) -> None:
    server = KeyStore(db)
    await server.reload()
    other_db = Database(tmp_path / "framewire.db", MIGRATIONS)  # e.g. `framewire keys create` meanwhile
    await other_db.open()
    try:
        record, key = await KeyStore(other_db).create(NewKey("late"))
        assert server.verify(key) is None
        assert await server.refresh() is True
        assert server.verify(key) is not None
        assert await server.refresh() is False  # nothing new: no reload
        await KeyStore(other_db).revoke(record.id)
        assert await server.refresh() is True and server.verify(key) is None
    finally:
        await other_db.close()


async def test_bad_scopes_and_limits_name_the_field() -> None:
    with pytest.raises(ValueError, match="requests_per_s"):
        NewKey(limits=Limits(requests_per_s=0))
    with pytest.raises(ValueError, match="max_sessions"):
        NewKey(limits=Limits(max_sessions=-1))
    with pytest.raises(ValueError, match="apps"):
        NewKey(apps=())


async def test_tokens_end_with_their_key_and_only_narrow_its_scope(db: Database) -> None:
    store = KeyStore(db)
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
