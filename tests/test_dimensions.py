"""Every billable dimension priced right (metering/usage.py, metering/pricing.py): audio,
cache writes (the 1-hour part apart), web search fees and service tiers, through a real
gateway with the official openai SDK, each cost checked against the genai-prices rates read
here and combined by the test's own arithmetic; the ledger row equals the log line."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest

from support import MASTER, sdk_client
from support.ledger import conninfo, pg_rows
from support.waiting import wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
MILLION = Decimal(1_000_000)
EXACT = Decimal("1e-12")


def rates(model: str, provider: str = "openai", context: dict | None = None) -> dict:
    """The model's rates from the price data, by price key (None when it has none)."""
    from genai_prices import data_snapshot

    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    return dict(info.get_prices(datetime.now(UTC), context).__dict__)


def expected(r: dict, prompt=0, completion=0, cached=0, writes=0, writes_1h=0, audio_in=0, audio_out=0, searches=0):
    """USD by the providers' published rules: the parts of the input and output at their own
    rates, the rest at the plain rate; cache writes without a rate of their own as input."""
    def rate(key, fallback):
        return r.get(key) if r.get(key) is not None else fallback

    write_rate = rate("cache_write_mtok", r["input_mtok"])
    plain_in = prompt - cached - writes - audio_in
    total = (plain_in * r["input_mtok"] + cached * rate("cache_read_mtok", r["input_mtok"])
             + (writes - writes_1h) * write_rate + writes_1h * rate("cache_write_1h_mtok", write_rate)
             + audio_in * rate("input_audio_mtok", r["input_mtok"])
             + (completion - audio_out) * r["output_mtok"] + audio_out * rate("output_audio_mtok", r["output_mtok"]))
    return total / MILLION + searches * (r.get("web_searches_kcount") or Decimal(0)) / 1000


def one_record(gw, env) -> tuple[dict, dict]:
    log = gw.wait_records(1)[-1]
    # the log line is written before the row commits
    rows = wait_until(lambda: pg_rows(env, "request_id = %s", (log["request_id"],)), message="the ledger row")
    assert len(rows) == 1
    row = rows[0]
    for field in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
                  "cache_write_1h_tokens", "audio_input_tokens", "audio_output_tokens", "web_search_calls",
                  "service_tier", "price_source", "price_version"):
        # counts a request did not have are left out of the log line
        assert row[field] == log.get(field, None if field == "service_tier" else 0), field
    assert Decimal(str(row["cost_usd"])) == Decimal(log["cost_usd_exact"])
    return log, row


@pytest.mark.parametrize("stream", [False, True])
def test_audio_tokens_are_billed_at_the_audio_rates(gateway, postgres_env, stream):
    gw = gateway(**postgres_env)
    fake = {"prompt_tokens": 1200, "completion_tokens": 900,
            "details": {"input": {"audio_tokens": 1000}, "output": {"audio_tokens": 800}}}
    c = sdk_client(gw)
    if stream:
        list(c.chat.completions.create(model="gpt-audio", messages=MESSAGES, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"fake": fake}))
    else:
        c.chat.completions.create(model="gpt-audio", messages=MESSAGES, extra_body={"fake": fake})
    log, _ = one_record(gw, postgres_env)
    assert (log["audio_input_tokens"], log["audio_output_tokens"]) == (1000, 800)
    want = expected(rates("gpt-audio"), prompt=1200, completion=900, audio_in=1000, audio_out=800)
    assert abs(Decimal(log["cost_usd_exact"]) - want) < EXACT
    # billed as text, the same turn would cost far less: the audio rates are what is used
    assert want > 3 * expected(rates("gpt-audio"), prompt=1200, completion=900)
    assert log["price_source"] == "genai-prices" and log["price_version"].startswith("genai-prices ")


def test_audio_without_an_audio_rate_is_marked_partial(gateway, postgres_env):
    gw = gateway(**postgres_env)
    r = rates("gpt-4o-audio-preview")
    assert r.get("input_audio_mtok") is None  # the data lacks it: the record must say so
    fake = {"prompt_tokens": 500, "completion_tokens": 50, "details": {"input": {"audio_tokens": 400}}}
    sdk_client(gw).chat.completions.create(model="gpt-4o-audio-preview", messages=MESSAGES, extra_body={"fake": fake})
    log, _ = one_record(gw, postgres_env)
    assert log["price_source"] == "genai-prices:partial"
    assert abs(Decimal(log["cost_usd_exact"]) - expected(r, prompt=500, completion=50)) < EXACT


@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_service_tier_prices_the_request(gateway, postgres_env, tier):
    gw = gateway(**postgres_env)
    fake = {"prompt_tokens": 10_000, "completion_tokens": 2_000, "cached_tokens": 4_000, "service_tier": tier}
    sdk_client(gw).chat.completions.create(model="gpt-5", messages=MESSAGES, extra_body={"fake": fake})
    log, row = one_record(gw, postgres_env)
    assert row["service_tier"] == tier
    tiered = rates("gpt-5", context={"service_tier": tier})
    standard = rates("gpt-5")
    assert tiered["input_mtok"] != standard["input_mtok"]
    want = expected(tiered, prompt=10_000, completion=2_000, cached=4_000)
    assert abs(Decimal(log["cost_usd_exact"]) - want) < EXACT
    assert log["price_source"] == "genai-prices"


def test_a_tier_the_model_has_no_price_for_is_partial(gateway, postgres_env):
    gw = gateway(**postgres_env)
    fake = {"prompt_tokens": 1000, "completion_tokens": 100, "service_tier": "flex"}  # gpt-4o-mini: no flex
    sdk_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": fake})
    log, _ = one_record(gw, postgres_env)
    assert log["price_source"] == "genai-prices:partial"
    assert abs(Decimal(log["cost_usd_exact"]) - expected(rates("gpt-4o-mini"), 1000, 100)) < EXACT


@pytest.mark.parametrize("stream", [False, True])
def test_web_search_calls_carry_their_fee(gateway, postgres_env, stream):
    gw = gateway(**postgres_env)
    calls = [{"type": "web_search_call", "id": f"ws_{i}", "status": "completed"} for i in range(3)]
    fake = {"prompt_tokens": 300, "completion_tokens": 40, "output_items": calls}
    c = sdk_client(gw)
    if stream:
        list(c.responses.create(model="gpt-5", input="news?", stream=True, extra_body={"fake": fake}))
    else:
        c.responses.create(model="gpt-5", input="news?", extra_body={"fake": fake})
    log, _ = one_record(gw, postgres_env)
    assert log["web_search_calls"] == 3 and "audio_input_tokens" not in log
    want = expected(rates("gpt-5"), prompt=300, completion=40, searches=3)
    assert abs(Decimal(log["cost_usd_exact"]) - want) < EXACT
    assert want > 10 * expected(rates("gpt-5"), prompt=300, completion=40)  # the fee dominates a small call


def test_openai_cache_writes_are_input_when_no_write_rate_exists(gateway, postgres_env):
    gw = gateway(**postgres_env)
    fake = {"prompt_tokens": 5000, "completion_tokens": 10, "details": {"input": {"cache_write_tokens": 3000}}}
    sdk_client(gw).chat.completions.create(model="gpt-5", messages=MESSAGES, extra_body={"fake": fake})
    log, _ = one_record(gw, postgres_env)
    assert log["cache_write_tokens"] == 3000 and log["price_source"] == "genai-prices"
    assert abs(Decimal(log["cost_usd_exact"]) - expected(rates("gpt-5"), prompt=5000, completion=10)) < EXACT


def test_anthropic_shaped_usage_bills_5_minute_and_1_hour_writes_apart():
    from tallygate.metering.pricing import PriceBook
    from tallygate.metering.usage import usage_from_object

    usage = usage_from_object({
        "input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 5000,
        "cache_creation_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
        "server_tool_use": {"web_search_requests": 2}, "service_tier": "standard",
    })
    assert usage is not None
    # OpenAI semantics: the prompt counts reads and writes
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (
        9000, 5000, 3000, 1000)
    assert usage.web_search_calls == 2
    cost, source = PriceBook().cost("anthropic", "claude-sonnet-4-5", None, usage)
    r = rates("claude-sonnet-4-5", "anthropic")
    base = r["input_mtok"].base
    # Anthropic publishes the cache prices as multiples of the base input price
    assert r["cache_write_mtok"].base == base * Decimal("1.25") and r["cache_write_1h_mtok"].base == base * 2
    plain = {key: (value.base if hasattr(value, "base") else value) for key, value in r.items()}
    want = expected(plain, prompt=9000, completion=200, cached=5000, writes=3000, writes_1h=1000, searches=2)
    assert abs(cost - want) < EXACT and source == "genai-prices"
    # the same writes all billed at the 5-minute rate would be less: the 1-hour part is not
    assert cost - expected(plain, prompt=9000, completion=200, cached=5000, writes=3000, searches=2) == (
        1000 * (plain["cache_write_1h_mtok"] - plain["cache_write_mtok"]) / MILLION)


def test_batch_tier_is_the_batch_price():
    from tallygate.metering.pricing import PriceBook
    from tallygate.metering.usage import Usage

    usage = Usage(prompt_tokens=2000, completion_tokens=500, total_tokens=2500, service_tier="batch")
    cost, source = PriceBook().cost("openai", "gpt-5", None, usage)
    assert source == "genai-prices"
    assert abs(cost - expected(rates("gpt-5", context={"processing": "batch"}), 2000, 500)) < EXACT
    assert cost * 2 == expected(rates("gpt-5"), 2000, 500)  # OpenAI's batch work: half price


def test_override_file_prices_dimensions_and_tiers(tmp_path):
    from tallygate.metering.pricing import PriceBook, load_overrides
    from tallygate.metering.usage import Usage

    path = tmp_path / "prices.toml"
    path.write_text('[models."house"]\ninput_mtok = 2\noutput_mtok = 8\ninput_audio_mtok = 40\n'
                    'web_searches_kcount = 25\n[models."house".tiers.flex]\ninput_mtok = 1\noutput_mtok = 4\n')
    book = PriceBook(load_overrides(str(path)))
    usage = Usage(prompt_tokens=1000, completion_tokens=100, total_tokens=1100, audio_input_tokens=600,
                  web_search_calls=2)
    cost, source = book.cost("openai", "house", None, usage)
    assert source == "override"
    assert cost == (400 * 2 + 600 * 40 + 100 * 8) / MILLION + 2 * Decimal(25) / 1000
    usage.service_tier = "flex"
    assert book.cost("openai", "house", None, usage) == (
        (400 * 1 + 600 * 40 + 100 * 4) / MILLION + 2 * Decimal(25) / 1000, "override")
    usage.service_tier = "priority"  # not in the file: its standard rates, and said to be partial
    assert book.cost("openai", "house", None, usage)[1] == "override:partial"


def test_override_file_with_plain_rates_marks_extra_parts_partial(tmp_path):
    from tallygate.metering.pricing import PriceBook, load_overrides
    from tallygate.metering.usage import Usage

    path = tmp_path / "prices.toml"
    path.write_text('[models."plain"]\ninput_mtok = 2\noutput_mtok = 8\n')
    book = PriceBook(load_overrides(str(path)))
    usage = Usage(prompt_tokens=1000, completion_tokens=100, total_tokens=1100, audio_output_tokens=50)
    assert book.cost("openai", "plain", None, usage) == ((1000 * 2 + 100 * 8) / MILLION, "override:partial")


@pytest.mark.parametrize("body, message", [
    ('[models."x"]\ninput_mtok = 1\noutput_mtok = 2\ninput_audoi_mtok = 3\n', "unknown price 'input_audoi_mtok'"),
    ('[models."x"]\ninput_mtok = 1\noutput_mtok = 2\ntiers = 3\n', "x.tiers must be a table of tiers"),
    ('[models."x"]\ninput_mtok = 1\noutput_mtok = 2\n[models."x".tiers.flex]\ninput_mtok = -1\n',
     "x.tiers.flex.input_mtok: must be a non-negative number"),
])
def test_override_file_errors_name_the_bad_entry(tmp_path, body, message):
    from tallygate.metering.pricing import PriceFileError, load_overrides

    path = tmp_path / "prices.toml"
    path.write_text(body)
    with pytest.raises(PriceFileError, match=message.replace(".", r"\.")):
        load_overrides(str(path))


def test_record_copies_every_usage_field():
    from tallygate.metering.record import LEDGER_COLUMNS, UsageRecord
    from tallygate.metering.usage import USAGE_FIELDS

    record = UsageRecord("r", datetime.now(UTC), "t", "m", "/v1/chat/completions", False)
    assert all(hasattr(record, field) for field in USAGE_FIELDS)
    assert set(USAGE_FIELDS) <= set(LEDGER_COLUMNS)
    for n, name in enumerate(LEDGER_COLUMNS):  # a distinct value in each: the order is checked
        setattr(record, name, f"v{n}")
    assert record.ledger_row() == tuple(f"v{n}" for n in range(len(LEDGER_COLUMNS)))


def test_replay_keeps_the_new_columns(gateway, postgres_env, tmp_path):


    gw = gateway(**postgres_env)
    fake = {"prompt_tokens": 800, "completion_tokens": 60, "service_tier": "priority",
            "details": {"input": {"audio_tokens": 100}}}
    sdk_client(gw).chat.completions.create(model="gpt-audio", messages=MESSAGES, extra_body={"fake": fake})
    log, row = one_record(gw, postgres_env)
    gw.stop()
    with psycopg.connect(conninfo(postgres_env)) as conn:
        conn.execute("DELETE FROM litellm_usage WHERE request_id = %s", (log["request_id"],))
    (tmp_path / "log.jsonl").write_text(gw.output())
    done = subprocess.run([sys.executable, "-m", "tallygate", "ledger", "replay", str(tmp_path / "log.jsonl")],
                          env={**gw.env, **postgres_env, "PROXY_MASTER_KEY": MASTER}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    again = pg_rows(postgres_env, "request_id = %s", (log["request_id"],))[0]
    for field in ("audio_input_tokens", "service_tier", "price_source", "price_version", "cost_usd"):
        assert again[field] == row[field], field


def test_a_1_hour_write_with_only_a_5_minute_rate_is_partial(tmp_path):
    from tallygate.metering.pricing import PriceBook, load_overrides
    from tallygate.metering.usage import Usage

    path = tmp_path / "prices.toml"
    path.write_text('[models."c"]\ninput_mtok = 3\noutput_mtok = 15\ncache_write_mtok = 3.75\n')
    book = PriceBook(load_overrides(str(path)))
    five = Usage(prompt_tokens=1000, completion_tokens=0, total_tokens=1000, cache_write_tokens=400)
    assert book.cost("anthropic", "c", None, five) == ((600 * 3 + 400 * Decimal("3.75")) / MILLION, "override")
    hour = Usage(prompt_tokens=1000, completion_tokens=0, total_tokens=1000, cache_write_tokens=400,
                 cache_write_1h_tokens=400)
    assert book.cost("anthropic", "c", None, hour)[1] == "override:partial"


def test_a_big_chat_body_keeps_its_service_tier(gateway, postgres_env):
    """Bodies over 64 KiB are not parsed whole: the top-level tier is still found (after the
    usage, where chat completions put it), not one a message's text mentions."""
    import orjson

    text = 'say "service_tier": "flex" ' + "x" * 80_000
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-5",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10_000, "completion_tokens": 2_000, "total_tokens": 12_000},
            "service_tier": "priority", "system_fingerprint": None}
    gw = gateway(**postgres_env)
    fake = {"raw_body": orjson.dumps(body).decode(), "content_type": "application/json"}
    sdk_client(gw).chat.completions.create(model="gpt-5", messages=MESSAGES, extra_body={"fake": fake})
    log, row = one_record(gw, postgres_env)
    assert row["service_tier"] == "priority"
    want = expected(rates("gpt-5", context={"service_tier": "priority"}), prompt=10_000, completion=2_000)
    assert abs(Decimal(log["cost_usd_exact"]) - want) < EXACT


def test_a_big_responses_body_counts_its_tool_calls_and_reads_the_top_level_usage():
    import orjson

    from tallygate.metering.usage import WHOLE_PARSE_LIMIT, from_json_body

    doc = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-5",
           "output": [{"type": "web_search_call", "id": "ws_1", "status": "completed"},
                      {"type": "web_search_call", "id": "ws_2", "status": "completed"},
                      {"type": "message", "id": "msg_1", "role": "assistant",
                       "content": [{"type": "output_text", "text": "y" * 100_000}]}],
           "service_tier": "flex",
           "usage": {"input_tokens": 900, "output_tokens": 90, "total_tokens": 990},
           "metadata": {"usage": '{"input_tokens": 1}', "note": "web_search_call"}}
    body = orjson.dumps(doc)
    assert len(body) > WHOLE_PARSE_LIMIT
    usage, model = from_json_body(body)
    assert model == "gpt-5"
    assert (usage.prompt_tokens, usage.completion_tokens) == (900, 90)
    assert (usage.web_search_calls, usage.service_tier) == (2, "flex")


def test_unpriced_and_partial_requests_are_counted_and_warned_once_per_model(gateway, postgres_env):
    from support import metric, metrics_text

    gw = gateway(**postgres_env)
    c = sdk_client(gw)
    audio = {"prompt_tokens": 500, "completion_tokens": 50, "details": {"input": {"audio_tokens": 400}}}
    for _ in range(3):
        c.chat.completions.create(model="gpt-4o-audio-preview", messages=MESSAGES, extra_body={"fake": audio})
        c.chat.completions.create(model="house-model-x", messages=MESSAGES)
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    logs = gw.wait_records(9)
    assert {r["price_source"] for r in logs if r["model"] == "house-model-x"} == {"unknown"}
    text = metrics_text(f"{gw.url}/metrics")
    assert metric(text, "tallygate_unpriced_requests_total", model="gpt-4o-audio-preview", price="partial") == 3
    # a name the price data does not know is the client's text: counted under model="other"
    # (the warning below names it)
    assert metric(text, "tallygate_unpriced_requests_total", model="other", price="unknown") == 3
    assert 'tallygate_unpriced_requests_total{model="gpt-4o-mini"' not in text
    out = gw.output()
    assert out.count("model priced in part: some of its usage has no rate") == 1
    assert out.count("model has no price: its requests are recorded at cost 0") == 1


def test_a_priority_request_reserves_its_budget_at_the_priority_price():
    from tallygate.limits.guard import Guard, _nanos
    from tallygate.metering.pricing import PriceBook

    guard = Guard(None, None, PriceBook(), None)
    standard = guard._worst_cost("openai", "gpt-5", None, 1000, 1000)
    priority = guard._worst_cost("openai", "gpt-5", None, 1000, 1000, tier="priority")
    flex = guard._worst_cost("openai", "gpt-5", None, 1000, 1000, tier="flex")
    r = rates("gpt-5", context={"service_tier": "priority"})
    assert priority == _nanos(expected(r, prompt=1000, completion=1000)) > standard
    assert flex == standard  # the dearer of the tier and the standard price


def test_a_prompt_past_200k_tokens_is_billed_at_the_long_context_rate():
    """claude-sonnet-4-5's data says a 200k window but prices inputs past 200k (the 1M-token
    beta) at a higher rate: such a prompt is neither clamped to 200k nor billed at the base rate."""
    from tallygate.metering.pricing import PriceBook
    from tallygate.metering.usage import Usage

    book = PriceBook()
    price = book.price("anthropic", "claude-sonnet-4-5")
    assert price.context_window >= 1_000_000
    usage = Usage(prompt_tokens=210_000, completion_tokens=1_000, total_tokens=211_000)
    cost, source = book.cost("anthropic", "claude-sonnet-4-5", None, usage)
    r = rates("claude-sonnet-4-5", provider="anthropic")
    long_in, long_out = r["input_mtok"].tiers[-1].price, r["output_mtok"].tiers[-1].price
    assert abs(cost - (210_000 * long_in + 1_000 * long_out) / MILLION) < EXACT
    assert source == "genai-prices"


def test_a_request_asking_for_prompt_caching_reserves_its_prompt_as_1_hour_writes():
    from tallygate.limits.guard import Guard, _nanos
    from tallygate.metering.pricing import PriceBook

    guard = Guard(None, None, PriceBook(), None)
    plain = guard._worst_cost("anthropic", "claude-sonnet-4-5", None, 1000, 1000)
    caching = guard._worst_cost("anthropic", "claude-sonnet-4-5", None, 1000, 1000, cache_writes=True)
    r = rates("claude-sonnet-4-5", provider="anthropic")
    base = {k: (v.base if hasattr(v, "base") else v) for k, v in r.items()}
    assert caching == _nanos(expected(base, prompt=1000, completion=1000, writes=1000, writes_1h=1000)) > plain
