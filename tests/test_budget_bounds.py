"""Budgets hold under concurrency: the reservation is the request's true worst case.

Attacks from outside, against real gateway processes and the fake upstream: many
concurrent requests that each generate `n` choices, requests without max_tokens that
generate far more than a 4096-token guess, and an alias route whose price only the
upstream's answer names. The bound (docs/reliability.md): the ledger's spend is at most
the budget plus the largest single request's worst case.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from support import MASTER, routes_file

MESSAGES = [{"role": "user", "content": "hi"}]
MINI_IN, MINI_OUT = Decimal("0.15"), Decimal("0.6")  # gpt-4o-mini, USD per million tokens
MILLION = Decimal(1_000_000)
REDIS = "redis://127.0.0.1:6379/0"


def call(url: str, method: str = "GET", body=None, token: str | None = MASTER, headers=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def new_key(gw, **limits) -> dict:
    status, _, doc = call(gw.url + "/admin/keys", "POST", {"tenant_id": f"bb-{uuid.uuid4().hex[:8]}", **limits})
    assert status == 201, doc
    return doc


def chat_body(**kw) -> dict:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **kw}


def body_len(body: dict) -> int:
    return len(json.dumps(body).encode())


def concurrently(gw, key: str, body: dict, count: int) -> list[int]:
    def one(_):
        return call(gw.base_url + "/chat/completions", "POST", body, token=key)[0]
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def spend(gw, key_id: str, n: int) -> Decimal:
    recs = [r for r in gw.wait_records(n) if r["api_key_id"] == key_id]
    assert len(recs) == n, recs
    return sum((Decimal(r["cost_usd_exact"]) for r in recs), Decimal(0))


def report(name: str, budget: Decimal, spent: Decimal, worst: Decimal, statuses: list[int]) -> None:
    print(f"\n{name}: budget ${budget}, spent ${spent} ({spent / budget:.2f}x), one request's worst case "
          f"${worst}, admitted {statuses.count(200)} of {len(statuses)}")


def test_n_choices_are_reserved(gateway, postgres_env):
    """100 concurrent {"max_tokens": 1, "n": 100} against a $0.001 budget: each reserves 100
    output tokens, not 1 (they spent 6.2x the budget when n was ignored)."""
    gw = gateway(**postgres_env)
    budget = Decimal("0.001")
    key = new_key(gw, budget_usd=str(budget), budget_period="day")
    body = chat_body(max_tokens=1, n=100, fake={"prompt_tokens": 10, "completion_tokens": 100, "delay": 0.5})
    statuses = concurrently(gw, key["key"], body, 100)
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 1
    spent = spend(gw, key["key_id"], statuses.count(200))
    worst = (body_len(body) * MINI_IN + 100 * MINI_OUT) / MILLION
    report("n=100, max_tokens=1", budget, spent, worst, statuses)
    assert spent <= budget + worst, (spent, statuses.count(200))
    assert spent == statuses.count(200) * (10 * MINI_IN + 100 * MINI_OUT) / MILLION


def test_best_of_is_reserved(gateway, postgres_env):
    """Completions generate best_of candidates: each is reserved."""
    gw = gateway(**postgres_env)
    budget = Decimal("0.0005")
    key = new_key(gw, budget_usd=str(budget), budget_period="day")
    body = {"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 10, "best_of": 20, "n": 1,
            "fake": {"prompt_tokens": 1, "completion_tokens": 200, "delay": 0.5}}

    def one(_):
        return call(gw.base_url + "/completions", "POST", body, token=key["key"])[0]
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(50)))
    spent = spend(gw, key["key_id"], statuses.count(200))
    worst = (body_len(body) * MINI_IN + 200 * MINI_OUT) / MILLION
    report("best_of=20, max_tokens=10", budget, spent, worst, statuses)
    assert spent <= budget + worst


def test_no_max_tokens_reserves_the_context_window(gateway, postgres_env):
    """Without max_tokens the reservation is the model's context window (128k for
    gpt-4o-mini), not a 4096-token guess the upstream could exceed 4x."""
    gw = gateway(**postgres_env)
    budget = Decimal("0.02")
    key = new_key(gw, budget_usd=str(budget), budget_period="day")
    body = chat_body(fake={"prompt_tokens": 10, "completion_tokens": 16000, "delay": 0.5})
    statuses = concurrently(gw, key["key"], body, 30)
    spent = spend(gw, key["key_id"], statuses.count(200))
    worst = (body_len(body) * MINI_IN + 128000 * MINI_OUT) / MILLION
    report("no max_tokens, 16,000 tokens out", budget, spent, worst, statuses)
    assert spent <= budget + worst
    assert spent <= budget  # a single admission already covers the whole budget


def test_unpriced_alias_is_refused_to_budgeted_callers(gateway, postgres_env, fake_upstream, tmp_path):
    """A deployment name the price data does not know, served by a model it does (the
    answer names gpt-4o): a budgeted caller is refused rather than reserved at $0."""
    config = routes_file(tmp_path / "routes.toml", {"model": "my-deployment", "base_url": fake_upstream.base_url})
    gw = gateway(**postgres_env, TALLYGATE_CONFIG=config)
    key = new_key(gw, budget_usd="0.01", budget_period="day")
    body = {"model": "my-deployment", "messages": MESSAGES, "max_tokens": 100,
            "fake": {"upstream_model": "gpt-4o", "prompt_tokens": 10, "completion_tokens": 100}}
    status, _, doc = call(gw.base_url + "/chat/completions", "POST", body, token=key["key"])
    assert status == 403 and doc["error"]["code"] == "model_price_unknown", doc
    assert "TALLYGATE_UNPRICED_RESERVE_MTOK" in doc["error"]["message"]
    # callers without a budget are served as before, priced from the answer's model
    status, _, doc = call(gw.base_url + "/chat/completions", "POST", body, token=gw.token,
                          headers={"X-Tenant-ID": "nobudget"})
    assert status == 200
    rec = gw.wait_records(1)[-1]
    assert rec["upstream_model"] == "gpt-4o" and Decimal(rec["cost_usd_exact"]) > 0


def test_unpriced_alias_is_reserved_at_the_configured_price(gateway, postgres_env, fake_upstream, tmp_path):
    """With TALLYGATE_UNPRICED_RESERVE_MTOK the alias reserves at that price: 60 concurrent
    requests stay within the bound (they spent 503x the budget at a $0 reservation)."""
    config = routes_file(tmp_path / "routes.toml", {"model": "my-deployment", "base_url": fake_upstream.base_url})
    gw = gateway(**postgres_env, TALLYGATE_CONFIG=config, TALLYGATE_UNPRICED_RESERVE_MTOK="20")
    budget = Decimal("0.005")
    key = new_key(gw, budget_usd=str(budget), budget_period="day")
    body = {"model": "my-deployment", "messages": MESSAGES, "max_tokens": 100,
            "fake": {"upstream_model": "gpt-4o", "prompt_tokens": 10, "completion_tokens": 100, "delay": 0.5}}
    statuses = concurrently(gw, key["key"], body, 60)
    assert set(statuses) <= {200, 429}
    spent = spend(gw, key["key_id"], statuses.count(200))
    worst = (body_len(body) + 100) * Decimal(20) / MILLION
    report("unpriced alias at $20/M", budget, spent, worst, statuses)
    assert spent <= budget + worst
    # gpt-4o: $2.50 in, $10 out per million
    assert spent == statuses.count(200) * (10 * Decimal("2.5") + 100 * Decimal(10)) / MILLION



@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis-two-instances"])
def test_overshoot_is_at_most_one_worst_case(gateway, postgres_env, shared):
    """100 concurrent requests that each use exactly their worst case (the prompt as many
    tokens as body bytes, max_tokens x n out), finishing at staggered times so settlements
    and admissions interleave: the spend ends within one worst case over the budget."""
    env = {**postgres_env, "TALLYGATE_KEYS_REFRESH": "0.3", **({"REDIS_URL": REDIS} if shared else {})}
    gws = [gateway(**env), gateway(**env)] if shared else [gateway(**env)]
    budget = Decimal("0.002")
    key = new_key(gws[0], budget_usd=str(budget), budget_period="day")
    if shared:
        time.sleep(1.0)  # the second instance loads the new key

    def body_for(i: int) -> dict:
        body = chat_body(max_tokens=50, n=2, fake={"prompt_tokens": 1000, "completion_tokens": 100,
                                                   "delay": f"0.{(i * 7) % 60 + 10:02d}"})
        body["fake"]["prompt_tokens"] = body_len(body)  # 4 digits either way: the length holds
        return body

    bodies = [body_for(i) for i in range(100)]
    worst = max((b["fake"]["prompt_tokens"] * MINI_IN + 100 * MINI_OUT) / MILLION for b in bodies)

    def one(i):
        return call(gws[i % len(gws)].base_url + "/chat/completions", "POST", bodies[i], token=key["key"])[0]
    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(one, range(100)))
    assert set(statuses) <= {200, 429}
    n = statuses.count(200)
    for gw in gws:
        gw.stop()
    recs = [r for gw in gws for r in gw.records() if r["api_key_id"] == key["key_id"]]
    assert len(recs) == n and all(r["usage_source"] == "provider" for r in recs)
    spent = sum((Decimal(r["cost_usd_exact"]) for r in recs), Decimal(0))
    report(f"exact worst cases, {'2 instances + Redis' if shared else '1 instance'}", budget, spent, worst,
           statuses)
    print(f"overshoot ${max(Decimal(0), spent - budget)} = {max(Decimal(0), spent - budget) / worst:.2f} "
          "worst cases")
    assert spent <= budget + worst


def test_bound_settings_are_validated():
    from tallygate.settings import SettingsError, load

    s = load({"TALLYGATE_UNPRICED_RESERVE_MTOK": "12.5", "TALLYGATE_DEFAULT_MAX_OUTPUT_TOKENS": "8192",
              "TALLYGATE_SSE_MAX_EVENT_BYTES": "1048576"})
    assert s.unpriced_reserve_mtok == Decimal("12.5") and s.default_max_output_tokens == 8192
    assert s.sse_max_event_bytes == 1048576 and load({}).unpriced_reserve_mtok is None
    for env in ({"TALLYGATE_UNPRICED_RESERVE_MTOK": "cheap"}, {"TALLYGATE_UNPRICED_RESERVE_MTOK": "-1"},
                {"TALLYGATE_UNPRICED_RESERVE_MTOK": "NaN"}, {"TALLYGATE_DEFAULT_MAX_OUTPUT_TOKENS": "0"},
                {"TALLYGATE_SSE_MAX_EVENT_BYTES": "10"}):
        with pytest.raises(SettingsError):
            load(env)
