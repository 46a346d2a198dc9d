"""The export's own database connection (never the gateway's pool): transactions, the
leader lock, the database's clock, on Postgres or SQLite. Synchronous: an export is a
batch job, and a transaction reads as a plain sequence of statements."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from ..store.dialect import POSTGRES, SQLITE, Dialect

LEADER_LOCK = 7301266  # pg_try_advisory_lock(LEADER_LOCK, hashtext(export name))


class ExportDB:
    dialect: Dialect

    def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence = ()) -> int:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def now(self) -> datetime:
        """The database's clock (the one ingested_at is stamped with)."""
        raise NotImplementedError

    def try_lead(self, name: str) -> bool:
        """True when this connection leads the export `name` (held until close)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # values as the dialect returns them
    def time(self, value) -> datetime:
        t = self.dialect.time_value(value)
        assert t is not None
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    @staticmethod
    def decimal(value) -> Decimal:
        return Decimal(str(value)) if value is not None else Decimal(0)


class PostgresExportDB(ExportDB):
    dialect = POSTGRES

    def __init__(self, conninfo: str) -> None:
        import psycopg

        self.conn = psycopg.connect(conninfo, autocommit=True)

    def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:  # psycopg pipelines these: one round trip for the lot, not one each
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # one snapshot for every read of a pass: the window sums agree with each other
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    def now(self) -> datetime:
        return self.fetch("SELECT now()")[0][0]

    def try_lead(self, name: str) -> bool:
        return bool(self.fetch("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LEADER_LOCK, name))[0][0])

    def close(self) -> None:
        self.conn.close()  # the leader lock goes with the session


class SqliteExportDB(ExportDB):
    """One host: no leader election (run one exporter); BEGIN IMMEDIATE serialises passes."""

    dialect = SQLITE

    def __init__(self, path: str) -> None:
        from ..store.sqlite import DecimalSum

        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.conn.create_aggregate("dsum", 1, DecimalSum)  # type: ignore[arg-type]

    def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def execute(self, sql: str, params: Sequence = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self.conn.executemany(sql, [tuple(r) for r in rows])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def now(self) -> datetime:
        return datetime.now(UTC)

    def try_lead(self, name: str) -> bool:
        return True

    def close(self) -> None:
        self.conn.close()


def open_export_db(settings) -> ExportDB:
    if settings.postgres is not None:
        return PostgresExportDB(settings.postgres.conninfo)
    return SqliteExportDB(settings.sqlite_path)


class Rollback(Exception):
    """Raised inside a transaction to undo it on purpose (a dry run)."""
