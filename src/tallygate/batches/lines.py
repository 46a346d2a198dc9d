"""One ledger record per line of a batch's output or error file (OpenAI's Batch API: each
line is `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`).

A line's request id is derived from the batch id and its `custom_id` (unique within a batch),
and its time from the batch's own end time, so reading the same file again makes the same
records and the ledger's idempotent insert adds nothing. Usage comes from the line's body
(chat completions, completions, embeddings and Responses bodies: metering/usage.py) and is
priced at the batch tier (metering/pricing.py, BATCH_FACTOR). A line that failed (an `error`,
a non-2xx status) is recorded as `upstream_error`; the requests a batch never ran, written to
its error file as `batch_expired` or `batch_cancelled`, as `expired` or `cancelled`. Those
cost $0 (OpenAI bills only completed work) unless their body reports usage.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson

from ..metering.record import UsageRecord
from ..metering.usage import USAGE_FIELDS, add_response_facts, model_name, usage_from_object
from .store import BatchCreator

# the error codes OpenAI writes for requests a batch did not run
NOT_RUN = {"batch_expired": "expired", "batch_cancelled": "cancelled"}
END_FIELDS = ("completed_at", "expired_at", "cancelled_at", "failed_at")
TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})


def line_request_id(batch_id: str, custom_id: str) -> str:
    """96 bits of SHA-256 over (batch id, custom_id): the same line always has the same id."""
    digest = hashlib.sha256(f"{batch_id}\n{custom_id}".encode()).hexdigest()
    return "batch_" + digest[:24]


def ended_at(batch: dict, creator: BatchCreator) -> datetime:
    """When the batch ended (the time of its rows), from the batch object: the same on every look."""
    for name in END_FIELDS:
        value = batch.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return datetime.fromtimestamp(value, UTC)
    return creator.created_at


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def line_record(line: bytes, creator: BatchCreator, provider: str, at: datetime) -> UsageRecord | None:
    """The record of one output or error line; None for a line that is not a request's result."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    custom_id = doc.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        custom_id = doc.get("id") if isinstance(doc.get("id"), str) else None
        if not custom_id:
            return None
    response = _object(doc.get("response"))
    body = _object(response.get("body"))
    code = response.get("status_code")
    status_code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    error = _object(doc.get("error"))
    status = "ok"
    if error:
        status = NOT_RUN.get(str(error.get("code")), "upstream_error")
    elif not 200 <= status_code < 300:
        status = "upstream_error"
    record = UsageRecord(
        request_id=line_request_id(creator.batch_id, custom_id),
        created_at=at,
        tenant_id=creator.tenant_id,
        model=model_name(body.get("model")) or "",
        endpoint=creator.endpoint,
        stream=False,
        api_key_id=creator.api_key_id,
        provider=provider,
        status_code=status_code,
        status=status,
        service_tier="batch",
    )
    usage = usage_from_object(body.get("usage"))
    if usage is None:
        # nothing ran (an error line): $0 with no price to look up
        record.price_source = "free"
        return record
    add_response_facts(usage, body)  # Responses bodies: tool calls billed per call
    for name in USAGE_FIELDS:
        setattr(record, name, getattr(usage, name))
    record.service_tier = "batch"  # whatever tier the body names: the work ran as batch work
    record.usage_source = "provider"
    return record
