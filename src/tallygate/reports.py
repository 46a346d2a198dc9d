"""Usage aggregates from the ledger: tokens, requests and exact cost, grouped.

Shared by `tallygate usage` (a table) and `GET /admin/usage` (JSON).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .money import usd_text
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
) -> list[dict]:
    group_by = group_by or ["tenant"]
    dialect = dialect_of(store)
    ph = dialect.placeholder
    select, keys = [], []
    for g in group_by:
        if g == "day":
            expr = dialect.day_expr("created_at")
        else:
            expr = _COLUMN[g]
        select.append(expr)
        keys.append(g)
    cost = dialect.decimal_sum("cost_usd")
    where, params = [f"created_at >= {ph}"], [dialect.time_param(start)]
    if end is not None:
        where.append(f"created_at < {ph}")
        params.append(dialect.time_param(end))
    if tenant_id:
        where.append(f"tenant_id = {ph}")
        params.append(tenant_id)
    if api_key_id:
        where.append(f"api_key_id = {ph}")
        params.append(api_key_id)
    sql = (
        f"SELECT {', '.join(select)}, count(*), sum(prompt_tokens), sum(completion_tokens), "
        f"sum(total_tokens), sum(cached_tokens), {cost} FROM litellm_usage "
        f"WHERE {' AND '.join(where)} GROUP BY {', '.join(str(i + 1) for i in range(len(select)))} "
        f"ORDER BY {', '.join(str(i + 1) for i in range(len(select)))}"
    )
    rows = await store.fetch(sql, params)
    out = []
    n = len(keys)
    for row in rows:
        item = {
            ("tenant_id" if k == "tenant" else "api_key_id" if k == "key" else k): row[i] for i, k in enumerate(keys)
        }
        item.update(
            requests=int(row[n]),
            prompt_tokens=int(row[n + 1] or 0),
            completion_tokens=int(row[n + 2] or 0),
            total_tokens=int(row[n + 3] or 0),
            cached_tokens=int(row[n + 4] or 0),
            cost_usd=usd_text(Decimal(str(row[n + 5] or 0))),
        )
        out.append(item)
    return out


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "no usage in this period"
    columns = list(rows[0].keys())
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    total_cost = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    totals = {
        "requests": sum(r["requests"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "total_tokens": sum(r["total_tokens"] for r in rows),
        "cached_tokens": sum(r["cached_tokens"] for r in rows),
        "cost_usd": usd_text(total_cost),
    }
    cells.append([str(totals.get(c, "TOTAL" if i == 0 else "")) for i, c in enumerate(columns)])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = {"requests", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cost_usd"}

    def line(values):
        return "  ".join(
            v.rjust(w) if columns[i] in numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[:-1]]
    out += ["  ".join("-" * w for w in widths), line(cells[-1])]
    return "\n".join(out)
