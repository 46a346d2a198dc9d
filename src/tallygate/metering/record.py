"""UsageRecord: the one event every sink consumes (log line, ledger row, metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

STATUSES = ("ok", "upstream_error", "client_disconnected", "timeout")


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    created_at: datetime
    tenant_id: str
    model: str
    endpoint: str
    stream: bool
    api_key_id: str | None = None
    upstream_model: str | None = None
    provider: str = "openai"
    status_code: int = 0
    status: str = "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # the parts of usage priced apart (metering/usage.py Usage, same names and meaning)
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    web_search_calls: int = 0
    file_search_calls: int = 0
    service_tier: str | None = None
    cost_usd: Decimal = Decimal(0)
    price_source: str = "unknown"  # genai-prices | override | unknown | free; ":batch50" batch work at the 50% rule; ":partial" when a part had no rate
    price_version: str | None = None  # the price data the cost came from (genai-prices version)
    usage_source: str = "none"  # provider | estimated | clamped | none
    usage_flag: str | None = None  # missing (no usage in a 200: estimated) | implausible (clamped)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    trace: str | None = None
    submitted: bool = False  # handed to the pipeline (set by Pipeline.submit)
    # what the request allows (metering/bounds.py): output cap per choice (0: none given),
    # choices generated, request body bytes
    out_cap: int = 0
    choices: int = 1
    body_len: int = 0
    # the id of the object the request created (a Responses answer's id): its tenant owns it
    # (tenants/owners.py); not a ledger column
    object_id: str | None = None
    # the model as a metric label (set when the record is priced): the name the price data or
    # the price file knows it by, else "other"; never a client's free text. Not a ledger column
    model_label: str = "other"
    # an image or audio request's billed units (metering/media.py MediaUsage); not a ledger column
    media: Any = None

    def ledger_row(self) -> tuple:
        """Column values in LEDGER_COLUMNS order (a tuple written out: three times faster
        than operator.attrgetter over the names)."""
        return (
            self.request_id,
            self.created_at,
            self.tenant_id,
            self.api_key_id,
            self.model,
            self.upstream_model,
            self.provider,
            self.endpoint,
            self.stream,
            self.status_code,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.cached_tokens,
            self.reasoning_tokens,
            self.cost_usd,
            self.price_source,
            self.usage_source,
            self.latency_ms,
            self.ttft_ms,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.audio_input_tokens,
            self.audio_output_tokens,
            self.image_input_tokens,
            self.image_output_tokens,
            self.web_search_calls,
            self.file_search_calls,
            self.service_tier,
            self.price_version,
        )


LEDGER_COLUMNS = (
    "request_id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "model",
    "upstream_model",
    "provider",
    "endpoint",
    "stream",
    "status_code",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "price_source",
    "usage_source",
    "latency_ms",
    "ttft_ms",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "web_search_calls",
    "file_search_calls",
    "service_tier",
    "price_version",
)
# usage counts beyond the classic four, in the log line and the ledger (0 when absent)
EXTRA_TOKEN_COLUMNS = LEDGER_COLUMNS[LEDGER_COLUMNS.index("cache_write_tokens") : LEDGER_COLUMNS.index("service_tier")]


def utcnow() -> datetime:
    return datetime.now(UTC)


def opened(
    request_id: str,
    created_at: datetime,
    tenant_id: str,
    model: str,
    endpoint: str,
    stream: bool,
    api_key_id: str | None,
    provider: str,
    trace: str | None,
    out_cap: int,
    choices: int,
    body_len: int,
) -> UsageRecord:
    """The record a proxied request opens. The first fields go by position: keyword
    arguments to the dataclass's 40-parameter __init__ cost about as much again as the
    rest of the construction (each is matched against the parameter names)."""
    record = UsageRecord(request_id, created_at, tenant_id, model, endpoint, stream, api_key_id, None, provider)
    record.trace = trace
    record.out_cap = out_cap
    record.choices = choices
    record.body_len = body_len
    return record
