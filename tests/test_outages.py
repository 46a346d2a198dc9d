"""Database and Redis outages, from outside: real gateway processes, a private Postgres
cluster and a private redis-server that the tests stop and start (the machine's shared
services are never touched)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import support
from support import MASTER, TOKEN, free_port
from support.tenants import unique

MESSAGES = [{"role": "user", "content": "hi"}]


def call(url: str, method: str = "GET", body=None, token: str | None = MASTER, headers=None,
         timeout: float = 30):
    """(status, headers, parsed JSON or None, raw body, seconds taken): outages are about time too."""
    began = time.monotonic()
    status, headers_, raw = support.call(url, method, body, token, headers, timeout)
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    return status, headers_, doc, raw, time.monotonic() - began


def chat(gw, token: str, tenant: str | None = None, **kw):
    return call(gw.base_url + "/chat/completions", "POST",
                {"model": "gpt-4o-mini", "messages": MESSAGES, **kw}, token=token,
                headers={"X-Tenant-ID": tenant} if tenant else None)


def assert_json_503(result, code: str, within: float) -> None:
    status, headers, doc, raw, took = result
    assert status == 503, (status, raw[:300])
    assert doc is not None and doc["error"]["code"] == code, raw[:300]
    assert set(doc["error"]) >= {"message", "type", "code"}
    assert headers["content-type"].startswith("application/json")
    assert int(headers["retry-after"]) >= 1
    assert took < within, f"took {took:.2f}s"


def metric(gw, name: str) -> float:
    return support.metric(support.metrics_text(gw.url + "/metrics"), name)


def poll(condition, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


# -- a private redis-server --------------------------------------------------------------

class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="tallygate-redis-")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll(self.ping, 10)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a crash: no goodbye to the clients
            self.proc.wait(10)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_redis():
    r = PrivateRedis()
    r.start()
    yield r
    r.destroy()


def limited_tenant(gw, **limits) -> str:
    tenant = unique("limited")
    status, _, doc, raw, _ = call(gw.url + f"/admin/tenants/{tenant}", "PUT", limits)
    assert status == 200, raw
    return tenant


def burst(gw, tenant: str, n: int = 100, workers: int = 20) -> list[int]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: chat(gw, TOKEN, tenant)[0], range(n)))


# -- Redis -------------------------------------------------------------------------------

def test_redis_restart_no_request_fails_once_it_is_back(gateway, postgres_env, private_redis):
    gw = gateway(**postgres_env, REDIS_URL=private_redis.url)
    tenant = limited_tenant(gw, rpm_limit=1_000_000)
    assert burst(gw, tenant) == [200] * 100  # the pool now holds connections to this Redis
    private_redis.stop()
    assert chat(gw, TOKEN, tenant)[0] == 503  # down: refused (the 503 itself is checked below)
    private_redis.start()
    statuses = burst(gw, tenant)  # at once, on connections that went stale
    assert statuses == [200] * 100, statuses
    time.sleep(1.0)  # connections idle a second after the restart
    assert burst(gw, tenant) == [200] * 100


def test_redis_down_fails_closed_by_default(gateway, postgres_env, private_redis):
    gw = gateway(**postgres_env, REDIS_URL=private_redis.url)
    limited = limited_tenant(gw, rpm_limit=1_000_000)
    assert chat(gw, TOKEN, limited)[0] == 200
    private_redis.stop()
    for _ in range(3):
        assert_json_503(chat(gw, TOKEN, limited), "limits_unavailable", within=1)
    assert chat(gw, TOKEN, unique("unlimited"))[0] == 200  # no limits: Redis is not asked
    assert metric(gw, 'tallygate_rejected_requests_total{reason="limits_unavailable"}') == 3
    private_redis.start()
    assert chat(gw, TOKEN, limited)[0] == 200


def test_redis_down_fails_open_when_configured(gateway, postgres_env, private_redis):
    if time.time() % 60 > 50:  # the rpm window is the clock minute: do not straddle two
        time.sleep(61 - time.time() % 60)
    gw = gateway(**postgres_env, REDIS_URL=private_redis.url, TALLYGATE_LIMITS_ON_REDIS_DOWN="open")
    limited = limited_tenant(gw, rpm_limit=2)
    assert [chat(gw, TOKEN, limited)[0] for _ in range(3)] == [200, 200, 429]
    private_redis.stop()
    statuses = [chat(gw, TOKEN, limited) for _ in range(5)]
    assert [s[0] for s in statuses] == [200] * 5  # admitted, unchecked
    assert max(s[4] for s in statuses) < 1
    assert metric(gw, 'tallygate_limits_failed_open_total{reason="redis_down"}') == 5
    warnings = [l for l in gw.lines() if l.get("severity") == "WARNING" and "fail open" in l.get("message", "")]
    assert len(warnings) == 1 and warnings[0]["reason"] == "redis_down"  # one line, not one per request
    private_redis.start()  # empty: the restarted Redis forgot the counts
    assert [chat(gw, TOKEN, limited)[0] for _ in range(3)] == [200, 200, 429]  # checked again


# -- Postgres ------------------------------------------------------------------------------

def fresh_database(pg) -> dict:
    import psycopg

    name = f"outage_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return pg.env(name)


def spend(gw, tenant: str) -> list[int]:
    """Gateway-token requests of $0.0003 each (500 output tokens of gpt-4o-mini)."""
    return [chat(gw, TOKEN, tenant, max_tokens=500, fake={"prompt_tokens": 10, "completion_tokens": 500})[0]
            for _ in range(4)]


def test_instance_started_while_database_down_refuses_tenant_traffic(gateway, private_postgres):
    private_postgres.start()
    env = fresh_database(private_postgres)
    gw1 = gateway(**env)
    exhausted = unique("exhausted")
    assert call(gw1.url + f"/admin/tenants/{exhausted}", "PUT",
                {"budget_usd": "0.0006", "budget_period": "month"})[0] == 200
    assert spend(gw1, exhausted) == [200, 200, 429, 429]
    keyed = unique("keyed")
    status, _, created, raw, _ = call(gw1.url + "/admin/keys", "POST", {"tenant_id": keyed, "rpm_limit": 100})
    assert status == 201, raw
    assert gw1.stop() == 0  # the ledger is flushed: the spend is in the database
    private_postgres.stop()
    try:
        gw2 = gateway(**env, ready=False)
        # nothing known about tenants or keys: refuse, quickly, in JSON, rather than serve unlimited
        assert_json_503(chat(gw2, TOKEN, exhausted, max_tokens=500), "limits_unavailable", within=1)
        assert_json_503(chat(gw2, TOKEN, unique("anyone")), "limits_unavailable", within=1)
        assert_json_503(chat(gw2, created["key"]), "limits_unavailable", within=1)  # not a 401
        assert_json_503(call(gw2.base_url + "/usage", token=created["key"]), "limits_unavailable", within=1)
        assert_json_503(call(gw2.url + "/admin/keys"), "ledger_unavailable", within=1)
        assert call(gw2.url + "/admin/keys", token="garbage")[0] == 401  # credentials still checked first
    finally:
        private_postgres.start()
    back = time.monotonic()
    poll(lambda: call(gw2.url + "/ready", token=None)[0] == 200, timeout=15)
    print(f"ready {time.monotonic() - back:.2f}s after Postgres was back")
    status, _, doc, raw, _ = chat(gw2, TOKEN, exhausted, max_tokens=500)
    assert status == 429 and doc["error"]["code"] == "budget_exceeded", raw
    assert chat(gw2, created["key"])[0] == 200
    assert chat(gw2, TOKEN, unique("anyone"))[0] == 200


def test_database_outage_answers_json_503_within_the_bound(gateway, private_postgres):
    private_postgres.start()
    env = fresh_database(private_postgres)
    gw = gateway(**env, TALLYGATE_DB_TIMEOUT=1)  # the bound (2 s by default) is honoured
    budgeted = call(gw.url + "/admin/keys", "POST", {"tenant_id": unique("budgeted"), "budget_usd": "5"})[2]
    rpm_key = call(gw.url + "/admin/keys", "POST", {"tenant_id": unique("rpm"), "rpm_limit": 100})[2]
    plain = call(gw.url + "/admin/keys", "POST", {"tenant_id": unique("plain")})[2]
    private_postgres.stop()
    try:
        admin = [("/admin/keys", "GET", None), ("/admin/keys", "POST", {"tenant_id": "t"}),
                 (f"/admin/keys/{plain['key_id']}", "DELETE", None), ("/admin/tenants", "GET", None),
                 ("/admin/tenants/t", "PUT", {"rpm_limit": 5}), ("/admin/usage", "GET", None)]
        for path, method, body in admin:
            assert_json_503(call(gw.url + path, method, body), "ledger_unavailable", within=2.5)
        assert_json_503(call(gw.base_url + "/usage", token=plain["key"]), "ledger_unavailable", within=2.5)
        # a budget whose spend so far must come from the ledger: refused, not guessed
        assert_json_503(chat(gw, budgeted["key"]), "ledger_unavailable", within=2.5)
        # everything already loaded keeps working from memory
        assert chat(gw, plain["key"])[0] == 200
        assert chat(gw, rpm_key["key"])[0] == 200
        assert chat(gw, TOKEN, unique("anyone"))[0] == 200
    finally:
        private_postgres.start()
    # back: no request fails on a connection that went stale meanwhile
    assert poll(lambda: chat(gw, budgeted["key"])[0] == 200, timeout=10)
    for path, method, body in admin[:2] + admin[3:]:
        status, _, _, raw, _ = call(gw.url + path, method, body)
        assert status in (200, 201), (path, raw[:200])
    assert call(gw.base_url + "/usage", token=plain["key"])[0] == 200


def test_database_restart_no_call_fails_on_a_stale_connection(gateway, private_postgres):
    private_postgres.start()
    env = fresh_database(private_postgres)
    gw = gateway(**env, TALLYGATE_KEYS_REFRESH=60)  # no key refresh meets the stale connections first
    keys = [call(gw.url + "/admin/keys", "POST", {"tenant_id": unique("stale")})[2]["key"] for _ in range(3)]

    def usage_calls() -> list[int]:  # five at once: the pool holds five connections
        with ThreadPoolExecutor(5) as pool:
            return list(pool.map(lambda k: call(gw.base_url + "/usage", token=k)[0], keys + keys[:2]))

    assert usage_calls() == [200] * 5
    private_postgres.stop()
    private_postgres.start()  # every pooled connection now points at a server that is gone
    assert usage_calls() == [200] * 5
    assert call(gw.url + "/admin/tenants")[0] == 200


def test_database_down_fails_open_when_configured(gateway, private_postgres):
    private_postgres.start()
    env = {**fresh_database(private_postgres), "TALLYGATE_LIMITS_ON_DB_DOWN": "open"}
    gw1 = gateway(**env)
    budgeted = call(gw1.url + "/admin/keys", "POST", {"tenant_id": unique("budgeted"), "budget_usd": "5"})[2]
    private_postgres.stop()
    try:
        assert chat(gw1, budgeted["key"])[0] == 200  # its budget is not checked, and counted so
        assert metric(gw1, 'tallygate_limits_failed_open_total{reason="ledger_down"}') == 1
        gw2 = gateway(**env, ready=False)
        assert chat(gw2, TOKEN, unique("anyone"))[0] == 200
        assert metric(gw2, 'tallygate_limits_failed_open_total{reason="limits_not_loaded"}') == 1
        # a tenant key cannot be told from a forged one yet: never let in
        assert_json_503(chat(gw2, budgeted["key"]), "limits_unavailable", within=1)
        assert any(l.get("reason") == "limits_not_loaded" for l in gw2.lines() if l.get("severity") == "WARNING")
    finally:
        private_postgres.start()


# -- the CLI -------------------------------------------------------------------------------

def run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TALLYGATE_", "DATABASE_URL"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "tallygate", *args], env=full, capture_output=True, text=True,
                          timeout=60)


def test_read_only_commands_do_not_migrate(private_postgres, tmp_path):
    import psycopg

    private_postgres.start()
    env = fresh_database(private_postgres)
    conninfo = f"host=127.0.0.1 port={private_postgres.port} user=postgres dbname={env['PGDATABASE']}"
    for args in (["keys", "list"], ["usage", "--since", "1h"], ["keys", "revoke", "key_x"]):
        out = run_cli(args, env)
        assert out.returncode == 1 and "tallygate db init" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    with psycopg.connect(conninfo) as c:
        tables = c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    assert tables == 0  # nothing was created
    sqlite_env = {"TALLYGATE_SQLITE_PATH": str(tmp_path / "nowhere" / "ledger.db")}
    out = run_cli(["usage"], sqlite_env)
    assert out.returncode == 1 and "tallygate db init" in out.stderr
    assert not (tmp_path / "nowhere").exists()
    for e in (env, sqlite_env):
        assert run_cli(["db", "init"], e).returncode == 0
        out = run_cli(["keys", "list"], e)
        assert out.returncode == 0 and "no keys" in out.stdout, out.stderr
