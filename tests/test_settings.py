"""Settings parsed from the environment: the guide's PG* contract and clear errors."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from tallygate.settings import SettingsError, load, postgres_from_env


def test_no_postgres_means_sqlite():
    assert postgres_from_env({}) is None
    assert load({"TALLYGATE_SQLITE_PATH": "/tmp/x.db"}).sqlite_path == "/tmp/x.db"


def test_pg_variables_and_pgssl():
    pg = postgres_from_env({"PGHOST": "db.internal", "PGUSER": "u", "PGPASSWORD": "p w'\\x", "PGDATABASE": "d"})
    parsed = conninfo_to_dict(pg.conninfo)
    assert parsed["host"] == "db.internal" and parsed["port"] == "5432" and parsed["user"] == "u"
    assert parsed["password"] == "p w'\\x" and parsed["dbname"] == "d"
    assert parsed["sslmode"] == "require" and pg.sslmode == "require"  # PGSSL defaults to require
    assert "p w" not in pg.description  # no password in what gets logged
    assert postgres_from_env({"PGHOST": "h", "PGSSL": "disable"}).sslmode == "disable"
    assert postgres_from_env({"PGHOST": "h", "PGSSL": "disable", "PGSSLMODE": "verify-full"}).sslmode == "verify-full"
    with pytest.raises(SettingsError, match="PGSSL"):
        postgres_from_env({"PGHOST": "h", "PGSSL": "yes"})


def test_cloud_sql_socket_directory_needs_no_tls():
    pg = postgres_from_env({"PGHOST": "/cloudsql/proj:us-central1:ledger", "PGUSER": "u", "PGDATABASE": "d"})
    assert conninfo_to_dict(pg.conninfo)["host"] == "/cloudsql/proj:us-central1:ledger"
    assert pg.sslmode == "disable"


def test_database_url():
    pg = postgres_from_env({"DATABASE_URL": "postgres://a:b@example.com:6543/ledger?sslmode=disable"})
    parsed = conninfo_to_dict(pg.conninfo)
    assert (parsed["host"], parsed["port"], parsed["dbname"], parsed["sslmode"]) == ("example.com", "6543", "ledger", "disable")
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        postgres_from_env({"DATABASE_URL": "postgres://a:b@host:notaport/x x"})


@pytest.mark.parametrize("env, message", [
    ({"PORT": "eighty"}, "PORT"), ({"TALLYGATE_READ_TIMEOUT": "-1"}, "TALLYGATE_READ_TIMEOUT"),
    ({"TALLYGATE_LEDGER_MODE": "fast"}, "TALLYGATE_LEDGER_MODE"), ({"OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL"),
    ({"TALLYGATE_DEFAULT_TENANT": "a b"}, "TALLYGATE_DEFAULT_TENANT"), ({"TALLYGATE_AUTO_MIGRATE": "maybe"}, "TALLYGATE_AUTO_MIGRATE"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        load(env)
