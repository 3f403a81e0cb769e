"""The Redis backend of the online feature store (production).

Layout (``prefix`` defaults to ``mlp:fs``):

* ``{prefix}:h:{view}:{layout}:{entity}`` -- a sorted set per entity and streaming view: score =
  event time in microseconds since the epoch (exact in a double until the year 2255), member =
  ``transaction_id \\x1f t_us \\x1f payload...`` (the columns the view needs, ``\\x00`` for null).
  ``layout`` is a hash of the view's stored columns: a spec change that changes them starts a new,
  empty history instead of misreading the old one.
* ``{prefix}:b:{view}:{layout}:{entity}`` -- a hash per entity and batch view: field = as-of time
  (us), value = the packed feature values; the newest ``batch_versions`` versions are kept.

One transaction is one ``EVALSHA`` round trip: for each of its entities the script appends the
event (unless the same (event_time, transaction_id) is already there: retries are idempotent),
prunes events older than the lookback plus the late grace, refreshes the key's TTL and returns what
the features need -- the events inside the lookback for views that aggregate payload columns, or
just the window counts and the previous event time for count-only views (a busy merchant costs
O(log n), not its whole history) -- plus the batch hashes. The features of a view read in full are
computed from the reply by the same Python code as the embedded backend's. The script is generated
from the feature specification (the views' lookbacks, windows and TTLs are constants in it), so a
call carries only the transaction:
its id, its time and, per entity, the view and the event to add.

Two clients: redis-py for synchronous callers and batch writes, and on an event loop (the scoring
service) :class:`~mlp_platform.serving.resp_client.RespClient`, one pipelined connection per loop.
The URL option ``async_client=redis-py`` puts ``redis.asyncio`` there instead: the peer the
hand-written client is measured against on the full request path (``bench/bench_serving.py``,
server ``full_redis_redispy``; the figure is in ``docs/benchmarks.md``), and a fallback should
the hand-written client ever be in doubt.

Atomicity: Redis runs a script without interleaving any other command, so the append and the read
of every entity of the transaction happen at one instant: two concurrent transactions of a customer
each see the other or not, never half of it, and the features of each equal the offline ones for
the order in which they were recorded. Redis scripts do not roll back, but this one cannot stop
half-way in practice: it only touches its own keys with their own types, and under ``maxmemory``
Redis refuses a script at its first write (or, from 7.0, before it starts), so an out-of-memory
server fails the call without partial writes. Durability is Redis's (AOF ``everysec`` may lose the
last second on a crash; the service then sees slightly shorter histories, never wrong ones). All keys of one call must live on one node: use a single
primary (with replicas / Sentinel), not Redis Cluster, or put the entities in one hash slot.

Timeouts: ``timeout`` bounds connecting and every call (default 100 ms); there is no retry on the
event loop (``retries`` applies to redis-py), so a call fails within about ``timeout``. Every
connection error, timeout, or server that is loading, read-only or busy raises
:class:`FeatureStoreUnavailable` (the service falls back).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mlp_platform.serving.online_store import (
    NULL,
    SEP,
    BatchPlan,
    FeatureStoreError,
    FeatureStoreUnavailable,
    IdempotencyConflict,
    IdempotentReplay,
    StreamPlan,
    late_rejection,
)
from mlp_platform.serving.resp_client import UNAVAILABLE_PREFIXES, RespClient, RespError, RespUnavailable

__all__ = ["RedisBackend"]

log = logging.getLogger(__name__)

_RECORD_AND_READ = """
-- Generated per feature specification: VIEWS holds, per streaming view, its mode ('F' full /
-- 'C' counts), how far back events are kept (prune) and read (lookback), the key TTL in ms (0: none)
-- and, for mode C, its windows -- all in microseconds.
-- KEYS: the history keys of the transaction's entities, then its batch keys, then the watermark key
-- (the newest accepted event time, capped at the server clock), then the idempotency key if any.
-- ARGV: n_hist, tid, t, ref (t capped at the server clock: pruning never goes beyond it), the late
-- grace (-1: no check), the request hash ('' : no idempotency), the pending mark's lifetime in ms,
-- n_batch, then per history key: its view's index in VIEWS and the member to add.
-- A late event is refused with the error 'MLPLATE <watermark>'; a known idempotency key returns
-- {its value} ('P' .. hash while pending, 'D' .. hash .. '\\031' .. answer) and records nothing.
local VIEWS = {views}
local n_hist = tonumber(ARGV[1])
local t = ARGV[3]
local tn = tonumber(t)
local ref = tonumber(ARGV[4])
local late = tonumber(ARGV[5])
local n_batch = tonumber(ARGV[8])
local wmkey = KEYS[n_hist + n_batch + 1]
local wm_raw = redis.call('GET', wmkey)
local wm = wm_raw and tonumber(wm_raw)
if late >= 0 and wm and tn < wm - late then
  return redis.error_reply('MLPLATE ' .. wm_raw)
end
if ARGV[6] ~= '' then
  local ikey = KEYS[n_hist + n_batch + 2]
  local cur = redis.call('GET', ikey)
  if cur then return {cur} end
  redis.call('SET', ikey, 'P' .. ARGV[6], 'PX', ARGV[7])
end
local prefix = ARGV[2] .. '\\031'
local plen = string.len(prefix)
local at_t = '\\031' .. t .. '\\031'
local function us(x) return string.format('%.0f', x) end
if late >= 0 and (not wm or ref > wm) then
  redis.call('SET', wmkey, us(ref))
end
local out = {}
local a = 9
for i = 1, n_hist do
  local key = KEYS[i]
  local view = VIEWS[tonumber(ARGV[a])]
  local member = ARGV[a + 1]
  a = a + 2
  local full, prune, lookback, ttl = view[1] == 'F', view[2], view[3], view[4]
  local low = '(' .. us(tn - lookback)
  -- Full views read their events in (t - lookback, t], count views only the ties at t: either way the
  -- ties at t come last, and a retry of this transaction is among them.
  local read = redis.call('ZRANGEBYSCORE', key, full and low or t, t)
  local dup = 0
  for j = #read, 1, -1 do
    local m = read[j]
    if full and not string.find(m, at_t, 1, true) then break end  -- (count views read only ties)
    if string.sub(m, 1, plen) == prefix then
      dup = 1
      break
    end
  end
  if dup == 0 then
    redis.call('ZADD', key, t, member)
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', us(ref - prune))
  if ttl ~= 0 then
    redis.call('PEXPIRE', key, ttl)
  end
  if full then
    out[i] = {dup, table.concat(read, '\\031')}
  else
    local windows = view[5]
    local counts = {}
    for j = 1, #windows do
      counts[j] = redis.call('ZCOUNT', key, '(' .. us(tn - windows[j]), t)
    end
    local prev = redis.call('ZREVRANGEBYSCORE', key, '(' .. t, low, 'LIMIT', 0, 1)
    out[i] = {dup, counts, read, prev}
  end
end
for k = n_hist + 1, n_hist + n_batch do
  out[k] = redis.call('HGETALL', KEYS[k])
end
return out
"""

_WRITE_BATCH = """
-- KEYS: batch keys. ARGV: as_of field, versions to keep, ttl_ms ('0' = none), then one packed value per key.
local field, keep, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, field, ARGV[3 + i])
  local fields = redis.call('HKEYS', key)
  if #fields > keep then
    table.sort(fields, function(x, y) return tonumber(x) < tonumber(y) end)
    for j = 1, #fields - keep do
      redis.call('HDEL', key, fields[j])
    end
  end
  if ttl ~= '0' then
    redis.call('PEXPIRE', key, ttl)
  end
end
return #KEYS
"""

_FORGET_PENDING = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 1) == 'P' then redis.call('DEL', KEYS[1]) end
return 0
"""

#: The script's refusal of a late event (its message carries the watermark).
_LATE = re.compile(r"MLPLATE (-?[0-9]+)")

_OWN_OPTIONS = ("timeout", "connect_timeout", "prefix", "retries", "ttl_margin_seconds", "batch_ttl_seconds",
                "async_client")
ASYNC_CLIENTS = ("resp", "redis-py")


class RedisPyLoopClient:
    """``redis.asyncio`` behind :class:`RespClient`'s two calls (``evalsha``, ``call``), for one
    event loop. Errors are redis-py's (the backend translates both kinds)."""

    def __init__(self, url: str, timeout: float, connect_timeout: float):
        import redis.asyncio as aredis

        self._redis = aredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout,
                                            decode_responses=True)
        self._loop = asyncio.get_running_loop()
        self._scripts: dict[str, Any] = {}

    async def evalsha(self, sha: str, source: str, keys: list[str], args: list):
        script = self._scripts.get(sha)
        if script is None:
            script = self._scripts[sha] = self._redis.register_script(source)
        return await script(keys=keys, args=args)

    async def call(self, *command):
        return await self._redis.execute_command(*command)

    async def aclose(self) -> None:
        await self._redis.aclose()

    def close_soon(self) -> None:
        """Close from any thread, on the client's own event loop."""
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._redis.aclose()))


def record_script(streams: list[StreamPlan], ttl_ms: list[str]) -> str:
    """The record-and-read script for these streaming views: their constants (mode, prune, lookback,
    TTL, windows) are written into the script, so a call only carries the transaction."""
    views = []
    for plan, ttl in zip(streams, ttl_ms, strict=True):
        windows = ", ".join(str(int(w)) for w in plan.windows_us) if not plan.full else ""
        views.append(f"{{'{'F' if plan.full else 'C'}', {int(plan.prune_us)}, {int(plan.lookback_us)}, {int(ttl)}, "
                     f"{{{windows}}}}}")
    for plan in streams:  # Lua numbers are doubles: the times must stay exact integers
        if max(plan.prune_us, plan.lookback_us, *plan.windows_us) >= 2**53:
            raise FeatureStoreError(f"{plan.name}: a window of 2**53 microseconds or more")
    return _RECORD_AND_READ.replace("{views}", "{" + ", ".join(views) + "}")


def _layout_id(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


class RedisBackend:
    """Online store backend on a Redis server (see the module docstring).

    ``url``: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS) or
    ``unix:///path/to/socket?db=0``; the query may also carry this class's options (``timeout``,
    ``connect_timeout``, ``prefix``, ``retries``, ``ttl_margin_seconds``, ``batch_ttl_seconds``) and
    redis-py's own. ``ttl_margin_seconds``: a history key expires this long after its last write
    beyond the view's lookback (None: never; the events themselves are pruned on write anyway).
    ``batch_ttl_seconds``: batch hashes expire this long after their last materialisation (None:
    never).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        timeout: float = 0.1,
        connect_timeout: float | None = None,
        prefix: str = "mlp:fs",
        retries: int = 0,
        max_connections: int | None = None,
        ttl_margin_seconds: float | None = 86_400,
        batch_ttl_seconds: float | None = 8 * 86_400,
        batch_chunk: int = 1000,
    ) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        own = {k: query.pop(k) for k in _OWN_OPTIONS if k in query}
        timeout = float(own.get("timeout", timeout))
        connect_timeout = float(own.get("connect_timeout", connect_timeout or timeout))
        self.prefix = own.get("prefix", prefix)
        retries = int(own.get("retries", retries))
        self.async_client_kind = own.get("async_client", "resp")
        if self.async_client_kind not in ASYNC_CLIENTS:
            raise FeatureStoreError(f"async_client must be one of {ASYNC_CLIENTS}, not {self.async_client_kind!r}")
        if "ttl_margin_seconds" in own:
            ttl_margin_seconds = None if own["ttl_margin_seconds"] in ("", "none") else float(own["ttl_margin_seconds"])
        if "batch_ttl_seconds" in own:
            batch_ttl_seconds = None if own["batch_ttl_seconds"] in ("", "none") else float(own["batch_ttl_seconds"])
        self.url = urlunsplit(parts._replace(query=urlencode(query)))
        if parts.scheme == "unix" and not self.url.startswith("unix://"):  # urlunsplit drops an empty netloc
            self.url = "unix://" + self.url[len("unix:"):]
        self.timeout = timeout
        port = f":{parts.port}" if parts.port else ""
        self._where = f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"  # no credentials
        self._client_options = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout,
                                "decode_responses": True, "max_connections": max_connections}
        self.client = redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), retries), **self._client_options)
        self._async: dict = {}  # event loop -> its RespClient
        self.ttl_margin_seconds = ttl_margin_seconds
        self.batch_ttl_seconds = batch_ttl_seconds
        self.batch_chunk = batch_chunk
        self._write = self.client.register_script(_WRITE_BATCH)
        self._bound = False
        self._late_us: int | None = None
        self._pending_t = 0  # the event time of the call being translated (for a late refusal's message)

    # -- set-up --

    def bind(self, streams: list[StreamPlan], batches: list[BatchPlan], batch_versions: int, *,
             late_grace_us: int | None = None) -> None:
        if self._bound:
            raise FeatureStoreError("this backend is already bound to a feature store")
        self._bound = True
        self._late_us = late_grace_us
        self._watermark_key = f"{self.prefix}:watermark"
        self._idem_prefix = f"{self.prefix}:idem:"
        self._streams = list(streams)
        self._batches = list(batches)
        self._batch_versions = max(1, int(batch_versions))
        self._hist_prefix = [f"{self.prefix}:h:{p.name}:{p.layout_id}:" for p in streams]
        self._batch_prefix = {
            p.name: f"{self.prefix}:b:{p.name}:{_layout_id([p.key, list(p.features)])}:" for p in batches
        }
        self._ttl_ms = [
            "0" if self.ttl_margin_seconds is None else str(int(p.prune_us // 1000 + self.ttl_margin_seconds * 1000))
            for p in streams
        ]
        self._batch_ttl_ms = "0" if self.batch_ttl_seconds is None else str(int(self.batch_ttl_seconds * 1000))
        self._record_source = record_script(streams, self._ttl_ms)
        self._record = self.client.register_script(self._record_source)
        self._forget = self.client.register_script(_FORGET_PENDING)

    def _call(self, script, keys: list[str], args: list):
        try:
            return script(keys=keys, args=args)
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> BaseException:
        """The store's error for a redis-py or RespClient error (FeatureStoreUnavailable: the caller
        falls back; EventTimeRejected: the script refused a late event)."""
        late = _LATE.search(str(exc))
        if late is not None and self._late_us is not None:
            return late_rejection(self._pending_t, int(late.group(1)), self._late_us)
        if isinstance(exc, RespError):  # its message already names the server
            return (FeatureStoreUnavailable if isinstance(exc, RespUnavailable) else FeatureStoreError)(str(exc))
        if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | TimeoutError):
            return FeatureStoreUnavailable(f"redis at {self._where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, redis.exceptions.RedisError):
            if str(exc).startswith(UNAVAILABLE_PREFIXES):
                return FeatureStoreUnavailable(f"redis at {self._where}: {exc}")
            return FeatureStoreError(f"redis at {self._where}: {type(exc).__name__}: {exc}")
        return exc

    # -- the backend interface --

    def record_and_read(self, t: int, tid: str, requests: list, batch_keys: list, now: int | None = None,
                        idem: tuple[str, str, int] | None = None):
        call = self._script_call(t, tid, requests, batch_keys, now, idem)
        if call is None:
            return [None] * len(self._streams), [None] * len(self._batches), False
        keys, args, active, batch_active = call
        self._pending_t = t
        return self._reply(self._call(self._record, keys, args), t, tid, active, batch_active, idem)

    async def record_and_read_async(self, t: int, tid: str, requests: list, batch_keys: list,
                                    now: int | None = None, idem: tuple[str, str, int] | None = None):
        """:meth:`record_and_read` on the event loop: the event loop is free during the round trip.
        It goes through :class:`~mlp_platform.serving.resp_client.RespClient`, one pipelined
        connection per event loop (its connection belongs to that loop)."""
        call = self._script_call(t, tid, requests, batch_keys, now, idem)
        if call is None:
            return [None] * len(self._streams), [None] * len(self._batches), False
        keys, args, active, batch_active = call
        client = self._async_client()
        try:
            res = await client.evalsha(self._record.sha, self._record_source, keys, args)
        except (RespError, redis.exceptions.RedisError) as exc:
            self._pending_t = t
            raise self._translate(exc) from exc
        return self._reply(res, t, tid, active, batch_active, idem)

    def remember(self, key: str, digest: str, response: bytes, now: int, expires: int) -> None:
        try:
            self.client.set(self._idem_prefix + key, "D" + digest + SEP + response.decode(),
                            px=max(1, (expires - now) // 1000))
        except redis.exceptions.RedisError as exc:
            raise self._translate(exc) from exc

    async def remember_async(self, key: str, digest: str, response: bytes, now: int, expires: int) -> None:
        try:
            await self._async_client().call("SET", self._idem_prefix + key, "D" + digest + SEP + response.decode(),
                                            "PX", max(1, (expires - now) // 1000))
        except (RespError, redis.exceptions.RedisError) as exc:
            raise self._translate(exc) from exc

    def forget_pending(self, key: str) -> None:
        """Delete the key only while it is still the pending mark (a script: atomic)."""
        try:
            self._call(self._forget, [self._idem_prefix + key], [])
        except FeatureStoreError:
            log.warning("could not drop the pending idempotency mark of a failed request; it expires by itself")

    def _async_client(self) -> RespClient | RedisPyLoopClient:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            kind = RespClient if self.async_client_kind == "resp" else RedisPyLoopClient
            client = self._async[loop] = kind(self.url, timeout=self.timeout,
                                              connect_timeout=self._client_options["socket_connect_timeout"])
        return client

    def _script_call(self, t: int, tid: str, requests: list, batch_keys: list, now: int | None = None,
                     idem: tuple[str, str, int] | None = None):
        """(keys, args, active stream indexes, batch presence) of the script call, None without keys."""
        ts = str(t)
        keys: list[str] = []
        late = -1 if now is None or self._late_us is None else self._late_us
        args: list = [0, tid, ts, ts if now is None or t < now else str(now), late,
                      "" if idem is None else idem[1], 1 if idem is None else max(1, idem[2] // 1000), 0]
        active: list[int] = []
        for i, (plan, req) in enumerate(zip(self._streams, requests, strict=True)):
            if req is None:
                continue
            entity, payload = req
            fields = [tid, ts]
            for v, is_numeric in zip(payload, plan.numeric, strict=True):
                if v is None:
                    fields.append(NULL)
                elif is_numeric:
                    fields.append(repr(v))
                else:
                    if SEP in v:
                        raise ValueError(f"{plan.name}: value {v!r} contains the \\x1f separator")
                    fields.append(v)
            keys.append(self._hist_prefix[i] + entity)
            active.append(i)
            args += [i + 1, SEP.join(fields)]
        n_hist = len(keys)
        args[0] = n_hist
        batch_active = []
        for plan, key in zip(self._batches, batch_keys, strict=True):
            if key is not None:
                keys.append(self._batch_prefix[plan.name] + key)
            batch_active.append(key is not None)
        if not keys:
            return None
        args[7] = len(keys) - n_hist
        keys.append(self._watermark_key)
        if idem is not None:
            keys.append(self._idem_prefix + idem[0])
        return keys, args, active, batch_active

    def _reply(self, res: list, t: int, tid: str, active: list, batch_active: list, idem=None):
        """(snapshots, batch versions, duplicate) from the script's reply."""
        n_hist = len(active)
        if idem is not None and res and isinstance(res[0], str):  # the idempotency key was known
            state = res[0]
            digest, _, answer = state[1:].partition(SEP)
            if digest != idem[1]:
                raise IdempotencyConflict("this transaction_id (or Idempotency-Key) was already used with a "
                                          "different request body", in_progress=False)
            if state[0] == "P":
                raise IdempotencyConflict("a request with this transaction_id (or Idempotency-Key) is still "
                                          "being decided; retry shortly", in_progress=True)
            raise IdempotentReplay(answer.encode())

        snaps: list = [None] * len(self._streams)
        n_dup = 0
        for j, i in enumerate(active):
            plan = self._streams[i]
            item = res[j]
            n_dup += item[0]
            if plan.full:  # parsed by compute_stream (parse_packed)
                snaps[i] = ("P", item[1], tid)
            else:
                _, counts, ties, prev = item
                later = earlier = 0
                for m in ties:
                    other = m.split(SEP, 1)[0]
                    if other > tid:
                        later += 1
                    elif other < tid:
                        earlier += 1
                if earlier:
                    prev_t = t
                elif prev:
                    prev_t = int(prev[0].split(SEP, 2)[1])
                else:
                    prev_t = None
                snaps[i] = ("C", [c - 1 - later for c in counts], prev_t)
        versions: list = []
        k = n_hist
        for present in batch_active:
            if not present:
                versions.append(None)
                continue
            flat = res[k]
            k += 1
            versions.append({
                int(flat[x]): tuple(None if v == NULL else float(v) for v in flat[x + 1].split(SEP))
                for x in range(0, len(flat), 2)
            })
        return snaps, versions, bool(active) and n_dup == len(active)

    def write_batch(self, plan: BatchPlan, as_of: int, entries: dict[str, tuple]) -> None:
        prefix = self._batch_prefix[plan.name]
        items = list(entries.items())
        for start in range(0, len(items), self.batch_chunk):
            chunk = items[start : start + self.batch_chunk]
            keys = [prefix + k for k, _ in chunk]
            packed = [SEP.join(NULL if v is None else repr(v) for v in values) for _, values in chunk]
            self._call(self._write, keys, [str(as_of), self._batch_versions, self._batch_ttl_ms, *packed])

    def history(self, view: str, entity: str) -> list[tuple[int, str]]:
        """(t_us, transaction_id) of the events held for ``entity`` in streaming view ``view``."""
        i = next(i for i, p in enumerate(self._streams) if p.name == view)
        try:
            members = self.client.zrange(self._hist_prefix[i] + str(entity), 0, -1)
        except redis.exceptions.RedisError as exc:
            raise FeatureStoreUnavailable(f"redis at {self._where}: {exc}") from exc
        return [(int(m.split(SEP)[1]), m.split(SEP)[0]) for m in members]

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.exceptions.RedisError:
            return False

    async def aclose(self) -> None:
        """Close the asyncio client of the running event loop (awaited), then everything else."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()
        for loop, client in list(self._async.items()):  # each connection closes on its own loop
            self._async.pop(loop, None)
            if loop.is_running():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to close
                    client.close_soon()

