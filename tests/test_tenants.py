"""Tenant keys, the admin API, rate limits and budgets across gateway processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import psycopg
import pytest

from conftest import MASTER, TOKEN, routes_file

MESSAGES = [{"role": "user", "content": "hi"}]
REDIS = "redis://127.0.0.1:6379/0"


def call(url: str, method: str = "GET", body=None, token: str | None = MASTER, headers=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def new_key(gw, tenant: str, **limits) -> dict:
    status, _, doc = call(gw.url + "/admin/keys", "POST", {"tenant_id": tenant, **limits})
    assert status == 201, doc
    return doc


def chat(gw, key: str, tenant: str | None = None, model: str = "gpt-4o-mini", **kw):
    return call(gw.base_url + "/chat/completions", "POST",
                {"model": model, "messages": MESSAGES, **kw}, token=key,
                headers={"X-Tenant-ID": tenant} if tenant else None)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_admin_api_refuses_every_non_master_credential(gateway, postgres_env):
    gw = gateway(**postgres_env)
    key = new_key(gw, unique("adm"))["key"]
    routes = [("/admin/keys", "GET", None), ("/admin/keys", "POST", {"tenant_id": "x"}),
              ("/admin/keys/key_nope", "DELETE", None), ("/admin/tenants", "GET", None),
              ("/admin/tenants/acme", "PUT", {"rpm_limit": 1}), ("/admin/usage", "GET", None)]
    for path, method, body in routes:
        assert call(gw.url + path, method, body, token=None)[0] == 401, path
        assert call(gw.url + path, method, body, token="garbage")[0] == 401, path
        assert call(gw.url + path, method, body, token=TOKEN)[0] == 403, path
        assert call(gw.url + path, method, body, token=key)[0] == 403, path
        status, _, doc = call(gw.url + path, method, body, token=TOKEN)
        assert doc["error"]["type"] == "permission_error"
    assert call(gw.url + "/admin/keys/key_nope", "DELETE")[0] == 404


def test_admin_input_validation(gateway, postgres_env):
    gw = gateway(**postgres_env)
    for body in ({"tenant_id": "bad tenant"}, {"tenant_id": "t", "rpm_limit": 0}, {"tenant_id": "t", "rpm_limit": "5"},
                 {"tenant_id": "t", "budget_usd": -1}, {"tenant_id": "t", "budget_period": "week"},
                 {"tenant_id": "t", "models": "gpt-4o"}, {"tenant_id": "t", "rpm": 5},
                 {"tenant_id": "t", "expires_at": "tomorrow"}, [1]):
        status, _, doc = call(gw.url + "/admin/keys", "POST", body)
        assert status == 400 and doc["error"]["message"], body
    assert call(gw.url + "/admin/tenants/acme", "PUT", {"tpm_limit": -3})[0] == 400
    assert call(gw.url + "/admin/tenants/bad%20id", "PUT", {"tpm_limit": 3})[0] == 400


def test_tenant_key_fixes_tenant_and_is_stored_hashed(gateway, postgres_env):
    gw = gateway(**postgres_env)
    tenant = unique("keyed")
    created = new_key(gw, tenant, name="ci")
    key, key_id = created["key"], created["key_id"]
    assert key.startswith("tg-") and len(key) > 30 and created["key_prefix"] == key[:11]
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # no X-Tenant-ID needed
    assert chat(gw, key, tenant)[0] == 200
    status, _, doc = chat(gw, key, "someone-else")
    assert status == 403 and doc["error"]["code"] == "tenant_mismatch"
    recs = gw.wait_records(2)
    assert {r["tenant_id"] for r in recs} == {tenant} and {r["api_key_id"] for r in recs} == {key_id}
    status, _, listing = call(gw.url + "/admin/keys?tenant_id=" + tenant)
    assert status == 200 and [k["key_id"] for k in listing["data"]] == [key_id]
    assert key not in json.dumps(listing) and "key_hash" not in json.dumps(listing)
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={postgres_env['PGDATABASE']}") as conn:
        stored = conn.execute("SELECT * FROM tallygate_keys WHERE key_id = %s", (key_id,)).fetchone()
    assert key not in [str(v) for v in stored]
    # the key reads its own usage
    time.sleep(0.5)
    status, _, usage = call(gw.base_url + "/usage?start=1h", token=key)
    assert status == 200 and usage["tenant_id"] == tenant and usage["data"][0]["requests"] == 2
    # expired keys stop working
    old = new_key(gw, tenant, expires_at="2020-01-01T00:00:00Z")["key"]
    assert chat(gw, old)[0] == 401


def test_revocation_reaches_every_instance(gateway, postgres_env):
    env = {**postgres_env, "TALLYGATE_KEYS_REFRESH": "0.5"}
    gw1, gw2 = gateway(**env), gateway(**env)
    created = new_key(gw1, unique("rev"))
    key = created["key"]
    deadline = time.monotonic() + 5
    while chat(gw2, key)[0] != 200:  # a new key reaches the other instance on its next refresh
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert call(gw1.url + f"/admin/keys/{created['key_id']}", "DELETE")[0] == 200
    assert chat(gw1, key)[0] == 401  # at once where it was revoked
    revoked_at = time.monotonic()
    while chat(gw2, key)[0] != 401:
        assert time.monotonic() - revoked_at < 5, "revocation did not reach the second instance"
        time.sleep(0.1)
    status, _, listing = call(gw1.url + "/admin/keys")
    assert [k for k in listing["data"] if k["key_id"] == created["key_id"]][0]["revoked"] is True


def _wait_for_fresh_minute() -> None:
    if time.time() % 60 > 50:  # the rpm window is the clock minute: do not straddle two
        time.sleep(61 - time.time() % 60)


def test_rpm_limit_shared_by_two_instances_through_redis(gateway, postgres_env):
    env = {**postgres_env, "REDIS_URL": REDIS, "TALLYGATE_KEYS_REFRESH": "0.3"}
    gw1, gw2 = gateway(**env), gateway(**env)
    key = new_key(gw1, unique("rpm"), rpm_limit=5)["key"]
    time.sleep(1.5)  # let gw2 load the key
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
    assert call(gw.url + f"/admin/tenants/{tenant}", "PUT", {"rpm_limit": 3})[0] == 200
    _wait_for_fresh_minute()
    statuses = [chat(gw, TOKEN, tenant)[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert chat(gw, TOKEN, unique("other"))[0] == 200
    status, _, tenants = call(gw.url + "/admin/tenants")
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
    time.sleep(1.5 if shared else 0)
    statuses = _spend_concurrently(gws, created["key"])
    assert statuses.count(200) >= 3 and set(statuses) <= {200, 429}
    time.sleep(0.5)
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
    assert call(gw.url + f"/admin/tenants/{tenant}", "PUT",
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


def test_keys_cli(postgres_env, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TALLYGATE_"))}
    env.update(postgres_env)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tallygate", "keys", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    subprocess.run([sys.executable, "-m", "tallygate", "db", "init"], env=env, check=True, capture_output=True,
                   timeout=60)  # the keys commands need the schema in place, they do not create it
    tenant = unique("cli")
    out = cli("create", tenant, "--rpm", "10", "--budget-usd", "5", "--models", "gpt-4o-mini,gpt-4o")
    assert out.returncode == 0, out.stderr
    key = [l.split()[-1] for l in out.stdout.splitlines() if l.startswith("key:")][0]
    key_id = [l.split()[-1] for l in out.stdout.splitlines() if l.startswith("key_id:")][0]
    assert key.startswith("tg-")
    listing = cli("list", "--tenant", tenant).stdout
    assert key_id in listing and "active" in listing and key not in listing and "rpm=10" in listing
    assert cli("revoke", key_id).returncode == 0
    assert "revoked" in cli("list", "--tenant", tenant).stdout
    assert cli("revoke", "key_missing").returncode == 1
    bad = cli("create", "bad tenant!")
    assert bad.returncode == 1 and "tenant_id" in bad.stderr


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
    from tallygate.limits import Guard, _nanos
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
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, gw, key, model="cheap", max_tokens=1000,
                           fake={"delay": 1.5, "prompt_tokens": 5, "completion_tokens": 5})
        time.sleep(0.5)  # the first request is admitted and waiting on the upstream
        status, _, doc = chat(gw, key, model="cheap", max_tokens=1000)
        assert status == 429 and doc["error"]["code"] == "budget_exceeded", doc
        assert slow.result()[0] == 200
