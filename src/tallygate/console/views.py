"""The console's JSON documents, built from reports.py and the key store.

Every function takes the tenant a session is limited to (None: the master key's
session, every tenant); handler.py has already refused ids that are not that tenant's.
Amounts are exact decimal text (money.usd_text); percentages are rounded half-even to
the decimal places named beside them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ..errors import bad_request
from ..money import usd_text
from ..reports import (
    ReportError,
    latency_and_errors,
    parse_since,
    parse_time,
    recent_requests,
    request_record,
    usage_report,
    usage_series,
    usage_totals,
)
from ..tenants.model import Limits, period_start
from ..tenants.store import KeyStore

# the range picker's choices: how far back, and the chart's bucket for it
RANGES = {"24h": "hour", "7d": "hour", "30d": "day", "90d": "day"}
DEFAULT_RANGE = "24h"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a "total" budget counts from the start
STATUSES = ("ok", "upstream_error", "timeout", "client_disconnected")
TOP_ROWS = 100  # rows of a by-tenant or by-model table (the totals count every row)


def _range(params: dict, now: datetime) -> tuple[str, datetime, str]:
    name = params.get("range") or DEFAULT_RANGE
    if name not in RANGES:
        raise bad_request(f"range must be one of {', '.join(RANGES)}", "invalid_parameter", "range")
    # on the hour: a range then reads the hourly rollups alone, never a partial first hour's
    # rows (at 100 million rows that part was half the overview's time: docs/benchmarks.md)
    return name, parse_since(name, now).replace(minute=0, second=0, microsecond=0), RANGES[name]


def _by_cost(rows: list[dict]) -> list[dict]:
    return sorted(
        rows, key=lambda r: (-Decimal(r["cost_usd"]), -r["requests"], str(r.get("tenant_id") or r.get("model")))
    )


def percent(part: Decimal, whole: Decimal, places: str = "0.1") -> str | None:
    """part / whole as a percentage, rounded half-even to `places`; None for a zero whole."""
    if not whole:
        return None
    return format((part * 100 / whole).quantize(Decimal(places)), "f")


def budget_status(limits: Limits | None, spent: Decimal) -> dict | None:
    if limits is None or limits.budget_usd is None:
        return None
    budget = limits.budget_usd
    return {
        "budget_usd": usd_text(budget),
        "budget_period": limits.budget_period,
        "spent_usd": usd_text(spent),
        "remaining_usd": usd_text(max(budget - spent, Decimal(0))),
        "used_percent": percent(spent, budget),
        "exceeded": spent >= budget,
    }


class Views:
    def __init__(self, store, keystore: KeyStore, balance: Callable[[str], Awaitable[dict]] | None = None) -> None:
        self.store = store
        self.keystore = keystore
        self.balance = balance  # a tenant's prepaid credit (routes/credits.py's balance document)

    async def overview(self, params: dict, tenant: str | None) -> dict:
        now = datetime.now(UTC)
        name, start, bucket = _range(params, now)
        span = now - start
        # the page's queries at once, each on a pool connection: at 100 million rows each takes
        # 25-120 ms on rollups, one after another 0.5-0.7 s (docs/benchmarks.md, "Ledger at scale")
        by_tenant, by_model, previous, series, health = await asyncio.gather(
            usage_report(self.store, start, None, tenant, None, ["tenant"]),
            usage_report(self.store, start, None, tenant, None, ["model"]),
            usage_report(self.store, start - span, start, tenant, None, ["tenant"]),
            usage_series(self.store, start, now, tenant, bucket),
            latency_and_errors(self.store, start, None, tenant),
        )
        return {
            "range": name,
            "ranges": list(RANGES),
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": now.isoformat().replace("+00:00", "Z"),
            "bucket": bucket,
            "tenant_id": tenant,
            "series": series,
            "totals": usage_totals(by_tenant),
            "previous_totals": usage_totals(previous),
            "by_tenant": _by_cost(by_tenant)[:TOP_ROWS],
            "by_tenant_count": len(by_tenant),
            "by_model": _by_cost(by_model)[:TOP_ROWS],
            "by_model_count": len(by_model),
            "health": health,
        }

    async def _spent(self, tenants: dict[str, Limits]) -> dict[str, Decimal]:
        """Each budgeted tenant's spend in its budget period (one query per kind of period)."""
        spent: dict[str, Decimal] = {}
        periods = {lim.budget_period for lim in tenants.values() if lim.budget_usd is not None}
        for period in periods:
            start = period_start(period) or EPOCH
            for row in await usage_report(self.store, start, None, None, None, ["tenant"]):
                if tenants.get(row["tenant_id"]) and tenants[row["tenant_id"]].budget_period == period:
                    spent[row["tenant_id"]] = Decimal(row["cost_usd"])
        return spent

    async def tenants(self) -> dict:
        """Every tenant with limits, keys or usage in the last 30 days; nearest their budget first."""
        limits = await self.keystore.tenants()
        start = datetime.now(UTC) - timedelta(days=30)
        usage = {r["tenant_id"]: r for r in await usage_report(self.store, start, None, None, None, ["tenant"])}
        key_counts: dict[str, int] = {}
        for key in await self.keystore.keys(include_revoked=False):
            key_counts[key.tenant_id] = key_counts.get(key.tenant_id, 0) + 1
        spent = await self._spent(limits)
        out = []
        for tenant_id in sorted(set(limits) | set(usage) | set(key_counts)):
            row = usage.get(tenant_id)
            out.append(
                {
                    "tenant_id": tenant_id,
                    "limits": limits[tenant_id].as_json() if tenant_id in limits else None,
                    "budget": budget_status(limits.get(tenant_id), spent.get(tenant_id, Decimal(0))),
                    "active_keys": key_counts.get(tenant_id, 0),
                    "requests_30d": row["requests"] if row else 0,
                    "cost_usd_30d": row["cost_usd"] if row else "0",
                }
            )

        def nearness(t: dict):
            used = t["budget"]["used_percent"] if t["budget"] else None
            return (-(Decimal(used) if used is not None else Decimal(-1)), -Decimal(t["cost_usd_30d"]), t["tenant_id"])

        out.sort(key=nearness)
        return {"object": "list", "data": out}

    async def tenant(self, tenant_id: str) -> dict:
        limits = (await self.keystore.tenants()).get(tenant_id)
        spent = Decimal(0)
        if limits is not None and limits.budget_usd is not None:
            spent = await self.keystore.spend_since("tenant_id", tenant_id, period_start(limits.budget_period))
        start = datetime.now(UTC) - timedelta(days=30)
        return {
            "tenant_id": tenant_id,
            "limits": limits.as_json() if limits is not None else None,
            "budget": budget_status(limits, spent),
            "usage_30d": usage_totals(await usage_report(self.store, start, None, tenant_id, None, ["tenant"])),
            "by_model": await usage_report(self.store, start, None, tenant_id, None, ["model"]),
            "by_day_model": await usage_report(self.store, start, None, tenant_id, None, ["day", "model"]),
            "keys": [k.as_json() for k in await self.keystore.keys(tenant_id)],
            "credit": await self.balance(tenant_id) if self.balance is not None else None,
        }

    async def keys(self, tenant: str | None) -> dict:
        return {"object": "list", "data": [k.as_json() for k in reversed(await self.keystore.keys(tenant))]}

    async def requests(self, params: dict, tenant: str | None) -> dict:
        try:
            start = parse_since(params.get("since") or "24h")
            end = parse_time(params["until"]) if params.get("until") else None
        except ReportError as exc:
            raise bad_request(str(exc), "invalid_parameter") from None
        except OverflowError:
            raise bad_request("since is too far back", "invalid_parameter", "since") from None
        status = params.get("status") or None
        if status is not None and status not in STATUSES:
            raise bad_request(f"status must be one of {', '.join(STATUSES)}", "invalid_parameter", "status")
        try:
            limit = int(params.get("limit") or 100)
        except ValueError:
            raise bad_request("limit must be a number", "invalid_parameter", "limit") from None
        rows = await recent_requests(self.store, start, end, tenant, params.get("model") or None, status, limit)
        return {"object": "list", "statuses": list(STATUSES), "data": rows}

    async def request(self, request_id: str, tenant: str | None) -> dict | None:
        row = await request_record(self.store, request_id)
        if row is None or (tenant is not None and row["tenant_id"] != tenant):
            return None  # another tenant's request does not exist for this session
        return row
