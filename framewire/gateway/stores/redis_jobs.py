"""Queue jobs on Redis Streams: the :class:`~framewire.gateway.requests.job_store.JobStore` for many edges.

Who takes jobs: the **edges**. Every edge's dispatcher is a consumer in one consumer
group per app stream and runs what it takes on the engine workers it is linked to, so
input downloads, output files, webhooks and usage stay on the edge (a worker stays one
engine per GPU, with no HTTP client and no file store), a worker that dies costs a job
one re-run on another worker at once (the edge's link notices within the heartbeat
timeout; no claim has to lapse), and only an *edge* that dies leaves claims to lapse.

Layout (every name starts with the connection's prefix, ``framewire:`` by default):

- ``job:{id}`` a hash per job (the record, the authority on its state) and
  ``job:{id}:logs`` its log lines (the last :data:`MAX_LOGS_PER_JOB`).
- ``queue:{app}:{priority}`` a stream per app and priority (1 normal, 2 low), consumer
  group ``edges``; an entry carries only the job id.
- ``queued:{app}`` a sorted set of the app's queued jobs by (priority, submit order):
  positions (``ZRANK``) and queue lengths (``ZCARD``) without reading the stream.
- ``deadlines``, ``completed`` (by time, for the start-timeout sweep and the purge),
  ``apps``, ``jobseq``, ``idem:{owner}:{hash}`` (Idempotency-Keys), and the webhook
  outbox: ``delivery:{id}`` hashes and the ``outbox`` sorted set by due time.
- Channel ``notice:jobs``: ``q:{app}`` a job was queued, ``c:{id}`` a job changed,
  ``x:{id}`` a cancel was asked for, each followed by a tab and the edge that did it;
  the other edges wake their status streams and dispatchers with them.

Every state change is one Lua script, so it happens whole or not at all, and Redis
writes it to the AOF and to replicas as one ``MULTI``/``EXEC``. Each is safe to run
twice (the client retries once after a lost reply):

- *submit*: record, stream entry, queue index, deadline and Idempotency-Key together; a
  job id that exists already answers with that job.
- *claim*: ``XREADGROUP`` new entries (normal priority first) and, at most every
  ``reclaim_interval_s``, ``XAUTOCLAIM`` entries idle longer than the lease; a record
  still IN_PROGRESS is taken over only when its owner has not renewed within the lease
  (else the entry goes back to that owner), as a new attempt.
- *renew*: stamp the record and ``XCLAIM … JUSTID`` the entry (resetting its idle time),
  only while this edge holds the current attempt.
- *complete*: only while this edge holds the current attempt (record) and the entry is
  pending with it (stream): store the outcome, ``XACK`` and ``XDEL`` the entry, queue
  the webhook, publish. So a user never sees two results, whatever was redelivered.

Time comparisons inside scripts use the Redis server's clock (``TIME``), so edges with
skewed clocks agree on whose claim lapsed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from framewire.gateway.requests.job_store import (
    MAX_LOGS_PER_JOB,
    CancelResult,
    Delivery,
    IdempotencyConflict,
    Job,
    JobListener,
    JobStatus,
    LogEntry,
    NewJob,
    Priority,
    QueueFull,
    Renewal,
    Snapshot,
)
from framewire.gateway.requests.outcomes import Outcome
from framewire.state.connection import StateConnection

log = logging.getLogger("framewire.queue")

#: The consumer group every edge's dispatcher reads the app streams in.
GROUP = "edges"
#: Jobs a purge call deletes at once (the purge repeats until none are left).
PURGE_BATCH = 500
#: A consumer (edge) with nothing pending and idle this long is removed from the groups.
CONSUMER_FORGET_MS = 3600 * 1000
#: XCLAIM's IDLE for a released entry: far past any lease, so the next reclaim anywhere takes it.
RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000
#: Jobs whose app and priority this edge remembers (those it claimed), saving a read per completion.
MAX_REMEMBERED = 10_000

_SUBMIT = """
local rec, queued, stream, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, limit, fp = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if idem ~= '' then
  local seen = redis.call('HMGET', idem, 'job', 'fingerprint')
  if seen[1] and redis.call('EXISTS', ARGV[9] .. seen[1]) == 1 then
    if seen[2] ~= fp then return {'conflict', seen[1]} end
    return {'existing', seen[1]}
  end
end
if redis.call('EXISTS', rec) == 1 then return {'existing', id} end
local length = redis.call('ZCARD', queued)
if length >= limit then return {'full', tostring(length)} end
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, '__GROUP__', '0', 'MKSTREAM')
end
local seq = redis.call('INCR', KEYS[7])
local score = tonumber(ARGV[5]) * 17592186044416 + seq
local entry = redis.call('XADD', stream, '*', 'job', id)
redis.call('HSET', rec, 'seq', seq, 'status', 'IN_QUEUE', 'attempts', 0, 'cancel_requested', 0,
  'qscore', score, 'entry', entry, unpack(ARGV, 11))
redis.call('ZADD', queued, score, id)
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[6], ARGV[7], id) end
redis.call('SADD', KEYS[5], ARGV[6])
if idem ~= '' then
  redis.call('HSET', idem, 'job', id, 'fingerprint', fp)
  redis.call('PEXPIRE', idem, ARGV[4])
  redis.call('HSET', rec, 'idem', idem)
end
redis.call('PUBLISH', ARGV[8], 'q:' .. ARGV[6] .. '\t' .. ARGV[10])
return {'ok', tostring(redis.call('ZRANK', queued, id)), tostring(seq)}
"""

# Records go back as one JSON string (cjson): parsing one string costs the client half what a
# flat RESP array of fields does.
_RECORD = """
local function record(key)
  local h = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #h, 2 do t[h[i]] = h[i + 1] end
  return t
end
"""

_CLAIM = (
    _RECORD
    + """
local me, limit, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local function drop(stream, entry)
  redis.pcall('XACK', stream, '__GROUP__', entry)
  redis.call('XDEL', stream, entry)
end
local function take(stream, entry, fields, reclaimed)
  if type(fields) ~= 'table' then drop(stream, entry) return end
  local jid = nil
  for i = 1, #fields, 2 do if fields[i] == 'job' then jid = fields[i + 1] end end
  if not jid then drop(stream, entry) return end
  local rec = ARGV[6] .. jid
  local st = redis.call('HMGET', rec, 'status', 'start_deadline', 'consumer', 'renewed_at')
  local status = st[1]
  if not status or status == 'COMPLETED' then drop(stream, entry) return end
  local again = false
  if status == 'IN_QUEUE' then
    if st[2] and tonumber(st[2]) <= now then drop(stream, entry) return end
  elseif status == 'IN_PROGRESS' then
    if not reclaimed then return end
    if now_ms - tonumber(st[4] or '0') < lease then
      if st[3] then redis.call('XCLAIM', stream, '__GROUP__', st[3], 0, entry, 'JUSTID') end
      return
    end
    again = true
  else
    return
  end
  local attempts = redis.call('HINCRBY', rec, 'attempts', 1)
  redis.call('HSET', rec, 'status', 'IN_PROGRESS', 'consumer', me, 'started_at', ARGV[3],
    'renewed_at', now_ms, 'entry', entry)
  redis.call('ZREM', KEYS[3], jid)
  local message = 'Running on ' .. ARGV[8] .. ' (attempt ' .. attempts .. ')'
  if again then
    message = 'The edge running this request went away; it runs again (attempt ' .. attempts .. ')'
  end
  local logs = rec .. ':logs'
  redis.call('RPUSH', logs, cjson.encode({t = now, l = again and 'WARN' or 'INFO', m = message}))
  redis.call('LTRIM', logs, -tonumber(ARGV[9]), -1)
  redis.call('PUBLISH', ARGV[7], 'c:' .. jid .. '\t' .. me)
  out[#out + 1] = record(rec)
end
local streams = {KEYS[1], KEYS[2]}
if ARGV[4] == '1' then
  for i = 1, 2 do
    if #out < limit and redis.call('EXISTS', streams[i]) == 1 then
      local cursor = KEYS[3 + i]
      local r = redis.pcall('XAUTOCLAIM', streams[i], '__GROUP__', me, lease,
        redis.call('GET', cursor) or '0-0', 'COUNT', limit - #out)
      if type(r) == 'table' and not r.err then
        redis.call('SET', cursor, r[1])
        for _, e in ipairs(r[2]) do take(streams[i], e[1], e[2], true) end
      end
    end
  end
end
for i = 1, 2 do
  local rounds = 0
  while #out < limit and rounds < 8 and redis.call('EXISTS', streams[i]) == 1 do
    rounds = rounds + 1
    local r = redis.pcall('XREADGROUP', 'GROUP', '__GROUP__', me, 'COUNT', limit - #out, 'STREAMS', streams[i], '>')
    if type(r) == 'table' and r.err then
      if not string.find(r.err, 'NOGROUP') then return redis.error_reply(r.err) end
      redis.call('XGROUP', 'CREATE', streams[i], '__GROUP__', '0')
    elseif not r then
      break
    else
      for _, e in ipairs(r[1][2]) do take(streams[i], e[1], e[2], false) end
    end
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""
)

_RENEW = """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'consumer', 'entry', 'cancel_requested')
if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[1] or st[3] ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'renewed_at', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if st[4] then redis.pcall('XCLAIM', KEYS[2], '__GROUP__', ARGV[2], 0, st[4], 'JUSTID') end
if st[5] == '1' then return 2 end
return 1
"""

_COMPLETE = """
local rec = KEYS[1]
local st = redis.call('HMGET', rec, 'status', 'attempts', 'consumer', 'entry', 'webhook_url', 'owner')
if not st[1] then return 0 end
if ARGV[1] == '' then
  if st[1] ~= 'IN_QUEUE' then return 0 end
else
  if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[1] or st[3] ~= ARGV[2] then return 0 end
  if st[4] then
    local p = redis.pcall('XPENDING', KEYS[2], '__GROUP__', st[4], st[4], 1)
    if type(p) == 'table' and not p.err and #p == 1 and p[1][2] ~= ARGV[2] then return 0 end
  end
end
local n = tonumber(ARGV[9])
redis.call('HSET', rec, 'status', 'COMPLETED', 'completed_at', ARGV[3], unpack(ARGV, 10 + n))
if st[4] then
  redis.pcall('XACK', KEYS[2], '__GROUP__', st[4])
  redis.call('XDEL', KEYS[2], st[4])
end
redis.call('ZREM', KEYS[3], ARGV[8])
redis.call('ZREM', KEYS[4], ARGV[8])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[8])
if n > 0 then
  redis.call('RPUSH', rec .. ':logs', unpack(ARGV, 10, 9 + n))
  redis.call('LTRIM', rec .. ':logs', -tonumber(ARGV[7]), -1)
end
if st[5] and ARGV[4] ~= '' then
  local did = redis.call('INCR', KEYS[7])
  redis.call('HSET', ARGV[6] .. did, 'job_id', ARGV[8], 'owner', st[6], 'url', st[5], 'body', ARGV[4],
    'attempts', 0, 'state', 'pending', 'created_at', ARGV[3])
  redis.call('ZADD', KEYS[6], ARGV[3], did)
end
redis.call('PUBLISH', ARGV[5], 'c:' .. ARGV[8] .. '\t' .. ARGV[2])
return 1
"""

_RELEASE = """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'consumer', 'entry', 'qscore')
if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[1] or st[3] ~= ARGV[2] then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE')
redis.call('HDEL', KEYS[1], 'started_at', 'consumer', 'renewed_at')
redis.call('ZADD', KEYS[3], st[5], ARGV[5])
if st[4] then redis.pcall('XCLAIM', KEYS[2], '__GROUP__', ARGV[2], 0, st[4], 'IDLE', ARGV[6], 'JUSTID') end
redis.call('PUBLISH', ARGV[3], 'q:' .. ARGV[4] .. '\t' .. ARGV[2])
redis.call('PUBLISH', ARGV[3], 'c:' .. ARGV[5] .. '\t' .. ARGV[2])
return 1
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'NOT_FOUND' end
if status == 'COMPLETED' then return 'ALREADY_COMPLETED' end
redis.call('HSET', KEYS[1], 'cancel_requested', 1)
redis.call('PUBLISH', ARGV[1], 'x:' .. ARGV[2] .. '\t' .. ARGV[3])
if status == 'IN_QUEUE' then return 'REMOVED' end
return 'SIGNALLED'
"""

_SNAPSHOT = (
    _RECORD
    + """
local fields = record(KEYS[1])
if not fields.status then return false end
if ARGV[2] ~= '1' then fields.result = nil end
local position = -1
if fields.status == 'IN_QUEUE' then
  local r = redis.call('ZRANK', ARGV[3] .. fields.app_key, fields.id)
  if r then position = r end
end
local logs = {}
if ARGV[1] == '1' then logs = redis.call('LRANGE', KEYS[2], 0, -1) end
return cjson.encode({fields, position, logs})
"""
)

_ADD_LOG = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('PUBLISH', ARGV[3], 'c:' .. ARGV[4] .. '\t' .. ARGV[5])
return 1
"""

_PURGE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local rec = ARGV[2] .. id
  local idem = redis.call('HGET', rec, 'idem')
  if idem and redis.call('HGET', idem, 'job') == id then redis.call('DEL', idem) end
  redis.call('DEL', rec, rec .. ':logs')
  redis.call('ZREM', KEYS[1], id)
end
local done = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(done) do
  redis.call('DEL', ARGV[4] .. id)
  redis.call('ZREM', KEYS[2], id)
end
return {#ids, #done}
"""

_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HGETALL', ARGV[4] .. id)
  if #h == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), id)
    out[#out + 1] = {id, h}
  end
end
return out
"""


def _scripts() -> dict[str, str]:
    sources = {
        "submit": _SUBMIT,
        "claim": _CLAIM,
        "renew": _RENEW,
        "complete": _COMPLETE,
        "release": _RELEASE,
        "cancel": _CANCEL,
        "snapshot": _SNAPSHOT,
        "add_log": _ADD_LOG,
        "purge": _PURGE,
        "due": _DUE,
    }
    return {name: source.replace("__GROUP__", GROUP) for name, source in sources.items()}


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


def _float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def _job(h: dict[str, str]) -> Job:
    status = JobStatus(h["status"])
    outcome = None
    if status == JobStatus.COMPLETED:
        outcome = Outcome(
            body=json.loads(h["result"]) if "result" in h else None,
            http_status=int(h.get("http_status") or 200),
            error=h.get("error"),
            error_type=h.get("error_type"),
            metrics=json.loads(h["metrics"]) if h.get("metrics") else None,
        )
    return Job(
        seq=int(h["seq"]),
        id=h["id"],
        app_path=h["app_path"],
        endpoint_path=h["endpoint_path"],
        app_key=h["app_key"],
        owner=h["owner"],
        status=status,
        priority=Priority(int(h["priority"])),
        input=json.loads(h["input"]),
        base_url=h["base_url"],
        webhook_url=h.get("webhook_url"),
        start_deadline=_float(h.get("start_deadline")),
        created_at=float(h["created_at"]),
        started_at=_float(h.get("started_at")),
        completed_at=_float(h.get("completed_at")),
        attempts=int(h["attempts"]),
        cancel_requested=h.get("cancel_requested") == "1",
        outcome=outcome,
    )


def _log_json(entry: LogEntry) -> str:
    return json.dumps({"t": entry.timestamp, "l": entry.level, "m": entry.message}, separators=(",", ":"))


def _log_entry(text: str) -> LogEntry:
    data = json.loads(text)
    return LogEntry(float(data["t"]), str(data["l"]), str(data["m"]))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class RedisJobStore:
    """:class:`~framewire.gateway.requests.job_store.JobStore` on Redis Streams; see the module docstring.

    ``consumer`` names this process in the consumer groups (unique per process);
    ``claim_lease_s`` is how long its claims last without renewal; ``idempotency_ttl_s``
    how long an Idempotency-Key is remembered (at most as long as its job is kept);
    ``delivery_lease_s`` how long a webhook being delivered is hidden from other edges.
    """

    def __init__(
        self,
        conn: StateConnection,
        consumer: str,
        *,
        claim_lease_s: float = 30.0,
        reclaim_interval_s: float | None = None,
        idempotency_ttl_s: float = 24 * 3600.0,
        delivery_lease_s: float = 60.0,
    ) -> None:
        if claim_lease_s <= 0:
            raise ValueError("the claim lease must be > 0 seconds")
        self.conn = conn
        self.consumer = consumer
        self.lease_s = claim_lease_s
        self.claim_lease_s: float | None = claim_lease_s  # the JobStore attribute: claims here do lapse
        self.reclaim_interval_s = reclaim_interval_s if reclaim_interval_s is not None else min(1.0, claim_lease_s / 4)
        self.idempotency_ttl_s = idempotency_ttl_s
        self.delivery_lease_s = delivery_lease_s
        self.channel = conn.key("notice", "jobs")
        self._scripts = {name: conn.script(source) for name, source in _scripts().items()}
        self._next_reclaim: dict[str, float] = {}
        self._where: dict[str, tuple[str, int]] = {}  # job id -> (app key, priority) of jobs claimed here

    # -- names -----------------------------------------------------------------------------------

    def _rec(self, job_id: str) -> str:
        return self.conn.key("job", job_id)

    def _stream(self, app_key: str, priority: Priority | int) -> str:
        return self.conn.key("queue", app_key, str(int(priority)))

    def _queued(self, app_key: str) -> str:
        return self.conn.key("queued", app_key)

    def _idem(self, owner: str, idempotency_key: str) -> str:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
        return self.conn.key("idem", owner, digest)

    # -- submitting and reading ------------------------------------------------------------------

    async def submit(self, job: NewJob, max_queue_length: int) -> tuple[Job, int]:
        now = time.time()
        fields: dict[str, Any] = {
            "id": job.id,
            "app_path": job.app_path,
            "endpoint_path": job.endpoint_path,
            "app_key": job.app_key,
            "owner": job.owner,
            "priority": int(job.priority),
            "input": _dumps(job.input),
            "base_url": job.base_url,
            "created_at": repr(now),
            "fingerprint": job.fingerprint,
        }
        if job.webhook_url is not None:
            fields["webhook_url"] = job.webhook_url
        if job.start_deadline is not None:
            fields["start_deadline"] = repr(job.start_deadline)
        idem = "" if job.idempotency_key is None else self._idem(job.owner, job.idempotency_key)
        keys = [
            self._rec(job.id),
            self._queued(job.app_key),
            self._stream(job.app_key, job.priority),
            idem,
            self.conn.key("apps"),
            self.conn.key("deadlines"),
            self.conn.key("jobseq"),
        ]
        args: list[Any] = [
            job.id,
            max_queue_length,
            job.fingerprint,
            int(self.idempotency_ttl_s * 1000),
            int(job.priority),
            job.app_key,
            "" if job.start_deadline is None else repr(job.start_deadline),
            self.channel,
            self.conn.key("job", ""),
            self.consumer,
        ]
        for name, value in fields.items():
            args += [name, value]
        with self.conn.guard("submit a job"):
            answer = await self._scripts["submit"](keys=keys, args=args)
        kind = answer[0]
        if kind == "full":
            raise QueueFull(int(answer[1]), max_queue_length)
        if kind == "conflict":
            raise IdempotencyConflict(str(answer[1]))
        if kind == "existing":
            snap = await self.snapshot(str(answer[1]), with_logs=False, with_result=False)
            if snap is None:  # purged between the two reads
                raise IdempotencyConflict(str(answer[1]))
            return snap.job, snap.position or 0
        new = Job(
            seq=int(answer[2]),
            id=job.id,
            app_path=job.app_path,
            endpoint_path=job.endpoint_path,
            app_key=job.app_key,
            owner=job.owner,
            status=JobStatus.IN_QUEUE,
            priority=job.priority,
            input=job.input,
            base_url=job.base_url,
            webhook_url=job.webhook_url,
            start_deadline=job.start_deadline,
            created_at=now,
            started_at=None,
            completed_at=None,
            attempts=0,
            cancel_requested=False,
            outcome=None,
        )
        return new, int(answer[1])

    async def get(self, job_id: str) -> Job | None:
        with self.conn.guard("read a job"):
            h = await self.conn.client.hgetall(self._rec(job_id))
        return _job({str(k): str(v) for k, v in h.items()}) if h else None

    async def snapshot(self, job_id: str, with_logs: bool, with_result: bool = True) -> Snapshot | None:
        rec = self._rec(job_id)
        args = ["1" if with_logs else "0", "1" if with_result else "0", self.conn.key("queued", "")]
        with self.conn.guard("read a job"):
            answer = await self._scripts["snapshot"](keys=[rec, rec + ":logs"], args=args)
        if not answer:
            return None
        fields, position, logs = json.loads(answer)
        job = _job(fields)
        return Snapshot(
            job,
            int(position) if job.status == JobStatus.IN_QUEUE and int(position) >= 0 else None,
            [_log_entry(e) for e in logs] if with_logs else None,
        )

    async def queue_position(self, job: Job) -> int:
        with self.conn.guard("read a queue position"):
            rank: Any = await self.conn.client.zrank(self._queued(job.app_key), job.id)
        return 0 if rank is None else int(rank)

    # -- running -----------------------------------------------------------------------------------

    async def claim(self, app_key: str, limit: int, now: float) -> list[Job]:
        if limit <= 0:
            return []
        due = time.monotonic() >= self._next_reclaim.get(app_key, 0.0)
        if due:
            self._next_reclaim[app_key] = time.monotonic() + self.reclaim_interval_s
        normal, low = self._stream(app_key, Priority.NORMAL), self._stream(app_key, Priority.LOW)
        keys = [normal, low, self._queued(app_key), normal + ":cursor", low + ":cursor"]
        args = [
            self.consumer,
            limit,
            repr(now),
            "1" if due else "0",
            int(self.lease_s * 1000),
            self.conn.key("job", ""),
            self.channel,
            app_key,
            MAX_LOGS_PER_JOB,
        ]
        with self.conn.guard("claim jobs"):
            found = await self._scripts["claim"](keys=keys, args=args)
        jobs = [_job(record) for record in json.loads(found)]
        if len(self._where) + len(jobs) > MAX_REMEMBERED:
            self._where.clear()  # jobs taken over elsewhere are never completed here: forget them all
        self._where.update((j.id, (j.app_key, int(j.priority))) for j in jobs)
        again = [j.id for j in jobs if j.attempts > 1]
        if again:
            log.warning("took over %d jobs of %s whose edge stopped renewing its claim", len(again), app_key)
        return sorted(jobs, key=lambda j: (j.priority, j.seq))

    async def renew(self, held: Sequence[tuple[str, int]]) -> Renewal:
        if not held:
            return Renewal()
        with self.conn.guard("renew job claims"):
            located = {job_id: self._where.get(job_id) for job_id, _ in held}  # completions may pop meanwhile
            unknown = [job_id for job_id, where in located.items() if where is None]
            for job_id, h in zip(unknown, await self._read_fields(unknown, ("app_key", "priority")), strict=True):
                located[job_id] = (h.get("app_key", ""), int(h.get("priority") or 1))
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for job_id, attempt in held:
                    app_key, priority = located[job_id] or ("", 1)
                    stream = self._stream(app_key, priority)
                    await self._scripts["renew"](
                        keys=[self._rec(job_id), stream], args=[attempt, self.consumer], client=pipe
                    )
                answers = await pipe.execute()
        lost = [job_id for (job_id, _), a in zip(held, answers, strict=True) if int(a) == 0]
        cancelled = [job_id for (job_id, _), a in zip(held, answers, strict=True) if int(a) == 2]
        return Renewal(lost, cancelled)

    async def _locate(self, job_id: str) -> tuple[str, int] | None:
        """The job's app key and priority: remembered from the claim, else read (None: no such job)."""
        found = self._where.pop(job_id, None)
        if found is not None:
            return found
        record = (await self._read_fields([job_id], ("app_key", "priority")))[0]
        return (record["app_key"], int(record.get("priority") or 1)) if "app_key" in record else None

    async def _read_fields(self, job_ids: Sequence[str], names: Sequence[str]) -> list[dict[str, str]]:
        async with self.conn.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self._rec(job_id), list(names))
            rows = await pipe.execute()
        return [{n: v for n, v in zip(names, row, strict=True) if v is not None} for row in rows]

    def watch(self, listener: JobListener) -> None:
        """Tell ``listener`` what other edges do (this edge's own changes are left out: it made them)."""

        def on_notice(message: str) -> None:
            notice, _, origin = message.partition("\t")
            if origin == self.consumer:
                return
            kind, _, value = notice.partition(":")
            if kind == "c":
                listener.changed(value)
            elif kind == "x":
                listener.cancel_requested(value)
                listener.changed(value)
            elif kind == "q":
                listener.queued(value)

        self.conn.subscribe(self.channel, on_notice)

    async def complete(
        self,
        job_id: str,
        attempt: int | None,
        outcome: Outcome,
        webhook_body: bytes | None,
        logs: Sequence[LogEntry] = (),
    ) -> bool:
        with self.conn.guard("complete a job"):
            where = await self._locate(job_id)
            if where is None:
                return False
            app_key, priority = where
            keys = [
                self._rec(job_id),
                self._stream(app_key, priority),
                self._queued(app_key),
                self.conn.key("deadlines"),
                self.conn.key("completed"),
                self.conn.key("outbox"),
                self.conn.key("deliveryseq"),
            ]
            fields: list[Any] = ["result", _dumps(outcome.body), "http_status", outcome.http_status]
            for name in ("error", "error_type"):
                value = getattr(outcome, name)
                if value is not None:
                    fields += [name, value]
            if outcome.metrics is not None:
                fields += ["metrics", _dumps(outcome.metrics)]
            args: list[Any] = [
                "" if attempt is None else attempt,
                self.consumer,
                repr(time.time()),
                "" if webhook_body is None else webhook_body.decode(),
                self.channel,
                self.conn.key("delivery", ""),
                MAX_LOGS_PER_JOB,
                job_id,
                len(logs),
                *(_log_json(e) for e in logs),
                *fields,
            ]
            try:
                return bool(await self._scripts["complete"](keys=keys, args=args))
            except BaseException:
                self._where[job_id] = where  # not done: a retry needs it again
                raise

    async def release(self, job_id: str, attempt: int) -> bool:
        with self.conn.guard("release a job"):
            where = await self._locate(job_id)
            if where is None:
                return False
            app_key, priority = where
            keys = [self._rec(job_id), self._stream(app_key, priority), self._queued(app_key)]
            args = [attempt, self.consumer, self.channel, app_key, job_id, RELEASED_IDLE_MS]
            return bool(await self._scripts["release"](keys=keys, args=args))

    async def request_cancel(self, job_id: str) -> CancelResult:
        with self.conn.guard("cancel a job"):
            answer = await self._scripts["cancel"](keys=[self._rec(job_id)], args=[self.channel, job_id, self.consumer])
        return CancelResult(str(answer))

    async def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """Nothing to do at start: the jobs a stopped edge held are taken over by :meth:`claim`
        once their claims lapse (the edge that restarts is a new consumer)."""
        return [], []

    async def expired(self, now: float) -> list[Job]:
        deadlines = self.conn.key("deadlines")
        with self.conn.guard("look for expired jobs"):
            ids = await self.conn.client.zrangebyscore(deadlines, "-inf", now, start=0, num=1000)
            if not ids:
                return []
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self._rec(str(job_id)))
                records = await pipe.execute()
            jobs, stale = [], []
            for job_id, h in zip(ids, records, strict=True):
                if h and h.get("status") == JobStatus.IN_QUEUE:
                    jobs.append(_job({str(k): str(v) for k, v in h.items()}))
                else:
                    stale.append(str(job_id))
            if stale:
                await self.conn.client.zrem(deadlines, *stale)
        return jobs

    async def add_logs(self, entries: Sequence[tuple[str, LogEntry]]) -> None:
        if not entries:
            return
        with self.conn.guard("add job logs"):
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for job_id, entry in entries:
                    rec = self._rec(job_id)
                    args = [_log_json(entry), MAX_LOGS_PER_JOB, self.channel, job_id, self.consumer]
                    await self._scripts["add_log"](keys=[rec, rec + ":logs"], args=args, client=pipe)
                await pipe.execute()

    async def logs(self, job_id: str) -> list[LogEntry]:
        with self.conn.guard("read job logs"):
            raw = await self.conn.client.lrange(self._rec(job_id) + ":logs", 0, -1)
        return [_log_entry(str(e)) for e in raw]

    async def purge(self, completed_before: float) -> int:
        """Delete jobs completed before the time given (and finished webhooks); returns the jobs deleted.

        Also forgets consumers (edges) long gone with nothing pending."""
        total = 0
        keys = [self.conn.key("completed"), self.conn.key("deliveries", "done")]
        args = [repr(completed_before), self.conn.key("job", ""), PURGE_BATCH, self.conn.key("delivery", "")]
        with self.conn.guard("purge jobs"):
            while True:
                jobs, deliveries = await self._scripts["purge"](keys=keys, args=args)
                total += int(jobs)
                if int(jobs) < PURGE_BATCH and int(deliveries) < PURGE_BATCH:
                    break
            await self._forget_consumers()
        return total

    async def _forget_consumers(self) -> None:
        client = self.conn.client
        for app_key in await client.smembers(self.conn.key("apps")):
            for priority in Priority:
                stream = self._stream(str(app_key), priority)
                try:
                    consumers = await client.xinfo_consumers(stream, GROUP)
                except Exception:  # no such stream or group yet
                    continue
                for c in consumers:
                    if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > CONSUMER_FORGET_MS:
                        await client.xgroup_delconsumer(stream, GROUP, c["name"])

    async def queue_lengths(self) -> dict[str, int]:
        with self.conn.guard("read queue lengths"):
            apps = sorted(str(a) for a in await self.conn.client.smembers(self.conn.key("apps")))
            if not apps:
                return {}
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for app_key in apps:
                    pipe.zcard(self._queued(app_key))
                counts = await pipe.execute()
        return {app: int(n) for app, n in zip(apps, counts, strict=True) if int(n)}

    # -- webhook outbox ------------------------------------------------------------------------------

    async def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        """Due webhooks, each hidden from other edges for ``delivery_lease_s`` while this one posts it."""
        args = [repr(now), limit, repr(self.delivery_lease_s), self.conn.key("delivery", "")]
        with self.conn.guard("read the webhook outbox"):
            found = await self._scripts["due"](keys=[self.conn.key("outbox")], args=args)
        out = []
        for delivery_id, flat in found:
            h = _pairs(flat)
            out.append(
                Delivery(int(delivery_id), h["job_id"], h["owner"], h["url"], h["body"].encode(), int(h["attempts"]))
            )
        return out

    async def delivery_done(self, delivery_id: int, *, delivered: bool, error: str | None) -> None:
        key = self.conn.key("delivery", str(delivery_id))
        now = time.time()
        with self.conn.guard("record a webhook delivery"):
            async with self.conn.client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "attempts", 1)
                pipe.hset(key, mapping={"state": "delivered" if delivered else "failed", "finished_at": repr(now)})
                if error is not None:
                    pipe.hset(key, "last_error", error)
                pipe.zrem(self.conn.key("outbox"), delivery_id)
                pipe.zadd(self.conn.key("deliveries", "done"), {str(delivery_id): now})
                await pipe.execute()

    async def delivery_retry(self, delivery_id: int, next_attempt_at: float, error: str) -> None:
        key = self.conn.key("delivery", str(delivery_id))
        with self.conn.guard("record a webhook retry"):
            async with self.conn.client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "attempts", 1)
                pipe.hset(key, "last_error", error)
                pipe.zadd(self.conn.key("outbox"), {str(delivery_id): next_attempt_at})
                await pipe.execute()

    async def next_delivery_at(self) -> float | None:
        with self.conn.guard("read the webhook outbox"):
            first = await self.conn.client.zrange(self.conn.key("outbox"), 0, 0, withscores=True)
        return float(first[0][1]) if first else None
