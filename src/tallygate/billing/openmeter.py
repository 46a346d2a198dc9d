"""`tallygate billing export openmeter`: one CloudEvent per ledger row, in batches.

The cursor is the last row sent, by (ingested_at, request_id); a batch is sent, then the
cursor moves past it in the database. A crash between the two sends the batch again with
the same event ids, and OpenMeter keeps one event per (id, source).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from ..money import usd_text
from .config import ExportError, ExportOptions, OpenMeterConfig
from .db import ExportDB
from .windows import exported_before, load_state, save_cursor, save_state

RETRIES = 6
COLUMNS = (
    "request_id, created_at, ingested_at, tenant_id, api_key_id, model, upstream_model, provider, endpoint, "
    "status, status_code, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, cost_usd"
)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def cloudevent(db: ExportDB, row: tuple, cfg: OpenMeterConfig) -> dict:
    (rid, created, _ingested, tenant, key, model, upstream, provider, endpoint, status, code, prompt, completion,
     total, cached, reasoning, cost) = row  # fmt: skip
    return {
        "specversion": "1.0",
        "id": rid,
        "source": cfg.source,
        "type": cfg.event_type,
        "subject": tenant,
        "time": _iso(db.time(created)),
        "datacontenttype": "application/json",
        "data": {
            "model": model,
            "upstream_model": upstream,
            "provider": provider,
            "endpoint": endpoint,
            "api_key_id": key,
            "status": status,
            "status_code": code,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
            "cached_tokens": cached,
            "reasoning_tokens": reasoning,
            "cost_usd": usd_text(db.decimal(cost)),  # exact decimal text, never a float
        },
    }


def post_batch(cfg: OpenMeterConfig, events: list[dict], sleep: Callable[[float], None] = time.sleep) -> int:
    """POST the batch; returns how many 429s were waited out. Raises ExportError otherwise."""
    body = orjson.dumps(events)
    headers = {"Content-Type": "application/cloudevents-batch+json", "User-Agent": "tallygate-billing"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    delay, waited = 0.5, 0
    for attempt in range(RETRIES + 1):
        req = urllib.request.Request(f"{cfg.url}/api/v1/events", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
                return waited
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            if exc.code in (401, 403):
                raise ExportError(f"OpenMeter refused the API key (OPENMETER_API_KEY): {exc.code} {detail}") from None
            if exc.code == 429 or exc.code >= 500:
                if attempt == RETRIES:
                    raise ExportError(
                        f"OpenMeter kept answering {exc.code} after {RETRIES} retries: {detail}"
                    ) from None
                retry_after = exc.headers.get("Retry-After", "")
                waited += exc.code == 429
                sleep(min(float(retry_after), 30.0) if retry_after.isdigit() else delay)
                delay = min(delay * 2, 30.0)
                continue
            raise ExportError(f"OpenMeter refused the events: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            if attempt == RETRIES:
                raise ExportError(f"OpenMeter at {cfg.url} is not reachable: {exc}") from None
            sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


@dataclass
class OpenMeterRun:
    led: bool = True
    events: int = 0
    batches: int = 0
    rate_limited: int = 0
    first: list[dict] | None = None  # dry run: the first events


def export_openmeter(
    db: ExportDB, cfg: OpenMeterConfig, opts: ExportOptions, name: str = "openmeter", send=post_batch
) -> OpenMeterRun:
    run = OpenMeterRun()
    if not db.try_lead(name):
        run.led = False
        return run
    p, tp = db.dialect.placeholder, db.dialect.time_param
    now = db.now()
    state = load_state(db, name, opts, now, align=False)
    horizon = now - timedelta(seconds=opts.settle_seconds)
    while True:
        where = f"created_at >= {p} AND ingested_at <= {p}"
        params: list = [tp(state.since), tp(horizon)]
        if state.scanned_to is not None:
            # the plain bound lets the ingested_at index narrow the scan; the row comparison breaks ties
            where += f" AND ingested_at >= {p} AND (ingested_at, request_id) > ({p}, {p})"
            params += [tp(state.scanned_to), tp(state.scanned_to), state.last_request_id or ""]
        rows = db.fetch(
            f"SELECT {COLUMNS} FROM litellm_usage WHERE {where} ORDER BY ingested_at, request_id LIMIT {p}",
            [*params, opts.batch],
        )
        if not rows:
            break
        events = [cloudevent(db, r, cfg) for r in rows]
        if opts.dry_run:
            run.first = run.first or events[:5]
            run.events += len(events)
            if len(rows) < opts.batch:
                break
            state.scanned_to, state.last_request_id = db.time(rows[-1][2]), rows[-1][0]
            continue
        run.rate_limited += send(cfg, events)
        run.events += len(events)
        run.batches += 1
        state.scanned_to, state.last_request_id = db.time(rows[-1][2]), rows[-1][0]
        with db.transaction():
            save_state(db, name, state, now)
            save_cursor(db, name, exported_before(db, state.scanned_to, state.scanned_to), now)
        if len(rows) < opts.batch:
            break
    if state.new and not opts.dry_run and run.events == 0:
        with db.transaction():
            save_state(db, name, state, now)
    return run


def report(run: OpenMeterRun, opts: ExportOptions, write: Callable[[str], None] = print) -> None:
    if not run.led:
        write("another exporter leads this export (pg advisory lock held elsewhere): nothing done")
        return
    if opts.dry_run:
        write(f"dry run, nothing sent or saved: {run.events} event(s) would be sent")
        for e in run.first or []:
            write("  " + orjson.dumps(e).decode())
        return
    write(f"sent {run.events} event(s) in {run.batches} batch(es), 429s waited out {run.rate_limited}")
