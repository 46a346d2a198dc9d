"""`tallygate reconcile openai|anthropic`: a ledger seeded through a real gateway and the
fake upstream, against the fake of the providers' usage and cost reports
(support/fake_usage_api.py): an exact match exits 0, a seeded 5% mismatch is reported
and exits 3, refused and failed requests are not counted, the JSON says the same."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from support import routes_file
from support.fake_usage_api import FakeUsageApi
from support.ledger import pg_rows, send_mixed, sqlite_rows
from support.tenants import chat, new_key

ADMIN_KEY = "sk-admin-test-0123456789"
MODELS = ("gpt-4o-mini", "gpt-4o", "my-unpriced-model")


@pytest.fixture
def fake_usage():
    fake = FakeUsageApi(ADMIN_KEY)
    yield fake
    fake.stop()


@pytest.fixture
def ledger_db(postgres_env):
    """A database of this test's own on the session's Postgres: the day's ledger holds
    only what this test sent (other tests share postgres_env's database)."""
    name = f"wt_reconcile_{uuid.uuid4().hex[:10]}"
    admin = f"host={postgres_env['PGHOST']} port={postgres_env['PGPORT']} user={postgres_env['PGUSER']} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield {**postgres_env, "PGDATABASE": name}
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reconcile(args: list[str], env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("PG", "TALLYGATE_", "DATABASE_URL", "OPENAI_", "ANTHROPIC_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "tallygate", "reconcile", *args], env=full, capture_output=True,
                          text=True, timeout=120)


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def mixed_expected(n: int) -> dict[str, dict]:
    """What send_mixed(gw, n) asks the fake upstream to answer, per model."""
    out = {m: {"requests": 0, "input": 0, "cached": 0, "output": 0} for m in MODELS}
    for i in range(n):
        e = out[MODELS[i % 3]]
        e["requests"] += 1
        e["input"] += 100 + i
        e["cached"] += i % 3
        e["output"] += 10 + i % 7
    return out


def row_of(doc: dict, key: str, model: str, kind: str = "usage") -> dict:
    found = [r for r in doc["rows"] if (r["kind"], r["key"], r["model"]) == (kind, key, model)]
    assert len(found) == 1, doc["rows"]
    return found[0]


def test_openai_ledger_against_usage_and_costs_postgres(gateway, ledger_db, fake_usage, tmp_path):
    gw = gateway(**ledger_db)
    send_mixed(gw, 30)
    # refused by the gateway (rpm 1): never reaches the provider, never counted
    key = new_key(gw, "rc-limited", rpm_limit=1)["key"]
    fake_tokens = {"prompt_tokens": 40, "completion_tokens": 4, "cached_tokens": 0}
    assert chat(gw, key, fake=fake_tokens)[0] == 200
    assert chat(gw, key, fake=fake_tokens)[0] == 429
    # the provider's own error answer: a ledger row, not a model request
    status, _, _ = chat(gw, gw.token, tenant="rc-err", fake={"status": 400})
    assert status == 400
    gw.stop()
    rows = pg_rows(ledger_db)
    assert len(rows) == 32 and sum(r["status_code"] == 400 for r in rows) == 1

    expected = mixed_expected(30)
    expected["gpt-4o-mini"]["requests"] += 1
    expected["gpt-4o-mini"]["input"] += 40
    expected["gpt-4o-mini"]["output"] += 4
    total_cost = sum((Decimal(str(r["cost_usd"])) for r in rows), Decimal(0))
    assert total_cost > 0

    def serve(bump: dict[str, Decimal] | None = None) -> None:
        fake_usage.openai_completions = [
            {"model": m, "project_id": "proj_gw", "api_key_id": "key_gw",
             "num_model_requests": e["requests"],
             "input_tokens": int(e["input"] * (bump or {}).get(m, Decimal(1))),
             "input_cached_tokens": e["cached"], "output_tokens": e["output"],
             "input_audio_tokens": 0, "output_audio_tokens": 0}
            for m, e in expected.items()
        ] + [  # the same organization's usage through another key: not the gateway's
            {"model": "gpt-4o", "project_id": "proj_other", "api_key_id": "key_other", "num_model_requests": 7,
             "input_tokens": 700, "input_cached_tokens": 0, "output_tokens": 70},
            # a Batch API job with the gateway's key: it never passed the gateway
            {"model": "gpt-4o", "project_id": "proj_gw", "api_key_id": "key_gw", "batch": True,
             "num_model_requests": 3, "input_tokens": 300, "input_cached_tokens": 0, "output_tokens": 30}]
        # amounts as JSON numbers whose float sum is not the exact one
        fake_usage.openai_costs = [
            {"project_id": "proj_gw", "line_item": "gpt-4o-mini, input",
             "amount": {"value": total_cost - Decimal("0.3"), "currency": "usd"}},
            {"project_id": "proj_gw", "line_item": "gpt-4o, input", "amount": {"value": Decimal("0.1"), "currency": "usd"}},
            {"project_id": "proj_gw", "line_item": "gpt-4o, output", "amount": {"value": Decimal("0.2"), "currency": "usd"}},
            {"project_id": "proj_other", "line_item": "gpt-4o, input",
             "amount": {"value": Decimal("1.5"), "currency": "usd"}},
        ]

    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "gateway"\napi_key_id = "key_gw"\nproject_id = "proj_gw"\n'
                    'routes = ["default"]\n')
    out_json = tmp_path / "reconcile.json"
    env = {**ledger_db, "OPENAI_ADMIN_KEY": ADMIN_KEY, "OPENAI_BASE_URL": fake_usage.openai_base_url}
    args = ["openai", "--day", today(), "--keys", str(keys), "--json", str(out_json)]

    # an exact match, even at a tolerance of 0 and no floors
    serve()
    done = reconcile([*args, "--tolerance", "0%", "--floor-usd", "0"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "within the tolerance" in done.stdout
    doc = json.loads(out_json.read_text())
    assert doc["ok"] is True and doc["provider"] == "openai" and doc["day"] == today()
    for m, e in expected.items():
        row = row_of(doc, "gateway", m)
        assert row["measures"]["requests"] == {"ledger": e["requests"], "provider": e["requests"], "difference": 0,
                                               "percent": "0.00", "over_tolerance": False}
        assert row["measures"]["input_tokens"]["ledger"] == e["input"]
        assert row["measures"]["cached_tokens"]["ledger"] == e["cached"]
        assert row["measures"]["output_tokens"]["ledger"] == e["output"]
    assert row_of(doc, "gateway", "gpt-4o-mini")["ledger_excluded_rows"] == 1  # the upstream's 400
    cost = row_of(doc, "proj_gw", "*", "cost")["measures"]["cost_usd"]
    assert cost["ledger"] == cost["provider"] and Decimal(cost["ledger"]) == total_cost
    outside = row_of(doc, "outside:key_other", "gpt-4o")
    assert outside["outside_gateway"] is True and outside["measures"]["requests"]["provider"] == 7
    assert row_of(doc, "outside:proj_other", "*", "cost")["outside_gateway"] is True
    batch = row_of(doc, "outside:batch", "gpt-4o")
    assert batch["outside_gateway"] is True and batch["measures"]["requests"]["provider"] == 3
    assert doc["totals"]["requests"]["ledger"] == 31 and doc["totals"]["requests"]["provider"] == 31
    # one 429 retried; pages followed (5 usage results, 2 to a page)
    assert doc["provider_retries"] == 1
    completions = [c for c in fake_usage.calls if c[0].endswith("/usage/completions")]
    assert [c[2] for c in completions] == [429, 200, 200, 200]
    assert dict(completions[-1][1])["page"] and ("group_by[]", "api_key_id") in completions[-1][1]

    # dollars per key: the Costs API grouped by api_key_id too
    fake_usage.reset_calls(rate_limit_once=False)
    for line in fake_usage.openai_costs:
        line["api_key_id"] = "key_gw" if line["project_id"] == "proj_gw" else "key_other"
    done = reconcile([*args, "--costs-by-key", "--tolerance", "0", "--floor-usd", "0"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out_json.read_text())
    assert Decimal(row_of(doc, "gateway", "*", "cost")["measures"]["cost_usd"]["provider"]) == total_cost
    assert row_of(doc, "outside:key_other", "*", "cost")["outside_gateway"] is True
    costs_query = [c[1] for c in fake_usage.calls if c[0].endswith("/costs")][0]
    assert ("group_by[]", "api_key_id") in costs_query and ("group_by[]", "project_id") in costs_query

    # one model 5% off at the provider: reported, non-zero exit
    fake_usage.reset_calls()
    serve({"gpt-4o": Decimal("1.05")})
    done = reconcile(args, env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "OVER" in done.stdout and "1 group(s) over the tolerance" in done.stdout
    doc = json.loads(out_json.read_text())
    assert doc["ok"] is False
    off = row_of(doc, "gateway", "gpt-4o")
    measure = off["measures"]["input_tokens"]
    provider_input = int(expected["gpt-4o"]["input"] * Decimal("1.05"))
    assert off["over_tolerance"] is True and measure["over_tolerance"] is True
    assert measure["difference"] == expected["gpt-4o"]["input"] - provider_input
    assert Decimal(measure["percent"]) == ((Decimal(measure["difference"]) * 100 / provider_input)
                                           .quantize(Decimal("0.01")))
    assert not off["measures"]["requests"]["over_tolerance"]
    assert [r["model"] for r in doc["rows"] if r["over_tolerance"]] == ["gpt-4o"]

    # within the default 1% tolerance: 0.5% off passes
    fake_usage.reset_calls()
    serve({"gpt-4o": Decimal("1.005")})
    done = reconcile(args, env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_openai_without_a_key_map_compares_everything(gateway, ledger_db, fake_usage, tmp_path):
    gw = gateway(**ledger_db)
    send_mixed(gw, 6)
    gw.stop()
    expected = mixed_expected(6)
    fake_usage.openai_completions = [
        {"model": m, "project_id": "proj_a", "api_key_id": "key_a", "num_model_requests": e["requests"],
         "input_tokens": e["input"], "input_cached_tokens": e["cached"], "output_tokens": e["output"]}
        for m, e in expected.items()
    ] + [{"model": "gpt-4o", "project_id": "proj_b", "api_key_id": "key_b", "num_model_requests": 1,
          "input_tokens": 10, "input_cached_tokens": 0, "output_tokens": 1}]
    cost = sum((Decimal(str(r["cost_usd"])) for r in pg_rows(ledger_db)), Decimal(0))
    fake_usage.openai_costs = [{"project_id": "proj_a", "amount": {"value": cost, "currency": "usd"}}]
    env = {**ledger_db, "OPENAI_ADMIN_KEY": ADMIN_KEY}
    done = reconcile(["openai", "--day", today(), "--base-url", fake_usage.openai_base_url, "--json", "-"], env)
    # every key is the gateway's: the other key's request is a difference
    assert done.returncode == 3, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert [(r["key"], r["model"]) for r in doc["rows"] if r["over_tolerance"]] == [("*", "gpt-4o")]
    assert row_of(doc, "*", "gpt-4o")["measures"]["requests"]["difference"] == -1


def test_reconcile_errors_are_clear_and_keep_the_key_secret(ledger_db, fake_usage, tmp_path):
    subprocess.run([sys.executable, "-m", "tallygate", "db", "init"], check=True, capture_output=True,
                   env={**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **ledger_db})
    wrong = "sk-admin-wrong-key-987654321"
    env = {**ledger_db, "OPENAI_ADMIN_KEY": wrong, "OPENAI_BASE_URL": fake_usage.openai_base_url}
    done = reconcile(["openai", "--day", today()], env)
    assert done.returncode == 1 and "HTTP 401" in done.stderr and "Incorrect API key" in done.stderr
    assert wrong not in done.stderr + done.stdout
    done = reconcile(["openai", "--day", today()], {**ledger_db, "OPENAI_BASE_URL": fake_usage.openai_base_url})
    assert done.returncode == 1 and "OPENAI_ADMIN_KEY" in done.stderr
    done = reconcile(["openai", "--day", "2026-13-01"], env)
    assert done.returncode == 1 and "YYYY-MM-DD" in done.stderr
    done = reconcile(["openai", "--day", today(), "--tolerance", "lots"], env)
    assert done.returncode == 1 and "--tolerance" in done.stderr
    bad = tmp_path / "keys.toml"
    bad.write_text('[[keys]]\nname = "x"\nroutes = ["default"]\n')
    done = reconcile(["openai", "--day", today(), "--keys", str(bad)], env)
    assert done.returncode == 1 and "api_key_id, project_id or workspace_id" in done.stderr


def test_anthropic_usage_and_cost_report_sqlite(gateway, fake_upstream, fake_usage, tmp_path):
    routes = routes_file(tmp_path / "routes.toml",
                         {"model": "claude-*", "base_url": fake_upstream.base_url, "provider": "anthropic"})
    gw = gateway(TALLYGATE_CONFIG=routes)
    models = ("claude-sonnet-4-5", "claude-haiku-4-5")
    want = {m: {"input": 0, "cached": 0, "output": 0} for m in models}
    for i in range(8):
        m = models[i % 2]
        tokens = {"prompt_tokens": 200 + i, "completion_tokens": 20 + i, "cached_tokens": 50}
        tenant = "acme" if i < 7 else "globex"
        assert chat(gw, gw.token, tenant=tenant, model=m, fake=tokens)[0] == 200
        want[m]["input"] += 200 + i
        want[m]["cached"] += 50
        want[m]["output"] += 20 + i
    assert chat(gw, gw.token, tenant="acme", model=models[0], fake={"status": 529})[0] >= 500
    db = tmp_path / "ledger.db"
    gw.stop()
    rows = sqlite_rows(db)
    assert len(rows) == 9 and {r["provider"] for r in rows} == {"anthropic"}
    cost = sum((Decimal(str(r["cost_usd"])) for r in rows), Decimal(0))
    assert cost > 0

    def serve(output_bump: Decimal = Decimal(1)) -> None:
        fake_usage.anthropic_usage = [
            {"model": m, "api_key_id": "apikey_acme", "workspace_id": "wrkspc_acme",
             "uncached_input_tokens": w["input"] - w["cached"], "cache_read_input_tokens": w["cached"],
             "output_tokens": int(w["output"] * (output_bump if m == models[1] else 1)), "service_tier": "standard"}
            for m, w in want.items()
        ] + [{"model": models[0], "api_key_id": "apikey_acme", "workspace_id": "wrkspc_acme", "service_tier": "batch",
              "uncached_input_tokens": 5000, "output_tokens": 500}]  # a Message Batch: not through the gateway
        # cents, as decimal strings
        fake_usage.anthropic_costs = [{"workspace_id": "wrkspc_acme", "amount_cents": cost * 100}]

    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "acme"\napi_key_id = "apikey_acme"\nworkspace_id = "wrkspc_acme"\n'
                    'routes = ["claude-*"]\ntenant = "acme"\n')
    out_json = tmp_path / "anthropic.json"
    env = {"TALLYGATE_SQLITE_PATH": str(db), "TALLYGATE_CONFIG": str(routes), "ANTHROPIC_ADMIN_KEY": ADMIN_KEY,
           "ANTHROPIC_BASE_URL": fake_usage.anthropic_base_url}
    args = ["anthropic", "--day", today(), "--keys", str(keys), "--json", str(out_json)]
    serve()
    done = reconcile([*args, "--tolerance", "0", "--floor-usd", "0"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out_json.read_text())
    for m, w in want.items():
        row = row_of(doc, "acme", m)
        assert "requests" not in row["measures"]  # the usage report has no request counts
        assert row["tenant"] == "acme"
        assert row["measures"]["input_tokens"]["ledger"] == row["measures"]["input_tokens"]["provider"] == w["input"]
        assert row["measures"]["cached_tokens"]["provider"] == w["cached"]
        assert row["measures"]["output_tokens"]["provider"] == w["output"]
    # the 529 is not counted; the key mapped to acme also carried globex's request
    assert sum(row_of(doc, "acme", m)["ledger_excluded_rows"] for m in models) == 1
    assert any("globex" in n for m in models for n in row_of(doc, "acme", m)["notes"])
    assert row_of(doc, "outside:batch", models[0])["measures"]["input_tokens"]["provider"] == 5000
    cost_row = row_of(doc, "wrkspc_acme", "*", "cost")["measures"]["cost_usd"]
    assert Decimal(cost_row["provider"]) == cost == Decimal(cost_row["ledger"])
    assert doc["provider_retries"] == 1
    assert all(("group_by[]", "api_key_id") in c[1] for c in fake_usage.calls
               if c[0].endswith("/messages") and c[2] == 200)

    fake_usage.reset_calls(rate_limit_once=False)
    serve(Decimal("1.05"))
    fake_usage.anthropic_usage = [r for r in fake_usage.anthropic_usage if r["model"] != models[0]]
    done = reconcile(args, {**env, "ANTHROPIC_BASE_URL": fake_usage.anthropic_base_url + "/v1/"})
    assert done.returncode == 3, done.stdout + done.stderr
    doc = json.loads(out_json.read_text())
    # one model 5% off, the other missing at the provider (the ledger's alone: no request count
    # compared either); rows in key and model order
    assert [(r["model"], [n for n, v in r["measures"].items() if v["over_tolerance"]])
            for r in doc["rows"] if r["over_tolerance"]] == [
        (models[1], ["output_tokens"]), (models[0], ["input_tokens", "cached_tokens", "output_tokens"])]


def test_what_counts_and_the_day_boundary_ledger_written_directly(fake_usage, tmp_path):
    """Rows of every outcome, written with the ledger's own writer: only those the provider
    served count, timeouts are noted, and the UTC day's bounds are exact."""
    import asyncio

    from tallygate.metering.record import UsageRecord
    from tallygate.store.sqlite import SqliteStore

    day = datetime(2026, 11, 30, tzinfo=UTC)
    inside = day.replace(hour=12)
    n = iter(range(1000))

    def rec(status_code: int, status: str, usage_source: str, prompt: int = 0, at: datetime = inside,
            **kw) -> UsageRecord:
        return UsageRecord(request_id=f"rc-{next(n)}", created_at=at, tenant_id="t1", model="gpt-4o",
                           endpoint="/v1/chat/completions", stream=False, upstream_model="gpt-4o-2024-08-06",
                           status_code=status_code, status=status, usage_source=usage_source,
                           prompt_tokens=prompt, completion_tokens=prompt // 10, total_tokens=prompt + prompt // 10,
                           cost_usd=Decimal("0.000001") * prompt, **kw)

    records = [
        rec(200, "ok", "provider", 100, cached_tokens=20),
        rec(200, "client_disconnected", "estimated", 50),  # a stream the client left: billed
        rec(504, "timeout", "estimated", 30),  # the body stalled after a 200: billed
        rec(503, "timeout", "estimated", 20),  # the gateway stopped mid-request
        rec(499, "client_disconnected", "estimated", 40),  # gone before anything went upstream
        rec(502, "upstream_error", "none"),  # the upstream could not be reached
        rec(429, "upstream_error", "none"),  # the provider's rate limit
        rec(402, "insufficient_quota", "none"),  # a refusal, should one ever be written
        rec(200, "ok", "provider", 1000, at=day - timedelta(microseconds=1)),  # the day before
        rec(200, "ok", "provider", 1000, at=day + timedelta(days=1)),  # the day after
        rec(200, "ok", "provider", 7, provider="anthropic"),  # another provider
    ]
    path = tmp_path / "ledger.db"

    async def seed() -> None:
        store = SqliteStore(str(path))
        await store.connect()
        await store.migrate()
        assert await store.write(records) == len(records)
        await store.close()

    asyncio.run(seed())
    fake_usage.rate_limit_once = False
    fake_usage.openai_completions = [
        {"model": "gpt-4o-2024-08-06", "project_id": "p", "api_key_id": "k", "num_model_requests": 4,
         "input_tokens": 200, "input_cached_tokens": 20, "output_tokens": 10 + 5 + 3 + 2}]
    fake_usage.openai_costs = [{"project_id": "p", "amount": {"value": Decimal("0.0002"), "currency": "usd"}}]
    env = {"TALLYGATE_SQLITE_PATH": str(path), "OPENAI_ADMIN_KEY": ADMIN_KEY,
           "OPENAI_BASE_URL": fake_usage.openai_base_url}
    done = reconcile(["openai", "--day", "2026-11-30", "--tolerance", "0", "--floor-usd", "0", "--json", "-"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "timed out at the gateway" in done.stderr  # the table, with the JSON on stdout
    doc = json.loads(done.stdout)
    row = row_of(doc, "*", "gpt-4o-2024-08-06")
    assert row["measures"]["requests"]["ledger"] == 4
    assert row["ledger_timeouts"] == 2 and row["ledger_excluded_rows"] == 4
    assert row_of(doc, "*", "*", "cost")["measures"]["cost_usd"]["ledger"] == "0.0002"
    assert "ended less than an hour ago" not in done.stderr


def test_key_map_resolves_routes_as_the_gateway_does_and_refuses_bad_files(tmp_path):
    from tallygate.reconcile.compare import ToleranceError, parse_tolerance
    from tallygate.reconcile.keymap import KeyMapError, load_keymap

    routes = routes_file(tmp_path / "routes.toml",
                         {"model": "acme-*", "base_url": "http://127.0.0.1:1/v1"},
                         {"model": "acme-special", "base_url": "http://127.0.0.1:1/v1"})
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "acme"\napi_key_id = "key_a"\nproject_id = "proj_a"\nroutes = ["acme-*"]\n'
                    'tenant = "acme"\n\n[[keys]]\nproject_id = "proj_shared"\nroutes = ["default"]\n')
    km = load_keymap(str(keys), str(routes))
    assert km.for_route("acme-gpt-4o") == "acme"  # the prefix route
    assert km.for_route("acme-special") == "route:acme-special"  # its own exact route, not mapped
    assert km.for_route("gpt-4o") == "proj_shared"  # the default route
    assert km.for_provider("key_a", "proj_a") == "acme" and km.tenant_of("acme") == "acme"
    assert km.for_provider("key_zz", "proj_shared") == "proj_shared"  # a project stands for its keys
    assert km.for_provider("key_zz", "proj_zz") == "outside:key_zz"
    assert km.scope_of_key("acme") == "proj_a" and km.scope_for_provider("proj_b") == "outside:proj_b"
    assert km.scope_of_key("route:acme-special") == "route:acme-special"  # compared against nothing
    for text, problem in (
        ('[[keys]]\napi_key_id = "a"\nroutes = ["x"]\n[[keys]]\napi_key_id = "b"\nroutes = ["x"]\n', "already mapped"),
        ('[[keys]]\napi_key_id = "a"\nrouts = ["x"]\n', "unknown field"),
        ('[[keys]]\napi_key_id = "a"\n[[keys]]\nname = "a"\nproject_id = "p"\n', "used twice"),
        ("keys = 3\n", "no [[keys]]"),
        ("[[keys]\n", "not valid TOML"),
    ):
        keys.write_text(text)
        with pytest.raises(KeyMapError, match=re.escape(problem)):
            load_keymap(str(keys), None)
    assert parse_tolerance("1%") == Decimal("0.01") == parse_tolerance("1")
    assert parse_tolerance("0.5 %") == Decimal("0.005")
    for bad in ("-1%", "lots", "nan"):
        with pytest.raises(ToleranceError):
            parse_tolerance(bad)


def test_the_fake_serves_what_the_official_openai_sdk_parses(fake_usage):
    """The fake's OpenAI shapes, read by the official SDK's admin client (its models are
    generated from OpenAI's API spec): pages, the 429 retried, results and amounts."""
    import openai

    fake_usage.openai_completions = [
        {"model": f"gpt-4o-{i}", "project_id": "proj_a", "api_key_id": "key_a", "num_model_requests": i,
         "input_tokens": 10 * i, "input_cached_tokens": i, "output_tokens": 2 * i} for i in range(1, 4)]
    fake_usage.openai_costs = [{"project_id": "proj_a", "line_item": "gpt-4o, input",
                                "amount": {"value": Decimal("0.123456789"), "currency": "usd"}}]
    client = openai.OpenAI(api_key="unused", admin_api_key=ADMIN_KEY, base_url=fake_usage.openai_base_url,
                           max_retries=2)
    start = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
    usage = client.admin.organization.usage
    first = usage.completions(start_time=start, end_time=start + 86400, bucket_width="1d",
                              group_by=["model", "project_id", "api_key_id"])
    assert first.has_more and first.next_page
    second = usage.completions(start_time=start, end_time=start + 86400, bucket_width="1d",
                               group_by=["model", "project_id", "api_key_id"], page=first.next_page)
    assert not second.has_more
    results = [r for page in (first, second) for b in page.data for r in b.results]
    assert [(r.object, r.model, r.num_model_requests, r.input_cached_tokens) for r in results] == [
        ("organization.usage.completions.result", f"gpt-4o-{i}", i, i) for i in range(1, 4)]
    assert first.data[0].start_time == start and first.data[0].end_time == start + 86400
    costs = usage.costs(start_time=start, end_time=start + 86400, group_by=["project_id"])
    amount = costs.data[0].results[0].amount
    assert (amount.currency, amount.value) == ("usd", 0.123456789)  # a float in the SDK: not used to sum
    assert [c[2] for c in fake_usage.calls][0] == 429  # the SDK retried the fake's 429
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="unused", admin_api_key="sk-admin-wrong", base_url=fake_usage.openai_base_url,
                      max_retries=0).admin.organization.usage.costs(start_time=start)


def test_admin_api_retries_5xx_and_429_then_gives_up_with_the_reason(fake_usage):
    import asyncio

    from tallygate.reconcile.admin_api import AdminApi, AdminApiError

    start = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
    window = [("start_time", str(start)), ("end_time", str(start + 86400))]
    fake_usage.openai_costs = [{"project_id": "p", "amount": {"value": Decimal("0.1"), "currency": "usd"}}]
    fake_usage.retry_after = "0"

    async def run(attempts: int = 6):
        async with AdminApi(fake_usage.openai_base_url, {"Authorization": f"Bearer {ADMIN_KEY}"},
                            attempts=attempts, backoff=0.01) as api:
            return await api.get("/organization/costs", window), api

    fake_usage.fail_next = [500, 503]
    doc, api = asyncio.run(run())
    assert doc["data"][0]["results"][0]["amount"]["value"] == Decimal("0.1")  # a Decimal, not a float
    assert (api.calls, api.retries) == (4, 3)  # 500, 503, 429, 200
    fake_usage.reset_calls(rate_limit_once=False)
    fake_usage.fail_next = [502, 502, 502]
    with pytest.raises(AdminApiError, match=r"gave up after 3 attempts \(HTTP 502: The server had an error"):
        asyncio.run(run(attempts=3))
    fake_usage.fail_next = []
    fake_usage.reset_calls(rate_limit_once=True)
    fake_usage.retry_after = "3600"  # an hour: not waited for
    with pytest.raises(AdminApiError, match="asks to wait 3600 s"):
        asyncio.run(run())
    assert len(fake_usage.calls) == 1
