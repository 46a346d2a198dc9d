"""CLI commands that talk to the ledger database: db, ledger replay, usage, keys."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

import orjson

from . import settings as settings_module
from .metering.record import STATUSES, UsageRecord
from .settings import SettingsError


class CommandError(Exception):
    pass


async def _store(schema_required: bool = True):
    """The configured store, connected. Only `db init` (and the server, with
    TALLYGATE_AUTO_MIGRATE) changes a schema: every other command needs it in place
    already and says so, rather than create tables in whatever database PG* names."""
    from pathlib import Path

    from .store import open_store

    try:
        settings = settings_module.load()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None
    store = open_store(settings)
    if (schema_required and store.dialect == "sqlite" and settings.sqlite_path != ":memory:"
            and not Path(settings.sqlite_path).exists()):
        raise CommandError(f"no ledger at {store.description}: run `tallygate db init` first "
                           "(or point PG*/DATABASE_URL/TALLYGATE_SQLITE_PATH at the ledger)")
    try:
        await store.connect()
        missing = schema_required and await store.needs_migration()
    except Exception as exc:
        await store.close()
        raise CommandError(f"cannot use the ledger: {exc}") from None
    if missing:
        await store.close()
        raise CommandError(f"the ledger schema is missing or old in {store.description}: "
                           "run `tallygate db init` first")
    return store


async def dispatch(args) -> int:
    from .store import StoreUnavailable

    try:
        return await _dispatch(args)
    except StoreUnavailable as exc:  # the database went away mid-command
        raise CommandError(f"cannot use the ledger: {exc}") from None


async def _dispatch(args) -> int:
    if args.command == "db":
        if args.db_command == "schema":
            from .store.migrations import schema_sql

            sys.stdout.write(schema_sql("postgres"))
            return 0
        store = await _store(schema_required=False)
        try:
            applied = await store.migrate()
        finally:
            await store.close()
        print(f"{store.description}: schema up to date" + (f" (applied {applied})" if applied else ""))
        return 0
    if args.command == "ledger":
        return await replay(args.files, args.batch_size)
    if args.command == "usage":
        return await usage(args)
    if args.command == "keys":
        from .keys import keys_command

        store = await _store()
        try:
            return await keys_command(store, args)
        finally:
            await store.close()
    raise CommandError(f"unknown command {args.command}")


async def usage(args) -> int:
    from .reports import ReportError, format_table, parse_group_by, parse_since, parse_time, usage_report

    try:
        start = parse_since(args.since)
        end = parse_time(args.until) if args.until else None
        group_by = parse_group_by(args.by)
    except ReportError as exc:
        raise CommandError(str(exc)) from None
    store = await _store()
    try:
        rows = await usage_report(store, start, end, args.tenant, args.key, group_by)
    finally:
        await store.close()
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        until = end.isoformat() if end else "now"
        print(f"usage from {start.isoformat(timespec='seconds')} to {until}, by {', '.join(group_by)}\n")
        print(format_table(rows))
    return 0


# -- replay ------------------------------------------------------------------

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
    when = payload.get("time") or doc.get("timestamp") or doc.get("receiveTimestamp")
    if not isinstance(when, str):
        raise ValueError("no time")
    created = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    exact = payload.get("cost_usd_exact")
    try:
        cost = Decimal(exact) if isinstance(exact, str) else Decimal(str(payload.get("cost_usd", 0)))
    except InvalidOperation:
        raise ValueError("bad cost") from None
    rid, tenant, model = payload.get("request_id"), payload.get("tenant_id"), payload.get("model")
    if not all(isinstance(v, str) and v for v in (rid, tenant, model)):
        raise ValueError("missing request_id, tenant_id or model")
    status = payload.get("status", "ok")

    def num(name, kind=int):
        value = payload.get(name)
        if value is None:
            return kind(0)
        return kind(value)

    ttft = payload.get("ttft_ms")
    return UsageRecord(
        request_id=rid, created_at=created, tenant_id=tenant, model=model,
        endpoint=str(payload.get("endpoint", "")), stream=bool(payload.get("stream", False)),
        api_key_id=payload.get("api_key_id"), upstream_model=payload.get("upstream_model"),
        provider=str(payload.get("provider", "openai")), status_code=num("status_code"),
        status=status if status in STATUSES else "ok",
        prompt_tokens=num("prompt_tokens"), completion_tokens=num("completion_tokens"),
        total_tokens=num("total_tokens"), cached_tokens=num("cached_tokens"),
        reasoning_tokens=num("reasoning_tokens"), cost_usd=cost,
        price_source=str(payload.get("price_source", "unknown")),
        usage_source=str(payload.get("usage_source", "provider")),
        latency_ms=num("latency_ms", float), ttft_ms=None if ttft is None else float(ttft),
    )


async def replay(files: list[str], batch_size: int = 1000) -> int:
    store = await _store()
    stats = {"read": 0, "request_lines": 0, "inserted": 0, "already_present": 0,
             "unparseable": 0, "other_lines": 0}
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
    print(f"read {stats['read']} lines: {stats['request_lines']} request records, "
          f"{stats['inserted']} inserted, {stats['already_present']} already present, "
          f"{stats['unparseable']} unparseable, {stats['other_lines']} other lines")
    return 0


async def _write(store, batch: dict, stats: dict) -> None:
    records = list(batch.values())
    batch.clear()
    inserted = await store.write(records)
    stats["inserted"] += inserted
    stats["already_present"] += len(records) - inserted
