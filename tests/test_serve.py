"""`tallygate serve`: start-up rules, workers, /metrics against the ledger."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import openai

from support import GatewayProcess, base_env, free_port, metric, metrics_text, wait_http, wait_until


def test_port_from_environment_and_demo_mode(tmp_path):
    port = free_port()
    env = base_env("http://127.0.0.1:9/v1", tmp_path, PORT=port, OPENAI_BASE_URL=None, OPENAI_API_KEY=None)
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tallygate", "serve", "--host", "127.0.0.1", "--demo"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        # /health answers before the tenant limits are first loaded; the 503 until then says
        # to retry (Retry-After), as the SDK does
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=env["PROXY_GATEWAY_TOKEN"],
                          max_retries=3, default_headers={"X-Tenant-ID": "demo"})
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


def test_tenant_label_cardinality_is_bounded(gateway):
    gw = gateway(TALLYGATE_METRICS="public", TALLYGATE_METRICS_TENANT_CAP=3)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0)
    for i in range(6):
        c.chat.completions.create(model="gpt-4o-mini", messages=[], extra_headers={"X-Tenant-ID": f"card-{i}"})
    gw.wait_records(6)

    def counted():  # the counters are updated in the same pass as the log line, a moment later
        text = metrics_text(gw.url + "/metrics", token=None)
        return text if metric(text, "tallygate_requests_total") >= 6 else None

    text = wait_until(counted, message="the 6 requests counted in /metrics")
    tenants = set(re.findall(r'tallygate_requests_total\{[^}]*tenant_id="([^"]+)"', text))
    assert tenants == {"card-0", "card-1", "card-2", "other"}
    assert metric(text, "tallygate_requests_total", tenant_id="other") == 3


def test_private_metrics_port(gateway):
    port = free_port()
    gw = gateway(TALLYGATE_METRICS_PORT=port)
    openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[], extra_headers={"X-Tenant-ID": "side"})
    gw.wait_records(1)

    def counted():
        text = metrics_text(f"http://127.0.0.1:{port}/metrics", token=None)
        return text if metric(text, "tallygate_requests_total") >= 1 else None

    text = wait_until(counted, message="the request counted on the metrics port")
    assert metric(text, "tallygate_requests_total", tenant_id="side") == 1
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
    assert metric(text, "tallygate_rejected_requests_total", reason="invalid_api_key") == 2
    assert metric(text, "tallygate_rejected_requests_total", reason="invalid_model") == 1
    assert metric(text, "tallygate_requests_total") == 1  # refused requests are not metered usage


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
