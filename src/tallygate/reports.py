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


# -- the web console's reads (console/views.py) ----------------------------------
#
# usage_series, usage_report and latency_and_errors read the rollups (per tenant, key,
# model and hour; latency as a histogram on Postgres); the request reads need the rows.

BUCKETS = ("hour", "day")
# what the request list shows of a row (the full record has every ledger column)
REQUEST_LIST_COLUMNS = (
    "request_id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "model",
    "endpoint",
    "stream",
    "status_code",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
)
REQUEST_LIST_MAX = 500


def bucket_expr(dialect, bucket: str) -> str:
    """The UTC hour (YYYY-MM-DDTHH:00) or day (YYYY-MM-DD) of created_at, as text."""
    if bucket == "day":
        return dialect.day_expr("created_at")
    return rollups.hour_label_expr(dialect, "created_at")


def bucket_starts(start: datetime, end: datetime, bucket: str) -> list[datetime]:
    """Every bucket from the one holding `start` to the one holding `end`, oldest first."""
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    t = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        t = t.replace(hour=0)
    out = []
    while t < end:
        out.append(t)
        t += step
    return out


def bucket_label(t: datetime, bucket: str) -> str:
    return t.strftime("%Y-%m-%dT%H:00") if bucket == "hour" else t.strftime("%Y-%m-%d")


def _filters(dialect, start: datetime, end: datetime | None, equal: dict) -> tuple[str, list]:
    ph = dialect.placeholder
    where, params = [f"created_at >= {ph}"], [dialect.time_param(start)]
    if end is not None:
        where.append(f"created_at < {ph}")
        params.append(dialect.time_param(end))
    for column, value in equal.items():
        if value:
            where.append(f"{column} = {ph}")
            params.append(value)
    return " AND ".join(where), params


async def usage_series(
    store, start: datetime, end: datetime, tenant_id: str | None = None, bucket: str = "hour"
) -> list[dict]:
    """Requests, tokens and exact cost per hour or day, every bucket present (zeros where
    nothing happened), oldest first; `t` is the bucket's start in Unix seconds. Read like
    usage_report: whole hours from the rollups (hour buckets never from the daily sums),
    the partial hours at the edges from the rows."""
    filters = {"tenant_id": tenant_id} if tenant_id else {}
    sealed = await rollups.sealed_before(store) if bucket == "day" else None
    sql, params = rollups.usage_sql(dialect_of(store), [bucket], start, end, filters, sealed_before=sealed)
    found = {row[0]: rollups.measures_of(row[1:]) for row in (await store.fetch(sql, params) if sql else [])}
    out = []
    for t in bucket_starts(start, end, bucket):
        label = bucket_label(t, bucket)
        m = found.get(label)
        out.append(
            {
                "t": int(t.timestamp()),
                "label": label,
                "requests": m["requests"] if m else 0,
                "prompt_tokens": m["prompt_tokens"] if m else 0,
                "completion_tokens": m["completion_tokens"] if m else 0,
                "total_tokens": m["total_tokens"] if m else 0,
                "cost_usd": usd_text(m["cost_usd"]) if m else "0",
            }
        )
    return out


def usage_totals(rows: list[dict]) -> dict:
    """The sums of usage_report rows (the TOTAL line of format_table)."""
    return {
        "requests": sum(r["requests"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "total_tokens": sum(r["total_tokens"] for r in rows),
        "cached_tokens": sum(r["cached_tokens"] for r in rows),
        "cost_usd": usd_text(sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))),
    }


async def latency_and_errors(store, start: datetime, end: datetime | None = None, tenant_id: str | None = None) -> dict:
    """Requests, errors (status other than ok), the error rate and the p95 latency.

    Requests and errors are sums (the rollups, as usage_report reads them). p95 is the
    nearest-rank percentile (the ceil(0.95 n)-th smallest latency). Postgres reads it from
    the rollups' latency histogram: the middle of the bucket holding it, within a factor
    2^(1/4) (+-19%) of the exact value (store/rollups.py percentile_of_histogram); SQLite
    from the rows: a value some request really had. The error rate is errors / requests as
    a percentage rounded half-even to two decimal places."""
    import math

    dialect = dialect_of(store)
    by_tenant = await usage_report(store, start, end, tenant_id, None, ["tenant"])
    requests = sum(r["requests"] for r in by_tenant)
    errors = sum(r["errors"] for r in by_tenant)
    p95 = None
    if requests and dialect.name == "postgres":
        found = await rollups.latency_p95(store, start, end, tenant_id)
        p95 = None if found is None else round(found, 1)
    elif requests:
        where, params = _filters(dialect, start, end, {"tenant_id": tenant_id})
        n = int((await store.fetch(f"SELECT count(*) FROM litellm_usage WHERE {where}", params))[0][0])
        rank = math.ceil(n * 95 / 100)
        ph = dialect.placeholder
        rows = await store.fetch(
            f"SELECT latency_ms FROM litellm_usage WHERE {where} ORDER BY latency_ms LIMIT 1 OFFSET {ph}",
            [*params, max(rank - 1, 0)],
        )
        if rows:
            p95 = round(float(rows[0][0]), 1)
    rate = (Decimal(errors * 100) / Decimal(requests)).quantize(Decimal("0.01")) if requests else Decimal(0)
    return {"requests": requests, "errors": errors, "error_rate_percent": format(rate, "f"), "p95_latency_ms": p95}


def _ledger_value(dialect, column: str, value):
    if value is None:
        return None
    if column == "created_at":
        return dialect.time_value(value).astimezone(UTC).isoformat().replace("+00:00", "Z")
    if column == "cost_usd":
        return usd_text(Decimal(str(value)))
    if column == "stream":
        return bool(value)
    return value


async def recent_requests(
    store,
    start: datetime,
    end: datetime | None = None,
    tenant_id: str | None = None,
    model: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[dict]:
    """The newest ledger rows matching the filters (at most `limit`, capped at 500)."""
    dialect = dialect_of(store)
    where, params = _filters(dialect, start, end, {"tenant_id": tenant_id, "model": model, "status": status})
    limit = max(1, min(limit, REQUEST_LIST_MAX))
    rows = await store.fetch(
        f"SELECT {', '.join(REQUEST_LIST_COLUMNS)} FROM litellm_usage WHERE {where} "
        f"ORDER BY created_at DESC, request_id LIMIT {limit}",
        params,
    )
    return [{c: _ledger_value(dialect, c, v) for c, v in zip(REQUEST_LIST_COLUMNS, row, strict=True)} for row in rows]


async def request_record(store, request_id: str) -> dict | None:
    """One request's full ledger row (every column), or None."""
    from .metering.record import LEDGER_COLUMNS

    dialect = dialect_of(store)
    rows = await store.fetch(
        f"SELECT {', '.join(LEDGER_COLUMNS)} FROM litellm_usage WHERE request_id = {dialect.placeholder}",
        [request_id],
    )
    if not rows:
        return None
    return {c: _ledger_value(dialect, c, v) for c, v in zip(LEDGER_COLUMNS, rows[0], strict=True)}
