"""The usage ledger: exactly one row per request, on Postgres and on SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import openai
import psycopg
import pytest

from support import MASTER, ROOT, admin_call, metrics_text, wait_until
from support.ledger import MESSAGES, assert_rows_match_logs, conninfo, pg_rows, send_mixed, sqlite_rows


def test_schema_file_is_generated_and_idempotent(postgres_env):
    from tallygate.store.migrations import schema_sql

    assert (ROOT / "db" / "schema.sql").read_text() == schema_sql("postgres")
    url = f"postgres://postgres@127.0.0.1:5432/{postgres_env['PGDATABASE']}"
    for _ in range(2):  # the guide's way, twice
        subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(ROOT / "db/schema.sql")],
                       check=True, capture_output=True)
    with psycopg.connect(conninfo(postgres_env)) as conn:
        cols = {r[0]: r[1] for r in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='litellm_usage'")}
    assert cols["cost_usd"] == "numeric" and cols["created_at"] == "timestamp with time zone"
    for c in ("request_id", "tenant_id", "api_key_id", "model", "upstream_model", "provider", "endpoint",
              "stream", "status_code", "status", "prompt_tokens", "completion_tokens", "total_tokens",
              "cached_tokens", "reasoning_tokens", "price_source", "usage_source", "latency_ms", "ttft_ms"):
        assert c in cols


def test_postgres_concurrent_requests_exactly_n_rows(gateway, postgres_env):
    gw = gateway(**postgres_env)
    send_mixed(gw, 60)
    logs = gw.wait_records(60)
    assert gw.stop() == 0
    rows = pg_rows(postgres_env, "request_id = ANY(%s)", ([l["request_id"] for l in logs],))
    assert_rows_match_logs(rows, logs)
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["usage_source"] for r in rows} == {"provider"}
    assert {r["price_source"] for r in rows} == {"genai-prices", "unknown"}


def test_sqlite_concurrent_requests_exactly_n_rows(gateway, tmp_path):
    gw = gateway()
    send_mixed(gw, 40)
    logs = gw.wait_records(40)
    assert gw.stop() == 0
    assert_rows_match_logs(sqlite_rows(tmp_path / "ledger.db"), logs)


def test_postgres_down_then_up_all_rows_arrive_once(gateway, private_postgres):
    private_postgres.start()
    env = private_postgres.env()
    gw = gateway(**env, TALLYGATE_LEDGER_FLUSH_INTERVAL=0.05)
    send_mixed(gw, 10, tenants=("before",))
    gw.wait_records(10)
    private_postgres.stop()
    send_mixed(gw, 20, tenants=("during",))  # requests still succeed
    metrics = metrics_text(gw.url + "/metrics")
    assert "tallygate_ledger_buffer_depth" in metrics
    wait_until(lambda: "ledger write failed, will retry" in gw.output(), message="a ledger write failing")
    private_postgres.start()
    send_mixed(gw, 10, tenants=("after",))
    logs = gw.wait_records(40)

    def all_rows() -> bool:
        try:
            return len(pg_rows(env)) >= 40
        except psycopg.OperationalError:  # the database is still starting
            return False

    wait_until(all_rows, timeout=20, message="40 rows in the restarted database")
    assert gw.stop() == 0
    rows = pg_rows(env)
    assert_rows_match_logs(rows, logs)
    out = gw.output()
    assert "ledger write failed, will retry" in out and "ledger writes recovered" in out


def test_buffer_overflow_is_counted_and_named(gateway, private_postgres):
    private_postgres.start()
    env = private_postgres.env()
    gw = gateway(**env, TALLYGATE_LEDGER_BUFFER_LIMIT=5, TALLYGATE_SHUTDOWN_GRACE=1)
    private_postgres.stop()
    try:
        send_mixed(gw, 12, tenants=("overflow",))
        logs = gw.wait_records(12)

        def error_lines() -> list[dict]:
            return [l for l in gw.lines() if l.get("severity") == "ERROR" and "records_not_written" in l]

        wait_until(lambda: sum(e["records_not_written"] for e in error_lines()) >= 7, timeout=5,
                   message="7 records named as not written")
        errors = error_lines()
        lost = sum(e["records_not_written"] for e in errors)
        assert lost == 7
        named = {rid for e in errors for rid in e["request_ids"]}
        assert named <= {l["request_id"] for l in logs} and len(named) == 7
        metrics = metrics_text(gw.url + "/metrics")
        assert "tallygate_ledger_records_not_written_total 7.0" in metrics
    finally:
        gw.stop()
        private_postgres.start()


def run_cli(args: list[str], env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TALLYGATE_", "DATABASE_URL"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "tallygate", *args], env=full, capture_output=True, text=True,
                          input=stdin, timeout=60)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_replay_rebuilds_missing_rows_once(gateway, postgres_env, tmp_path, backend):
    env = dict(postgres_env) if backend == "postgres" else {"TALLYGATE_SQLITE_PATH": str(tmp_path / "ledger.db")}
    gw = gateway(**env)
    tenant = f"replay-{backend}"
    send_mixed(gw, 12, tenants=(tenant,))
    logs = gw.wait_records(12)
    gw.stop()
    lost = [l["request_id"] for l in logs[::3]]
    if backend == "postgres":
        with psycopg.connect(conninfo(env)) as conn:
            conn.execute("DELETE FROM litellm_usage WHERE request_id = ANY(%s)", (lost,))
    else:
        conn = sqlite3.connect(env["TALLYGATE_SQLITE_PATH"])
        conn.executemany("DELETE FROM litellm_usage WHERE request_id = ?", [(r,) for r in lost])
        conn.commit()
        conn.close()
    # a Cloud Logging export wraps the payload: replay reads both shapes
    log_file = tmp_path / "export.jsonl"
    with open(log_file, "w") as fh:
        fh.write(gw.output())
        for l in logs[:2]:
            fh.write(json.dumps({"jsonPayload": l, "timestamp": l["time"], "severity": "INFO"}) + "\n")
        fh.write("not json\n")
    first = run_cli(["ledger", "replay", str(log_file)], env)
    assert first.returncode == 0, first.stderr
    assert f"{len(lost)} inserted" in first.stdout and "1 unparseable" in first.stdout
    second = run_cli(["ledger", "replay", str(log_file)], env)
    assert "0 inserted" in second.stdout and "12 already present" in second.stdout
    rows = (pg_rows(env, "tenant_id = %s", (tenant,)) if backend == "postgres"
            else sqlite_rows(Path(env["TALLYGATE_SQLITE_PATH"]), "tenant_id = ?", (tenant,)))
    assert_rows_match_logs(rows, logs)


def test_usage_report_cli_and_admin_api(gateway, postgres_env):
    gw = gateway(**postgres_env)
    send_mixed(gw, 9, tenants=("rep-a", "rep-b", "rep-c"))
    logs = gw.wait_records(9)

    def usage_rows() -> list[dict]:
        data = admin_call(gw.url + "/admin/usage?group_by=tenant,model&start=1h")[2]["data"]
        return [d for d in data if d["tenant_id"].startswith("rep-")]

    # rows land within the ledger's flush interval
    wait_until(lambda: sum(d["requests"] for d in usage_rows()) >= 9, message="the 9 requests in /admin/usage")
    mine = usage_rows()
    assert sum(d["requests"] for d in mine) == 9
    assert sum(Decimal(d["cost_usd"]) for d in mine) == sum(Decimal(l["cost_usd_exact"]) for l in logs)
    assert sum(d["total_tokens"] for d in mine) == sum(l["total_tokens"] for l in logs)
    # the ledger's column names group like the short names the filters' counterparts use
    req = urllib.request.Request(gw.url + "/admin/usage?group_by=tenant_id,model&start=1h",
                                 headers={"Authorization": f"Bearer {MASTER}"})
    by_column = [d for d in json.loads(urllib.request.urlopen(req).read())["data"]
                 if d["tenant_id"].startswith("rep-")]
    assert by_column == mine
    for bad in ("group_by=nope", "start=yesterday"):
        req = urllib.request.Request(gw.url + "/admin/usage?" + bad, headers={"Authorization": f"Bearer {MASTER}"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req)
        assert exc.value.code == 400
    req = urllib.request.Request(gw.url + "/admin/usage", headers=gw.headers())
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 403
    gw.stop()
    out = run_cli(["usage", "--since", "1h", "--tenant", "rep-a", "--by", "tenant,model"], postgres_env)
    assert out.returncode == 0, out.stderr
    assert "rep-a" in out.stdout and "TOTAL" in out.stdout and "rep-b" not in out.stdout
    js = json.loads(run_cli(["usage", "--since", "1h", "--tenant", "rep-a", "--json"], postgres_env).stdout)
    assert js[0]["requests"] == 3


def test_pgssl_require_against_server_without_tls_says_so(gateway, postgres_env):
    env = {**postgres_env, "PGSSL": "require"}
    out = run_cli(["db", "init"], env)
    assert out.returncode == 1
    assert "does not accept TLS" in out.stderr and "PGSSL=disable" in out.stderr
    gw = gateway(**env, ready=False)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(gw.url + "/ready")
    assert exc.value.code == 503
    assert urllib.request.urlopen(gw.url + "/health").status == 200
    wait_until(lambda: "does not accept TLS" in gw.output(), timeout=5, message="the TLS refusal logged")


def test_db_init_is_idempotent(postgres_env, tmp_path):
    for env in (postgres_env, {"TALLYGATE_SQLITE_PATH": str(tmp_path / "x.db")}):
        for _ in range(2):
            out = run_cli(["db", "init"], env)
            assert out.returncode == 0, out.stderr
            assert "schema up to date" in out.stdout


def test_ready_waits_for_ledger_and_auto_migrate_off(gateway, postgres_env):
    import uuid

    name = f"tallygate_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        gw = gateway(**{**postgres_env, "PGDATABASE": name}, TALLYGATE_AUTO_MIGRATE="false", ready=False)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(gw.url + "/ready")
        assert exc.value.code == 503
        wait_until(lambda: "tallygate db init" in gw.output(), timeout=5, message="the hint to run db init")
        gw.stop()
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_refused_row_is_set_aside_and_the_rest_written(postgres_env, monkeypatch, caplog):
    """A value the database refuses (here a token count past its 32-bit column) must not
    block the ledger: the batch is halved until that row stands alone, the others land,
    and the refused one is dropped with an ERROR line that holds it whole."""
    import asyncio

    from tallygate.metering.record import UsageRecord, utcnow
    from tallygate.settings import load
    from tallygate.sinks.ledger import LedgerWriter
    from tallygate.store import open_store

    for k, v in postgres_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PROXY_GATEWAY_TOKEN", "x")

    async def run():
        store = open_store(load())
        await store.connect()
        await store.migrate()
        writer = LedgerWriter(store, batch_size=100, flush_interval=0.01)
        writer.start()
        loop = asyncio.get_running_loop()
        records, futures = [], []
        for i in range(7):
            rec = UsageRecord(request_id=f"req_refused_{i}", created_at=utcnow(), tenant_id="refused",
                              model="gpt-4o-mini", endpoint="/v1/chat/completions", stream=False,
                              status_code=200, prompt_tokens=10 + i, total_tokens=10 + i)
            if i == 4:
                rec.prompt_tokens = rec.total_tokens = 10**12
            records.append(rec)
            futures.append(loop.create_future())
        writer.add(records, futures)
        done = await asyncio.wait_for(asyncio.gather(*futures), 10)
        await writer.close(time.monotonic() + 5)
        await store.close()
        return writer, done

    with caplog.at_level("ERROR", logger="tallygate.ledger"):
        writer, committed = asyncio.run(run())
    assert committed == [True, True, True, True, False, True, True]  # sync waiters learn the truth
    rows = pg_rows(postgres_env, "tenant_id = 'refused'")
    assert sorted(r["request_id"] for r in rows) == [f"req_refused_{i}" for i in (0, 1, 2, 3, 5, 6)]
    assert (writer.rows_written, writer.records_dropped, writer.rows_duplicate) == (6, 1, 0)
    [line] = [r for r in caplog.records if "refused a record" in r.getMessage()]
    assert line.fields["request_id"] == "req_refused_4" and line.fields["record"]["prompt_tokens"] == 10**12
    assert "out of range" in line.fields["ledger_error"]


def test_absurd_usage_is_capped_and_nul_in_model_refused(gateway, postgres_env):
    gw = gateway(**postgres_env)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                      default_headers={"X-Tenant-ID": "absurd"})
    reply = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": {"prompt_tokens": 10**13, "completion_tokens": 3}})
    rid = reply.headers["x-tallygate-request-id"]
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt\x00-4o", messages=MESSAGES)
    assert err.value.code == "invalid_model" and "NUL" in err.value.message
    # an upstream naming its model with a NUL: the row still lands, the NUL replaced
    nul = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": {"upstream_model": "gpt\x00-x" + "y" * 300}})
    nul_id = nul.headers["x-tallygate-request-id"]
    def both_rows():
        rows = pg_rows(postgres_env, "request_id = ANY(%s)", ([rid, nul_id],))
        return rows if len(rows) >= 2 else None

    rows = wait_until(both_rows, message="both rows in the ledger")
    by_id = {r["request_id"]: r for r in rows}
    # past the 32-bit cap, then held to gpt-4o-mini's context window (docs/reliability.md)
    assert by_id[rid]["prompt_tokens"] == 128000 and by_id[rid]["completion_tokens"] == 3
    assert by_id[rid]["usage_source"] == "clamped"
    assert by_id[nul_id]["upstream_model"] == ("gpt\ufffd-x" + "y" * 300)[:256]


def test_writer_connection_closed_between_batches_is_replaced(postgres_env, monkeypatch):
    """The ledger writer keeps its connection between batches; when the database closes it
    meanwhile (a restart, an idle timeout on the way), the next batch goes through on a
    fresh one at once, without a failed write, and an idempotent rewrite counts nothing twice."""
    import asyncio

    from tallygate.metering.record import UsageRecord, utcnow
    from tallygate.settings import load
    from tallygate.store import open_store
    from tallygate.store import postgres as postgres_store

    for k, v in postgres_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PROXY_GATEWAY_TOKEN", "x")
    tenant = "kept-" + uuid.uuid4().hex[:8]

    def batch(n: int) -> list:
        return [UsageRecord(request_id=f"req_{uuid.uuid4().hex[:24]}", created_at=utcnow(), tenant_id=tenant,
                            model="gpt-4o-mini", endpoint="/v1/chat/completions", stream=False,
                            status_code=200, prompt_tokens=3, total_tokens=3) for _ in range(n)]

    async def run():
        store = open_store(load())
        await store.connect()
        try:  # an unclosed pool would keep asyncio.run from returning if an assertion fails
            await store.migrate()
            first = await store.write(batch(2))
            pid = store._writer_conn.info.backend_pid
            again = await store.write(batch(3))
            assert store._writer_conn.info.backend_pid == pid  # kept between batches
            await store.execute("SELECT pg_terminate_backend(%s)", (pid,))
            second = batch(4)
            after_kill = await store.write(second)
            new_pid = store._writer_conn.info.backend_pid
            rewrite = await store.write(second)
            # kept no longer than WRITER_CONN_MAX_AGE: then back to the pool, which renews it
            requests = store._pool.get_stats().get("requests_num", 0)
            await store.write(batch(1))
            assert store._pool.get_stats().get("requests_num", 0) == requests  # kept: no pool request
            monkeypatch.setattr(postgres_store, "WRITER_CONN_MAX_AGE", 0.0)
            await store.write(batch(1))
            await store.write(batch(1))
            assert store._pool.get_stats().get("requests_num", 0) == requests + 2  # one per write now
        finally:
            await store.close()
        return first, again, after_kill, rewrite, pid, new_pid

    first, again, after_kill, rewrite, pid, new_pid = asyncio.run(run())
    assert (first, again, after_kill, rewrite) == (2, 3, 4, 0) and new_pid != pid
    assert len(pg_rows(postgres_env, f"tenant_id = '{tenant}'")) == 12


def test_ledger_off_writes_log_lines_and_no_rows(gateway, tmp_path):
    gw = gateway(TALLYGATE_LEDGER="off")
    send_mixed(gw, 6)
    logs = gw.wait_records(6)
    assert all(line["cost_usd_exact"] for line in logs)
    assert "TALLYGATE_LEDGER=off: no ledger rows are written" in gw.output()
    text = metrics_text(f"{gw.url}/metrics")
    assert "tallygate_ledger_rows_written" not in text and "tallygate_requests_total" in text
    assert sqlite_rows(tmp_path / "ledger.db") == []  # the keys' tables exist, no usage row
