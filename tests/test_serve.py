"""`tallygate serve`: start-up rules, workers, /metrics against the ledger."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal

import openai

from conftest import MASTER, GatewayProcess, base_env, free_port, wait_http


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


def test_port_from_environment_and_demo_mode(tmp_path):
    port = free_port()
    env = base_env("http://127.0.0.1:9/v1", tmp_path, PORT=port, OPENAI_BASE_URL=None, OPENAI_API_KEY=None)
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tallygate", "serve", "--host", "127.0.0.1", "--demo"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=env["PROXY_GATEWAY_TOKEN"],
                          max_retries=0, default_headers={"X-Tenant-ID": "demo"})
        reply = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Hello from the fake upstream"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        log.close()


def test_two_workers_share_the_port(gateway, postgres_env):
    gw = gateway(args=["--workers", "2"], **postgres_env)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                      default_headers={"X-Tenant-ID": "workers"})
    for _ in range(20):
        c.chat.completions.create(model="gpt-4o-mini", messages=[])
    recs = gw.wait_records(20)
    assert len({r["request_id"] for r in recs}) == 20
    assert gw.stop() == 0


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_equal_the_ledger(gateway, postgres_env):
    gw = gateway(**postgres_env)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0)
    for i in range(12):
        tenant = f"m-{i % 3}"
        fake = {"prompt_tokens": 100 * (i + 1), "completion_tokens": 7 * i, "cached_tokens": i}
        if i % 2:
            list(c.chat.completions.create(model="gpt-4o", messages=[], stream=True, extra_body={"fake": fake},
                                           extra_headers={"X-Tenant-ID": tenant}))
        else:
            c.chat.completions.create(model="gpt-4o-mini", messages=[], extra_body={"fake": fake},
                                      extra_headers={"X-Tenant-ID": tenant})
    logs = gw.wait_records(12)
    req = urllib.request.Request(gw.url + "/metrics", headers={"Authorization": f"Bearer {MASTER}"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(req).read().decode()
        if _metric(text, "tallygate_ledger_rows_written_total") >= 12:
            break
        time.sleep(0.1)
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={postgres_env['PGDATABASE']}") as conn:
        rows = conn.execute("SELECT tenant_id, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) "
                            "FROM litellm_usage WHERE tenant_id LIKE 'm-%%' GROUP BY tenant_id").fetchall()
    assert len(rows) == 3
    for tenant, count, prompt, completion, cost in rows:
        assert _metric(text, "tallygate_requests_total", tenant_id=tenant) == count
        assert _metric(text, "tallygate_tokens_total", tenant_id=tenant, kind="prompt") == prompt
        assert _metric(text, "tallygate_tokens_total", tenant_id=tenant, kind="completion") == completion
        assert abs(Decimal(str(_metric(text, "tallygate_cost_usd_total", tenant_id=tenant))) - cost) < Decimal("1e-12")
    assert sum(r[4] for r in rows) == sum(Decimal(l["cost_usd_exact"]) for l in logs)
    assert _metric(text, "tallygate_ttft_seconds_count") == 6
    assert _metric(text, "tallygate_request_latency_seconds_count") == 12
    assert _metric(text, "tallygate_ledger_buffer_depth") == 0


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


def test_tenant_label_cardinality_is_bounded(gateway):
    gw = gateway(TALLYGATE_METRICS="public", TALLYGATE_METRICS_TENANT_CAP=3)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0)
    for i in range(6):
        c.chat.completions.create(model="gpt-4o-mini", messages=[], extra_headers={"X-Tenant-ID": f"card-{i}"})
    gw.wait_records(6)
    time.sleep(0.2)
    text = urllib.request.urlopen(gw.url + "/metrics").read().decode()
    tenants = set(re.findall(r'tallygate_requests_total\{[^}]*tenant_id="([^"]+)"', text))
    assert tenants == {"card-0", "card-1", "card-2", "other"}
    assert _metric(text, "tallygate_requests_total", tenant_id="other") == 3


def test_private_metrics_port(gateway):
    port = free_port()
    gw = gateway(TALLYGATE_METRICS_PORT=port)
    openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[], extra_headers={"X-Tenant-ID": "side"})
    gw.wait_records(1)
    time.sleep(0.2)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert _metric(text, "tallygate_requests_total", tenant_id="side") == 1
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models")
        raise AssertionError("the metrics port served another path")
    except urllib.error.HTTPError as err:
        assert err.code == 404
    try:  # the public port still wants the master key
        urllib.request.urlopen(gw.url + "/metrics")
        raise AssertionError("public /metrics without a key")
    except urllib.error.HTTPError as err:
        assert err.code == 401


def test_refused_requests_are_counted_by_reason(gateway):
    gw = gateway(TALLYGATE_METRICS="public")
    tenant = {"X-Tenant-ID": "refused"}
    bad = openai.OpenAI(base_url=gw.base_url, api_key="not-the-token", max_retries=0, default_headers=tenant)
    good = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0, default_headers=tenant)
    for _ in range(2):
        try:
            bad.chat.completions.create(model="gpt-4o-mini", messages=[])
            raise AssertionError("a wrong token was accepted")
        except openai.AuthenticationError:
            pass
    try:
        good.chat.completions.create(model="gpt-\x00", messages=[])
        raise AssertionError("a NUL in the model was accepted")
    except openai.BadRequestError:
        pass
    good.chat.completions.create(model="gpt-4o-mini", messages=[])
    gw.wait_records(1)
    text = urllib.request.urlopen(gw.url + "/metrics").read().decode()
    assert _metric(text, "tallygate_rejected_requests_total", reason="invalid_api_key") == 2
    assert _metric(text, "tallygate_rejected_requests_total", reason="invalid_model") == 1
    assert _metric(text, "tallygate_requests_total") == 1  # refused requests are not metered usage


def test_start_without_an_openai_key_says_so(tmp_path):
    env = base_env("unused", tmp_path, OPENAI_BASE_URL=None, OPENAI_API_KEY=None)
    gw = GatewayProcess(env, tmp_path / "nokey.log")
    try:
        assert "OPENAI_API_KEY is not set" in gw.output() and "make run DEMO=1" in gw.output()
    finally:
        gw.stop()
    # with a key (or another upstream) nothing is said
    env = base_env("http://127.0.0.1:9/v1", tmp_path, OPENAI_API_KEY=None)
    gw = GatewayProcess(env, tmp_path / "otherupstream.log")
    try:
        assert "OPENAI_API_KEY is not set" not in gw.output()
    finally:
        gw.stop()
