"""The ledgers: a fresh database for each run, and the rows counted after each system."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .config import BENCH_DB, HOST, LEDGER_TABLE, VENV_PY, WORK
from .host import sh


def fresh_bench_db() -> None:
    """Drop and create the benchmark's ledger database (tallygate migrates it on start)."""
    for sql in (f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)", f"CREATE DATABASE {BENCH_DB}"):
        r = sh(["psql", "-h", HOST, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql])
        if r.returncode != 0:
            raise RuntimeError(f"{sql}: {r.stderr.strip()}")


def empty_pg_ledger() -> None:
    """Empty the ledger table once its rows are counted: Postgres shares core 1 with the fake
    upstream and wrk here, and an insert into a table of millions of rows costs it about half
    as much again as one into a small table, so every system's rows start from the same state."""
    sh(["psql", "-h", HOST, "-U", "postgres", "-d", BENCH_DB, "-qc", f"TRUNCATE {LEDGER_TABLE}"])


def fresh_ledgers(systems) -> None:
    """Every run starts with empty ledgers."""
    if any(s.startswith("tallygate-pg") or s == "litellm-tallygate" for s in systems):
        fresh_bench_db()
    if any(s.startswith("tallygate-sqlite") for s in systems):
        for suffix in ("", "-wal", "-shm"):
            (WORK / f"tallygate-bench.db{suffix}").unlink(missing_ok=True)


def count_pg(tenants: list[str]) -> dict[str, int] | str:
    sql = f"SELECT tenant_id, count(*) FROM {LEDGER_TABLE} WHERE tenant_id = ANY(%s) GROUP BY tenant_id"
    code = (
        "import json,sys,psycopg\n"
        "t=json.loads(sys.argv[1])\n"
        f"c=psycopg.connect(host='{HOST}',user='postgres',dbname='{BENCH_DB}',sslmode='disable')\n"
        f"print(json.dumps(dict(c.execute({sql!r},(t,)).fetchall())))\n"
    )
    r = sh([str(VENV_PY), "-c", code, json.dumps(tenants)], timeout=60)
    if r.returncode != 0:
        return "error: " + r.stderr.strip().splitlines()[-1][:200] if r.stderr.strip() else "error"
    return json.loads(r.stdout)


def count_sqlite(path: Path, tenants: list[str]) -> dict[str, int] | str:
    import sqlite3

    if not path.exists():
        return f"error: {path} missing"
    try:
        con = sqlite3.connect(str(path), timeout=10)
        q = f"SELECT tenant_id, count(*) FROM {LEDGER_TABLE} WHERE tenant_id IN ({','.join('?' * len(tenants))}) GROUP BY tenant_id"
        res = dict(con.execute(q, tenants).fetchall())
        con.close()
        return res
    except sqlite3.Error as e:
        return f"error: {e}"


def count_log_lines(logfile: Path, tenants: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(tenants, 0)
    try:
        with open(logfile, "rb") as f:
            for line in f:
                if b'"litellm_request"' not in line:
                    continue
                m = re.search(rb'"tenant_id":\s*"([^"]+)"', line)
                if m:
                    t = m.group(1).decode()
                    if t in counts:
                        counts[t] += 1
    except OSError:
        pass
    return counts
