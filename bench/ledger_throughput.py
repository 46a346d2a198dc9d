"""Ledger write throughput: rows/s of batched inserts from one process, using the gateway's
own ledger writer (`tallygate.sinks.ledger.LedgerWriter`) over its store
(`tallygate.store.open_store`: Postgres when PG*/DATABASE_URL is set, else SQLite).

    PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=test PGSSL=disable \\
        .venv/bin/python bench/ledger_throughput.py [--rows 100000] [--batch-sizes 100,500,2000]
    TALLYGATE_SQLITE_PATH=bench/.work/ledger-bench.db .venv/bin/python bench/ledger_throughput.py --sqlite

Records are fed the way the pipeline feeds them (`add()` in bursts, yielding to the event
loop between bursts), then the writer is closed (flush) and the rows are counted back by
tenant (a unique tenant per pass), so a pass only counts if every row landed.
Prints one markdown table; --json prints the raw numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def make_records(n: int, tenant: str):
    from tallygate.metering.record import UsageRecord, utcnow

    now = utcnow()
    out = []
    for i in range(n):
        out.append(UsageRecord(
            request_id=f"req_{uuid.uuid4().hex}", created_at=now, tenant_id=tenant,
            model="gpt-4o-mini", endpoint="/v1/chat/completions", stream=bool(i & 1),
            upstream_model="gpt-4o-mini-2024-07-18", provider="openai", status_code=200,
            status="ok", prompt_tokens=14, completion_tokens=7, total_tokens=21,
            cost_usd=Decimal("0.0000063"), price_source="bench", usage_source="provider",
            latency_ms=1.25, ttft_ms=0.5 if i & 1 else None,
        ))
    return out


async def one_pass(settings, rows: int, batch_size: int, burst: int, run_id: str) -> dict:
    from tallygate.sinks.ledger import LedgerWriter
    from tallygate.store import open_store

    store = open_store(settings)
    await store.connect()
    if await store.needs_migration():
        await store.migrate()
    tenant = f"bench-ledger-{run_id}-b{batch_size}"
    records = make_records(rows, tenant)
    writer = LedgerWriter(store, batch_size=batch_size, flush_interval=settings.ledger_flush_interval,
                          buffer_limit=max(settings.ledger_buffer_limit, rows + 1))
    writer.start()
    t0 = time.perf_counter()
    for i in range(0, rows, burst):
        writer.add(records[i:i + burst])
        await asyncio.sleep(0)
    fed = time.perf_counter() - t0
    await writer.close(time.monotonic() + 600)
    elapsed = time.perf_counter() - t0
    if store.dialect == "postgres":
        got = (await store.fetch("SELECT count(*) FROM litellm_usage WHERE tenant_id = %s", (tenant,)))[0][0]
    else:
        got = (await store.fetch("SELECT count(*) FROM litellm_usage WHERE tenant_id = ?", (tenant,)))[0][0]
    await store.close()
    return {
        "store": store.description, "batch_size": batch_size, "rows": rows, "rows_in_db": got,
        "rows_written": writer.rows_written, "dropped": writer.records_dropped,
        "write_failures": writer.write_failures, "seconds": round(elapsed, 3),
        "feed_seconds": round(fed, 3), "rows_per_s": round(rows / elapsed, 1),
    }


async def main_async(a) -> list[dict]:
    from tallygate import settings as settings_module

    env = dict(os.environ)
    if a.sqlite:
        for k in list(env):
            if k.startswith("PG") or k == "DATABASE_URL":
                env.pop(k)
        env.setdefault("TALLYGATE_SQLITE_PATH", str(ROOT / "bench" / ".work" / "ledger-bench.db"))
        Path(env["TALLYGATE_SQLITE_PATH"]).parent.mkdir(parents=True, exist_ok=True)
    else:
        for k, v in {"PGHOST": "127.0.0.1", "PGUSER": "postgres", "PGDATABASE": "test", "PGSSL": "disable"}.items():
            env.setdefault(k, v)
    env.setdefault("PROXY_GATEWAY_TOKEN", "bench")
    settings = settings_module.load(env)
    run_id = time.strftime("%m%d%H%M%S")
    out = []
    for bs in a.batch_sizes:
        r = await one_pass(settings, a.rows, bs, a.burst, run_id)
        out.append(r)
        print(f"batch {bs}: {r['rows_per_s']:,.0f} rows/s ({r['rows_in_db']}/{r['rows']} rows in {r['seconds']} s)",
              file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch-sizes", default="100,500,2000", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--burst", type=int, default=15, help="records added per event-loop turn (default 15)")
    ap.add_argument("--sqlite", action="store_true", help="use the SQLite store instead of Postgres")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(main_async(a))
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print("| store | batch size | rows | rows in DB | seconds | rows/s |")
    print("|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['store']} | {r['batch_size']} | {r['rows']:,} | {r['rows_in_db']:,} | {r['seconds']} | {r['rows_per_s']:,.0f} |")
    return 0 if all(r["rows_in_db"] == r["rows"] for r in res) else 1


if __name__ == "__main__":
    sys.exit(main())
