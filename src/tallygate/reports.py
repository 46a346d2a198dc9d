"""Usage aggregates from the ledger: tokens, requests and exact cost, grouped.

Shared by `tallygate usage` (a table) and `GET /admin/usage` (JSON).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .money import usd_text
from .store import rollups
from .store.dialect import dialect_of

GROUPS = ("tenant", "model", "day", "key", "endpoint", "status")
_COLUMN = {"tenant": "tenant_id", "model": "model", "key": "api_key_id", "endpoint": "endpoint", "status": "status"}
_ALIASES = {"tenant_id": "tenant", "api_key_id": "key", "key_id": "key"}
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ReportError(ValueError):
    pass


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'24h', '7d', '30m', or an ISO timestamp."""
    now = now or datetime.now(UTC)
    m = _DURATION.fullmatch(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    return parse_time(text)


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"not a time: {text!r} (use ISO 8601, or a duration like 24h or 7d)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_group_by(text: str | None) -> list[str]:
    if not text:
        return ["tenant"]
    # the ledger's column names are accepted too (`tenant_id`, `api_key_id`): the filters use them
    groups = [_ALIASES.get(g, g) for g in (g.strip() for g in text.split(",")) if g]
    for g in groups:
        if g not in GROUPS:
            raise ReportError(f"cannot group by {g!r}: choose from {', '.join(GROUPS)}")
    return groups


async def usage_report(
    store,
    start: datetime,
    end: datetime | None = None,
    tenant_id: str | None = None,
    api_key_id: str | None = None,
    group_by: list[str] | None = None,
    rows_only: bool = False,
) -> list[dict]:
    """Usage per group over [start, end): whole hours from the hourly rollups, the partial
    hours at the edges (and groups the rollups do not hold: endpoint, status) from the
    ledger rows, so the totals are those of summing the rows (`rows_only`: sum the rows)."""
    group_by = group_by or ["tenant"]
    filters = {k: v for k, v in (("tenant_id", tenant_id), ("api_key_id", api_key_id)) if v}
    sealed = None if rows_only else await rollups.sealed_before(store)
    sql, params = rollups.usage_sql(dialect_of(store), group_by, start, end, filters, rows_only, sealed)
    rows = await store.fetch(sql, params) if sql else []
    out = []
    n = len(group_by)
    for row in rows:
        item = {
            ("tenant_id" if k == "tenant" else "api_key_id" if k == "key" else k): row[i]
            for i, k in enumerate(group_by)
        }
        measures = rollups.measures_of(row[n:])
        measures["cost_usd"] = usd_text(measures["cost_usd"])
        item.update(measures)
        out.append(item)
    return out


TABLE_MEASURES = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cost_usd")
# shown only when a row has them: requests priced at 0 (no price) or in part (a part had no rate)
PRICING_GAPS = ("unpriced_requests", "partial_requests")


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "no usage in this period"
    groups = [c for c in rows[0] if c not in rollups.MEASURES]
    gaps = [c for c in PRICING_GAPS if any(r.get(c) for r in rows)]
    columns = groups + list(TABLE_MEASURES) + gaps
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    totals = {c: str(sum(r[c] for r in rows)) for c in columns if c in rollups.MEASURES and c != "cost_usd"}
    totals["cost_usd"] = usd_text(sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)))
    cells.append([totals.get(c, "TOTAL" if i == 0 else "") for i, c in enumerate(columns)])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = set(rollups.MEASURES)

    def line(values):
        return "  ".join(
            v.rjust(w) if columns[i] in numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[:-1]]
    out += ["  ".join("-" * w for w in widths), line(cells[-1])]
    return "\n".join(out)
