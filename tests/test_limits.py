"""Limits (tallygate.limits, the Guard): requests and tokens per minute, budgets with their
worst-case reservations, a key's model list; in one gateway and shared by two through Redis."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psycopg
import pytest

from support import TOKEN, admin_call, call_json, routes_file, wait_until
from support.tenants import REDIS, chat, new_key, unique


def _knows_key(gw, key: str) -> bool:
    """Whether gateway `gw` has loaded `key` (its keys refresh in the background); asked
    through /v1/usage, which no limit counts."""
    return call_json(gw.base_url + "/usage?start=1h", token=key)[0] == 200


def _wait_for_fresh_minute() -> None:
    if time.time() % 60 > 50:  # the rpm window is the clock minute: do not straddle two
        time.sleep(61 - time.time() % 60)  # a wait for the clock itself, not for a condition


def test_rpm_limit_shared_by_two_instances_through_redis(gateway, postgres_env):
    env = {**postgres_env, "REDIS_URL": REDIS, "TALLYGATE_KEYS_REFRESH": "0.3"}
    gw1, gw2 = gateway(**env), gateway(**env)
    key = new_key(gw1, unique("rpm"), rpm_limit=5)["key"]
    wait_until(lambda: _knows_key(gw2, key), message="the key on the second gateway")
    _wait_for_fresh_minute()
    results = [chat(gw1 if i % 2 else gw2, key) for i in range(10)]
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 5 and statuses.count(429) == 5, statuses
    status, headers, doc = results[statuses.index(429)]
    assert doc["error"]["code"] == "rate_limit_exceeded" and doc["error"]["type"] == "requests"
    headers = {k.lower(): v for k, v in headers.items()}
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "5" and headers["x-ratelimit-remaining-requests"] == "0"


def test_tenant_rpm_applies_to_gateway_token_without_redis(gateway, postgres_env):
    gw = gateway(**postgres_env)
    tenant = unique("trpm")
    assert admin_call(gw.url + f"/admin/tenants/{tenant}", "PUT", {"rpm_limit": 3})[0] == 200
    _wait_for_fresh_minute()
    statuses = [chat(gw, TOKEN, tenant)[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert chat(gw, TOKEN, unique("other"))[0] == 200
    status, _, tenants = admin_call(gw.url + "/admin/tenants")
    assert {"tenant_id": tenant, "rpm_limit": 3} .items() <= [t for t in tenants["data"] if t["tenant_id"] == tenant][0].items()


# gpt-4o-mini, 10 prompt + 500 completion tokens: 10 * 0.15 + 500 * 0.6 per million
COST = Decimal("0.0003015")
BUDGET = Decimal("0.001")


def _spend_concurrently(gws, key: str, n: int = 24) -> list[int]:
    def one(i):
        return chat(gws[i % len(gws)], key, max_tokens=500,
                    fake={"prompt_tokens": 10, "completion_tokens": 500})[0]
    with ThreadPoolExecutor(12) as pool:
        return list(pool.map(one, range(n)))


def _ledger_spend(env: dict, key_id: str) -> Decimal:
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={env['PGDATABASE']}") as conn:
        return conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM litellm_usage WHERE api_key_id = %s",
                            (key_id,)).fetchone()[0]


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis-two-instances"])
def test_budget_overshoots_by_at_most_one_request(gateway, postgres_env, shared):
    env = {**postgres_env, "TALLYGATE_KEYS_REFRESH": "0.3", **({"REDIS_URL": REDIS} if shared else {})}
    gws = [gateway(**env), gateway(**env)] if shared else [gateway(**env)]
    created = new_key(gws[0], unique("budget"), budget_usd=str(BUDGET), budget_period="day")
    if shared:
        wait_until(lambda: _knows_key(gws[1], created["key"]), message="the key on the second gateway")
    statuses = _spend_concurrently(gws, created["key"])
    assert statuses.count(200) >= 3 and set(statuses) <= {200, 429}
    wait_until(lambda: _ledger_spend(env, created["key_id"]) == COST * statuses.count(200),
               message="the cost of every admitted request settled in the ledger")
    status, headers, doc = chat(gws[0], created["key"], max_tokens=500)
    assert status == 429 and doc["error"]["code"] == "budget_exceeded"
    assert doc["error"]["type"] == "insufficient_quota" and int(headers["retry-after"]) > 0
    for gw in gws:
        gw.stop()
    spent = _ledger_spend(env, created["key_id"])
    assert spent == COST * statuses.count(200)
    # the bound: budget plus one request's worst case (its max_tokens at the output price, plus prompt)
    assert spent <= BUDGET + COST * Decimal("1.01"), (spent, statuses)


def test_budget_survives_restart(gateway, postgres_env):
    gw = gateway(**postgres_env)
    tenant = unique("restart")
    assert admin_call(gw.url + f"/admin/tenants/{tenant}", "PUT",
                {"budget_usd": "0.0006", "budget_period": "month"})[0] == 200
    statuses = [chat(gw, TOKEN, tenant, max_tokens=500, fake={"prompt_tokens": 10, "completion_tokens": 500})[0]
                for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    gw.stop()
    gw2 = gateway(**postgres_env)
    status, _, doc = chat(gw2, TOKEN, tenant, max_tokens=10)
    assert status == 429 and doc["error"]["code"] == "budget_exceeded"


def test_models_allowlist_and_tpm(gateway, postgres_env):
    gw = gateway(**postgres_env)
    key = new_key(gw, unique("models"), models=["gpt-4o-mini"], tpm_limit=1000)["key"]
    assert chat(gw, key, model="gpt-4o-mini")[0] == 200
    status, _, doc = chat(gw, key, model="gpt-4o")
    assert status == 403 and doc["error"]["code"] == "model_not_allowed"
    status, _, doc = chat(gw, key, max_tokens=5000)
    assert status == 429 and doc["error"]["type"] == "tokens"
    _wait_for_fresh_minute()
    # each reserves its prompt estimate + 400; real usage (20 tokens) settles it back down
    results = [chat(gw, key, max_tokens=400, fake={"prompt_tokens": 10, "completion_tokens": 10})[0]
               for _ in range(4)]
    assert results.count(200) >= 3


def test_fallbacks_respect_the_callers_model_list(gateway, postgres_env, fake_upstream, tmp_path):
    base = fake_upstream.base_url
    config = routes_file(tmp_path / "routes.toml", {"model": "primary", "base_url": base, "fallbacks": ["backup"]},
                         {"model": "backup", "base_url": base})
    gw = gateway(**postgres_env, TALLYGATE_CONFIG=config, TALLYGATE_RETRIES="0")
    failing = {"by_model": {"primary": {"status": 503}}}
    narrow = new_key(gw, unique("fb"), models=["primary"])["key"]
    wide = new_key(gw, unique("fb"), models=["primary", "backup"])["key"]
    fake_upstream.reset()
    status, _, doc = chat(gw, narrow, model="primary", fake=failing)
    assert status == 503  # the fallback is not on this key's list: the upstream's own answer
    assert [json.loads(r["body"])["model"] for r in fake_upstream.requests()] == ["primary"]
    status, _, doc = chat(gw, wide, model="primary", fake=failing)
    assert status == 200 and doc["model"] == "backup"
    status, _, doc = chat(gw, TOKEN, tenant=unique("fb"), model="primary", fake=failing)
    assert status == 200 and doc["model"] == "backup"  # no list: every fallback may serve
    assert any(l.get("message", "").startswith("fallbacks outside") and l["skipped"] == ["backup"]
               for l in gw.lines())


def test_budget_worst_case_is_priced_like_the_record():
    """An alias routed to an upstream model is reserved at that model's price (it was
    priced as an unknown model, i.e. free, before)."""
    from tallygate.limits.guard import Guard, _nanos
    from tallygate.metering.pricing import PriceBook

    guard = Guard(None, None, PriceBook(), None)
    worst = guard._worst_cost("openai", "team-default", "gpt-4o", 1000, 1000)
    # gpt-4o: $2.50 in, $10 out per million tokens
    assert worst == _nanos(Decimal("0.0125"))
    assert guard._worst_cost("openai", "gpt-4o-mini", None, 1000, 1000) == _nanos(Decimal("0.00075"))


def test_budget_reserves_for_the_dearest_fallback(gateway, postgres_env, fake_upstream, tmp_path):
    """A cheap model whose fallback is dear reserves the dear worst case: while one request
    is in flight, a second one that only the cheap price would let through is refused."""
    base = fake_upstream.base_url
    config = routes_file(
        tmp_path / "routes.toml",
        {"model": "cheap", "base_url": base, "upstream_model": "gpt-4o-mini", "fallbacks": ["dear"]},
        {"model": "dear", "base_url": base, "upstream_model": "gpt-4o"})
    gw = gateway(**postgres_env, TALLYGATE_CONFIG=config)
    # worst cases for max_tokens=1000: gpt-4o-mini ~$0.0006, gpt-4o ~$0.01; the budget sits between
    key = new_key(gw, unique("dear"), budget_usd="0.005", budget_period="day")["key"]
    fake_upstream.reset()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, gw, key, model="cheap", max_tokens=1000,
                           fake={"delay": 1.5, "prompt_tokens": 5, "completion_tokens": 5})
        # the first request is admitted and waiting on the upstream
        wait_until(fake_upstream.requests, message="the first request at the upstream")
        status, _, doc = chat(gw, key, model="cheap", max_tokens=1000)
        assert status == 429 and doc["error"]["code"] == "budget_exceeded", doc
        assert slow.result()[0] == 200
