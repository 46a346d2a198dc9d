"""`tallygate usage`: a usage report from the ledger, as a table or JSON."""

from __future__ import annotations

import sys

import orjson

from .db import CommandError, open_ledger


async def usage_command(args) -> int:
    from ..reports import ReportError, format_table, parse_group_by, parse_since, parse_time, usage_report

    try:
        start = parse_since(args.since)
        end = parse_time(args.until) if args.until else None
        group_by = parse_group_by(args.by)
    except ReportError as exc:
        raise CommandError(str(exc)) from None
    store = await open_ledger()
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
