"""What the providers report for a day: usage per key and model, cost per scope.

OpenAI (organization Usage API and Costs API, `Authorization: Bearer OPENAI_ADMIN_KEY`):
  GET /organization/usage/completions and /organization/usage/embeddings with start_time /
  end_time (unix seconds), bucket_width=1d, group_by[] model, project_id, api_key_id, batch
  (Batch API jobs never pass the gateway: listed apart); each
  result has num_model_requests, input_tokens (cache reads and writes, audio and images
  included), input_cached_tokens, output_tokens. GET /organization/costs, grouped by
  project_id (it cannot group by model; by api_key_id too with --costs-by-key, where the
  organization supports it): amount.value, a JSON number, in amount.currency.
Anthropic (Admin API, `x-api-key: ANTHROPIC_ADMIN_KEY`, `anthropic-version`):
  GET /v1/organizations/usage_report/messages with starting_at / ending_at (RFC 3339),
  bucket_width=1d, group_by[] model, api_key_id, workspace_id, service_tier (batch usage
  never passes the gateway: listed apart); results have
  uncached_input_tokens, cache_read_input_tokens, cache_creation.ephemeral_5m_input_tokens
  and .ephemeral_1h_input_tokens, output_tokens, and no request count. GET
  /v1/organizations/cost_report, grouped by workspace_id: amount, a decimal string in
  the currency's lowest unit (cents for USD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .admin_api import AdminApi, AdminApiError, count, items
from .figures import Figures
from .keymap import OUTSIDE, KeyMap

ANTHROPIC_VERSION = "2023-06-01"
BATCH = OUTSIDE + "batch"  # the key of batch usage (OpenAI Batch API, Anthropic Message Batches): listed only
OPENAI_USAGE_PATHS = ("/organization/usage/completions", "/organization/usage/embeddings")
OPENAI_COSTS_PATH = "/organization/costs"
ANTHROPIC_USAGE_PATH = "/v1/organizations/usage_report/messages"
ANTHROPIC_COST_PATH = "/v1/organizations/cost_report"


@dataclass
class ProviderReport:
    usage: dict[tuple[str, str], Figures] = field(default_factory=dict)  # (key name, model)
    costs: dict[str, Decimal] = field(default_factory=dict)  # cost scope -> USD
    counts_requests: bool = True  # False: the usage report has no request counts (Anthropic)
    calls: int = 0  # HTTP requests made (retries included)
    retries: int = 0

    def add_usage(self, key: str, model: str, fig: Figures) -> None:
        have = self.usage.get((key, model))
        if have is None:
            self.usage[(key, model)] = fig
        else:
            have.add(fig)

    def add_cost(self, scope: str, usd: Decimal) -> None:
        self.costs[scope] = self.costs.get(scope, Decimal(0)) + usd


def _amount(value, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise AdminApiError(f"{path}: an amount that is not a number: {value!r}")
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except ArithmeticError:
        raise AdminApiError(f"{path}: an amount that is not a number: {value!r}") from None
    if not amount.is_finite():
        raise AdminApiError(f"{path}: an amount that is not a number: {value!r}")
    return amount


def _usd(currency, path: str) -> None:
    if not isinstance(currency, str) or currency.lower() != "usd":
        raise AdminApiError(f"{path}: an amount in {currency!r}, not USD")


async def openai_report(
    api: AdminApi, start: datetime, end: datetime, keymap: KeyMap, costs_by_key: bool = False
) -> ProviderReport:
    """`costs_by_key`: the Costs API grouped by api_key_id too (not every organization can),
    so dollars compare per key instead of per project."""
    report = ProviderReport()
    window = [("start_time", str(int(start.timestamp()))), ("end_time", str(int(end.timestamp())))]
    usage_params = [*window, ("bucket_width", "1d"), ("limit", "31")]
    # lists as the official SDK sends them (`group_by[]=model&group_by[]=...`)
    usage_params += [("group_by[]", g) for g in ("model", "project_id", "api_key_id", "batch")]
    for path in OPENAI_USAGE_PATHS:
        async for doc in api.pages(path, usage_params):
            for _bucket, r in items(doc, path):
                model = r.get("model") or "unknown"
                key = keymap.for_provider(r.get("api_key_id"), r.get("project_id"))
                if r.get("batch") is True:  # Batch API jobs do not go through the gateway
                    key = BATCH
                fig = Figures(
                    requests=count(r, "num_model_requests", path),
                    input_tokens=count(r, "input_tokens", path),
                    cached_tokens=count(r, "input_cached_tokens", path),
                    output_tokens=count(r, "output_tokens", path),
                )
                report.add_usage(key, model, fig)
    cost_params = [*window, ("bucket_width", "1d"), ("limit", "31"), ("group_by[]", "project_id")]
    if costs_by_key:
        cost_params.append(("group_by[]", "api_key_id"))
    async for doc in api.pages(OPENAI_COSTS_PATH, cost_params):
        for _bucket, r in items(doc, OPENAI_COSTS_PATH):
            amount = r.get("amount")
            if not isinstance(amount, dict):
                raise AdminApiError(f"{OPENAI_COSTS_PATH}: a result without an amount")
            _usd(amount.get("currency"), OPENAI_COSTS_PATH)
            if costs_by_key:
                scope = keymap.for_provider(r.get("api_key_id"), r.get("project_id"))
            else:
                scope = keymap.scope_for_provider(r.get("project_id"))
            report.add_cost(scope, _amount(amount.get("value"), OPENAI_COSTS_PATH))
    report.calls, report.retries = api.calls, api.retries
    return report


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def anthropic_report(api: AdminApi, start: datetime, end: datetime, keymap: KeyMap) -> ProviderReport:
    report = ProviderReport(counts_requests=False)
    window = [("starting_at", _rfc3339(start)), ("ending_at", _rfc3339(end)), ("bucket_width", "1d")]
    groups = ("model", "api_key_id", "workspace_id", "service_tier")
    usage_params = [*window, ("limit", "31")] + [("group_by[]", g) for g in groups]
    path = ANTHROPIC_USAGE_PATH
    async for doc in api.pages(path, usage_params):
        for _bucket, r in items(doc, path):
            creation = r.get("cache_creation") or {}
            if not isinstance(creation, dict):
                raise AdminApiError(f"{path}: cache_creation is not an object")
            reads = count(r, "cache_read_input_tokens", path)
            writes = count(creation, "ephemeral_5m_input_tokens", path) + count(
                creation, "ephemeral_1h_input_tokens", path
            )
            fig = Figures(
                requests=None,  # the usage report counts tokens, not requests
                input_tokens=count(r, "uncached_input_tokens", path) + reads + writes,
                cached_tokens=reads,
                output_tokens=count(r, "output_tokens", path),
            )
            key = keymap.for_provider(r.get("api_key_id"), r.get("workspace_id"))
            if r.get("service_tier") == "batch":  # Message Batches do not go through the gateway
                key = BATCH
            report.add_usage(key, r.get("model") or "unknown", fig)
    path = ANTHROPIC_COST_PATH
    async for doc in api.pages(path, [*window, ("group_by[]", "workspace_id")]):
        for _bucket, r in items(doc, path):
            _usd(r.get("currency"), path)
            cents = _amount(r.get("amount"), path)
            report.add_cost(keymap.scope_for_provider(r.get("workspace_id")), cents / 100)
    report.calls, report.retries = api.calls, api.retries
    return report
