"""Anthropic's Messages API through the gateway (proxy/formats/anthropic.py,
metering/anthropic_sse.py): the official anthropic SDK as the client of a real gateway in
front of the fake upstream's Messages API (fake_upstream/anthropic.py). Costs are checked
to 1e-12 against the genai-prices rates read here, combined by Anthropic's published rules
(input_tokens excludes cache reads and writes; 5-minute writes, 1-hour writes and reads
priced apart; web searches per thousand); ledger rows equal the log lines."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import anthropic
import pytest
from anthropic._constants import ANTHROPIC_API_VERSION

from support import (
    StreamReader,
    base_env,
    body_of,
    free_port,
    post,
    raw_exchange,
    request_bytes,
    routes_file,
    status_of,
    wait_http,
    wait_until,
)
from support.ledger import assert_rows_match_logs, pg_rows
from support.tenants import new_key, unique

MODEL = "claude-sonnet-4-5"
MESSAGES = [{"role": "user", "content": "hi"}]
MILLION = Decimal(1_000_000)
EXACT = Decimal("1e-12")
UPSTREAM_KEY = "sk-ant-upstream-secret-0123"


def anthropic_env(fake_upstream, **extra) -> dict:
    """The gateway's Anthropic upstream: the fake's Messages API (the base URL without /v1)."""
    return {"ANTHROPIC_BASE_URL": fake_upstream.base_url.removesuffix("/v1"), "ANTHROPIC_API_KEY": UPSTREAM_KEY,
            **extra}


def client(gw, tenant: str | None = "acme", **kw) -> anthropic.Anthropic:
    """The anthropic SDK pointed at the gateway (its api_key is the gateway token), no retries."""
    kw.setdefault("api_key", gw.token)
    return anthropic.Anthropic(base_url=gw.url, max_retries=0,
                               default_headers={"X-Tenant-ID": tenant} if tenant else None, **kw)


def rates(model: str = MODEL) -> dict:
    """The model's rates from the price data (the base tier of those tiered by prompt size)."""
    from genai_prices import data_snapshot

    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, "anthropic", None)
    prices = info.get_prices(datetime.now(UTC), None).__dict__
    return {key: (value.base if hasattr(value, "base") else value) for key, value in prices.items()}


def expected(r: dict, fresh=0, output=0, reads=0, writes_5m=0, writes_1h=0, searches=0) -> Decimal:
    """USD by Anthropic's rules: every input part at its own rate, searches per thousand."""
    tokens = (fresh * r["input_mtok"] + reads * r["cache_read_mtok"] + writes_5m * r["cache_write_mtok"]
              + writes_1h * r["cache_write_1h_mtok"] + output * r["output_mtok"])
    return tokens / MILLION + searches * (r.get("web_searches_kcount") or 0) / Decimal(1000)


def one_record(gw, env, model: str | None = None) -> tuple[dict, dict]:
    """The request's log line and its ledger row, which must agree."""
    recs = gw.wait_records(1)
    log = recs[-1] if model is None else wait_until(lambda: [r for r in gw.records() if r["model"] == model])[-1]
    rows = wait_until(lambda: pg_rows(env, "request_id = %s", (log["request_id"],)), message="the ledger row")
    assert len(rows) == 1
    row = rows[0]
    for field in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                  "web_search_calls", "price_source", "endpoint", "provider", "status", "usage_source"):
        assert row[field] == log.get(field, 0), field
    assert row["service_tier"] == log.get("service_tier")
    assert Decimal(str(row["cost_usd"])) == Decimal(log["cost_usd_exact"])
    return log, row


def last_upstream(fake_upstream, path: str = "/v1/messages") -> dict:
    return [r for r in fake_upstream.requests() if r["path"] == path][-1]


# -- messages, JSON and streamed -------------------------------------------------------------

def test_message_is_forwarded_and_metered(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    fake_upstream.reset()
    raw = client(gw).messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=MESSAGES,
                                                        extra_body={"fake": {"input_tokens": 30, "output_tokens": 7}})
    msg = raw.parse()
    assert raw.headers["request-id"] == msg._request_id and raw.headers["anthropic-ratelimit-requests-remaining"]
    assert msg.type == "message" and msg.content[0].type == "text" and msg.content[0].text
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (30, 7)
    seen = last_upstream(fake_upstream)
    # the route's key as Anthropic wants it; the client's version; not the gateway's token
    assert seen["headers"]["x-api-key"] == UPSTREAM_KEY and seen["authorization"] is None
    assert seen["headers"]["anthropic-version"] == ANTHROPIC_API_VERSION  # the SDK's, passed on
    # a client that names no version: the one every Anthropic API key accepts
    status, _, _ = post(gw.url + "/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": MESSAGES},
                        {"x-api-key": gw.token, "X-Tenant-ID": "acme"})
    assert status == 200 and last_upstream(fake_upstream)["headers"]["anthropic-version"] == "2023-06-01"
    rec = gw.wait_records(2)[0]
    assert (rec["endpoint"], rec["provider"], rec["stream"], rec["status"]) == ("/v1/messages", "anthropic", False, "ok")
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["usage_source"]) == (30, 7, "provider")
    assert abs(Decimal(rec["cost_usd_exact"]) - expected(rates(), fresh=30, output=7)) < EXACT


def test_stream_events_pass_through_and_are_metered(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    fake = {"input_tokens": 40, "output_tokens": 9, "chunks": 4}
    events = list(client(gw).messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True,
                                             extra_body={"fake": fake}))
    kinds = [e.type for e in events]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * 4, "content_block_stop",
                     "message_delta", "message_stop"]  # ping is read (and skipped) by the SDK
    assert events[-2].usage.output_tokens == 9
    rec = gw.wait_records(1)[-1]
    assert (rec["endpoint"], rec["stream"], rec["status"], rec["usage_source"]) == ("/v1/messages", True, "ok",
                                                                                    "provider")
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (40, 9) and rec["upstream_model"] == MODEL
    assert abs(Decimal(rec["cost_usd_exact"]) - expected(rates(), fresh=40, output=9)) < EXACT


def test_the_sdk_stream_helper_accumulates_the_message(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    with client(gw).messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES,
                                    extra_body={"fake": {"input_tokens": 12, "output_tokens": 5, "chunks": 5}}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from the fake upstream" and final.content[0].text == text
    assert (final.usage.input_tokens, final.usage.output_tokens, final.stop_reason) == (12, 5, "end_turn")
    rec = gw.wait_records(1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["status"]) == (12, 5, "ok")


def test_count_tokens_is_forwarded_and_never_billed(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    counted = client(gw).messages.count_tokens(model=MODEL, messages=MESSAGES,
                                               extra_body={"fake": {"input_tokens": 4321}})
    assert counted.input_tokens == 4321
    assert last_upstream(fake_upstream, "/v1/messages/count_tokens")["headers"]["x-api-key"] == UPSTREAM_KEY
    rec = gw.wait_records(1)[-1]
    assert rec["endpoint"] == "/v1/messages/count_tokens" and rec["status"] == "ok"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (0, 0)
    assert Decimal(rec["cost_usd_exact"]) == 0 and rec["usage_source"] == "provider"


# -- credentials ---------------------------------------------------------------------------

def test_gateway_token_as_x_api_key_and_as_bearer(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES}
    # x-api-key, as Anthropic's SDKs and Claude Code send an API key
    status, _, data = post(gw.url + "/v1/messages", body, {"x-api-key": gw.token, "X-Tenant-ID": "acme"})
    assert status == 200 and json.loads(data)["type"] == "message"
    # the SDK with only an x-api-key header (no Authorization)
    c = anthropic.Anthropic(base_url=gw.url, api_key=None, auth_token=None, max_retries=0,
                            default_headers={"x-api-key": gw.token, "X-Tenant-ID": "acme"})
    assert c.messages.create(**body).type == "message"
    # a bearer token, as ANTHROPIC_AUTH_TOKEN users send it
    assert client(gw, api_key=None, auth_token=gw.token).messages.create(**body).type == "message"
    assert len(gw.wait_records(3)) == 3


def test_tenant_key_authenticates_and_attributes(gateway, fake_upstream, postgres_env):
    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    tenant = unique("claude")
    key = new_key(gw, tenant)["key"]
    body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES}
    status, _, _ = post(gw.url + "/v1/messages", body, {"x-api-key": key})
    assert status == 200
    client(gw, tenant=None, api_key=None, auth_token=key).messages.create(**body)
    recs = gw.wait_records(2)
    assert {r["tenant_id"] for r in recs[-2:]} == {tenant}
    assert all(r["api_key_id"] for r in recs[-2:])


def test_bad_key_is_an_anthropic_shaped_401(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    with pytest.raises(anthropic.AuthenticationError) as err:
        client(gw, api_key="tg-not-a-key").messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert err.value.status_code == 401
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "authentication_error"
    status, _, data = post(gw.url + "/v1/messages", {"model": MODEL, "messages": MESSAGES})  # no credential
    doc = json.loads(data)
    assert status == 401 and doc["error"]["type"] == "authentication_error"
    # the OpenAI endpoints keep OpenAI's shape
    status, _, data = post(gw.base_url + "/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES},
                           {"x-api-key": "tg-not-a-key"})
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"


def test_bad_input_is_an_anthropic_shaped_400(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    h = {"x-api-key": gw.token, "X-Tenant-ID": "acme"}
    for raw in (b"{not json", b'{"max_tokens": 5}', b'{"model": "m", "stream": "yes"}'):
        status, _, data = post(gw.url + "/v1/messages", raw, h)
        doc = json.loads(data)
        assert status == 400 and doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error", doc
    twice = raw_exchange(gw.port, request_bytes("POST", "/v1/messages", b"{}", {
        "x-api-key": gw.token, "X-Api-Key": gw.token, "X-Tenant-ID": "acme"}), read_until_close=False)
    assert status_of(twice) == 400 and json.loads(body_of(twice))["error"]["type"] == "invalid_request_error"


def test_budget_refusal_is_an_anthropic_rate_limit_error(gateway, fake_upstream, postgres_env):
    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    created = new_key(gw, unique("claude-budget"), budget_usd="0.0001", budget_period="day")
    c = client(gw, tenant=None, api_key=created["key"])
    fake = {"input_tokens": 100, "output_tokens": 50}  # $0.00105: over the budget, which admits it (spent 0)
    c.messages.create(model=MODEL, max_tokens=1000, messages=MESSAGES, extra_body={"fake": fake})
    wait_until(lambda: pg_rows(postgres_env, "api_key_id = %s", (created["key_id"],)), message="the spend")
    with pytest.raises(anthropic.RateLimitError) as err:
        c.messages.create(model=MODEL, max_tokens=1000, messages=MESSAGES, extra_body={"fake": fake})
    assert err.value.status_code == 429
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "rate_limit_error"
    assert "budget" in err.value.body["error"]["message"].lower()
    assert err.value.response.headers.get("retry-after")


def test_concurrent_messages_ledger_equals_log_lines(gateway, fake_upstream, postgres_env):
    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    tenants = [unique("claude-mix") for _ in range(3)]

    def one(i: int) -> None:
        c = client(gw, tenant=tenants[i % 3])
        fake = {"input_tokens": 100 + i, "output_tokens": 10 + i % 7, "cache_read": 50 * (i % 3),
                "cache_5m": 20 * (i % 2), "cache_1h": 10 * (i % 4 == 0), "delta_usage": "full" if i % 4 else None}
        if i % 2:
            with c.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES, extra_body={"fake": fake}) as s:
                s.get_final_message()
        else:
            c.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, extra_body={"fake": fake})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))
    logs = [r for r in gw.wait_records(40) if r["tenant_id"] in tenants]
    rows = wait_until(lambda: (lambda got: got if len(got) == 40 else None)(
        pg_rows(postgres_env, "tenant_id = ANY(%s)", (tenants,))), message="40 ledger rows")
    assert_rows_match_logs(rows, logs)
    by_id = {r["request_id"]: r for r in rows}
    for log in logs:
        assert by_id[log["request_id"]]["cache_write_tokens"] == log.get("cache_write_tokens", 0)
    assert sum(Decimal(r["cost_usd_exact"]) for r in logs) == sum(
        expected(rates(), fresh=100 + i, output=10 + i % 7, reads=50 * (i % 3), writes_5m=20 * (i % 2),
                 writes_1h=10 * (i % 4 == 0)) for i in range(40))


# -- every dimension, priced -----------------------------------------------------------------

@pytest.mark.parametrize("stream, delta_usage", [(False, None), (True, None), (True, "full")])
def test_cache_writes_5m_and_1h_and_reads_priced_apart(gateway, fake_upstream, postgres_env, stream, delta_usage):
    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    fake = {"input_tokens": 1000, "output_tokens": 200, "cache_read": 5000, "cache_5m": 2000, "cache_1h": 1000,
            "delta_usage": delta_usage}
    c = client(gw)
    if stream:
        with c.messages.stream(model=MODEL, max_tokens=500, messages=MESSAGES, extra_body={"fake": fake}) as s:
            final = s.get_final_message()
        assert final.usage.cache_read_input_tokens == 5000
    else:
        c.messages.create(model=MODEL, max_tokens=500, messages=MESSAGES, extra_body={"fake": fake})
    log, _ = one_record(gw, postgres_env)
    # OpenAI's semantics in the record: the prompt counts the reads and writes
    assert (log["prompt_tokens"], log["cached_tokens"], log["cache_write_tokens"], log["cache_write_1h_tokens"]) == (
        9000, 5000, 3000, 1000)
    r = rates()
    base = r["input_mtok"]  # Anthropic's published multiples of the base input price
    assert (r["cache_write_mtok"], r["cache_write_1h_mtok"], r["cache_read_mtok"]) == (
        base * Decimal("1.25"), base * 2, base * Decimal("0.1"))
    want = expected(r, fresh=1000, output=200, reads=5000, writes_5m=2000, writes_1h=1000)
    assert abs(Decimal(log["cost_usd_exact"]) - want) < EXACT
    assert log["price_source"] == "genai-prices" and log["service_tier"] == "standard"


def test_web_search_requests_carry_their_fee(gateway, fake_upstream, postgres_env):
    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    fake = {"input_tokens": 300, "output_tokens": 40, "web_search_requests": 3}
    msg = client(gw).messages.create(model=MODEL, max_tokens=500, messages=MESSAGES, extra_body={"fake": fake},
                                     tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}])
    assert msg.usage.server_tool_use.web_search_requests == 3
    assert [b.type for b in msg.content][:2] == ["server_tool_use", "web_search_tool_result"]
    log, _ = one_record(gw, postgres_env)
    want = expected(rates(), fresh=300, output=40, searches=3)
    assert log["web_search_calls"] == 3 and abs(Decimal(log["cost_usd_exact"]) - want) < EXACT
    assert want > 10 * expected(rates(), fresh=300, output=40)  # the fee dominates a small call


def test_web_search_in_a_stream(gateway, fake_upstream, postgres_env):
    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    fake = {"input_tokens": 300, "output_tokens": 40, "web_search_requests": 2}
    with client(gw).messages.stream(model=MODEL, max_tokens=500, messages=MESSAGES, extra_body={"fake": fake}) as s:
        final = s.get_final_message()
    assert final.content[0].type == "server_tool_use" and final.content[0].input == {"query": "fake upstream news"}
    log, _ = one_record(gw, postgres_env)
    assert log["web_search_calls"] == 2
    assert abs(Decimal(log["cost_usd_exact"]) - expected(rates(), fresh=300, output=40, searches=2)) < EXACT


def test_service_tier_is_recorded_and_a_tier_without_its_own_price_is_partial(gateway, fake_upstream, postgres_env):
    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    fake = {"input_tokens": 1000, "output_tokens": 100, "service_tier": "priority"}
    msg = client(gw).messages.create(model=MODEL, max_tokens=500, messages=MESSAGES, service_tier="auto",
                                     extra_body={"fake": fake})
    assert msg.usage.service_tier == "priority"
    log, row = one_record(gw, postgres_env)
    # the price data has no priority rates of Anthropic's: the standard ones, and the record says so
    assert row["service_tier"] == "priority" and log["price_source"] == "genai-prices:partial"
    assert abs(Decimal(log["cost_usd_exact"]) - expected(rates(), fresh=1000, output=100)) < EXACT


# -- reliability ---------------------------------------------------------------------------

def test_overloaded_529_is_retried(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream), TALLYGATE_RETRY_BACKOFF="0.01")
    key = unique("overloaded")
    fake = {"key": key, "fail_first": 2, "fail_status": 529, "input_tokens": 10, "output_tokens": 3}
    msg = client(gw).messages.create(model=MODEL, max_tokens=10, messages=MESSAGES, extra_body={"fake": fake})
    assert msg.usage.output_tokens == 3
    assert fake_upstream.stats()["by_key"][key] == 3  # two 529s, then the answer
    rec = gw.wait_records(1)[-1]
    assert (rec["status"], rec["prompt_tokens"], rec["completion_tokens"]) == ("ok", 10, 3)


def test_overloaded_to_the_end_reaches_the_client_as_anthropic_sent_it(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream), TALLYGATE_RETRY_BACKOFF="0.01", TALLYGATE_RETRIES="1")
    with pytest.raises(anthropic.InternalServerError) as err:
        client(gw).messages.create(model=MODEL, max_tokens=10, messages=MESSAGES, extra_body={"fake": {"status": 529}})
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"
    assert err.value.response.headers["x-should-retry"] == "false"  # the gateway retried already
    with pytest.raises(anthropic.RateLimitError) as limited:
        client(gw).messages.create(model=MODEL, max_tokens=10, messages=MESSAGES,
                                   extra_body={"fake": {"status": 429, "retry_after": "30"}})
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "30"  # too long to wait: passed on at once
    assert [r["status"] for r in gw.wait_records(2)[-2:]] == ["upstream_error", "upstream_error"]


def test_fallback_route_of_provider_anthropic(gateway, fake_upstream, tmp_path):
    base = fake_upstream.base_url  # routes carry /v1, like every route in the file
    config = routes_file(tmp_path / "routes.toml",
                         {"model": "claude-primary", "base_url": base, "provider": "anthropic",
                          "upstream_model": "claude-sonnet-4-5", "api_key_env": "ROUTE_KEY",
                          "fallbacks": ["claude-haiku-4-5"]},
                         {"model": "claude-haiku-4-5", "base_url": base, "provider": "anthropic",
                          "api_key_env": "ROUTE_KEY"})
    gw = gateway(**anthropic_env(fake_upstream), TALLYGATE_CONFIG=config, ROUTE_KEY="sk-ant-route-key",
                 TALLYGATE_RETRIES="0")
    fake_upstream.reset()
    fake = {"by_model": {"claude-sonnet-4-5": {"status": 529}}, "input_tokens": 20, "output_tokens": 4}
    msg = client(gw).messages.create(model="claude-primary", max_tokens=10, messages=MESSAGES,
                                     extra_body={"fake": fake})
    assert msg.model == "claude-haiku-4-5"
    seen = [r for r in fake_upstream.requests() if r["path"] == "/v1/messages"]
    assert [json.loads(r["body"])["model"] for r in seen] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    assert {r["headers"]["x-api-key"] for r in seen} == {"sk-ant-route-key"}
    rec = gw.wait_records(1)[-1]
    assert rec["model"] == "claude-haiku-4-5" and rec["provider"] == "anthropic"
    assert abs(Decimal(rec["cost_usd_exact"]) - expected(rates("claude-haiku-4-5"), fresh=20, output=4)) < EXACT


def test_client_disconnect_mid_stream_is_recorded(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    r = StreamReader(gw.port, "/v1/messages", {
        "model": "claude-disconnect", "max_tokens": 500, "messages": MESSAGES, "stream": True,
        "fake": {"chunks": 100, "chunk_delay": 0.05, "input_tokens": 77, "cache_read": 500, "cache_1h": 40}},
        {"x-api-key": gw.token, "X-Tenant-ID": "acme"})
    r.read_until(b"event: content_block_delta", 3)
    r.hang_up()
    rec = wait_until(lambda: [x for x in gw.records() if x["model"] == "claude-disconnect"], timeout=10)[0]
    assert rec["status"] == "client_disconnected" and rec["status_code"] == 200
    # no message_delta yet: an estimate, its input message_start's (exact), its output the deltas delivered
    assert rec["usage_source"] == "estimated" and 3 <= rec["completion_tokens"] < 60
    assert (rec["prompt_tokens"], rec["cached_tokens"], rec["cache_write_1h_tokens"]) == (617, 500, 40)
    # the upstream stopped generating for nobody
    wait_until(lambda: [d for d in fake_upstream.stats()["disconnects"] if d["path"] == "/v1/messages"])


def test_a_stream_cut_by_the_upstream_ends_with_an_anthropic_error_event(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    with pytest.raises(anthropic.APIStatusError) as err:
        list(client(gw).messages.create(model="claude-cut", max_tokens=100, messages=MESSAGES, stream=True,
                                        extra_body={"fake": {"chunks": 10, "cut_after": 4, "input_tokens": 33}}))
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "api_error"
    rec = wait_until(lambda: [x for x in gw.records() if x["model"] == "claude-cut"])[0]
    assert rec["status"] == "upstream_error" and rec["usage_source"] == "estimated"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (33, 1)  # message_start's counts, one delta


def test_an_upstream_error_quoting_the_key_does_not_show_it(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    with pytest.raises(anthropic.AuthenticationError) as err:
        client(gw).messages.create(model=MODEL, max_tokens=10, messages=MESSAGES,
                                   extra_body={"fake": {"status": 401, "quote_key": True}})
    assert err.value.body["error"]["type"] == "authentication_error"
    assert UPSTREAM_KEY not in str(err.value.body) and "[redacted]" in err.value.body["error"]["message"]
    assert UPSTREAM_KEY not in gw.output()


def test_demo_mode_serves_the_messages_api(tmp_path):
    port = free_port()
    env = base_env("http://127.0.0.1:9/v1", tmp_path, PORT=port, OPENAI_BASE_URL=None, OPENAI_API_KEY=None)
    env = {k: v for k, v in env.items() if not k.startswith("ANTHROPIC_")}
    with open(tmp_path / "demo.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tallygate", "serve", "--host", "127.0.0.1", "--demo"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
            c = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=env["PROXY_GATEWAY_TOKEN"],
                                    max_retries=3, default_headers={"X-Tenant-ID": "demo"})
            msg = c.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
            assert msg.content[0].text == "Hello from the fake upstream"
        finally:
            proc.terminate()
            assert proc.wait(15) == 0


def test_an_error_event_mid_stream_reaches_the_sdk_and_the_record(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    with pytest.raises(anthropic.APIStatusError) as err:
        with client(gw).messages.stream(model="claude-overload", max_tokens=100, messages=MESSAGES,
                                        extra_body={"fake": {"chunks": 10, "error_after": 5, "input_tokens": 21}}) as s:
            s.get_final_message()
    assert err.value.body["error"]["type"] == "overloaded_error"  # Anthropic's own event, first
    rec = wait_until(lambda: [x for x in gw.records() if x["model"] == "claude-overload"])[0]
    assert rec["status"] == "upstream_error" and rec["usage_source"] == "estimated"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (21, 2)


# -- a coding agent's request --------------------------------------------------------------

AGENT_BODY = {
    "model": MODEL,
    "max_tokens": 32000,
    "system": [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {"type": "text", "text": "Work in /repo. Prefer small diffs.", "cache_control": {"type": "ephemeral"}},
    ],
    "tools": [{"name": "Bash", "description": "Run a shell command",
               "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                                "required": ["command"]}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "List the files \u2014 please"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll list them."},
            {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "README.md\nsrc\n",
             "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
    ],
    "metadata": {"user_id": "user_abc_account__session_1"},
    "stream": True,
    "fake": {"input_tokens": 50, "output_tokens": 6},
}


def test_the_sdk_beta_namespace_reaches_the_upstream_with_its_betas(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    betas = ["context-management-2025-06-27", "token-efficient-tools-2025-02-19"]
    with client(gw).beta.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES, betas=betas,
                                         extra_body={"fake": {"input_tokens": 8, "output_tokens": 2}}) as s:
        final = s.get_final_message()  # POST /v1/messages?beta=true
    assert final.usage.output_tokens == 2
    assert last_upstream(fake_upstream)["headers"]["anthropic-beta"] == ",".join(betas)
    counted = client(gw).beta.messages.count_tokens(model=MODEL, messages=MESSAGES, betas=betas[:1],
                                                    extra_body={"fake": {"input_tokens": 99}})
    assert counted.input_tokens == 99
    assert [r["endpoint"] for r in gw.wait_records(2)[-2:]] == ["/v1/messages", "/v1/messages/count_tokens"]


def test_a_coding_agent_request_passes_byte_for_byte(gateway, fake_upstream):
    gw = gateway(**anthropic_env(fake_upstream))
    fake_upstream.reset()
    raw = json.dumps(AGENT_BODY, indent=1, ensure_ascii=False).encode()  # an odd layout: kept as it is
    beta = "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
    status, headers, data = post(gw.url + "/v1/messages", raw, {
        "x-api-key": gw.token, "X-Tenant-ID": "acme", "anthropic-version": "2023-06-01", "anthropic-beta": beta,
        "x-stainless-lang": "js", "user-agent": "claude-cli/2.0.0 (external, cli)"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert data.decode().startswith("event: message_start\n") and data.endswith(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    seen = last_upstream(fake_upstream)
    assert seen["body"].encode() == raw
    assert seen["headers"]["anthropic-beta"] == beta and seen["headers"]["anthropic-version"] == "2023-06-01"
    rec = gw.wait_records(1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["status"]) == (50, 6, "ok")


def test_a_prompt_past_200k_tokens_is_billed_at_the_long_context_rates(gateway, fake_upstream, postgres_env):
    """The 1M-token context beta: the price data prices inputs past 200k apart, and the
    record is not clamped to the data's 200k window."""
    from genai_prices import data_snapshot

    gw = gateway(**anthropic_env(fake_upstream), **postgres_env)
    fake = {"input_tokens": 210_000, "output_tokens": 1_000}
    client(gw).messages.create(model=MODEL, max_tokens=2000, messages=MESSAGES, extra_body={"fake": fake},
                               extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
    log, _ = one_record(gw, postgres_env)
    assert (log["prompt_tokens"], log.get("usage_flag")) == (210_000, None)
    _, info = data_snapshot.get_snapshot().find_provider_model(MODEL, None, "anthropic", None)
    prices = info.get_prices(datetime.now(UTC), None)
    want = (210_000 * prices.input_mtok.tiers[-1].price + 1_000 * prices.output_mtok.tiers[-1].price) / MILLION
    assert abs(Decimal(log["cost_usd_exact"]) - want) < EXACT
