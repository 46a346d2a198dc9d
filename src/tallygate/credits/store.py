"""Credit entries and accounts in the ledger database (tallygate_credit_entries,
tallygate_credit_accounts; migration 0006)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from ..store.dialect import dialect_of
from .model import CreditAccount, CreditEntry, new_entry_id

ENTRY_COLUMNS = "entry_id, tenant_id, kind, amount_usd, reference, note, created_at"


class CreditConflict(Exception):
    """The reference names an entry with another amount, or an adjustment names a tenant that
    is not prepaid."""


class CreditStore:
    """SQL for credits on either dialect (parameters only, never formatting)."""

    def __init__(self, store) -> None:
        self.store = store
        self.sql = dialect_of(store)
        self.p = self.sql.placeholder

    def _entry(self, row) -> CreditEntry:
        t = self.sql.time_value(row[6])
        assert t is not None
        return CreditEntry(row[0], row[1], row[2], Decimal(str(row[3])), row[4], row[5], t)

    async def _by_reference(self, tenant_id: str, reference: str) -> CreditEntry | None:
        rows = await self.store.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM tallygate_credit_entries WHERE tenant_id = {self.p} AND reference = {self.p}",
            (tenant_id, reference),
        )
        return self._entry(rows[0]) if rows else None

    async def add(self, tenant_id: str, amount: Decimal, reference: str, note: str | None) -> tuple[CreditEntry, bool]:
        """Append a top-up (amount > 0) or an adjustment (amount < 0): (the entry, True), or
        (the entry already stored under this reference, False). The first top-up makes the
        tenant prepaid from its time. Raises CreditConflict (nothing written) for a reference
        already used with another amount, or an adjustment of a tenant that is not prepaid."""
        kind = "topup" if amount > 0 else "adjustment"
        if kind == "adjustment" and await self.account(tenant_id) is None:
            existing = await self._by_reference(tenant_id, reference)
            if existing is None:
                raise CreditConflict(
                    f"tenant {tenant_id} is not prepaid: its first entry must be a top-up (a positive amount)"
                )
        now = datetime.now(UTC)
        entry = CreditEntry(new_entry_id(), tenant_id, kind, amount, reference, note, now)
        created = await self.store.execute(
            f"INSERT INTO tallygate_credit_entries ({ENTRY_COLUMNS}) VALUES ({self.sql.placeholders(7)}) "
            "ON CONFLICT (tenant_id, reference) DO NOTHING",
            (
                entry.entry_id,
                tenant_id,
                kind,
                self.sql.decimal_param(amount),
                reference,
                note,
                self.sql.time_param(now),
            ),
        )
        if not created:
            stored = await self._by_reference(tenant_id, reference)
            assert stored is not None  # the unique key refused the insert: the row is there
            if stored.amount_usd != amount:
                raise CreditConflict(
                    f"reference {reference!r} of tenant {tenant_id} is already an entry of "
                    f"{stored.amount_usd} USD ({stored.entry_id}): a reference names one entry"
                )
            entry = stored
        if entry.kind == "topup":
            # after the entry, never before: a crash in between leaves a credit the same
            # request repeated completes, never a prepaid tenant without credit
            await self.store.execute(
                "INSERT INTO tallygate_credit_accounts (tenant_id, prepaid_since) VALUES "
                f"({self.sql.placeholders(2)}) ON CONFLICT (tenant_id) DO NOTHING",
                (tenant_id, self.sql.time_param(entry.created_at)),
            )
        return entry, bool(created)

    async def entries(self, tenant_id: str) -> list[CreditEntry]:
        rows = await self.store.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM tallygate_credit_entries WHERE tenant_id = {self.p} "
            "ORDER BY created_at, entry_id",
            (tenant_id,),
        )
        return [self._entry(r) for r in rows]

    async def accounts(self, tenant_id: str | None = None) -> dict[str, CreditAccount]:
        """Every prepaid tenant (or one) with its credited total and last top-up."""
        total = self.sql.decimal_sum("e.amount_usd")
        sql = (
            "SELECT a.tenant_id, a.prepaid_since, "
            f"(SELECT {total} FROM tallygate_credit_entries e WHERE e.tenant_id = a.tenant_id), "
            "(SELECT e.amount_usd FROM tallygate_credit_entries e WHERE e.tenant_id = a.tenant_id "
            "AND e.kind = 'topup' ORDER BY e.created_at DESC LIMIT 1) "
            "FROM tallygate_credit_accounts a"
        )
        params: list = []
        if tenant_id is not None:
            sql += f" WHERE a.tenant_id = {self.p}"
            params.append(tenant_id)
        out = {}
        for tenant, since, credited, last in await self.store.fetch(sql, params):
            t = self.sql.time_value(since)
            assert t is not None
            out[tenant] = CreditAccount(tenant, t, Decimal(str(credited or 0)), Decimal(str(last or 0)))
        return out

    async def account(self, tenant_id: str) -> CreditAccount | None:
        return (await self.accounts(tenant_id)).get(tenant_id)

    async def spent(self, tenant_id: str, since: datetime) -> Decimal:
        """The usage ledger's cost for the tenant since it became prepaid: its debits (the
        rollups for whole hours, the rows for the partial one, as a budget rebuild reads them)."""
        from ..store.rollups import spend_since

        return await spend_since(self.store, "tenant_id", tenant_id, since)
