"""Counters shared by every instance through Redis: one Lua script call per request."""

from __future__ import annotations

from .counters import Check, Rejected

ADMIT_LUA = """
local n = #KEYS
for i = 1, n do
  local b = (i - 1) * 4
  local limit, amount, mode = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 4])
  local cur = redis.call('GET', KEYS[i])
  if cur == false then
    if mode ~= 1 then return {-2, i, 0} end
    cur = 0
  else
    cur = tonumber(cur)
  end
  if (mode == 2 and cur >= limit) or (mode ~= 2 and cur + amount > limit) then
    return {-1, i, cur}
  end
end
local out = {0}
for i = 1, n do
  local b = (i - 1) * 4
  out[i + 1] = redis.call('INCRBY', KEYS[i], ARGV[b + 2])
  local ttl = tonumber(ARGV[b + 3])
  if ttl > 0 and redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return out
"""

ADD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


class RedisCounters:
    """Counters shared by every instance through Redis (atomic scripts)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis
        from redis.exceptions import ConnectionError as RedisConnectionError

        options = {}
        try:
            from redis.maint_notifications import MaintNotificationsConfig

            # with maintenance notifications on (redis-py's default, "auto") the pool does not
            # check that a pooled connection is still open before handing it out: after a
            # Redis restart every idle connection failed one request
            options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        except ImportError:  # redis-py before 6.3 checks anyway
            pass
        self.redis = redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, **options)
        self._connection_error = RedisConnectionError
        self._admit = self.redis.register_script(ADMIT_LUA)
        self._add = self.redis.register_script(ADD_LUA)

    async def admit(self, checks: list[Check]) -> list[int] | str:
        args: list = []
        for c in checks:
            args += [c.limit, c.amount, c.ttl, c.mode]
        keys = [c.key for c in checks]
        try:
            result = await self._admit(keys=keys, args=args)
        except self._connection_error:
            # a pooled connection that died without the pool seeing it closed (reset by a
            # failover): once more, on a new connection. Not on a timeout (the script may
            # still run). If the script did run and only its reply was lost, the request is
            # counted twice: an over-count, which can refuse early but never admit more.
            result = await self._admit(keys=keys, args=args)
        status = int(result[0])
        if status == -2:
            return checks[int(result[1]) - 1].key
        if status == -1:
            raise Rejected(checks[int(result[1]) - 1], int(result[2]))
        return [int(v) for v in result[1:]]

    async def init(self, key: str, value: int, ttl: int) -> None:
        if ttl:
            await self.redis.set(key, value, nx=True, ex=ttl)
        else:
            await self.redis.set(key, value, nx=True)

    async def add(self, key: str, delta: int) -> int | None:
        value = await self._add(keys=[key], args=[delta])
        return None if value is None else int(value)

    async def value(self, key: str) -> int | None:
        value = await self.redis.get(key)
        return None if value is None else int(value)

    async def once(self, key: str, ttl: int) -> bool:
        return bool(await self.redis.set(key, 1, nx=True, ex=ttl))

    async def close(self) -> None:
        await self.redis.aclose()
