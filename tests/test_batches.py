"""The Batch API through a real gateway and the fake upstream, with the official SDK: a batch
is passed through with tenant isolation, and once it finished every line of its output and
error files is one ledger row at the batch price, whether a client retrieves it (twice), the
poller finds it, or both; a restart reprocesses nothing."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from decimal import Decimal

import openai
import orjson
import psycopg
import pytest
from genai_prices import data_snapshot

from support import admin_call, call, sdk_client
from support.ledger import conninfo, pg_rows, sqlite_rows
from support.waiting import wait_until

MILLION = Decimal(1_000_000)


def _rates(model: str, batch: bool) -> tuple[Decimal, Decimal, Decimal]:
    """(input, cache read, output) USD per million tokens from genai-prices: the batch variant's
    when `batch`, else the standard ones."""
    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, "openai", None)
    price = info.get_prices(datetime.now(UTC), {"processing": "batch"} if batch else None)
    cache = price.cache_read_mtok if price.cache_read_mtok is not None else price.input_mtok
    return Decimal(price.input_mtok), Decimal(cache), Decimal(price.output_mtok or 0)


def _cost(rates, prompt: int, cached: int, completion: int, factor: Decimal = Decimal(1)) -> Decimal:
    inp, cache, out = rates
    return ((prompt - cached) * inp + cached * cache + completion * out) / MILLION * factor


def _upload(client, lines: list[dict]):
    content = b"".join(orjson.dumps(x) + b"\n" for x in lines)
    return client.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")


def _chat_line(custom_id: str, fake: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "fake": fake}}


def _batch_rows(env: dict) -> list[dict]:
    return pg_rows(env, "service_tier = 'batch'")


def test_batch_billed_once_at_batch_prices_and_isolated(gateway, postgres_env):
    gw = gateway(**postgres_env, TALLYGATE_BATCH_POLL_INTERVAL="0.3")
    a, b = sdk_client(gw, "batch-a"), sdk_client(gw, "batch-b")
    usages = {"r1": (1200, 0, 80), "r2": (3000, 1024, 150), "r3": (64, 0, 7)}
    lines = [_chat_line(cid, {"prompt_tokens": p, "cached_tokens": c, "completion_tokens": o})
             for cid, (p, c, o) in usages.items()]
    lines.append(_chat_line("broken", {"status": 500}))
    f = _upload(a, lines)

    # another tenant's file cannot be a batch's input (the upstream never sees it)
    with pytest.raises(openai.NotFoundError):
        b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                             metadata={"fake_delay": "1.0"})
    assert batch.status == "validating" and batch.request_counts.total == 4
    # tenant B: 404 for A's batch, whatever the call; A's listing shows it, B's does not
    for fn in (b.batches.retrieve, b.batches.cancel):
        with pytest.raises(openai.NotFoundError) as err:
            fn(batch.id)
        assert err.value.response.json()["error"]["code"] == "not_found"
    assert [x.id for x in a.batches.list().data] == [batch.id]
    assert [x.id for x in b.batches.list().data] == []

    done = wait_until(lambda: x if (x := a.batches.retrieve(batch.id)).status == "completed" else None,
                      timeout=15, message="the batch completed")
    a.batches.retrieve(batch.id)  # a second look, while the poller (every 0.3 s) looks too
    assert done.request_counts.completed == 3 and done.request_counts.failed == 1
    rows = wait_until(lambda: r if len(r := _batch_rows(postgres_env)) >= 4 else None, message="4 batch rows")
    time.sleep(1.5)  # more polls and a third look: nothing is added
    a.batches.retrieve(batch.id)
    time.sleep(0.5)
    rows = _batch_rows(postgres_env)
    assert len(rows) == 4 and len({r["request_id"] for r in rows}) == 4

    rates = _rates("gpt-4o-mini", batch=True)  # gpt-4o-mini has a batch variant in the data
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
        assert (row["tenant_id"], row["endpoint"], row["service_tier"]) == (
            "batch-a", "/v1/chat/completions", "batch")
    assert len(by_status["ok"]) == 3
    billed = sorted((r["prompt_tokens"], r["cached_tokens"], r["completion_tokens"], r["cost_usd"], r["price_source"])
                    for r in by_status["ok"])
    for prompt, cached, completion, cost, source in billed:
        assert source == "genai-prices"
        expected = _cost(rates, prompt, cached, completion)
        assert abs(Decimal(cost) - expected) <= Decimal("1e-12"), (cost, expected)
        # half the standard rates on input and output
        assert expected < _cost(_rates("gpt-4o-mini", batch=False), prompt, cached, completion)
    assert sorted((p, c, o) for p, c, o, _, _ in billed) == sorted(usages.values())
    (failed,) = by_status["upstream_error"]
    assert failed["status_code"] == 500 and Decimal(failed["cost_usd"]) == 0
    with psycopg.connect(conninfo(postgres_env)) as conn:
        settled = conn.execute("SELECT settled_at IS NOT NULL, lines_recorded, tenant_id FROM tallygate_batches "
                               "WHERE batch_id = %s", (batch.id,)).fetchall()
    assert settled == [(True, 4, "batch-a")]

    # the rows are in the usage report like any other (the batch's free calls beside them)
    status, _, report = admin_call(gw.url + "/admin/usage?tenant_id=batch-a&group_by=endpoint")
    assert status == 200, report
    (group,) = [g for g in report["data"] if g["endpoint"] == "/v1/chat/completions"]
    assert group["requests"] == 4 and Decimal(group["cost_usd"]) == sum(Decimal(r["cost_usd"]) for r in rows)

    # a restart: the settled batch is not read again, and another look adds nothing
    gw.stop()
    gw2 = gateway(**postgres_env, TALLYGATE_BATCH_POLL_INTERVAL="0.3")
    sdk_client(gw2, "batch-a").batches.retrieve(batch.id)
    time.sleep(1.0)
    assert len(_batch_rows(postgres_env)) == 4
    assert "batch recorded" not in gw2.output()


def test_poller_records_expired_batch_at_the_half_price_rule(gateway, postgres_env):
    """No client looks: the poller finds the batch finished. text-embedding-3-small has no batch
    variant in the price data, so its line costs 50% of the standard price."""
    gw = gateway(**postgres_env, TALLYGATE_BATCH_POLL_INTERVAL="0.3")
    a = sdk_client(gw, "batch-poll")
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "text-embedding-3-small", "input": "x", "fake": {"prompt_tokens": 1000 + i}}}
             for i in range(3)]
    f = _upload(a, lines)
    batch = a.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h",
                             metadata={"fake_delay": "0.5", "fake_expire_after": "1"})
    rows = wait_until(lambda: r if len(r := pg_rows(postgres_env, "tenant_id = 'batch-poll' AND service_tier = 'batch'"))
                      >= 3 else None, timeout=15, message="3 rows from the poller")
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["expired", "expired", "ok"]
    (ok,) = [r for r in rows if r["status"] == "ok"]
    assert ok["price_source"] == "genai-prices:batch50" and ok["prompt_tokens"] == 1000
    expected = _cost(_rates("text-embedding-3-small", batch=False), 1000, 0, 0, Decimal("0.5"))
    assert abs(Decimal(ok["cost_usd"]) - expected) <= Decimal("1e-12")
    assert all(Decimal(r["cost_usd"]) == 0 for r in rows if r["status"] == "expired")
    assert a.batches.retrieve(batch.id).status == "expired"
    time.sleep(0.8)
    assert len(pg_rows(postgres_env, "tenant_id = 'batch-poll' AND service_tier = 'batch'")) == 3


def test_listing_pages_through_the_callers_batches(gateway, postgres_env):
    gw = gateway(**postgres_env)
    a, b = sdk_client(gw, "list-a"), sdk_client(gw, "list-b")
    fa, fb = _upload(a, [_chat_line("x", {})]), _upload(b, [_chat_line("y", {})])
    mine = []
    for _ in range(3):
        mine.append(a.batches.create(input_file_id=fa.id, endpoint="/v1/chat/completions",
                                     completion_window="24h", metadata={"fake_delay": "60"}).id)
        b.batches.create(input_file_id=fb.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={"fake_delay": "60"})
    first = a.batches.list(limit=2)
    assert [x.id for x in first.data] == mine[::-1][:2] and first.has_more is True
    rest = a.batches.list(limit=2, after=first.data[-1].id)
    assert [x.id for x in rest.data] == [mine[0]] and rest.has_more is False
    assert [x.id for x in a.batches.list(limit=1)] == mine[::-1]  # the SDK pages through them all
    assert a.batches.cancel(mine[0]).status == "cancelling"


def test_sqlite_ledger_records_a_batch(gateway, tmp_path):
    gw = gateway()
    a = sdk_client(gw, "batch-lite")
    lines = [{"custom_id": "q1", "method": "POST", "url": "/v1/responses",
              "body": {"model": "gpt-4o-mini", "input": "hi", "fake": {"prompt_tokens": 500, "completion_tokens": 40}}}]
    f = _upload(a, lines)
    batch = a.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h",
                             metadata={"fake_delay": "0.3"})
    wait_until(lambda: a.batches.retrieve(batch.id).status == "completed", timeout=10, message="completed")
    rows = wait_until(lambda: r or None if (r := sqlite_rows(tmp_path / "ledger.db", "service_tier = 'batch'"))
                      else None, message="a batch row")
    (row,) = rows
    assert (row["tenant_id"], row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == (
        "batch-lite", "/v1/responses", 500, 40)
    expected = _cost(_rates("gpt-4o-mini", batch=True), 500, 0, 40)
    assert abs(Decimal(str(row["cost_usd"])) - expected) <= Decimal("1e-12")


def test_one_poller_leads_of_two_instances(gateway, postgres_env):
    """Two instances on one ledger: one polls (the billing export's leader lock), and when it
    stops the other takes over and records the batch, once."""
    env = {**postgres_env, "TALLYGATE_BATCH_POLL_INTERVAL": "0.2"}
    gws = [gateway(**env), gateway(**env)]
    wait_until(lambda: sum("batch poller leads" in g.output() for g in gws) == 1, message="one leader")
    time.sleep(0.6)
    leader, other = sorted(gws, key=lambda g: "batch poller leads" not in g.output())
    assert "batch poller leads" not in other.output()
    leader.stop()
    wait_until(lambda: "batch poller leads" in other.output(), timeout=10, message="the other took over")
    a = sdk_client(other, "batch-two")
    f = _upload(a, [_chat_line("only", {"prompt_tokens": 10, "completion_tokens": 2})])
    a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                     metadata={"fake_delay": "0.3"})
    rows = wait_until(lambda: pg_rows(postgres_env, "tenant_id = 'batch-two' AND service_tier = 'batch'") or None,
                      timeout=10, message="the poller's row")
    time.sleep(0.6)
    assert len(rows) == len(pg_rows(postgres_env, "tenant_id = 'batch-two' AND service_tier = 'batch'")) == 1


def test_prompt_quoting_another_tenants_file_is_refused(gateway, fake_upstream):
    gw = gateway()
    a, b = sdk_client(gw, "quote-a"), sdk_client(gw, "quote-b")
    f = _upload(a, [{"note": "A's private file"}])
    responses_input = [{"role": "user", "content": [{"type": "input_file", "file_id": f.id},
                                                    {"type": "input_text", "text": "summarise"}]}]
    chat_messages = [{"role": "user", "content": [{"type": "file", "file": {"file_id": f.id}},
                                                  {"type": "text", "text": "summarise"}]}]
    assert a.responses.create(model="gpt-4o-mini", input=responses_input).id  # the owner may
    assert a.chat.completions.create(model="gpt-4o-mini", messages=chat_messages).id
    fake_upstream.reset()
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model="gpt-4o-mini", input=responses_input)
    with pytest.raises(openai.NotFoundError):
        b.chat.completions.create(model="gpt-4o-mini", messages=chat_messages)
    with pytest.raises(openai.NotFoundError):
        b.responses.input_tokens.count(model="gpt-4o-mini", input=responses_input)
    # the key spelled with a JSON escape is the same key
    escaped = ('{"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "input_file", '
               f'"file\\u005fid": "{f.id}"}}]}}]}}').encode()
    status, _, _ = call(gw.base_url + "/responses", method="POST", body=escaped, token=gw.token,
                        headers={"X-Tenant-ID": "quote-b", "Content-Type": "application/json"})
    assert status == 404
    assert fake_upstream.requests() == []  # refused before any upstream call
