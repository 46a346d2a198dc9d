"""The ledger's batch insert with and without the rollups, side by side.

    .venv/bin/python bench/ledger_write.py [--rows 50000] [--batch-sizes 100,500] [--rounds 3]

Databases of its own, written in alternating rounds through one connection each, the
gateway's way (one statement, the rows as one JSON parameter, autocommit):
scale_lw_before, the 0003 schema and the plain insert; scale_lw_upsert, the current schema
and the statement 0004 shipped (the rows, then one upsert a rollup group, in one
statement; without its sealed-day step); scale_lw_after, the writer's statement
(store/postgres.py: the rows, then one delta row a group appended), each round followed by
the fold the gateway runs every 2 s (store/rollups.py fold_deltas), its CPU counted apart.
Prints rows/s, and the CPU a row of the client and of the Postgres backend
(/proc/PID/stat of pg_backend_pid(): the server runs on this machine). Rows carry the
current time; --groups: how many distinct (tenant, key, model) a batch spreads over (each
is one rollup row to update or one delta row to append).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TICKS = os.sysconf("SC_CLK_TCK")


def records(n: int, groups: int = 60):
    from tallygate.metering.record import UsageRecord

    now = datetime.now(UTC)
    return [
        UsageRecord(
            request_id=f"req_{uuid.uuid4().hex}", created_at=now, tenant_id=f"tenant-{i % groups % 20}",
            api_key_id=f"key-{i % groups}", model=("gpt-4o-mini", "gpt-4o", "o3", "gpt-4.1")[i % groups % 4],
            endpoint="/v1/chat/completions", stream=bool(i & 1), upstream_model="gpt-4o-mini-2024-07-18",
            status_code=200, status="ok", prompt_tokens=14, completion_tokens=7, total_tokens=21,
            cost_usd=Decimal("0.0000063"), price_source="genai-prices", usage_source="provider", latency_ms=1.25,
        )
        for i in range(n)
    ]


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def setup(name: str, upto: int) -> None:
    import psycopg

    from tallygate.store.migrations import migrations

    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={name}", autocommit=True) as conn:
        for m in migrations("postgres"):
            if m.version <= upto:
                conn.execute(m.sql)


def upsert_statement() -> str:
    """The writer's statement as migration 0004 shipped it (rows, then an upsert a group),
    on the current rollup columns, without its sealed-day step: for comparison."""
    from tallygate.store import postgres, rollups
    from tallygate.store.dialect import POSTGRES

    return (f"WITH ins AS ({postgres._ROWS_SQL} RETURNING {', '.join(rollups.ROW_INPUTS)}, latency_ms), "
            f"up AS ({rollups.upsert_sql(POSTGRES, rollups.aggregate_rows_sql(POSTGRES, 'ins'))} RETURNING 1) "
            "SELECT count(*) FROM ins")


def one_round(name: str, sql: str, recs, batch: int, fold: bool = False) -> dict:
    import orjson
    import psycopg

    from tallygate.store.postgres import _json_default
    from tallygate.store.rollups import _fold_sql

    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={name}", autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        server0, client0, t0 = backend_cpu(pid), time.process_time(), time.perf_counter()
        for i in range(0, len(recs), batch):
            payload = orjson.dumps([r.ledger_row() for r in recs[i:i + batch]], default=_json_default).decode()
            conn.execute(sql, (payload,))
        wall = time.perf_counter() - t0
        server, client = backend_cpu(pid) - server0, time.process_time() - client0
        folded = backend_cpu(pid)
        if fold:
            conn.execute(_fold_sql())
        folded = backend_cpu(pid) - folded
    n = len(recs)
    return {"rows_per_s": n / wall, "server_us": server / n * 1e6, "client_us": client / n * 1e6,
            "fold_us": folded / n * 1e6}


def sqlite_rounds(rows: int, batch: int, rounds: int, groups: int) -> dict[str, float]:
    """SQLite: the plain executemany insert (0003) against the store's batch + rollups transaction."""
    import sqlite3
    import tempfile

    from tallygate.metering.record import LEDGER_COLUMNS
    from tallygate.store import sqlite as store_sqlite
    from tallygate.store.migrations import migrations

    plain = (f"INSERT INTO litellm_usage ({', '.join(LEDGER_COLUMNS)}) VALUES "
             f"({', '.join('?' for _ in LEDGER_COLUMNS)}) ON CONFLICT (request_id) DO NOTHING")
    out: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        before = sqlite3.connect(f"{tmp}/before.db", isolation_level=None)
        before.execute("PRAGMA journal_mode=WAL")
        before.execute("PRAGMA synchronous=NORMAL")
        for m in migrations("sqlite"):
            if m.version <= 3:
                for statement in m.sql.split(";\n"):
                    if statement.strip():
                        before.execute(statement)
        after = store_sqlite.SqliteStore(f"{tmp}/after.db")
        after._open()
        after._migrate()
        for _ in range(rounds):
            recs = [store_sqlite._row(r) for r in records(rows, groups)]
            t = time.perf_counter()
            for i in range(0, rows, batch):
                before.execute("BEGIN")
                before.executemany(plain, recs[i:i + batch])
                before.execute("COMMIT")
            out["before"].append(rows / (time.perf_counter() - t))
            recs = [store_sqlite._row(r) for r in records(rows, groups)]
            t = time.perf_counter()
            for i in range(0, rows, batch):
                after._write(recs[i:i + batch])
            out["after"].append(rows / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch-sizes", default="100,500", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--groups", default="1,60", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--sqlite", action="store_true", help="the SQLite store instead (a temporary directory)")
    a = ap.parse_args()
    if a.sqlite:
        print("| SQLite | batch | groups a batch | rows/s before (insert) | rows/s after (insert + rollups) |")
        print("|---|---|---|---|---|")
        for batch in a.batch_sizes:
            for groups in a.groups:
                r = sqlite_rounds(a.rows, batch, a.rounds, groups)
                print(f"| | {batch} | {groups} | {r['before']:,.0f} | {r['after']:,.0f} |", flush=True)
        return 0
    from tallygate.store import postgres

    before_sql = postgres._ROWS_SQL.replace("(request_id, created_at)", "(request_id)")
    statements = (("before", "insert, 0003 table", "scale_lw_before", 3, before_sql, False),
                  ("upsert", "insert + upsert a group (0004's statement)", "scale_lw_upsert", 99,
                   upsert_statement(), False),
                  ("after", "insert + delta a group, then the fold", "scale_lw_after", 99, postgres.INSERT_SQL, True))
    for _, _, db, upto, _, _ in statements:
        setup(db, upto)
    print("| statement | batch | groups a batch | rows/s (median) | server CPU us/row | + fold us/row | "
          "client CPU us/row |")
    print("|---|---|---|---|---|---|---|")
    for batch in a.batch_sizes:
        for groups in a.groups:
            results: dict[str, list[dict]] = {label: [] for label, *_ in statements}
            for _ in range(a.rounds):
                for label, _, db, _, sql, fold in statements:
                    results[label].append(one_round(db, sql, records(a.rows, groups), batch, fold))
            for label, what, *_ in statements:
                rs = results[label]
                fold_us = statistics.median(r["fold_us"] for r in rs)
                print(f"| {what} | {batch} | {groups} | {statistics.median(r['rows_per_s'] for r in rs):,.0f} | "
                      f"{statistics.median(r['server_us'] for r in rs):.1f} | "
                      f"{f'{fold_us:.1f}' if label == 'after' else '-'} | "
                      f"{statistics.median(r['client_us'] for r in rs):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
