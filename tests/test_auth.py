"""Who may call what: the gateway token (required, --dev, from the environment), the bearer
credential and tenant header of every proxy request, the master key of admin and /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

from support import MASTER, TOKEN, GatewayProcess, admin_call, base_env, call, free_port, post, sdk_client, wait_until
from support.tenants import new_key, unique
from tallygate.auth import Authenticator
from tallygate.errors import GatewayError

MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_tenant_header_is_checked_every_time_it_is_bad_and_cached_when_good():
    auth = Authenticator("tok", None, None)
    for _ in range(2):
        with pytest.raises(GatewayError) as err:
            auth.authenticate(b"Bearer tok", b"bad tenant!")
        assert err.value.status == 400
    assert auth.authenticate(b"Bearer tok", b"acme").tenant_id == "acme"
    assert auth.authenticate(b"Bearer tok", b"acme").tenant_id == "acme"
    with pytest.raises(GatewayError):
        auth.authenticate(b"Bearer tok", None)  # no default tenant: still an error


def test_refuses_to_start_without_a_token(fake_upstream, tmp_path):
    env = base_env(fake_upstream.base_url, tmp_path, PROXY_GATEWAY_TOKEN=None)
    out = subprocess.run([sys.executable, "-m", "tallygate", "serve", "--port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "PROXY_GATEWAY_TOKEN is not set" in out.stderr and "--dev" in out.stderr


def test_dev_flag_generates_and_prints_a_token(fake_upstream, tmp_path):
    env = base_env(fake_upstream.base_url, tmp_path, PROXY_GATEWAY_TOKEN=None)
    gw = GatewayProcess(env, tmp_path / "dev.log", ["--dev"])
    try:
        token = re.search(r"TALLYGATE_TOKEN=(\S+)", gw.output()).group(1)
        c = openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0,
                          default_headers={"X-Tenant-ID": "dev"})
        assert c.chat.completions.create(model="gpt-4o-mini", messages=[]).choices
        bad = openai.OpenAI(base_url=gw.base_url, api_key="other", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("a wrong token was accepted")
        except openai.AuthenticationError:
            pass
    finally:
        gw.stop()


def test_token_in_environment_wins_over_dev(fake_upstream, tmp_path):
    env = base_env(fake_upstream.base_url, tmp_path, PROXY_GATEWAY_TOKEN="env-token-123456")
    gw = GatewayProcess(env, tmp_path / "dev.log", ["--dev"])
    try:
        assert "TALLYGATE_TOKEN=" not in gw.output()
        c = openai.OpenAI(base_url=gw.base_url, api_key="env-token-123456", max_retries=0,
                          default_headers={"X-Tenant-ID": "dev"})
        assert c.chat.completions.create(model="gpt-4o-mini", messages=[]).choices
    finally:
        gw.stop()


def test_auth_errors(gateway):
    gw = gateway()
    url = gw.base_url + "/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": []}
    cases = [
        ({}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer nope", "X-Tenant-ID": "a"}, 401, "invalid_api_key"),
        ({"Authorization": "Basic " + TOKEN, "X-Tenant-ID": "a"}, 401, "invalid_api_key"),
        ({"Authorization": f"Bearer {TOKEN}"}, 400, "missing_tenant"),
        ({"Authorization": f"Bearer {TOKEN}", "X-Tenant-ID": "bad tenant!"}, 400, "invalid_tenant"),
        ({"Authorization": f"Bearer {TOKEN}", "X-Tenant-ID": "x" * 129}, 400, "invalid_tenant"),
    ]
    for headers, status, code in cases:
        s, h, data = post(url, body, headers)
        assert s == status, (headers, data)
        err = json.loads(data)["error"]
        assert err["code"] == code and err["message"] and err["type"]
    s, _, _ = post(url, body, {"Authorization": f"Bearer {MASTER}", "X-Tenant-ID": "ops"})
    assert s == 200
    s, _, _ = post(url + f"?api_key={TOKEN}", body, {"X-Tenant-ID": "a"})
    assert s == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).models.list()
    gw.wait_records(1)
    time.sleep(0.3)  # not a wait for something: a record of a refused request would show by now
    assert len(gw.records()) == 1  # only the authenticated request was metered


def test_default_tenant(gateway):
    gw = gateway(TALLYGATE_DEFAULT_TENANT="shared")
    sdk_client(gw, tenant=None).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert gw.wait_records(1)[0]["tenant_id"] == "shared"


def test_admin_api_refuses_every_non_master_credential(gateway, postgres_env):
    gw = gateway(**postgres_env)
    key = new_key(gw, unique("adm"))["key"]
    routes = [("/admin/keys", "GET", None), ("/admin/keys", "POST", {"tenant_id": "x"}),
              ("/admin/keys/key_nope", "DELETE", None), ("/admin/tenants", "GET", None),
              ("/admin/tenants/acme", "PUT", {"rpm_limit": 1}), ("/admin/usage", "GET", None)]
    for path, method, body in routes:
        assert admin_call(gw.url + path, method, body, token=None)[0] == 401, path
        assert admin_call(gw.url + path, method, body, token="garbage")[0] == 401, path
        assert admin_call(gw.url + path, method, body, token=TOKEN)[0] == 403, path
        assert admin_call(gw.url + path, method, body, token=key)[0] == 403, path
        status, _, doc = admin_call(gw.url + path, method, body, token=TOKEN)
        assert doc["error"]["type"] == "permission_error"
    assert admin_call(gw.url + "/admin/keys/key_nope", "DELETE")[0] == 404


def test_admin_is_master_key_only_and_sql_takes_parameters(gateway, postgres_env):
    gw = gateway(**postgres_env)
    for token, expected in ((None, 401), ("wrong", 401), (TOKEN, 403), (MASTER, 200)):
        assert call(gw.url + "/admin/keys", token=token)[0] == expected, token
        assert call(gw.url + "/admin/usage", token=token)[0] == expected, token
    assert post(gw.base_url + "/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES},
                gw.headers("sqli"))[0] == 200
    gw.wait_records(1)

    def sqli_rows():
        status, _, data = call(gw.url + "/admin/usage?since=30d&tenant_id=sqli", token=MASTER)
        return status == 200 and json.loads(data)["data"]

    wait_until(sqli_rows, message="the request's row in the ledger")
    for injection in ("' OR '1'='1", "sqli' --", "x'; DROP TABLE litellm_usage; --", "sqli%00"):
        q = urllib.request.quote(injection)
        status, _, data = call(gw.url + f"/admin/usage?since=30d&tenant_id={q}", token=MASTER)
        assert status in (200, 400), (injection, status)
        if status == 200:
            assert json.loads(data)["data"] == [], injection
    status, _, data = call(gw.url + "/admin/usage?since=30d&tenant_id=sqli", token=MASTER)
    assert status == 200 and json.loads(data)["data"][0]["requests"] == 1  # the table is still there
    spec = json.loads(urllib.request.urlopen(gw.url + "/openapi.json").read())
    assert spec["openapi"].startswith("3.") and "/v1/chat/completions" in spec["paths"]


def test_metrics_access_modes(gateway):
    gw = gateway()
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {gw.token}"}, 403),
                            ({"Authorization": f"Bearer {MASTER}"}, 200)):
        try:
            code = urllib.request.urlopen(urllib.request.Request(gw.url + "/metrics", headers=headers)).status
        except urllib.error.HTTPError as err:
            code = err.code
        assert code == status
    public = gateway(TALLYGATE_METRICS="public")
    assert b"tallygate_requests" in urllib.request.urlopen(public.url + "/metrics").read()
    off = gateway(TALLYGATE_METRICS="off")
    try:
        urllib.request.urlopen(off.url + "/metrics")
        raise AssertionError("metrics served while off")
    except urllib.error.HTTPError as err:
        assert err.code == 404
