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


class Collect:
    """A Sink and a Settlement (pipeline.Sink / pipeline.Settlement): what was written."""

    def __init__(self, pending: bool = False) -> None:
        self.records: list = []
        self.pending = pending

    def write(self, records) -> None:
        self.records.extend(records)


def _record(i: int):
    from tallygate.metering.record import UsageRecord, utcnow

    return UsageRecord(f"req-pipe-{i}", utcnow(), "t", "gpt-4o-mini", "/v1/chat/completions", False,
                       status_code=200, prompt_tokens=10, completion_tokens=2, total_tokens=12)


async def test_submit_waits_only_in_sync_mode_and_only_when_asked(tmp_path):
    """Async mode: submit returns None (nothing to await on the request path). Sync mode:
    submit(record, wait=True) returns an awaitable that ends once the row is committed;
    wait=False records (a client that hung up) do not wait."""
    import time

    from tallygate.metering.pricing import PriceBook
    from tallygate.sinks.ledger import LedgerWriter
    from tallygate.sinks.pipeline import Pipeline
    from tallygate.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "ledger.db"))
    await store.connect()
    await store.migrate()
    sink, settlement = Collect(), Collect()
    plain = Pipeline(PriceBook({}), [sink], None, [settlement])
    plain.start()
    assert plain.submit(_record(0), wait=True) is None and plain.submit(_record(1)) is None
    await plain.close(time.monotonic() + 2)
    assert [r.request_id for r in sink.records] == ["req-pipe-0", "req-pipe-1"] == \
        [r.request_id for r in settlement.records]

    ledger = LedgerWriter(store, flush_interval=0.001)
    sync = Pipeline(PriceBook({}), [Collect()], ledger, wait_for_commit=True, commit_timeout=10)
    sync.start()
    assert sync.submit(_record(2), wait=False) is None
    committed = sync.submit(_record(3), wait=True)
    await committed
    rows = await store.fetch("SELECT request_id FROM litellm_usage WHERE request_id = ?", ("req-pipe-3",))
    assert rows == [("req-pipe-3",)]
    await sync.close(time.monotonic() + 2)
    await store.close()


async def test_sync_commit_is_bounded_when_the_ledger_cannot_write(tmp_path, caplog):
    """A ledger that cannot commit (its database gone): the wait ends at commit_timeout."""
    import time

    from tallygate.metering.pricing import PriceBook
    from tallygate.sinks.ledger import LedgerWriter
    from tallygate.sinks.pipeline import Pipeline
    from tallygate.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "missing" / "ledger.db"))  # its directory does not exist
    sync = Pipeline(PriceBook({}), [], LedgerWriter(store, flush_interval=0.001), wait_for_commit=True,
                    commit_timeout=0.3)
    sync.start()
    began = time.monotonic()
    await sync.submit(_record(4), wait=True)
    assert 0.25 < time.monotonic() - began < 3
    assert "ledger commit is slow" in caplog.text
    await sync.close(time.monotonic() + 0.2)
