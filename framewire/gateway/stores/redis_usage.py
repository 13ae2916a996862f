"""Usage counters in Redis: the :class:`~framewire.gateway.platform.usage.UsageStore` every edge adds to.

Each edge tallies in memory (:class:`~framewire.gateway.platform.usage.UsageMeter`) and
adds its tallies every few seconds. Counters are kept per key, app, surface and status
at three resolutions, so a long window never reads a minute at a time:

- ``usage:60:{minute}``, ``usage:3600:{hour}``, ``usage:86400:{day}`` — one hash per
  time bucket, fields ``key⇥app⇥surface⇥status⇥r|o|c|s`` (requests, outputs, compute ms, session seconds);
- ``usage:idx:{width}`` — the buckets that exist, by time.

A query covers its window with whole days, then whole hours, then minutes at its edges,
never coarser than its granularity, so its answer is the same as the embedded store's
(which adds up minute rows). An add is one script: it runs once per flush id (a retried
call adds nothing twice) and writes every resolution together. With a retention, each
bucket expires by itself after it; the purge drops the index entries and any bucket
whose expiry was not set.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from framewire.gateway.platform.usage import GRANULARITIES, TallyRow, UsageQuery, UsageRow
from framewire.state.connection import StateConnection

#: The resolutions kept, coarsest first (seconds).
WIDTHS = (86400, 3600, 60)
#: Tallies one script adds at most (a flush of more runs several).
CHUNK = 500
_SEP = "\t"

_ADD = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600) == false then return 0 end
local prefix, retention = ARGV[1], tonumber(ARGV[2])
local i = 3
while i <= #ARGV do
  local bucket, field = tonumber(ARGV[i]), ARGV[i + 1]
  local r, o, c, s = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  for _, w in ipairs({86400, 3600, 60}) do
    local b = math.floor(bucket / w) * w
    local key = prefix .. w .. ':' .. b
    redis.call('HINCRBY', key, field .. 'r', r)
    if o ~= '0' then redis.call('HINCRBY', key, field .. 'o', o) end
    if c ~= '0' then redis.call('HINCRBYFLOAT', key, field .. 'c', c) end
    if s ~= '0' then redis.call('HINCRBYFLOAT', key, field .. 's', s) end
    redis.call('ZADD', prefix .. 'idx:' .. w, 'NX', b, b)
    if retention > 0 then redis.call('EXPIRE', key, retention + w) end
  end
  i = i + 6
end
return 1
"""


def cover(start: int, end: int, coarsest: int) -> list[tuple[int, int]]:
    """(width, bucket) pieces that tile [start, end) (minute-aligned), none wider than ``coarsest``."""
    pieces = []
    t = start
    widths = [w for w in WIDTHS if w <= coarsest]
    while t < end:
        for width in widths:
            if t % width == 0 and t + width <= end:
                pieces.append((width, t))
                t += width
                break
    return pieces


class RedisUsage:
    """See the module docstring. ``retention_s`` 0 keeps usage until purged."""

    def __init__(self, conn: StateConnection, *, retention_s: float = 0.0) -> None:
        self.conn = conn
        self.retention_s = retention_s
        self._add = conn.script(_ADD)
        self._prefix = conn.key("usage", "")

    def _bucket_key(self, width: int, bucket: int) -> str:
        return f"{self._prefix}{width}:{bucket}"

    async def add(self, rows: Sequence[TallyRow]) -> None:
        for i in range(0, len(rows), CHUNK):
            await self.add_once(uuid.uuid4().hex, rows[i : i + CHUNK])

    async def add_once(self, flush_id: str, rows: Sequence[TallyRow]) -> bool:
        """Add ``rows`` unless a call with ``flush_id`` did already (within the hour); True if added."""
        args: list[str | int] = [self._prefix, int(self.retention_s)]
        for bucket, key_id, app, surface, status, requests, outputs, compute_ms, session_s in rows:
            field = _SEP.join((key_id, app, surface, status)) + _SEP
            args += [bucket, field, requests, outputs, repr(compute_ms) if compute_ms else "0"]
            args.append(repr(session_s) if session_s else "0")
        with self.conn.guard("add usage"):
            added = await self._add(keys=[self.conn.key("usage", "flush", flush_id)], args=args)
        return bool(added)

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        width = GRANULARITIES[query.granularity]
        coarsest = width if width is not None else WIDTHS[0]
        client = self.conn.client
        with self.conn.guard("read usage"):
            if query.start is not None:
                start = int(query.start) // 60 * 60
            else:
                first = await client.zrange(self._prefix + "idx:60", 0, 0)
                days = await client.zrange(self._prefix + "idx:86400", 0, 0)
                candidates = [int(str(b)) for b in (*first, *days)]
                if not candidates:
                    return []
                start = min(candidates)
            if query.end is not None:
                end = -(-int(query.end * 1000) // 60000) * 60  # bucket < end: round up to the minute
            else:
                last = await client.zrange(self._prefix + "idx:60", -1, -1)
                end = (int(str(last[0])) + 60) if last else start
            pieces = cover(start, end, coarsest)
            existing: dict[int, set[int]] = {}
            for w in {p[0] for p in pieces}:
                found = await client.zrangebyscore(self._prefix + f"idx:{w}", start, end)
                existing[w] = {int(str(b)) for b in found}
            pieces = [(w, b) for w, b in pieces if b in existing[w]]
            async with client.pipeline(transaction=False) as pipe:
                for w, b in pieces:
                    pipe.hgetall(self._bucket_key(w, b))
                hashes = await pipe.execute()
        rows: dict[tuple[int | None, str, str], UsageRow] = {}
        for (_, bucket), counters in zip(pieces, hashes, strict=True):
            shown = None if width is None else bucket // width * width
            for name, value in counters.items():
                key_id, app, surface, status, metric = str(name).split(_SEP)
                if (query.key_id is not None and key_id != query.key_id) or (
                    query.app is not None and app != query.app
                ):
                    continue
                row = rows.get((shown, key_id, app))
                if row is None:
                    row = rows[(shown, key_id, app)] = UsageRow(shown, key_id, app)
                if metric == "r":
                    n = int(value)
                    row.requests += n
                    row.statuses[status] = row.statuses.get(status, 0) + n
                    row.surfaces[surface] = row.surfaces.get(surface, 0) + n
                elif metric == "o":
                    row.outputs += int(value)
                elif metric == "c":
                    row.compute_ms += float(value)
                elif metric == "s":
                    row.session_s += float(value)
        return sorted(rows.values(), key=lambda r: (-1 if r.bucket is None else r.bucket, r.key_id, r.app))

    async def purge(self, before: float) -> int:
        """Delete buckets that end before ``before``; returns how many went."""
        cutoff = int(before) // 60 * 60
        removed = 0
        client = self.conn.client
        with self.conn.guard("purge usage"):
            for w in WIDTHS:
                index = self._prefix + f"idx:{w}"
                old = [int(str(b)) for b in await client.zrangebyscore(index, "-inf", cutoff - w)]
                if not old:
                    continue
                async with client.pipeline(transaction=True) as pipe:
                    for b in old:
                        pipe.delete(self._bucket_key(w, b))
                    pipe.zrem(index, *old)
                    await pipe.execute()
                if w == 60:
                    removed = len(old)
        return removed
