"""Keys and tenant limits in the ledger database (tables tallygate_keys, tallygate_tenants)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson

from ..auth import hash_key
from ..store.dialect import dialect_of
from .model import Limits, TenantKey, new_key


class KeyStore:
    """SQL for keys and tenants on either dialect (parameters only, never formatting)."""

    def __init__(self, store) -> None:
        self.store = store
        self.sql = dialect_of(store)
        self.p = self.sql.placeholder

    @staticmethod
    def _models(value: tuple | None):
        return None if value is None else orjson.dumps(list(value)).decode()

    async def create_key(
        self, tenant_id: str, limits: Limits, name: str | None, expires_at: datetime | None
    ) -> tuple[str, TenantKey]:
        key_id, secret, prefix = new_key()
        now = datetime.now(UTC)
        key = TenantKey(key_id, prefix, tenant_id, limits, name, expires_at, now)
        t = self.sql.time_param
        await self.store.execute(
            "INSERT INTO tallygate_keys (key_id, key_hash, key_prefix, tenant_id, name, rpm_limit, tpm_limit, "
            "budget_usd, budget_period, models, expires_at, created_at, updated_at) VALUES "
            f"({self.sql.placeholders(13)})",
            (
                key_id,
                hash_key(secret),
                key.key_prefix,
                tenant_id,
                name,
                limits.rpm_limit,
                limits.tpm_limit,
                self.sql.decimal_param(limits.budget_usd),
                limits.budget_period,
                self._models(limits.models),
                t(expires_at),
                t(now),
                t(now),
            ),
        )
        return secret, key

    async def revoke_key(self, key_id: str) -> bool:
        now = self.sql.time_param(datetime.now(UTC))
        count = await self.store.execute(
            f"UPDATE tallygate_keys SET revoked_at = {self.p}, updated_at = {self.p} "
            f"WHERE key_id = {self.p} AND revoked_at IS NULL",
            (now, now, key_id),
        )
        if count:
            return True
        rows = await self.store.fetch(f"SELECT 1 FROM tallygate_keys WHERE key_id = {self.p}", (key_id,))
        return bool(rows)  # already revoked: still a success, nothing changes

    async def put_tenant(self, tenant_id: str, limits: Limits) -> None:
        now = self.sql.time_param(datetime.now(UTC))
        await self.store.execute(
            "INSERT INTO tallygate_tenants (tenant_id, rpm_limit, tpm_limit, budget_usd, budget_period, models, "
            f"updated_at) VALUES ({self.sql.placeholders(7)}) ON CONFLICT (tenant_id) DO UPDATE SET "
            "rpm_limit = excluded.rpm_limit, tpm_limit = excluded.tpm_limit, budget_usd = excluded.budget_usd, "
            "budget_period = excluded.budget_period, models = excluded.models, updated_at = excluded.updated_at",
            (
                tenant_id,
                limits.rpm_limit,
                limits.tpm_limit,
                self.sql.decimal_param(limits.budget_usd),
                limits.budget_period,
                self._models(limits.models),
                now,
            ),
        )

    async def set_stripe_customer(self, tenant_id: str, customer_id: str | None) -> None:
        """Only the tenant's Stripe customer: its limits stay as they are (a new tenant row
        starts without limits)."""
        now = self.sql.time_param(datetime.now(UTC))
        await self.store.execute(
            f"INSERT INTO tallygate_tenants (tenant_id, stripe_customer_id, updated_at) VALUES ({self.sql.placeholders(3)}) "
            "ON CONFLICT (tenant_id) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id, "
            "updated_at = excluded.updated_at",
            (tenant_id, customer_id, now),
        )

    async def stripe_customers(self) -> dict[str, str | None]:
        rows = await self.store.fetch("SELECT tenant_id, stripe_customer_id FROM tallygate_tenants")
        return {r[0]: r[1] for r in rows}

    async def tenant_limits(self, tenant_id: str) -> Limits:
        rows = await self.store.fetch(
            "SELECT rpm_limit, tpm_limit, budget_usd, budget_period, models FROM tallygate_tenants "
            f"WHERE tenant_id = {self.p}",
            (tenant_id,),
        )
        return self._limits(rows[0]) if rows else Limits()

    def _limits(self, row) -> Limits:
        rpm, tpm, budget, period, models = row
        return Limits(
            rpm,
            tpm,
            None if budget is None else Decimal(str(budget)),
            period,
            None if models is None else tuple(orjson.loads(models)),
        )

    async def keys(self, tenant_id: str | None = None, include_revoked: bool = True) -> list[TenantKey]:
        where, params = [], []
        if tenant_id:
            where.append(f"tenant_id = {self.p}")
            params.append(tenant_id)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        rows = await self.store.fetch(
            "SELECT key_id, key_prefix, tenant_id, name, rpm_limit, tpm_limit, budget_usd, budget_period, "
            "models, expires_at, created_at, revoked_at FROM tallygate_keys"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY created_at",
            params,
        )
        t = self.sql.time_value
        return [TenantKey(r[0], r[1], r[2], self._limits(r[4:9]), r[3], t(r[9]), t(r[10]), t(r[11])) for r in rows]

    async def key_hashes(self) -> list[tuple[str, str, bool]]:
        """(key_hash, key_id, active) for every key."""
        rows = await self.store.fetch("SELECT key_hash, key_id, revoked_at IS NULL FROM tallygate_keys")
        return [(r[0], r[1], bool(r[2])) for r in rows]

    async def tenants(self) -> dict[str, Limits]:
        rows = await self.store.fetch(
            "SELECT tenant_id, rpm_limit, tpm_limit, budget_usd, budget_period, models FROM tallygate_tenants "
            "ORDER BY tenant_id"
        )
        return {r[0]: self._limits(r[1:]) for r in rows}

    async def spend_since(self, column: str, value: str, since: datetime | None) -> Decimal:
        """Cost in the ledger for a tenant or key since a time (budget rebuild)."""
        assert column in ("tenant_id", "api_key_id")
        sql = f"SELECT {self.sql.decimal_sum('cost_usd')} FROM litellm_usage WHERE {column} = {self.p}"
        params: list = [value]
        if since is not None:
            sql += f" AND created_at >= {self.p}"
            params.append(self.sql.time_param(since))
        rows = await self.store.fetch(sql, params)
        return Decimal(str(rows[0][0] or 0)) if rows else Decimal(0)
