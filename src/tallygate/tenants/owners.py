"""Who created each response, conversation and file id (table tallygate_object_owners).

The gateway remembers the tenant of every id it saw created; only that tenant may read,
cancel or delete the object. Lookups go through an in-memory LRU cache; an id in neither
the cache nor the table belongs to nobody here (a 404 for everyone). Response ids come
from the metered records (a pipeline sink, off the request path); conversation and file
ids are written before their creation is answered, so another instance sees them at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import UTC, datetime

from ..store.dialect import dialect_of

log = logging.getLogger("tallygate.owners")

CACHE_SIZE = 100_000  # ids remembered in memory (~200 bytes each)
WRITE_ATTEMPTS = 5  # a batch of response owners is retried this often (0.5 s, 1 s, 2 s...) before it is logged lost


class Owners:
    def __init__(self, store, cache_size: int = CACHE_SIZE) -> None:
        self.store = store
        self.sql = dialect_of(store)
        self.p = self.sql.placeholder
        self.cache_size = cache_size
        self._cache: OrderedDict[str, str] = OrderedDict()  # object id -> tenant id
        self._tasks: set[asyncio.Task] = set()

    def _put(self, object_id: str, tenant_id: str) -> None:
        cache = self._cache
        cache[object_id] = tenant_id
        cache.move_to_end(object_id)
        if len(cache) > self.cache_size:
            cache.popitem(last=False)

    async def remember(self, object_id: str, kind: str, tenant_id: str) -> None:
        """Record the owner of a new id (the first owner stays: an id is never reassigned)."""
        if object_id not in self._cache:
            self._put(object_id, tenant_id)
        await self._insert([(object_id, kind, tenant_id)])

    async def _insert(self, rows: list[tuple[str, str, str]]) -> None:
        now = self.sql.time_param(datetime.now(UTC))
        values = ", ".join(f"({self.sql.placeholders(4)})" for _ in rows)
        params = [v for object_id, kind, tenant in rows for v in (object_id, kind, tenant, now)]
        await self.store.execute(
            f"INSERT INTO tallygate_object_owners (object_id, kind, tenant_id, created_at) VALUES {values} "
            "ON CONFLICT (object_id) DO NOTHING",
            params,
        )

    def cached(self, object_id: str) -> str | None:
        return self._cache.get(object_id)

    async def owner(self, object_id: str) -> str | None:
        tenant = self._cache.get(object_id)
        if tenant is not None:
            self._cache.move_to_end(object_id)
            return tenant
        rows = await self.store.fetch(
            f"SELECT tenant_id FROM tallygate_object_owners WHERE object_id = {self.p}", (object_id,)
        )
        if not rows:
            return None
        self._put(object_id, rows[0][0])
        return rows[0][0]

    async def owned(self, tenant_id: str, object_ids: list[str]) -> set[str]:
        """Which of `object_ids` belong to `tenant_id` (a listing filtered to the caller's own)."""
        mine = {i for i in object_ids if self._cache.get(i) == tenant_id}
        unknown = [i for i in object_ids if i not in self._cache]
        for start in range(0, len(unknown), 500):
            part = unknown[start : start + 500]
            rows = await self.store.fetch(
                f"SELECT object_id FROM tallygate_object_owners WHERE tenant_id = {self.p} "
                f"AND object_id IN ({self.sql.placeholders(len(part))})",
                (tenant_id, *part),
            )
            for (object_id,) in rows:
                mine.add(object_id)
                self._put(object_id, tenant_id)
        return mine

    # -- the pipeline sink: response ids from the metered POST /v1/responses records --------
    def write(self, records) -> None:
        rows = [(r.object_id, "response", r.tenant_id) for r in records if r.object_id is not None]
        if not rows:
            return
        for object_id, _, tenant in rows:
            if object_id not in self._cache:  # the first owner stays
                self._put(object_id, tenant)
        task = asyncio.get_running_loop().create_task(self._insert_retrying(rows))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _insert_retrying(self, rows: list[tuple[str, str, str]]) -> None:
        delay = 0.5
        for attempt in range(WRITE_ATTEMPTS):
            try:
                await self._insert(rows)
                return
            except Exception as exc:
                if attempt == WRITE_ATTEMPTS - 1:
                    log.error(
                        "response owners not stored: after a restart their tenants get 404 for them",
                        extra={"fields": {"ids": len(rows), "error": type(exc).__name__}},
                    )
                    return
                await asyncio.sleep(delay)
                delay *= 2

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
