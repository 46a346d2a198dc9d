"""The fixtures; what they are built from is in tests/support/ (see its __init__).

- `fake_upstream`: a FakeUpstream process (base_url ".../v1"), session-wide.
- `postgres_env`: PG* variables of a fresh database for this test session.
- `gateway`: a factory; `gateway(**env)` starts `tallygate serve` and returns a
  GatewayProcess (url, base_url, token, master_key, log lines, stop()); stopped after the test.
- `private_postgres`: a Postgres cluster of the test's own, to stop and start.
"""

from __future__ import annotations

import uuid

import pytest

from support import FakeUpstream, GatewayProcess, base_env, free_port


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
