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


# ----------------------------------------------------------------------------- margin

BILLING = f"{PROJECT}.billing.gcp_billing_export_v1_0A1B2C_3D4E5F_6A7B8C"
STRIPE = f"{PROJECT}.stripe"


def test_margin_per_tenant_day():
    """The margin query on rows in the exports' documented schemas: the standard Cloud Billing
    export (service, project, cost, currency_conversion_rate, credits, cost_type), Stripe's
    invoices / invoice_line_items / customers_metadata, and the log sink's table."""
    import orjson

    from tallygate.metering.record import UsageRecord
    from tallygate.sinks.jsonlog import log_entry

    today = dt.datetime.now(dt.UTC).date()
    day = today - dt.timedelta(days=1)
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    records = [UsageRecord(f"req_a{i}", noon, "acme", "gpt-4o-mini", "/v1/chat/completions", False,
                           cost_usd=Decimal("0.5"), price_source="genai-prices", latency_ms=800.0, total_tokens=10)
               for i in range(3)]
    records.append(UsageRecord("req_b0", noon, "beta", "gpt-4o", "/v1/chat/completions", False,
                               cost_usd=Decimal("0.25"), price_source="genai-prices", latency_ms=80.0))
    entries = [cloud_run_entry(orjson.dumps(log_entry(r)).decode(), project=PROJECT) for r in records]

    con = duckdb.connect()
    load_logs(con, entries)  # with one duplicated line
    con.execute(f'CREATE SCHEMA "{PROJECT}"."billing"')
    con.execute(f'CREATE SCHEMA "{PROJECT}"."stripe"')
    billing = '"{}"."billing"."{}"'.format(PROJECT, BILLING.rsplit(".", 1)[1])
    con.execute(f"CREATE TABLE {billing} (billing_account_id VARCHAR, service STRUCT(id VARCHAR, description VARCHAR), "
                "sku STRUCT(id VARCHAR, description VARCHAR), usage_start_time TIMESTAMPTZ, usage_end_time TIMESTAMPTZ, "
                "project STRUCT(id VARCHAR, number VARCHAR, name VARCHAR), cost DOUBLE, currency VARCHAR, "
                "currency_conversion_rate DOUBLE, cost_type VARCHAR, "
                "credits STRUCT(name VARCHAR, amount DOUBLE, full_name VARCHAR, id VARCHAR, type VARCHAR)[])")

    def cost(service, amount, *, project=PROJECT, currency="USD", rate=1.0, cost_type="regular", credits=()):
        con.execute(f"INSERT INTO {billing} VALUES ('0A1B2C-3D4E5F-6A7B8C', {{'id': 'x', 'description': ?}}, "
                    "{'id': 's', 'description': 'sku'}, ?, ?, {'id': ?, 'number': '1', 'name': 'n'}, ?, ?, ?, ?, ?)",
                    [service, noon, noon + dt.timedelta(hours=1), project, amount, currency, rate, cost_type,
                     [{"name": "free tier", "amount": c, "full_name": "", "id": "", "type": "FREE_TIER"} for c in credits]])

    cost("Cloud Run", 4.0, credits=(-1.0,))  # 3 USD net
    cost("Cloud Run", 0.92, currency="EUR", rate=0.92)  # 1 USD
    cost("Cloud SQL", 2.0)
    cost("Cloud Logging", 0.4)
    cost("Cloud Run", 100.0, project="another-project")  # not this service's
    cost("Compute Engine", 50.0)  # not a service the gateway uses
    cost("Cloud Run", 0.5, cost_type="tax")  # tax is not cost
    con.execute(f'CREATE TABLE "{PROJECT}"."stripe".invoices (id VARCHAR, customer_id VARCHAR, status VARCHAR)')
    con.execute(f'CREATE TABLE "{PROJECT}"."stripe".invoice_line_items (id VARCHAR, invoice_id VARCHAR, '
                "amount BIGINT, currency VARCHAR, period_start TIMESTAMPTZ, period_end TIMESTAMPTZ)")
    con.execute(f'CREATE TABLE "{PROJECT}"."stripe".customers_metadata (customer_id VARCHAR, key VARCHAR, value VARCHAR)')
    start = dt.datetime.combine(day - dt.timedelta(days=10), dt.time(0), tzinfo=dt.UTC)
    con.execute(f'INSERT INTO "{PROJECT}"."stripe".invoices VALUES (\'in_a\', \'cus_a\', \'paid\'), '
                "('in_b', 'cus_b', 'open'), ('in_draft', 'cus_b', 'draft')")
    con.execute(f'INSERT INTO "{PROJECT}"."stripe".invoice_line_items VALUES (?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?), '
                "(?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?)",
                ["il_a", "in_a", 30000, "usd", start, start + dt.timedelta(days=30),  # 10 USD a day
                 "il_b", "in_b", 500, "usd", noon, noon,  # a one-off 5 USD on the day
                 "il_draft", "in_draft", 99900, "usd", noon, noon,  # not billed yet
                 "il_eur", "in_b", 700, "eur", noon, noon])  # not a USD line
    con.execute(f'INSERT INTO "{PROJECT}"."stripe".customers_metadata VALUES (\'cus_a\', \'tenant_id\', \'acme\'), '
                "('cus_a', 'plan', 'pro'), ('cus_b', 'tenant_id', 'beta')")

    values = {**VALUES, "BILLING_EXPORT_TABLE": BILLING, "STRIPE_DATASET": STRIPE}
    text = cloudrun.substitute((DEPLOY / "bigquery" / "margin_per_tenant_day.sql").read_text(), values, "margin")
    (statement,) = sqlglot.parse(text, read="bigquery")
    rows = con.execute(to_duckdb(statement)).fetchall()
    cols = [d[0] for d in con.description]
    # DuckDB's date + interval is a TIMESTAMP where BigQuery's DATE_ADD keeps a DATE
    got = {(r[0].date() if isinstance(r[0], dt.datetime) else r[0], r[1]): dict(zip(cols, r, strict=True))
           for r in rows}

    def money(row, name):
        return Decimal(str(row[name])).quantize(Decimal("0.000001"))

    acme, beta = got[(day, "acme")], got[(day, "beta")]
    assert acme["requests"] == 3 and beta["requests"] == 1  # the duplicated line counted once
    # acme: 3 of the day's 4 requests -> 3/4 of 4 USD Cloud Run, 2 USD Cloud SQL, 0.4 USD Logging
    assert [money(acme, c) for c in ("billed_usd", "upstream_usd", "cloud_run_usd", "cloud_sql_usd",
                                     "logging_usd", "margin_usd")] == [
        Decimal(v) for v in ("10", "1.5", "3", "1.5", "0.3", "3.7")]
    assert [money(beta, c) for c in ("billed_usd", "upstream_usd", "cloud_run_usd", "cloud_sql_usd",
                                     "logging_usd", "margin_usd")] == [
        Decimal(v) for v in ("5", "0.25", "1", "0.5", "0.1", "3.15")]
    # a day without requests: billed, no cost
    quiet = got[(day - dt.timedelta(days=5), "acme")]
    assert quiet["requests"] == 0 and money(quiet, "margin_usd") == Decimal("10")
    # never a future day, and only the tenants of the exports
    assert max(d for d, _ in got) <= today and {t for _, t in got} == {"acme", "beta"}
