"""The gateway core end to end: the official openai SDK -> gateway -> fake upstream."""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import openai
import pytest

from support import FakeUpstream, call, post, sdk_client

FAKE = {"prompt_tokens": 1000, "completion_tokens": 200}
MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_chat_non_stream_metered_exactly(gateway):
    gw = gateway()
    resp = sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": FAKE})
    assert resp.choices[0].message.content == "Hello from the fake upstream"
    assert resp.usage.prompt_tokens == 1000
    (rec,) = gw.wait_records(1)
    assert rec["severity"] == "INFO"
    assert rec["tenant_id"] == "acme" and rec["model"] == "gpt-4o-mini"
    assert rec["endpoint"] == "/v1/chat/completions" and rec["stream"] is False
    assert rec["status_code"] == 200 and rec["status"] == "ok"
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (1000, 200, 1200)
    for field in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens"):
        assert type(rec[field]) is int
    assert type(rec["cost_usd"]) is float and type(rec["latency_ms"]) is float
    assert Decimal(rec["cost_usd_exact"]) == Decimal("0.00027")
    assert rec["cost_usd"] == 0.00027
    assert rec["price_source"] == "genai-prices" and rec["usage_source"] == "provider"
    assert rec["request_id"].startswith("req_") and "ttft_ms" not in rec
    assert rec["logging.googleapis.com/labels"] == {"tenant_id": "acme", "model": "gpt-4o-mini", "stream": "false"}
    assert "logging.googleapis.com/trace" not in rec


def test_stream_without_usage_is_metered_and_client_sees_exact_stream(gateway, fake_upstream):
    gw = gateway()
    fake = {"prompt_tokens": 2000, "cached_tokens": 500, "completion_tokens": 100}
    chunks = list(sdk_client(gw).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, extra_body={"fake": fake}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream"
    assert all(c.choices for c in chunks), "the usage-only chunk must not reach a client that did not ask"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    sent = json.loads(fake_upstream.requests()[-1]["body"])
    assert sent["stream_options"] == {"include_usage": True}
    (rec,) = gw.wait_records(1)
    assert rec["stream"] is True and rec["usage_source"] == "provider"
    assert (rec["prompt_tokens"], rec["cached_tokens"], rec["completion_tokens"]) == (2000, 500, 100)
    assert Decimal(rec["cost_usd_exact"]) == Decimal("0.005375")
    assert type(rec["ttft_ms"]) is float and rec["ttft_ms"] <= rec["latency_ms"]


def test_stream_with_usage_requested_keeps_usage_chunk(gateway, fake_upstream):
    gw = gateway()
    chunks = list(sdk_client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_body={"fake": FAKE}))
    assert chunks[-1].usage.total_tokens == 1200 and chunks[-1].choices == []
    (rec,) = gw.wait_records(1)
    assert rec["total_tokens"] == 1200


def test_byte_for_byte_against_direct_upstream(gateway, fake_upstream):
    gw = gateway()
    for body in ({"model": "gpt-4o-mini", "messages": MESSAGES, "fake": FAKE},
                 {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "fake": FAKE},
                 {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                  "stream_options": {"include_usage": True}, "fake": FAKE}):
        s1, h1, direct = post(fake_upstream.base_url + "/chat/completions", body, {})
        s2, h2, proxied = post(gw.base_url + "/chat/completions", body, gw.headers())
        assert (s1, direct) == (s2, proxied)
        assert h2["x-request-id"] == h1["x-request-id"]
        assert h2["content-type"].split(";")[0] == h1["content-type"].split(";")[0]
    assert "x-ratelimit-remaining-requests" in {k.lower() for k in h2}
    s, h, _ = post(gw.base_url + "/chat/completions", {"model": "m", "messages": []}, gw.headers())
    assert h["x-ratelimit-limit-requests"] == "100"
    assert "x-fake-secret-header" not in {k.lower() for k in h}
    assert h["x-tallygate-request-id"].startswith("req_")


def test_body_forwarded_as_sent_with_upstream_key(gateway, fake_upstream):
    gw = gateway()
    raw = b'{"model":"gpt-4o-mini","messages":[],"custom_field":{"a":[1,2.50,"x"]},  "n": 1}'
    req = urllib.request.Request(gw.base_url + "/chat/completions", data=raw, method="POST", headers=gw.headers())
    urllib.request.urlopen(req).read()
    last = fake_upstream.requests()[-1]
    assert last["body"] == raw.decode()
    assert last["authorization"] == "Bearer sk-upstream-secret-abcdef"


async def test_async_sdk_all_endpoints(gateway):
    gw = gateway()
    c = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                           default_headers={"X-Tenant-ID": "async-tenant"})
    r1 = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": FAKE})
    stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                             extra_body={"fake": FAKE})
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    emb = await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                    extra_body={"fake": {"prompt_tokens": 1000}})
    comp = await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", extra_body={"fake": FAKE})
    resp = await c.responses.create(model="gpt-4o-mini", input="hi",
                                    extra_body={"fake": {"prompt_tokens": 1000, "completion_tokens": 200,
                                                         "cached_tokens": 100, "reasoning_tokens": 50}})
    rstream = await c.responses.create(model="gpt-4o-mini", input="hi", stream=True, extra_body={"fake": FAKE})
    events = [e async for e in rstream]
    await c.close()
    assert r1.usage.total_tokens == 1200 and text == "Hello from the fake upstream"
    assert len(emb.data) == 2 and comp.choices[0].text
    assert resp.output_text == "Hello from the fake upstream"
    assert events[-1].type == "response.completed"
    recs = {(r["endpoint"], r["stream"]): r for r in gw.wait_records(6)}
    assert recs[("/v1/embeddings", False)]["prompt_tokens"] == 1000
    assert Decimal(recs[("/v1/embeddings", False)]["cost_usd_exact"]) == Decimal("0.00002")
    assert recs[("/v1/completions", False)]["total_tokens"] == 1200
    r = recs[("/v1/responses", False)]
    assert (r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"], r["reasoning_tokens"]) == (1000, 200, 100, 50)
    # gpt-4o-mini: 900 * 0.15 + 100 * 0.075 + 200 * 0.6 per million
    assert Decimal(r["cost_usd_exact"]) == Decimal("0.0002625")
    rs = recs[("/v1/responses", True)]
    assert rs["total_tokens"] == 1200 and rs["usage_source"] == "provider"
    assert {r["tenant_id"] for r in recs.values()} == {"async-tenant"}


def test_models_list(gateway):
    gw = gateway()
    ids = [m.id for m in sdk_client(gw).models.list()]
    assert "gpt-4o-mini" in ids


def test_bad_requests_are_openai_errors(gateway):
    gw = gateway(TALLYGATE_MAX_BODY_BYTES=2048)
    url = gw.base_url + "/chat/completions"
    h = {**gw.headers(), "Content-Type": "application/json"}
    for data, status, code in ((b"", 400, "invalid_json"), (b"{nope", 400, "invalid_json"),
                               (b"[1]", 400, "invalid_json"), (b'{"messages": []}', 400, "invalid_model"),
                               (b'{"model": 5}', 400, "invalid_model"),
                               (b'{"model": "m", "stream": "yes"}', 400, "invalid_stream"),
                               (b'{"model": "m", "x": "' + b"a" * 4096 + b'"}', 413, "request_too_large")):
        req = urllib.request.Request(url, data=data, method="POST", headers=h)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req)
        assert exc.value.code == status, data[:40]
        assert json.loads(exc.value.read())["error"]["code"] == code
    for path, method, status in (("/v1/nope", "POST", 404), ("/v1/chat/completions", "GET", 405),
                                 ("/health", "POST", 405)):
        req = urllib.request.Request(gw.url + path, method=method, headers=h,
                                     data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req)
        assert exc.value.code == status
        assert "error" in json.loads(exc.value.read())
    assert gw.records() == []


def test_health_live_ready(gateway):
    gw = gateway()
    for path in ("/health", "/live", "/ready"):
        doc = json.loads(urllib.request.urlopen(gw.url + path).read())
        assert doc["status"] in ("ok", "ready")
    assert json.loads(urllib.request.urlopen(gw.url + "/health").read())["version"]


def test_upstream_unreachable_is_502_and_metered(gateway):
    gw = gateway(upstream="http://127.0.0.1:9/v1")
    with pytest.raises(openai.APIStatusError) as exc:
        sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.body["code"] == "upstream_unreachable"
    (rec,) = gw.wait_records(1)
    assert rec["status"] == "upstream_error" and rec["status_code"] == 502 and rec["total_tokens"] == 0


def test_upstream_error_passed_through(gateway):
    gw = gateway()
    with pytest.raises(openai.APIStatusError) as exc:
        sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                           extra_body={"fake": {"status": 429}})
    assert exc.value.status_code == 429
    assert exc.value.body["message"] == "fake upstream error 429"
    (rec,) = gw.wait_records(1)
    assert rec["status"] == "upstream_error" and rec["status_code"] == 429


def test_read_timeout_is_504(gateway):
    gw = gateway(TALLYGATE_READ_TIMEOUT=0.3)
    with pytest.raises(openai.APIStatusError) as exc:
        sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                           extra_body={"fake": {"delay": 2}})
    assert exc.value.status_code == 504
    assert gw.wait_records(1)[0]["status"] == "timeout"


def test_stream_is_relayed_as_it_arrives(gateway):
    gw = gateway()
    started = time.monotonic()
    stream = sdk_client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        extra_body={"fake": {"chunks": 4, "chunk_delay": 0.4}})
    first = next(iter(stream))
    first_at = time.monotonic() - started
    rest = list(stream)
    total = time.monotonic() - started
    assert first.choices[0].delta.content == "Hello"
    assert first_at < 0.3 and total > 1.0, (first_at, total)
    assert len(rest) >= 3
    rec = gw.wait_records(1)[0]
    assert rec["ttft_ms"] < 300 and rec["latency_ms"] > 1000


def test_cut_off_stream_is_metered_as_estimate(gateway):
    gw = gateway()
    got = []
    with pytest.raises(openai.APIError):
        for chunk in sdk_client(gw).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True,
                extra_body={"fake": {"chunks": 6, "cut_after": 3}}):
            got.append(chunk)
    rec = gw.wait_records(1)[0]
    assert rec["status"] == "upstream_error" and rec["usage_source"] == "estimated"
    assert rec["completion_tokens"] == 3 and rec["prompt_tokens"] > 0


def test_config_routes_and_price_overrides(gateway, fake_upstream, tmp_path):
    other = FakeUpstream()
    try:
        (tmp_path / "routes.toml").write_text(f'''
[[routes]]
model = "llama3"
base_url = "{other.base_url}"
api_key_env = "LOCAL_LLM_KEY"
provider = "ollama"
upstream_model = "llama3:8b"

[[routes]]
model = "router/*"
base_url = "{other.base_url}"
auth = "none"
''')
        (tmp_path / "prices.toml").write_text('[models."llama3"]\ninput_mtok = 0.5\noutput_mtok = "1.5"\n'
                                              '[models."gpt-4o-mini"]\ninput_mtok = 0.1\noutput_mtok = 0.4\n')
        gw = gateway(TALLYGATE_CONFIG=tmp_path / "routes.toml", TALLYGATE_PRICES_FILE=tmp_path / "prices.toml",
                     LOCAL_LLM_KEY="local-key-123")
        c = sdk_client(gw)
        c.chat.completions.create(model="llama3", messages=MESSAGES, extra_body={"fake": FAKE})
        c.chat.completions.create(model="router/x", messages=MESSAGES, extra_body={"fake": FAKE})
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": FAKE})
        seen = other.requests()
        assert json.loads(seen[0]["body"])["model"] == "llama3:8b"
        assert seen[0]["authorization"] == "Bearer local-key-123"
        assert seen[1]["authorization"] is None
        recs = gw.wait_records(3)
        assert recs[0]["provider"] == "ollama" and recs[0]["upstream_model"] == "llama3:8b"
        assert Decimal(recs[0]["cost_usd_exact"]) == Decimal("0.0008")  # 1000*0.5 + 200*1.5 per M
        assert recs[0]["price_source"] == "override"
        assert Decimal(recs[2]["cost_usd_exact"]) == Decimal("0.00018")
        assert "llama3" in [m.id for m in c.models.list()]
    finally:
        other.stop()


def test_trace_from_headers(gateway):
    gw = gateway(GOOGLE_CLOUD_PROJECT="my-proj")
    trace = "105445aa7843bc8bf206b12000100000"
    sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                       extra_headers={"X-Cloud-Trace-Context": f"{trace}/1;o=1"})
    sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                       extra_headers={"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"})
    sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                       extra_headers={"X-Cloud-Trace-Context": "x\"}{\"severity\": \"ERROR\"}"})
    recs = gw.wait_records(3)
    assert recs[0]["logging.googleapis.com/trace"] == f"projects/my-proj/traces/{trace}"
    assert recs[1]["logging.googleapis.com/trace"] == f"projects/my-proj/traces/{'a' * 32}"
    assert "logging.googleapis.com/trace" not in recs[2]


def test_sdk_responses_stream_helper_through_the_gateway(gateway):
    """The SDK's `responses.stream` helper assembles the answer from the documented event
    sequence (output items, content parts, text deltas): it fails on a stream that skips them."""
    gw = gateway()
    fake = {**FAKE, "output_items": [{"type": "web_search_call", "id": "ws_1", "status": "completed",
                                      "action": {"type": "search", "query": "q"}}]}
    with sdk_client(gw).responses.stream(model="gpt-4o-mini", input="hi", extra_body={"fake": fake}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "Hello from the fake upstream"
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 2
    assert "response.content_part.added" in kinds and "response.output_text.done" in kinds
    rec = gw.wait_records(1)[-1]
    assert rec["web_search_calls"] == 1 and rec["total_tokens"] == 1200


def test_models_retrieve(gateway, fake_upstream, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(f'[[routes]]\nmodel = "team-default"\nbase_url = "{fake_upstream.base_url}"\n'
                      'upstream_model = "gpt-4o"\n')
    gw = gateway(TALLYGATE_CONFIG=routes)
    c = sdk_client(gw)
    assert c.models.retrieve("gpt-4o-mini").owned_by == "fake"  # the upstream's answer
    local = c.models.retrieve("team-default")  # a routes-file model: the gateway's own
    assert (local.id, local.owned_by) == ("team-default", "openai")
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"
    status, _, _ = call(f"{gw.url}/v1/models/gpt-4o-mini", token="wrong")
    assert status == 401
