"""Tenant keys (tallygate.tenants): created through the admin API or the CLI, stored hashed,
bound to their tenant, expiring, revoked on every instance."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import psycopg

from support import admin_call, call_json, wait_until
from support.tenants import MESSAGES, chat, new_key, unique


def test_admin_input_validation(gateway, postgres_env):
    gw = gateway(**postgres_env)
    for body in ({"tenant_id": "bad tenant"}, {"tenant_id": "t", "rpm_limit": 0}, {"tenant_id": "t", "rpm_limit": "5"},
                 {"tenant_id": "t", "budget_usd": -1}, {"tenant_id": "t", "budget_period": "week"},
                 {"tenant_id": "t", "models": "gpt-4o"}, {"tenant_id": "t", "rpm": 5},
                 {"tenant_id": "t", "expires_at": "tomorrow"}, [1],
                 # what the columns cannot hold exactly is refused, never rounded or overflowed
                 {"tenant_id": "t", "rpm_limit": 9232952852263550976}, {"tenant_id": "t", "tpm_limit": 2**31},
                 {"tenant_id": "t", "budget_usd": "0.0000000000001"}, {"tenant_id": "t", "budget_usd": 1e8}):
        status, _, doc = admin_call(gw.url + "/admin/keys", "POST", body)
        assert status == 400 and doc["error"]["message"], body
    assert admin_call(gw.url + "/admin/tenants/acme", "PUT", {"tpm_limit": -3})[0] == 400
    assert admin_call(gw.url + "/admin/tenants/bad%20id", "PUT", {"tpm_limit": 3})[0] == 400
    # (a tenant of its own: the database is shared by the session's tests, and acme must stay unlimited)
    status, _, doc = admin_call(gw.url + f"/admin/tenants/{unique('tiny')}", "PUT", {"budget_usd": "0.000000000001"})
    assert status == 200 and doc["budget_usd"] == "0.000000000001"  # twelve places are kept exactly


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
    status, _, listing = admin_call(gw.url + "/admin/keys?tenant_id=" + tenant)
    assert status == 200 and [k["key_id"] for k in listing["data"]] == [key_id]
    assert key not in json.dumps(listing) and "key_hash" not in json.dumps(listing)
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={postgres_env['PGDATABASE']}") as conn:
        stored = conn.execute("SELECT * FROM tallygate_keys WHERE key_id = %s", (key_id,)).fetchone()
    assert key not in [str(v) for v in stored]
    # the key reads its own usage
    def landed():  # the rows land within the ledger's flush interval
        status, _, usage = call_json(gw.base_url + "/usage?start=1h", token=key)
        return status == 200 and usage["data"] and usage["data"][0]["requests"] >= 2

    wait_until(landed, message="the key's two requests in its usage")
    status, _, usage = admin_call(gw.base_url + "/usage?start=1h", token=key)
    assert status == 200 and usage["tenant_id"] == tenant and usage["data"][0]["requests"] == 2
    # expired keys stop working
    old = new_key(gw, tenant, expires_at="2020-01-01T00:00:00Z")["key"]
    assert chat(gw, old)[0] == 401


def test_revocation_reaches_every_instance(gateway, postgres_env):
    env = {**postgres_env, "TALLYGATE_KEYS_REFRESH": "0.5"}
    gw1, gw2 = gateway(**env), gateway(**env)
    created = new_key(gw1, unique("rev"))
    key = created["key"]
    # a new key reaches the other instance on its next refresh
    wait_until(lambda: chat(gw2, key)[0] == 200, timeout=5, message="the new key on the second instance")
    assert admin_call(gw1.url + f"/admin/keys/{created['key_id']}", "DELETE")[0] == 200
    assert chat(gw1, key)[0] == 401  # at once where it was revoked
    wait_until(lambda: chat(gw2, key)[0] == 401, timeout=5, message="the revocation on the second instance")
    status, _, listing = admin_call(gw1.url + "/admin/keys")
    assert [k for k in listing["data"] if k["key_id"] == created["key_id"]][0]["revoked"] is True


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
