"""The pipeline (tallygate.sinks.pipeline): one queue from the request path to the sinks, so
the log line, the ledger row and the counters agree; drained on SIGTERM; in sync ledger mode
a response waits for its row."""

from __future__ import annotations

import signal
from decimal import Decimal

import openai

from support import metric, metrics_text, sdk_client, wait_until
from support.ledger import assert_rows_match_logs, pg_rows, send_mixed

MESSAGES = [{"role": "user", "content": "hi"}]


def test_metrics_equal_the_ledger(gateway, postgres_env):
    gw = gateway(**postgres_env)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0)
    for i in range(12):
        tenant = f"m-{i % 3}"
        fake = {"prompt_tokens": 100 * (i + 1), "completion_tokens": 7 * i, "cached_tokens": i}
        if i % 2:
            list(c.chat.completions.create(model="gpt-4o", messages=[], stream=True, extra_body={"fake": fake},
                                           extra_headers={"X-Tenant-ID": tenant}))
        else:
            c.chat.completions.create(model="gpt-4o-mini", messages=[], extra_body={"fake": fake},
                                      extra_headers={"X-Tenant-ID": tenant})
    logs = gw.wait_records(12)

    def written():
        text = metrics_text(gw.url + "/metrics")
        return text if metric(text, "tallygate_ledger_rows_written_total") >= 12 else None

    text = wait_until(written, message="12 ledger rows written")
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={postgres_env['PGDATABASE']}") as conn:
        rows = conn.execute("SELECT tenant_id, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) "
                            "FROM litellm_usage WHERE tenant_id LIKE 'm-%%' GROUP BY tenant_id").fetchall()
    assert len(rows) == 3
    for tenant, count, prompt, completion, cost in rows:
        assert metric(text, "tallygate_requests_total", tenant_id=tenant) == count
        assert metric(text, "tallygate_tokens_total", tenant_id=tenant, kind="prompt") == prompt
        assert metric(text, "tallygate_tokens_total", tenant_id=tenant, kind="completion") == completion
        assert abs(Decimal(str(metric(text, "tallygate_cost_usd_total", tenant_id=tenant))) - cost) < Decimal("1e-12")
    assert sum(r[4] for r in rows) == sum(Decimal(l["cost_usd_exact"]) for l in logs)
    assert metric(text, "tallygate_ttft_seconds_count") == 6
    assert metric(text, "tallygate_request_latency_seconds_count") == 12
    assert metric(text, "tallygate_ledger_buffer_depth") == 0


def test_sigterm_right_after_burst_loses_nothing(gateway, postgres_env):
    gw = gateway(**postgres_env, TALLYGATE_LEDGER_FLUSH_INTERVAL=5, TALLYGATE_LEDGER_BATCH_SIZE=10000)
    send_mixed(gw, 30, tenants=("burst",))
    assert gw.stop(signal.SIGTERM) == 0
    logs = gw.records()
    assert len(logs) == 30
    rows = pg_rows(postgres_env, "request_id = ANY(%s)", ([l["request_id"] for l in logs],))
    assert_rows_match_logs(rows, logs)


def test_sync_mode_commits_the_row_before_the_last_byte(gateway, postgres_env):
    # a long flush interval: in async mode the rows would still be buffered
    gw = gateway(**postgres_env, TALLYGATE_LEDGER_MODE="sync", TALLYGATE_LEDGER_FLUSH_INTERVAL=30)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                      default_headers={"X-Tenant-ID": "sync-mode"})
    reply = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    rid = reply.headers["x-tallygate-request-id"]
    assert [r["request_id"] for r in pg_rows(postgres_env, "request_id = %s", (rid,))] == [rid]
    stream = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    rid = stream.headers["x-tallygate-request-id"]
    list(stream.parse())  # the stream's last byte arrives after its row committed
    assert [r["request_id"] for r in pg_rows(postgres_env, "request_id = %s", (rid,))] == [rid]


def test_sync_ledger_mode_serves(gateway):
    gw = gateway(TALLYGATE_LEDGER_MODE="sync")
    c = sdk_client(gw)
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    list(c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert len(gw.wait_records(2)) == 2
