"""A UsageRecord from what LiteLLM hands a logging callback, without importing LiteLLM.

LiteLLM 1.110 gives a callback `kwargs` (its `standard_logging_object` holds the call's
id, times, model group, key and team metadata and the request headers) and the response
object (a pydantic model whose `usage` is the provider's usage object). Tokens come from
that usage through metering/usage.py, as the gateway reads them; the cost is priced later by
the pipeline (LiteLLM's float `response_cost` is kept beside it, for comparison).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...metering.bounds import request_caps
from ...metering.record import UsageRecord, utcnow
from ...metering.usage import USAGE_FIELDS, Usage, add_response_facts, model_name, usage_from_object
from ...settings import TENANT_RE

log = logging.getLogger("tallygate.litellm")

# LiteLLM's call types -> the endpoint the gateway names in its records
ENDPOINTS = {
    "acompletion": "/v1/chat/completions",
    "completion": "/v1/chat/completions",
    "atext_completion": "/v1/completions",
    "text_completion": "/v1/completions",
    "aembedding": "/v1/embeddings",
    "embedding": "/v1/embeddings",
    "aresponses": "/v1/responses",
    "responses": "/v1/responses",
}
# LiteLLM's provider names -> genai-prices' provider ids, where they differ
PROVIDERS = {
    "text-completion-openai": "openai",
    "azure_text": "azure",
    "azure_ai": "azure",
    "gemini": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "bedrock": "aws",
    "xai": "x-ai",
}
DEFAULT_TENANT = "default"
_TRACE_RE = re.compile(r"[0-9a-fA-F]{32}")
_warned_tenants: set[str] = set()  # invalid tenant values named once each (bounded)


def _valid_tenant(value: object, source: str) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if TENANT_RE.fullmatch(value):
        return value
    if len(_warned_tenants) < 100 and value not in _warned_tenants:
        _warned_tenants.add(value)
        log.warning(
            "tenant id not used: it must be 1-128 characters of [A-Za-z0-9._:@-]",
            extra={"fields": {"tenant_source": source, "tenant_value": value[:200]}},
        )
    return None


def request_headers(kwargs: dict, metadata: dict) -> dict:
    """The proxy request's headers (lower-case names; LiteLLM strips Authorization)."""
    params = kwargs.get("litellm_params") or {}
    for meta in (params.get("metadata"), params.get("litellm_metadata")):
        if isinstance(meta, dict) and isinstance(meta.get("headers"), dict):
            return meta["headers"]
    requester = metadata.get("requester_metadata")
    if isinstance(requester, dict) and isinstance(requester.get("headers"), dict):
        return requester["headers"]
    custom = metadata.get("requester_custom_headers")
    return custom if isinstance(custom, dict) else {}


def key_metadata(kwargs: dict) -> dict:
    """What the proxy put in the call's metadata about the key (set server-side after the
    request's own metadata, so a client cannot supply it)."""
    params = kwargs.get("litellm_params") or {}
    for meta in (params.get("metadata"), params.get("litellm_metadata")):
        if isinstance(meta, dict) and "user_api_key_metadata" in meta:
            return meta
    return {}


def tenant_of(headers: dict, metadata: dict, end_user: object, default: str | None) -> str:
    """In order: the X-Tenant-ID header, the key's metadata `tenant_id`, the key's team,
    the end user (`user` in the request), the default. `metadata` is the proxy's
    (key_metadata), falling back to the standard logging payload's."""
    header = headers.get("x-tenant-id")
    if header is None:
        header = next((v for k, v in headers.items() if k.lower() == "x-tenant-id"), None)
    key_meta = metadata.get("user_api_key_metadata")
    candidates = (
        (header, "x-tenant-id header"),
        (key_meta.get("tenant_id") if isinstance(key_meta, dict) else None, "key metadata tenant_id"),
        (metadata.get("user_api_key_team_id"), "key team"),
        (end_user or metadata.get("user_api_key_end_user_id"), "end user"),
    )
    for value, source in candidates:
        tenant = _valid_tenant(value, source)
        if tenant is not None:
            return tenant
    return default or DEFAULT_TENANT


def trace_of(headers: dict, project: str | None) -> str | None:
    """Cloud Logging's trace field from X-Cloud-Trace-Context or traceparent (as the gateway)."""
    if not project:
        return None
    trace_id = None
    raw = headers.get("x-cloud-trace-context")
    if isinstance(raw, str) and _TRACE_RE.fullmatch(raw.split("/", 1)[0]):
        trace_id = raw.split("/", 1)[0]
    if trace_id is None:
        raw = headers.get("traceparent")
        parts = raw.split("-") if isinstance(raw, str) else []
        if len(parts) >= 3 and _TRACE_RE.fullmatch(parts[1]):
            trace_id = parts[1]
    return f"projects/{project}/traces/{trace_id.lower()}" if trace_id else None


def _as_dict(obj: Any) -> dict | None:
    if obj is None or isinstance(obj, dict):
        return obj
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        try:
            return dump()
        except Exception:
            return None
    return None


def usage_of(response_obj: Any, slo: dict, failed: bool = False) -> Usage | None:
    """The provider's usage: the response's usage object, else (for a success) the one
    LiteLLM noted."""
    usage = usage_from_object(_as_dict(getattr(response_obj, "usage", None)))
    if usage is None and not failed:
        metadata = slo.get("metadata") or {}
        usage = usage_from_object(metadata.get("usage_object"))
    if usage is None:
        return None
    # what the response says beside its usage: the service tier, fee-carrying tool calls
    # (read attribute by attribute: dumping a whole response, embeddings included, is costly)
    output = getattr(response_obj, "output", None)
    facts: dict = {"service_tier": getattr(response_obj, "service_tier", None)}
    if isinstance(output, list):
        facts["output"] = [{"type": getattr(item, "type", None)} for item in output]
    return add_response_facts(usage, facts)


def _status_of(kwargs: dict, slo: dict) -> tuple[int, str]:
    exc = kwargs.get("exception")
    code = getattr(exc, "status_code", None)
    if not isinstance(code, int):
        info = slo.get("error_information") or {}
        try:
            code = int(info.get("error_code") or 500)
        except (TypeError, ValueError):
            code = 500
    name = type(exc).__name__ if exc is not None else ""
    if "Timeout" in name or code in (408, 504):
        return (code if code >= 400 else 504), "timeout"
    return (code if code >= 400 else 500), "upstream_error"


def _utc(ts: object) -> datetime:
    return datetime.fromtimestamp(ts, UTC) if isinstance(ts, int | float) and ts > 0 else utcnow()


@dataclass(slots=True)
class LiteLLMRecord(UsageRecord):
    """A UsageRecord with LiteLLM's own cost beside tallygate's (the log line's
    `litellm_response_cost`, a float as LiteLLM computed it; None when it had none)."""

    litellm_response_cost: float | None = None


def record_from_call(
    kwargs: dict,
    response_obj: Any,
    failed: bool,
    default_tenant: str | None = None,
    project: str | None = None,
) -> LiteLLMRecord:
    """The record of one finished call."""
    slo = kwargs.get("standard_logging_object") or {}
    metadata = slo.get("metadata") or {}
    headers = request_headers(kwargs, metadata)
    call_type = kwargs.get("call_type") or slo.get("call_type") or ""
    deployment = slo.get("model") or kwargs.get("model") or ""
    model = slo.get("model_group") or deployment or "unknown"
    provider = slo.get("custom_llm_provider") or kwargs.get("custom_llm_provider") or "openai"
    started = slo.get("startTime")
    ended = slo.get("endTime")
    params = slo.get("model_parameters") or kwargs.get("optional_params") or {}
    cap, choices = request_caps(params) if isinstance(params, dict) else (0, 1)
    try:
        body_len = int(headers.get("content-length") or 0)
    except (TypeError, ValueError):
        body_len = 0
    record = LiteLLMRecord(
        request_id=str(kwargs.get("litellm_call_id") or slo.get("litellm_call_id") or slo.get("id")),
        created_at=_utc(started),
        tenant_id=tenant_of(headers, key_metadata(kwargs) or metadata, slo.get("end_user"), default_tenant),
        model=model_name(model) or "unknown",
        endpoint=ENDPOINTS.get(call_type) or str(metadata.get("user_api_key_request_route") or call_type)[:128],
        stream=bool(kwargs.get("stream")),
        api_key_id=(metadata.get("user_api_key_alias") or metadata.get("user_api_key_hash") or None),
        upstream_model=model_name(getattr(response_obj, "model", None))
        or model_name(
            deployment.split("/", 1)[-1] if provider and deployment.startswith(provider + "/") else deployment
        ),
        provider=PROVIDERS.get(provider, provider),
        trace=trace_of(headers, project),
        out_cap=cap,
        choices=choices,
        body_len=body_len,
    )
    if isinstance(started, int | float) and isinstance(ended, int | float):
        record.latency_ms = round(max(0.0, ended - started) * 1000, 3)
        first = slo.get("completionStartTime")
        if record.stream and isinstance(first, int | float) and first >= started:
            record.ttft_ms = round((first - started) * 1000, 3)
    usage = usage_of(response_obj, slo, failed)
    if failed:
        record.status_code, record.status = _status_of(kwargs, slo)
    else:
        record.status_code = 200
    if usage is not None:
        for name in USAGE_FIELDS:
            setattr(record, name, getattr(usage, name))
        record.usage_source = "provider"
    elif not failed:
        record.usage_flag = "missing"  # a success without usage: LiteLLM gave no counts to bill
    cost = kwargs.get("response_cost", slo.get("response_cost"))
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        record.litellm_response_cost = float(cost)
    return record
