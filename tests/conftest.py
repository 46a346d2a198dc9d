"""Real processes over real HTTP: a fake OpenAI upstream, gateways, Postgres.

Fixtures:
- `fake_upstream`: base URL (".../v1") of a fake upstream process (session-wide).
- `postgres_env`: PG* variables of a fresh database for this test session.
- `gateway`: a factory; `gateway(**env)` starts `tallygate serve` and returns a
  GatewayProcess (url, base_url, token, master_key, log lines, stop()).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tg-test-gateway-token-0123456789"
MASTER = "tg-test-master-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def routes_file(path: Path, *routes: dict) -> Path:
    """A TALLYGATE_CONFIG file with one [[routes]] table per dict (strings, lists of strings)."""
    path.write_text("".join("[[routes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in r.items()) + "\n"
                            for r in routes))
    return path


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(url)


class FakeUpstream:
    def __init__(self, fail_rate: float = 0.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        args = [sys.executable, "-m", "tallygate", "fake-upstream", "--port", str(self.port)]
        if fail_rate:
            args += ["--fail-rate", str(fail_rate)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.base_url + "/models", proc=self.proc)

    def requests(self) -> list[dict]:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_fake/requests").read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_fake/reset", method="POST")).read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class GatewayProcess:
    def __init__(self, env: dict, log_path: Path, args: list[str] | None = None, ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.env = env
        self.token = env.get("PROXY_GATEWAY_TOKEN")
        self.master_key = env.get("PROXY_MASTER_KEY")
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tallygate", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             *(args or [])],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(self.url + "/health", proc=self.proc)
            if ready:  # the ledger connects in the background; most tests want it there
                wait_http(self.url + "/ready", proc=self.proc)
        except Exception:
            self._log.close()
            raise RuntimeError(f"gateway did not start:\n{self.output()}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict]:
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def records(self) -> list[dict]:
        return [l for l in self.lines() if l.get("message") == "litellm_request"]

    def wait_records(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = self.records()
            if len(recs) >= n:
                return recs
            time.sleep(0.02)
        raise AssertionError(f"expected {n} log records, got {len(self.records())}:\n{self.output()[-3000:]}")

    def headers(self, tenant: str | None = "acme", token: str | None = None) -> dict:
        h = {"Authorization": f"Bearer {token or self.token}"}
        if tenant is not None:
            h["X-Tenant-ID"] = tenant
        return h

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def fake_upstream():
    fake = FakeUpstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def postgres_env():
    """A fresh database on the local Postgres for this test session."""
    import psycopg

    name = f"tallygate_test_{uuid.uuid4().hex[:10]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": name,
           "PGSSL": "disable"}
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def base_env(upstream_url: str, tmp_path: Path, **overrides) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "PROXY_", "TALLYGATE_", "OPENAI_", "DATABASE_URL", "REDIS_URL"))}
    env.update({
        "OPENAI_BASE_URL": upstream_url, "OPENAI_API_KEY": "sk-upstream-secret-abcdef",
        "PROXY_GATEWAY_TOKEN": TOKEN, "PROXY_MASTER_KEY": MASTER,
        "TALLYGATE_SQLITE_PATH": str(tmp_path / "ledger.db"), "PYTHONUNBUFFERED": "1",
    })
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


@pytest.fixture
def gateway(fake_upstream, tmp_path):
    started: list[GatewayProcess] = []

    def start(upstream: str | None = None, args: list[str] | None = None, ready: bool = True,
              **env) -> GatewayProcess:
        full = base_env(upstream or fake_upstream.base_url, tmp_path, **env)
        gw = GatewayProcess(full, tmp_path / f"gateway-{len(started)}.log", args, ready)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def private_postgres():
    from devtools.pgcluster import PrivatePostgres

    pg = PrivatePostgres(free_port())
    pg.start()
    yield pg
    pg.destroy()
