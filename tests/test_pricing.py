"""Prices (tallygate.metering.pricing): the price cache stays bounded, an unknown model
costs zero and says so."""

from __future__ import annotations

from support import sdk_client

FAKE = {"prompt_tokens": 1000, "completion_tokens": 200}
MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_price_cache_stays_bounded_whatever_model_names_clients_send(monkeypatch):
    from tallygate.metering import pricing

    monkeypatch.setattr(pricing, "CACHE_LIMIT", 50)
    book = pricing.PriceBook({"known": pricing.Price(pricing.Decimal("1"), pricing.Decimal("2"), None, "override")})
    for i in range(500):
        assert book.price("openai", "known", f"snapshot-{i}").source == "override"
        assert len(book._cache) <= 50
    assert book.price("openai", "known", None).input_mtok == 1


def test_unknown_model_costs_zero(gateway):
    gw = gateway()
    sdk_client(gw).chat.completions.create(model="my-private-llm", messages=MESSAGES, extra_body={"fake": FAKE})
    rec = gw.wait_records(1)[0]
    assert rec["cost_usd"] == 0.0 and type(rec["cost_usd"]) is float and rec["price_source"] == "unknown"
