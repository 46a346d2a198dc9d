"""tallygate's metering inside the real LiteLLM proxy (pinned, its own venv: devtools/litellm_venv.py).

deploy/litellm's config.yaml and callbacks as shipped, the official openai SDK as the client,
tallygate's fake upstream behind; a custom auth module of the test's own gives keys metadata
and teams (LiteLLM's virtual keys need its Prisma database). The proxy starts once for the
module (~9 s) on a private Postgres cluster the outage test stops and starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import psycopg
import pytest
import yaml

from devtools import litellm_venv
from support import ROOT, UPSTREAM_KEY, free_port, sdk_client, wait_http, wait_until
from support.ledger import conninfo, pg_rows, sqlite_rows
from support.processes import json_lines

pytestmark = pytest.mark.litellm

MASTER = "sk-litellm-test-master-0123456789"
KEYED = "sk-litellm-test-keyed-tenant"  # the custom auth gives this key metadata tenant_id
TEAMED = "sk-litellm-test-team-key"  # and this one a team
MESSAGES = [{"role": "user", "content": "How many tokens is this?"}]

AUTH_MODULE = f'''
from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth

KEYS = {{
    {MASTER!r}: {{}},
    {KEYED!r}: {{"metadata": {{"tenant_id": "tenant-from-key"}}, "key_alias": "keyed"}},
    {TEAMED!r}: {{"team_id": "team-blue", "key_alias": "teamed"}},
}}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = api_key.removeprefix("Bearer ").strip()
    if key not in KEYS:
        raise Exception("unknown key")
    return UserAPIKeyAuth(api_key=key, **KEYS[key])
'''


def _kwargs(headers=None, key_meta=None, team=None, end_user=None, **slo) -> dict:
    """What LiteLLM 1.110 hands a callback, reduced to the fields the record reads."""
    meta = {"headers": headers or {}, "user_api_key_metadata": key_meta or {}, "user_api_key_team_id": team}
    return {"litellm_call_id": "call-1", "call_type": "acompletion", "stream": False,
            "litellm_params": {"metadata": meta},
            "standard_logging_object": {"model_group": "gpt-4o-mini", "model": "openai/gpt-4o-mini",
                                        "custom_llm_provider": "openai", "end_user": end_user,
                                        "startTime": 1_700_000_000.0, "endTime": 1_700_000_000.25,
                                        "metadata": {}, **slo}}


class _Resp:
    model = "gpt-4o-mini-2024-07-18"
    service_tier = "default"

    def __init__(self, usage: dict) -> None:
        self.usage = usage


def test_record_tenant_order_and_invalid_values():
    from tallygate.integrations.litellm.record import record_from_call

    def tenant(**kw) -> str:
        return record_from_call(_kwargs(**kw), None, True, "dflt").tenant_id

    assert tenant(headers={"x-tenant-id": "h"}, key_meta={"tenant_id": "k"}, team="t", end_user="u") == "h"
    assert tenant(key_meta={"tenant_id": "k"}, team="t", end_user="u") == "k"
    assert tenant(team="t", end_user="u") == "t"
    assert tenant(end_user="u") == "u"
    assert tenant() == "dflt"
    # a value the ledger cannot hold is passed over, never stored
    assert tenant(headers={"x-tenant-id": "bad value!"}, end_user="u") == "u"
    # the key's metadata comes from what the proxy set, not from the request's own metadata
    forged = _kwargs(end_user="u")
    forged["standard_logging_object"]["metadata"] = {"user_api_key_metadata": {"tenant_id": "victim"}}
    assert record_from_call(forged, None, True).tenant_id == "u"


def test_record_usage_status_and_timing():
    from tallygate.integrations.litellm.record import record_from_call

    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
             "prompt_tokens_details": {"cached_tokens": 30}, "completion_tokens_details": {"reasoning_tokens": 5}}
    rec = record_from_call(_kwargs(response_cost=1.5e-05), _Resp(usage), False)
    assert (rec.request_id, rec.endpoint, rec.model, rec.upstream_model, rec.provider) == (
        "call-1", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai")
    assert (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens, rec.reasoning_tokens) == (100, 20, 30, 5)
    assert (rec.status_code, rec.status, rec.usage_source, rec.latency_ms) == (200, "ok", "provider", 250.0)
    assert rec.litellm_response_cost == 1.5e-05

    class RateLimited(Exception):
        status_code = 429

    failed = _kwargs()
    failed["exception"] = RateLimited()
    rec = record_from_call(failed, None, True)
    assert (rec.status_code, rec.status, rec.total_tokens, rec.usage_source) == (429, "upstream_error", 0, "none")
    timeout = _kwargs(error_information={"error_code": "408"})
    assert record_from_call(timeout, None, True).status == "timeout"
    # a success without any usage is flagged, not billed as zero silently
    assert record_from_call(_kwargs(), _Resp(None), False).usage_flag == "missing"
    # LiteLLM's provider names map to the price data's
    text = _kwargs(custom_llm_provider="text-completion-openai", model="text-completion-openai/gpt-3.5-turbo-instruct")
    text["call_type"] = "atext_completion"
    rec = record_from_call(text, None, True)
    assert (rec.provider, rec.endpoint, rec.upstream_model) == ("openai", "/v1/completions", "gpt-3.5-turbo-instruct")


class LiteLLMProxy:
    """`litellm --config` from the cached venv, its stdout in a file."""

    def __init__(self, venv: Path, workdir: Path, upstream: str, ledger_env: dict, edit=None) -> None:
        self.dir = workdir
        shutil.copytree(ROOT / "deploy" / "litellm" / "callbacks", workdir / "callbacks")
        config = yaml.safe_load((ROOT / "deploy" / "litellm" / "config.yaml").read_text())
        config["general_settings"]["custom_auth"] = "auth.user_api_key_auth"
        config["litellm_settings"]["num_retries"] = 0  # each failure once: the tests stay quick
        if edit is not None:
            edit(config)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        (workdir / "auth.py").write_text(AUTH_MODULE)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PG", "TALLYGATE_", "OPENAI_", "PROXY_", "LITELLM_", "DATABASE_URL"))}
        env.update(
            PYTHONPATH=litellm_venv.pythonpath(), PYTHONUNBUFFERED="1",
            OPENAI_BASE_URL=upstream, OPENAI_API_KEY=UPSTREAM_KEY, PROXY_MASTER_KEY=MASTER,
            LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
            TALLYGATE_DEFAULT_TENANT="litellm-default", **ledger_env,
        )
        self.log_path = workdir / "proxy.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "litellm"), "--config", str(workdir / "config.yaml"), "--host", "127.0.0.1",
             "--port", str(self.port), "--telemetry", "False"],
            cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=90, proc=self.proc)
        except Exception:
            raise RuntimeError(f"LiteLLM did not start:\n{self.output()[-4000:]}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict]:
        return json_lines(self.output())

    def records(self, tenant: str | None = None) -> list[dict]:
        return [l for l in self.lines() if l.get("message") == "litellm_request"
                and (tenant is None or l["tenant_id"] == tenant)]

    def client(self, tenant: str | None = None, key: str = MASTER) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0,
                             default_headers={"X-Tenant-ID": tenant} if tenant else None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def venv() -> Path:
    return litellm_venv.ensure()  # minutes when cold, then cached outside the repository


@pytest.fixture(scope="module")
def ledger_db(private_postgres):
    name = "litellm_callbacks_test"
    with psycopg.connect(conninfo(private_postgres.env()), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return private_postgres.env(name)


@pytest.fixture(scope="module")
def proxy(venv, fake_upstream, ledger_db, tmp_path_factory):
    p = LiteLLMProxy(venv, tmp_path_factory.mktemp("litellm"), fake_upstream.base_url, ledger_db)
    yield p
    p.stop()


def call_id(raw) -> str:
    return raw.headers["x-litellm-call-id"]


def rows_of(env: dict, tenant: str) -> list[dict]:
    try:
        return pg_rows(env, "tenant_id = %s", (tenant,))
    except psycopg.errors.UndefinedTable:  # the proxy applies the schema with its first record
        return []


def every_endpoint(c: openai.OpenAI, fake: dict | None = None) -> list[tuple[str, bool, str]]:
    """Chat, completions, embeddings and responses, streamed and not: (endpoint, stream, call id)."""
    extra = {"fake": fake} if fake else None
    out = []
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, extra_body=extra)
    out.append(("/v1/chat/completions", False, call_id(raw)))
    with c.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_body=extra) as resp:
        list(resp.iter_lines())
        out.append(("/v1/chat/completions", True, call_id(resp)))
    raw = c.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
    out.append(("/v1/completions", False, call_id(raw)))
    with c.completions.with_streaming_response.create(
            model="gpt-3.5-turbo-instruct", prompt="Say hello", stream=True) as resp:
        list(resp.iter_lines())
        out.append(("/v1/completions", True, call_id(resp)))
    raw = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="a sentence to embed")
    out.append(("/v1/embeddings", False, call_id(raw)))
    raw = c.responses.with_raw_response.create(model="gpt-4o-mini", input="Tell me a fact")
    out.append(("/v1/responses", False, call_id(raw)))
    with c.responses.with_streaming_response.create(model="gpt-4o-mini", input="Tell me a fact", stream=True) as resp:
        list(resp.iter_lines())
        out.append(("/v1/responses", True, call_id(resp)))
    return out


def test_every_endpoint_one_line_and_one_row_each(proxy, ledger_db):
    tenant = "lite-endpoints"
    sent = every_endpoint(proxy.client(tenant), {"cached_tokens": 2, "reasoning_tokens": 1})
    ids = {i for _, _, i in sent}
    assert len(ids) == len(sent)
    rows = wait_until(lambda: len(rows_of(ledger_db, tenant)) >= len(sent) and rows_of(ledger_db, tenant),
                      15, "a row per request")
    time.sleep(0.3)  # anything extra (a second row or line for one call) would land by now
    rows, logs = rows_of(ledger_db, tenant), proxy.records(tenant)
    assert len(rows) == len(logs) == len(sent)
    assert {r["request_id"] for r in rows} == {l["request_id"] for l in logs} == ids
    by_id = {l["request_id"]: l for l in logs}
    for endpoint, stream, rid in sent:
        line = by_id[rid]
        assert (line["endpoint"], line["stream"], line["status"], line["status_code"]) == (endpoint, stream, "ok", 200)
        assert line["usage_source"] == "provider" and line["prompt_tokens"] > 0
        if endpoint != "/v1/embeddings":
            assert line["completion_tokens"] > 0
        assert line["price_source"] == "genai-prices"
        assert Decimal(line["cost_usd_exact"]) > 0
        assert isinstance(line["litellm_response_cost"], float)
    chat = by_id[sent[0][2]]
    assert (chat["cached_tokens"], chat["reasoning_tokens"]) == (2, 1)  # the provider's details
    for row in rows:
        assert Decimal(str(row["cost_usd"])) == Decimal(by_id[row["request_id"]]["cost_usd_exact"])
        assert row["total_tokens"] == by_id[row["request_id"]]["total_tokens"]
    # the gateway's fields, the same names (sinks/jsonlog.py), plus LiteLLM's own cost
    assert {"request_id", "tenant_id", "model", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd",
            "latency_ms", "status", "severity", "logging.googleapis.com/labels"} <= set(chat)


def test_cost_equals_the_gateways_for_the_same_requests(proxy, ledger_db, gateway):
    gw = gateway()
    tenant = "lite-vs-gateway"
    fake = {"prompt_tokens": 1234, "completion_tokens": 567, "cached_tokens": 200, "reasoning_tokens": 50}
    through_litellm = every_endpoint(proxy.client(tenant), fake)
    through_gateway = every_endpoint_gateway(sdk_client(gw, tenant), fake)
    theirs = {(l["endpoint"], l["stream"]): l for l in proxy.records(tenant)}
    wait_until(lambda: len(gw.records()) >= len(through_gateway), 10, "the gateway's lines")
    ours = {(l["endpoint"], l["stream"]): l for l in gw.records() if l["tenant_id"] == tenant}
    assert set(ours) == {(e, s) for e, s, _ in through_litellm}
    for key, line in ours.items():
        other = theirs[key]
        for field in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd_exact",
                      "price_source"):
            assert other[field] == line[field], (key, field, other[field], line[field])


def every_endpoint_gateway(c: openai.OpenAI, fake: dict) -> list:
    extra = {"fake": fake}
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body=extra)
    list(c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_body=extra))
    # (LiteLLM passes the fake upstream's instructions on for chat only: the others are
    # counted from the same request text on both sides)
    c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
    list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello", stream=True))
    c.embeddings.create(model="text-embedding-3-small", input="a sentence to embed")
    c.responses.create(model="gpt-4o-mini", input="Tell me a fact")
    list(c.responses.create(model="gpt-4o-mini", input="Tell me a fact", stream=True))
    return [None] * 7


def test_tenant_from_header_key_metadata_team_end_user_default(proxy, ledger_db):
    def chat(c: openai.OpenAI, **kw) -> str:
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, **kw)
        return call_id(raw)

    cases = {
        chat(proxy.client("tenant-from-header", key=KEYED), user="someone"): "tenant-from-header",  # header wins
        chat(proxy.client(key=KEYED), user="someone"): "tenant-from-key",
        chat(proxy.client(key=TEAMED), user="someone"): "team-blue",
        chat(proxy.client(), user="end-user-7"): "end-user-7",
        chat(proxy.client()): "litellm-default",  # TALLYGATE_DEFAULT_TENANT
    }
    got = wait_until(lambda: {l["request_id"]: l for l in proxy.records() if l["request_id"] in cases}
                     if len([l for l in proxy.records() if l["request_id"] in cases]) == len(cases) else None,
                     10, "the lines")
    assert {rid: l["tenant_id"] for rid, l in got.items()} == cases
    assert got[next(iter(cases))]["api_key_id"] == "keyed"  # the key's alias, never the key
    text = proxy.output()
    assert KEYED not in text and TEAMED not in text and MASTER not in text


def test_invalid_tenant_header_is_refused(proxy):
    c = proxy.client("not a valid tenant!")
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "X-Tenant-ID" in str(err.value)


def test_upstream_error_recorded_with_its_status(proxy, ledger_db):
    tenant = "lite-errors"
    c = proxy.client(tenant)
    for status, exc in ((429, openai.RateLimitError), (500, openai.InternalServerError),
                        (400, openai.BadRequestError)):
        with pytest.raises(exc):
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": {"status": status}})
    with pytest.raises(openai.APIStatusError):
        list(c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                       extra_body={"fake": {"status": 503}}))
    with pytest.raises(openai.InternalServerError):
        c.embeddings.create(model="text-embedding-3-small", input="x", extra_body={"fake": {"status": 500}})
    rows = wait_until(lambda: len(rows_of(ledger_db, tenant)) >= 5 and rows_of(ledger_db, tenant), 15, "5 rows")
    assert sorted((r["endpoint"], r["stream"], r["status_code"], r["status"]) for r in rows) == sorted([
        ("/v1/chat/completions", False, 429, "upstream_error"),
        ("/v1/chat/completions", False, 500, "upstream_error"),
        ("/v1/chat/completions", False, 400, "upstream_error"),
        ("/v1/chat/completions", True, 503, "upstream_error"),
        ("/v1/embeddings", False, 500, "upstream_error"),
    ])
    assert all(r["total_tokens"] == 0 and Decimal(str(r["cost_usd"])) == 0 for r in rows)
    assert len(proxy.records(tenant)) == 5


def test_postgres_stopped_during_a_burst_loses_no_row(proxy, ledger_db, private_postgres):
    tenant = "lite-outage"
    n = 40
    private_postgres.stop()
    try:
        def one(i: int) -> str:
            c = proxy.client(tenant)
            if i % 2:
                with c.chat.completions.with_streaming_response.create(
                        model="gpt-4o-mini", messages=MESSAGES, stream=True) as resp:
                    list(resp.iter_lines())
                    return call_id(resp)
            return call_id(c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES))

        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(one, range(n)))
        wait_until(lambda: len(proxy.records(tenant)) == n, 10, "the log lines while Postgres is down")
        assert "ledger write failed, will retry" in proxy.output()
    finally:
        private_postgres.start()
    rows = wait_until(lambda: len(rows_of(ledger_db, tenant)) >= n and rows_of(ledger_db, tenant), 30,
                      "the buffered rows once Postgres is back")
    assert {r["request_id"] for r in rows} == ids and len(rows) == n


def test_sigterm_flushes_the_ledger(venv, fake_upstream, tmp_path, private_postgres):
    """Rows still buffered when SIGTERM comes reach the ledger in the proxy's shutdown: the
    test holds a lock on the table during the burst, so no row of it can commit before the
    signal; the lock goes 1.5 s after it, and the shutdown writes them all."""
    name = "litellm_callbacks_sigterm"
    with psycopg.connect(conninfo(private_postgres.env()), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    env = private_postgres.env(name)
    p = LiteLLMProxy(venv, tmp_path, fake_upstream.base_url, env)
    n = 40
    try:
        p.client("warm").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        wait_until(lambda: rows_of(env, "warm"), 15, "the first row (schema applied)")

        def one(_: int) -> str:
            c = p.client("lite-sigterm")
            return call_id(c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES))

        with psycopg.connect(conninfo(env)) as lock:
            lock.execute("LOCK TABLE litellm_usage IN ACCESS EXCLUSIVE MODE")
            with ThreadPoolExecutor(8) as pool:
                ids = set(pool.map(one, range(n)))
            wait_until(lambda: len(p.records("lite-sigterm")) == n, 10, "the lines")
            p.proc.send_signal(signal.SIGTERM)
            time.sleep(1.5)
            assert p.proc.poll() is None  # the shutdown waits for the rows
            lock.rollback()
        p.proc.wait(30)  # uvicorn ends by raising the signal again once shut down (-15)
        assert "Application shutdown complete" in p.output()
    finally:
        p.stop()
    rows = rows_of(env, "lite-sigterm")
    assert {r["request_id"] for r in rows} == ids and len(rows) == n
    flushed = [l for l in p.lines() if l.get("message") == "ledger flushed on shutdown"]
    assert flushed and flushed[-1]["ledger_records_not_written"] == 0


def test_sigterm_with_the_database_down_names_every_row_not_written(venv, fake_upstream, tmp_path,
                                                                    private_postgres):
    """A shutdown that cannot reach the database within TALLYGATE_SHUTDOWN_GRACE loses no
    record silently: an ERROR line names each one, and each has its log line (for replay)."""
    name = "litellm_callbacks_down"
    with psycopg.connect(conninfo(private_postgres.env()), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    env = private_postgres.env(name)
    p = LiteLLMProxy(venv, tmp_path, fake_upstream.base_url, {**env, "TALLYGATE_SHUTDOWN_GRACE": "2"})
    try:
        p.client("warm").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        wait_until(lambda: rows_of(env, "warm"), 15, "the first row (schema applied)")
        private_postgres.stop()
        try:
            c = p.client("lite-down")
            ids = {call_id(c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES))
                   for _ in range(5)}
            wait_until(lambda: len(p.records("lite-down")) == 5, 10, "the lines")
            started = time.monotonic()
            p.stop()
            assert time.monotonic() - started < 15  # the grace bounds the shutdown
        finally:
            private_postgres.start()
    finally:
        p.stop()
    lost = [l for l in p.lines() if l.get("message", "").startswith("shutdown deadline reached")]
    assert lost and set(lost[-1]["request_ids"]) == ids
    assert {l["request_id"] for l in p.records("lite-down")} == ids
    assert rows_of(env, "lite-down") == []


def test_db_log_event_entry_point_meters_once(venv, fake_upstream, tmp_path):
    """The guide's `callbacks.db.log_event` alone, as success and failure callbacks (no
    `callbacks:` entry): one line and one row a call, failures included (SQLite ledger here)."""
    db = tmp_path / "ledger.db"

    def both(config: dict) -> None:
        del config["litellm_settings"]["callbacks"]
        config["litellm_settings"].update(success_callback=["callbacks.db.log_event"],
                                          failure_callback=["callbacks.db.log_event"])

    p = LiteLLMProxy(venv, tmp_path, fake_upstream.base_url, {"TALLYGATE_SQLITE_PATH": str(db)}, both)
    try:
        c = p.client("lite-db")
        ok = call_id(c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES))
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": {"status": 500}})
        wait_until(lambda: len(sqlite_rows(db, "tenant_id = ?", ("lite-db",))) >= 2, 15, "2 rows")
        time.sleep(0.5)
        rows = sqlite_rows(db, "tenant_id = ?", ("lite-db",))
        assert sorted(r["status_code"] for r in rows) == [200, 500]
        assert ok in {r["request_id"] for r in rows}
        assert len(p.records("lite-db")) == 2
    finally:
        p.stop()
