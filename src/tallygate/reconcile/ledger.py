"""The ledger's side: one UTC day of one provider's rows, summed per key and model.

A row counts as a request the provider served when the provider answered it with a 2xx
(a stream the client left after it began has its 200 too), or when the provider began
answering and the gateway metered an estimate (usage_source other than "none": a body
that broke off after a 2xx, a server stopped mid-request). Not counted: requests refused
by the gateway's limits, budgets or credits (they never reach the provider and leave no
row, or a row of status_code 4xx with no usage), the provider's own error answers (4xx,
429, 5xx: no model request), the gateway's 502/504 when the provider could not be
reached, and 499s (a streaming client gone before anything was sent). Token counting
endpoints (`.../count_tokens`) are not model requests either.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ..store.dialect import dialect_of
from .figures import LedgerFigures
from .keymap import KeyMap


def counted(status_code: int, usage_source: str | None) -> bool:
    """The rule above, for one row."""
    if 200 <= status_code < 300:
        return True
    return status_code != 499 and (usage_source or "none") != "none"


async def ledger_figures(
    store, provider: str, start: datetime, end: datetime, keymap: KeyMap
) -> dict[tuple[str, str], LedgerFigures]:
    """{(key name, upstream model): figures} for rows created in [start, end)."""
    dialect = dialect_of(store)
    ph = dialect.placeholder
    sql = (
        "SELECT model, COALESCE(upstream_model, model), tenant_id, status, status_code, usage_source, "
        f"count(*), sum(prompt_tokens), sum(cached_tokens), sum(completion_tokens), {dialect.decimal_sum('cost_usd')} "
        f"FROM litellm_usage WHERE created_at >= {ph} AND created_at < {ph} AND provider = {ph} "
        f"AND endpoint NOT LIKE {ph} "
        "GROUP BY 1, 2, 3, 4, 5, 6"
    )
    rows = await store.fetch(sql, [dialect.time_param(start), dialect.time_param(end), provider, "%/count_tokens"])
    out: dict[tuple[str, str], LedgerFigures] = {}
    for model, upstream_model, tenant, status, status_code, usage_source, n, prompt, cached, completion, cost in rows:
        key = (keymap.for_route(model), upstream_model)
        fig = out.get(key)
        if fig is None:
            fig = out[key] = LedgerFigures(cost_usd=Decimal(0))
        n = int(n)
        if not counted(int(status_code), usage_source):
            fig.excluded += n
            continue
        assert fig.requests is not None
        fig.requests += n
        fig.input_tokens += int(prompt or 0)
        fig.cached_tokens += int(cached or 0)
        fig.output_tokens += int(completion or 0)
        fig.cost_usd = (fig.cost_usd or Decimal(0)) + Decimal(str(cost or 0))
        if status == "timeout":
            fig.timeouts += n
        fig.tenants[tenant] = fig.tenants.get(tenant, 0) + n
    return out
