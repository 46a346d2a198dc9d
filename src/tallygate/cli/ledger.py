"""`tallygate ledger replay`: re-import records from JSON log lines (idempotent)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import orjson

from ..metering.record import EXTRA_TOKEN_COLUMNS, STATUSES, UsageRecord
from .db import open_ledger


def record_from_log(line: bytes) -> UsageRecord | None:
    """A UsageRecord from one JSON line: our stdout line, a Cloud Logging LogEntry
    (fields under jsonPayload) or a BigQuery export row. None: not a request line.
    Raises ValueError for a request line that cannot be read."""
    doc = orjson.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    payload = doc.get("jsonPayload") or doc.get("jsonpayload") or doc
    if not isinstance(payload, dict) or payload.get("message") != "litellm_request":
        return None
    # the start (created_at); lines before start_time existed had it in `time`
    when = payload.get("start_time") or payload.get("time") or doc.get("timestamp") or doc.get("receiveTimestamp")
    if not isinstance(when, str):
        raise ValueError("no time")
    created = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    exact = payload.get("cost_usd_exact")
    try:
        cost = Decimal(exact) if isinstance(exact, str) else Decimal(str(payload.get("cost_usd", 0)))
    except InvalidOperation:
        raise ValueError("bad cost") from None
    rid, tenant, model = payload.get("request_id"), payload.get("tenant_id"), payload.get("model")
    if not (isinstance(rid, str) and rid and isinstance(tenant, str) and tenant and isinstance(model, str) and model):
        raise ValueError("missing request_id, tenant_id or model")
    status = payload.get("status", "ok")

    def num(name, kind=int):
        value = payload.get(name)
        if value is None:
            return kind(0)
        return kind(value)

    def text_or_none(name):
        value = payload.get(name)
        return value if isinstance(value, str) else None

    ttft = payload.get("ttft_ms")
    return UsageRecord(
        request_id=rid,
        created_at=created,
        tenant_id=tenant,
        model=model,
        endpoint=str(payload.get("endpoint", "")),
        stream=bool(payload.get("stream", False)),
        api_key_id=payload.get("api_key_id"),
        upstream_model=payload.get("upstream_model"),
        provider=str(payload.get("provider", "openai")),
        status_code=num("status_code"),
        status=status if status in STATUSES else "ok",
        prompt_tokens=num("prompt_tokens"),
        completion_tokens=num("completion_tokens"),
        total_tokens=num("total_tokens"),
        cached_tokens=num("cached_tokens"),
        reasoning_tokens=num("reasoning_tokens"),
        cost_usd=cost,
        price_source=str(payload.get("price_source", "unknown")),
        usage_source=str(payload.get("usage_source", "provider")),
        latency_ms=num("latency_ms", float),
        ttft_ms=None if ttft is None else float(ttft),
        service_tier=text_or_none("service_tier"),
        price_version=text_or_none("price_version"),
        **{name: num(name) for name in EXTRA_TOKEN_COLUMNS},
    )


async def replay(files: list[str], batch_size: int = 1000) -> int:
    store = await open_ledger()
    stats = {"read": 0, "request_lines": 0, "inserted": 0, "already_present": 0, "unparseable": 0, "other_lines": 0}
    progress = sys.stderr.isatty()
    try:
        for name in files:
            fh = sys.stdin.buffer if name == "-" else open(name, "rb")
            batch: dict[str, UsageRecord] = {}
            try:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    stats["read"] += 1
                    try:
                        rec = record_from_log(line)
                    except (ValueError, TypeError, orjson.JSONDecodeError):
                        stats["unparseable"] += 1
                        continue
                    if rec is None:
                        stats["other_lines"] += 1
                        continue
                    stats["request_lines"] += 1
                    batch[rec.request_id] = rec  # exports may repeat a line
                    if len(batch) >= batch_size:
                        await _write(store, batch, stats)
                        if progress or stats["read"] % (batch_size * 50) == 0:
                            sys.stderr.write(f"\r{name}: {stats['read']} lines read, {stats['inserted']} inserted")
                if batch:
                    await _write(store, batch, stats)
            finally:
                if fh is not sys.stdin.buffer:
                    fh.close()
            if progress:
                sys.stderr.write("\n")
    finally:
        await store.close()
    print(
        f"read {stats['read']} lines: {stats['request_lines']} request records, "
        f"{stats['inserted']} inserted, {stats['already_present']} already present, "
        f"{stats['unparseable']} unparseable, {stats['other_lines']} other lines"
    )
    return 0


async def _write(store, batch: dict, stats: dict) -> None:
    records = list(batch.values())
    batch.clear()
    inserted = await store.write(records)
    stats["inserted"] += inserted
    stats["already_present"] += len(records) - inserted
