"""Reading the usage ledger (Postgres or SQLite) and checking it against the log lines."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import psycopg

MESSAGES = [{"role": "user", "content": "hi"}]


def conninfo(env: dict) -> str:
    """A libpq connection string for the PG* variables in `env`."""
    return (f"host={env['PGHOST']} port={env.get('PGPORT', '5432')} user={env['PGUSER']} "
            f"dbname={env['PGDATABASE']}")


def pg_rows(env: dict, where: str = "true", params=()) -> list[dict]:
    with psycopg.connect(conninfo(env)) as conn:
        cur = conn.execute(f"SELECT * FROM litellm_usage WHERE {where} ORDER BY created_at", params)
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def sqlite_rows(path: Path, where: str = "1", params=()) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute(f"SELECT * FROM litellm_usage WHERE {where}", params)]
    conn.close()
    return rows


def send_mixed(gw, n: int, tenants=("t1", "t2", "t3")) -> None:
    """n requests, streamed and not, over several tenants, 8 at a time."""
    def one(i: int) -> None:
        c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                          default_headers={"X-Tenant-ID": tenants[i % len(tenants)]})
        fake = {"prompt_tokens": 100 + i, "completion_tokens": 10 + i % 7, "cached_tokens": i % 3}
        model = ("gpt-4o-mini", "gpt-4o", "my-unpriced-model")[i % 3]
        if i % 2:
            list(c.chat.completions.create(model=model, messages=MESSAGES, stream=True, extra_body={"fake": fake}))
        else:
            c.chat.completions.create(model=model, messages=MESSAGES, extra_body={"fake": fake})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def assert_rows_match_logs(rows: list[dict], logs: list[dict]) -> None:
    """One row per log record, and the same tokens, cost, tenant, model and stream flag."""
    assert len(rows) == len(logs)
    assert len({r["request_id"] for r in rows}) == len(rows)
    assert {r["request_id"] for r in rows} == {l["request_id"] for l in logs}
    for field in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        assert sum(r[field] for r in rows) == sum(l[field] for l in logs)
    row_cost = sum(Decimal(str(r["cost_usd"])) for r in rows)
    log_cost = sum(Decimal(l["cost_usd_exact"]) for l in logs)
    assert row_cost == log_cost and row_cost > 0
    by_id = {l["request_id"]: l for l in logs}
    for r in rows:
        l = by_id[r["request_id"]]
        assert Decimal(str(r["cost_usd"])) == Decimal(l["cost_usd_exact"])
        assert (r["tenant_id"], r["model"], bool(r["stream"])) == (l["tenant_id"], l["model"], l["stream"])
