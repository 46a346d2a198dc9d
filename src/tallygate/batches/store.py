"""The batches created through the gateway (table tallygate_batches): who created each (the
tenant and key its lines are billed to) and whether its lines are in the ledger (settled)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..store.dialect import dialect_of

UNSETTLED_PAGE = 1000  # batches one poll looks at (the oldest unsettled first)
POLL_HORIZON = timedelta(days=30)  # older unsettled batches are not polled (OpenAI's window is 24 h)
CLAIM_LEASE = timedelta(minutes=10)  # how long a reader holds a batch (a 200 MB output file takes ~1 min)


@dataclass(frozen=True, slots=True)
class BatchCreator:
    batch_id: str
    tenant_id: str
    api_key_id: str | None
    endpoint: str
    created_at: datetime
    settled: bool


class BatchStore:
    def __init__(self, store) -> None:
        self.store = store
        self.sql = dialect_of(store)
        self.p = self.sql.placeholder

    async def remember(
        self, batch_id: str, tenant_id: str, api_key_id: str | None, endpoint: str, file_id: str, status: str
    ) -> None:
        """The creator of a new batch (the first one stays: an id is never reassigned)."""
        now = self.sql.time_param(datetime.now(UTC))
        await self.store.execute(
            "INSERT INTO tallygate_batches (batch_id, tenant_id, api_key_id, endpoint, input_file_id, created_at, "
            f"status) VALUES ({self.sql.placeholders(7)}) ON CONFLICT (batch_id) DO NOTHING",
            (batch_id, tenant_id, api_key_id, endpoint, file_id, now, status),
        )

    async def creator(self, batch_id: str) -> BatchCreator | None:
        rows = await self.store.fetch(
            "SELECT batch_id, tenant_id, api_key_id, endpoint, created_at, settled_at FROM tallygate_batches "
            f"WHERE batch_id = {self.p}",
            (batch_id,),
        )
        return self._creator(rows[0]) if rows else None

    async def unsettled(self, now: datetime | None = None) -> list[BatchCreator]:
        since = (now or datetime.now(UTC)) - POLL_HORIZON
        rows = await self.store.fetch(
            "SELECT batch_id, tenant_id, api_key_id, endpoint, created_at, settled_at FROM tallygate_batches "
            f"WHERE settled_at IS NULL AND created_at >= {self.p} ORDER BY created_at LIMIT {UNSETTLED_PAGE}",
            (self.sql.time_param(since),),
        )
        return [self._creator(r) for r in rows]

    async def claim(self, batch_id: str, lease: timedelta = CLAIM_LEASE) -> bool:
        """Take the reading of an unsettled batch for `lease` (another instance reading it now,
        or settled already: False). A reader that dies leaves its claim to expire."""
        now = datetime.now(UTC)
        changed = await self.store.execute(
            f"UPDATE tallygate_batches SET claimed_until = {self.p} WHERE batch_id = {self.p} "
            f"AND settled_at IS NULL AND (claimed_until IS NULL OR claimed_until < {self.p})",
            (self.sql.time_param(now + lease), batch_id, self.sql.time_param(now)),
        )
        return changed > 0

    async def release(self, batch_id: str) -> None:
        await self.store.execute(
            f"UPDATE tallygate_batches SET claimed_until = NULL WHERE batch_id = {self.p}", (batch_id,)
        )

    async def settle(self, batch_id: str, status: str, lines: int) -> bool:
        """Mark a batch's lines recorded; False when another reader settled it first."""
        now = self.sql.time_param(datetime.now(UTC))
        changed = await self.store.execute(
            f"UPDATE tallygate_batches SET settled_at = {self.p}, status = {self.p}, lines_recorded = {self.p}, "
            "claimed_until = NULL "
            f"WHERE batch_id = {self.p} AND settled_at IS NULL",
            (now, status, lines, batch_id),
        )
        return changed > 0

    def _creator(self, row: tuple) -> BatchCreator:
        created = self.sql.time_value(row[4])
        assert created is not None
        return BatchCreator(row[0], row[1], row[2], row[3], created, row[5] is not None)
