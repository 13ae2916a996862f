"""API keys in Redis: the :class:`~framewire.gateway.platform.keys.KeyBackend` every edge shares.

Layout: ``key:{id}`` a hash per key (the secret's SHA-256 in hex, never the secret),
``keys`` the set of ids, ``keys:generation`` a counter every change increments, and the
channel ``notice:keys`` on which every change is published (the key's id). Each change
is one ``MULTI``/``EXEC`` (or one script), so the record, the generation and the notice
go together. Edges verify keys from their in-memory mirror
(:class:`~framewire.gateway.platform.keys.KeyStore`) and reload it at each notice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from framewire.gateway.platform.auth import Limits
from framewire.gateway.platform.keys import HASH_ALG, KeyRecord, NewKey
from framewire.state.connection import StateConnection

_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 0 then
  redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
  redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
"""


def _opt_float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def _record(h: dict[str, str]) -> KeyRecord:
    max_sessions = h.get("max_sessions")
    return KeyRecord(
        id=h["id"],
        name=h.get("name", ""),
        apps=None if not h.get("apps") else tuple(json.loads(h["apps"])),
        admin=h.get("admin") == "1",
        limits=Limits(
            _opt_float(h.get("requests_per_s")),
            None if not max_sessions else int(max_sessions),
            _opt_float(h.get("frames_per_s")),
        ),
        created_at=float(h["created_at"]),
        revoked_at=_opt_float(h.get("revoked_at")),
    )


def _fields(new: NewKey) -> tuple[dict[Any, Any], list[str]]:
    """The hash fields of a key's settings, and the fields to delete (limits left out)."""
    fields: dict[Any, Any] = {
        "name": new.name,
        "apps": "" if new.apps is None else json.dumps(list(new.apps)),
        "admin": "1" if new.admin else "0",
    }
    gone = []
    for name in ("requests_per_s", "max_sessions", "frames_per_s"):
        value = getattr(new.limits, name)
        if value is None:
            gone.append(name)
        else:
            fields[name] = repr(value)
    return fields, gone


class RedisKeys:
    """See the module docstring."""

    def __init__(self, conn: StateConnection) -> None:
        self.conn = conn
        self.channel = conn.key("notice", "keys")
        self._ids = conn.key("keys")
        self._generation = conn.key("keys", "generation")
        self._revoke = conn.script(_REVOKE)

    def _key(self, key_id: str) -> str:
        return self.conn.key("key", key_id)

    async def _records(self, ids: list[str]) -> list[tuple[bytes, KeyRecord]]:
        async with self.conn.client.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._key(key_id))
            rows = await pipe.execute()
        found = []
        for raw in rows:
            if raw:
                h = {str(k): str(v) for k, v in raw.items()}
                found.append((bytes.fromhex(h["secret_hash"]), _record(h)))
        return sorted(found, key=lambda item: (item[1].created_at, item[1].id))

    async def load(self) -> tuple[int, list[tuple[bytes, KeyRecord]]]:
        with self.conn.guard("load the API keys"):
            generation = int(await self.conn.client.get(self._generation) or 0)
            ids = [str(i) for i in await self.conn.client.smembers(self._ids)]
            records = await self._records(ids)
        return generation, [(h, r) for h, r in records if r.active]

    async def generation(self) -> int:
        with self.conn.guard("read the API keys' generation"):
            return int(await self.conn.client.get(self._generation) or 0)

    async def insert(self, record: KeyRecord, secret_hash: bytes) -> None:
        fields, _ = _fields(NewKey(record.name, record.apps, record.admin, record.limits))
        fields.update(
            id=record.id, secret_hash=secret_hash.hex(), hash_alg=HASH_ALG, created_at=repr(record.created_at)
        )
        with self.conn.guard("create an API key"):
            async with self.conn.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(record.id), mapping=fields)
                pipe.sadd(self._ids, record.id)
                pipe.incr(self._generation)
                pipe.publish(self.channel, record.id)
                await pipe.execute()

    async def get(self, key_id: str) -> KeyRecord | None:
        with self.conn.guard("read an API key"):
            raw = await self.conn.client.hgetall(self._key(key_id))
        return _record({str(k): str(v) for k, v in raw.items()}) if raw else None

    async def list(self, *, include_revoked: bool) -> list[KeyRecord]:
        with self.conn.guard("list the API keys"):
            ids = [str(i) for i in await self.conn.client.smembers(self._ids)]
            records = [r for _, r in await self._records(ids)]
        return records if include_revoked else [r for r in records if r.active]

    async def revoke(self, key_id: str, at: float) -> KeyRecord | None:
        with self.conn.guard("revoke an API key"):
            found = await self._revoke(
                keys=[self._key(key_id), self._generation], args=[repr(at), self.channel, key_id]
            )
        return await self.get(key_id) if found else None

    async def write(self, key_id: str, new: NewKey) -> None:
        fields, gone = _fields(new)
        with self.conn.guard("update an API key"):
            async with self.conn.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(key_id), mapping=fields)
                if gone:
                    pipe.hdel(self._key(key_id), *gone)
                pipe.incr(self._generation)
                pipe.publish(self.channel, key_id)
                await pipe.execute()

    def watch(self, on_change: Callable[[], None]) -> None:
        self.conn.subscribe(self.channel, lambda _key_id: on_change())
        self.conn.on_resync(on_change)
