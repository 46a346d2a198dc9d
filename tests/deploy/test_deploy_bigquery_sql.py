"""The BigQuery SQL, executed: the log lines a real gateway printed, exported the way the sink
exports them (with a duplicate, as sinks may), against the rows it wrote to a real Postgres
ledger. The BigQuery dialect is translated to DuckDB with sqlglot; the Postgres half of the
reconciliation's federated query runs on Postgres itself."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from decimal import Decimal

import pytest
from cloud_run_logs import cloud_run_entry
from deploy_support import DEPLOY, PROJECT, cloudrun, parse_args
from logfilter import compile_filter

duckdb = pytest.importorskip("duckdb")
sqlglot = pytest.importorskip("sqlglot")
from sqlglot import exp  # noqa: E402

DATASET = "litellm_logs"
VALUES = {"PROJECT": PROJECT, "BQ_DATASET": DATASET, "LEDGER_CONNECTION": f"{PROJECT}.us.ledger"}
PAYLOAD_COLUMNS = {  # BigQuery's schema for the sink table: JSON numbers arrive as FLOAT64
    "message": "VARCHAR", "request_id": "VARCHAR", "tenant_id": "VARCHAR", "model": "VARCHAR",
    "status": "VARCHAR", "stream": "BOOLEAN", "prompt_tokens": "DOUBLE", "completion_tokens": "DOUBLE",
    "total_tokens": "DOUBLE", "cost_usd": "DOUBLE",
}


def sql(name: str) -> str:
    return cloudrun.substitute((DEPLOY / "bigquery" / name).read_text(), VALUES, name)


def to_duckdb(statement: exp.Expression) -> str:
    text = statement.sql(dialect="duckdb")
    # BigQuery NUMERIC keeps 9 decimals; DuckDB's bare DECIMAL would keep 3
    return text.replace("AS DECIMAL)", "AS DECIMAL(38, 12))")


def _post(gw, tenant: str, body: dict) -> None:
    req = urllib.request.Request(gw.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json", **gw.headers(tenant)})
    with urllib.request.urlopen(req, timeout=20) as resp:
        resp.read()


@pytest.fixture
def run_data(gateway, postgres_env):
    """(exported log entries, ledger rows) of three requests through a gateway on Postgres."""
    gw = gateway(TALLYGATE_LEDGER_MODE="sync", **postgres_env)
    msgs = [{"role": "user", "content": "hi"}]
    _post(gw, "acme", {"model": "gpt-4o-mini", "messages": msgs, "fake": {"prompt_tokens": 1000, "completion_tokens": 200}})
    _post(gw, "acme", {"model": "gpt-4o-mini", "messages": msgs, "stream": True,
                       "fake": {"prompt_tokens": 10, "completion_tokens": 5}})
    _post(gw, "beta", {"model": "gpt-4o", "messages": msgs, "fake": {"prompt_tokens": 300, "completion_tokens": 40}})
    records = gw.wait_records(3)
    gw.stop()  # flushes the ledger
    sink = compile_filter(cloudrun.sink_filter(cloudrun.build_config(parse_args("--project", PROJECT, "--image-tag", "x"))))
    entries = [e for e in (cloud_run_entry(l, project=PROJECT) for l in gw.output().splitlines() if l.strip())
               if sink(e)]
    assert len(entries) == len(records) == 3
    conninfo = " ".join(f"{k.lower().replace('pg', '', 1)}={v}" for k, v in postgres_env.items()
                        if k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"))
    conninfo = conninfo.replace("database=", "dbname=")
    return entries, conninfo


def load_logs(con, entries: list[dict], duplicate: bool = True) -> None:
    con.execute(f"ATTACH ':memory:' AS \"{PROJECT}\"")
    con.execute(f'CREATE SCHEMA "{PROJECT}"."{DATASET}"')
    struct = ", ".join(f"{k} {t}" for k, t in PAYLOAD_COLUMNS.items())
    table = f'"{PROJECT}"."{DATASET}".run_googleapis_com_stdout'
    con.execute(f"CREATE TABLE {table} (timestamp TIMESTAMPTZ, jsonPayload STRUCT({struct}))")
    rows = entries + (entries[:1] if duplicate else [])  # the sink does not de-duplicate
    for e in rows:
        payload = {k: e["jsonPayload"].get(k) for k in PAYLOAD_COLUMNS}
        con.execute(f"INSERT INTO {table} VALUES (CAST(? AS TIMESTAMPTZ), ?)",
                    [e["timestamp"], payload])


def test_tokens_cost_per_tenant_day_dedupes(run_data):
    entries, _ = run_data
    statements = sqlglot.parse(sql("tokens_cost_per_tenant_day.sql"), read="bigquery")
    assert len(statements) == 1
    con = duckdb.connect()
    load_logs(con, entries)
    rows = con.execute(to_duckdb(statements[0])).fetchall()
    cols = [d[0] for d in con.description]
    got = {r[cols.index("tenant_id")]: dict(zip(cols, r, strict=True)) for r in rows}
    assert set(got) == {"acme", "beta"}
    expected: dict[str, dict] = {}
    for e in entries:
        p = e["jsonPayload"]
        t = expected.setdefault(p["tenant_id"], {"requests": 0, "total_tokens": 0, "cost": Decimal(0)})
        t["requests"] += 1
        t["total_tokens"] += int(p["total_tokens"])
        t["cost"] += Decimal(repr(p["cost_usd"]))
    for tenant, want in expected.items():
        assert got[tenant]["requests"] == want["requests"]  # the duplicated line counted once
        assert got[tenant]["total_tokens"] == want["total_tokens"]
        assert got[tenant]["failed_requests"] == 0
        assert abs(Decimal(str(got[tenant]["cost_usd"])) - want["cost"]) < Decimal("0.000001")
    assert got["acme"]["total_tokens"] == 1215 and got["beta"]["total_tokens"] == 340
    assert got["acme"]["day_utc"] == dt.datetime.now(dt.UTC).date()


def _reconcile_sql(ledger_table: str, start: dt.datetime, end: dt.datetime) -> tuple[str, str]:
    """The reconciliation's SELECT for DuckDB, and the Postgres query inside EXTERNAL_QUERY."""
    statements = sqlglot.parse(sql("reconcile_ledger_vs_logs.sql"), read="bigquery")
    assert [type(s).__name__ for s in statements][-1] == "Select"
    declared = {s.this.name if hasattr(s.this, "name") else str(s.this) for s in statements[:-1]}
    select = statements[-1]
    inner = None
    for table in list(select.find_all(exp.Table)):
        if isinstance(table.this, exp.Anonymous) and table.this.name.upper() == "EXTERNAL_QUERY":
            conn, query = table.this.expressions
            assert conn.this == VALUES["LEDGER_CONNECTION"]
            inner = query.this
            table.replace(exp.to_table(ledger_table))
    assert inner is not None
    bounds = {"window_start": start, "window_end": end}
    for col in list(select.find_all(exp.Column)):
        if col.name in bounds and not col.table:
            col.replace(exp.cast(exp.Literal.string(bounds[col.name].isoformat()), "TIMESTAMPTZ"))
    assert "window_start" in sql("reconcile_ledger_vs_logs.sql") and declared
    return to_duckdb(select), inner


def test_reconcile_ledger_vs_logs(run_data):
    import psycopg

    entries, conninfo = run_data
    now = dt.datetime.now(dt.UTC)
    query, inner = _reconcile_sql("ledger_src", now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    with psycopg.connect(conninfo) as pg:  # the federated half, on the real ledger
        cur = pg.execute(inner)
        names = [d.name for d in cur.description]
        ours = {e["jsonPayload"]["request_id"] for e in entries}
        # the session's database may hold rows of other tests
        ledger = [row for row in (dict(zip(names, r, strict=True)) for r in cur.fetchall()) if row["request_id"] in ours]
    assert len(ledger) == 3
    assert names == ["request_id", "created_at", "tenant_id", "model", "prompt_tokens",
                     "completion_tokens", "total_tokens", "cost_usd"]

    def run(ledger_rows: list[dict]) -> list[tuple]:
        con = duckdb.connect()
        load_logs(con, entries)
        con.execute("CREATE TABLE ledger_src (request_id VARCHAR, created_at TIMESTAMPTZ, tenant_id VARCHAR, "
                    "model VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT, total_tokens BIGINT, "
                    "cost_usd DOUBLE)")
        for r in ledger_rows:
            con.execute("INSERT INTO ledger_src VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [r[n] for n in names])
        return [(row[0], row[1]) for row in con.execute(query).fetchall()]

    assert run(ledger) == []  # the two copies agree (and the duplicated log line is not a problem)

    ids = sorted(r["request_id"] for r in ledger)
    tampered = [dict(r) for r in ledger if r["request_id"] != ids[0]]
    for r in tampered:
        if r["request_id"] == ids[1]:
            r["cost_usd"] += 0.001
        if r["request_id"] == ids[2]:
            r["total_tokens"] += 1
    tampered.append({**ledger[0], "request_id": "req_only_in_ledger"})
    assert sorted(run(tampered)) == sorted([
        ("missing_in_ledger", ids[0]), ("cost_mismatch", ids[1]), ("tokens_mismatch", ids[2]),
        ("missing_in_logs", "req_only_in_ledger")])
