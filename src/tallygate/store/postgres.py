"""The ledger on Postgres (psycopg 3, async, a small pool: 50 Cloud Run instances
times the pool size must fit Cloud SQL's connection limit)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from decimal import Decimal
from typing import Sequence

from ..metering.record import LEDGER_COLUMNS, UsageRecord
from ..settings import PostgresSettings
from . import StoreUnavailable
from .migrations import migrations

log = logging.getLogger("tallygate.store")

_COLUMNS = ", ".join(LEDGER_COLUMNS)
# A batch goes in by COPY into a per-connection temporary table, then one INSERT ... SELECT
# with ON CONFLICT DO NOTHING: the cheapest path on both sides (parameter arrays are
# dumped in Python, about 70 us a row; COPY rows are formatted in C).
BATCH_TABLE_SQL = ("CREATE TEMP TABLE IF NOT EXISTS tallygate_batch (LIKE litellm_usage) "
                   "ON COMMIT DELETE ROWS")
COPY_SQL = f"COPY tallygate_batch ({_COLUMNS}) FROM STDIN"
INSERT_SQL = (f"INSERT INTO litellm_usage ({_COLUMNS}) SELECT {_COLUMNS} FROM tallygate_batch "
              "ON CONFLICT (request_id) DO NOTHING")
# Formatting a row takes a few microseconds on the event loop: a batch of 500 would hold
# requests back for milliseconds, so it is formatted in slices.
COPY_YIELD_ROWS = 50
MIGRATION_LOCK = 7301265  # pg_advisory_xact_lock key: one instance migrates at a time


def explain(exc: BaseException, settings: PostgresSettings) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "SSL" in text and ("not support" in text or "was required" in text):
        return (f"Postgres at {settings.description} does not accept TLS, but sslmode is "
                f"{settings.sslmode!r}; set PGSSL=disable (or PGSSLMODE=disable) for a server "
                "without TLS, such as a local one")
    return f"Postgres at {settings.description}: {text}"


class PostgresStore:
    dialect = "postgres"

    def __init__(self, settings: PostgresSettings, pool_max: int = 5) -> None:
        self.settings = settings
        self.pool_max = pool_max
        self._pool = None
        self._with_batch_table: weakref.WeakSet = weakref.WeakSet()

    @property
    def description(self) -> str:
        return f"postgres {self.settings.description}"

    async def connect(self, timeout: float = 10.0) -> None:
        import asyncio
        import importlib

        # psycopg takes ~0.15 s to import: in a thread, so the event loop keeps answering
        # /health while the ledger comes up
        await asyncio.get_running_loop().run_in_executor(None, importlib.import_module, "psycopg_pool")
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        # one direct connection first: its error says what is wrong (TLS, auth, host),
        # where the pool would only report a timeout
        try:
            conn = await psycopg.AsyncConnection.connect(self.settings.conninfo)
            await conn.close()
        except (psycopg.Error, OSError) as exc:
            raise StoreUnavailable(explain(exc, self.settings)) from None
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self.settings.conninfo, min_size=1, max_size=self.pool_max, open=False,
                timeout=timeout, reconnect_timeout=0, name="tallygate-ledger")
            await self._pool.open(wait=False)
        await self.ping(timeout)

    async def ping(self, timeout: float = 5.0) -> None:
        import psycopg

        try:
            async with self._pool.connection(timeout=timeout) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            raise StoreUnavailable(explain(exc, self.settings)) from None
        except Exception as exc:  # PoolTimeout carries the last connection error
            raise StoreUnavailable(explain(exc, self.settings)) from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close(timeout=2.0)
            self._pool = None

    async def needs_migration(self) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT to_regclass('tallygate_schema_migrations')")
            if (await cur.fetchone())[0] is None:
                return True
            cur = await conn.execute("SELECT coalesce(max(version), 0) FROM tallygate_schema_migrations")
            applied = (await cur.fetchone())[0]
        return applied < migrations(self.dialect)[-1].version

    async def migrate(self) -> list[int]:
        applied = []
        async with self._pool.connection() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur = await conn.execute("SELECT to_regclass('tallygate_schema_migrations')")
                done: set[int] = set()
                if (await cur.fetchone())[0] is not None:
                    cur = await conn.execute("SELECT version FROM tallygate_schema_migrations")
                    done = {row[0] for row in await cur.fetchall()}
                for m in migrations(self.dialect):
                    if m.version not in done:
                        await conn.execute(m.sql)
                        applied.append(m.version)
        return applied

    async def write(self, records: Sequence[UsageRecord]) -> int:
        """Insert a batch idempotently; returns how many rows were new."""
        if self._pool is None:
            raise StoreUnavailable(f"{self.description}: not connected yet")
        async with self._pool.connection() as conn:
            async with conn.transaction():
                if conn not in self._with_batch_table:
                    await conn.execute(BATCH_TABLE_SQL)
                    self._with_batch_table.add(conn)
                async with conn.cursor().copy(COPY_SQL) as copy:
                    for n, r in enumerate(records, 1):
                        await copy.write_row(r.ledger_row())
                        if n % COPY_YIELD_ROWS == 0:
                            await asyncio.sleep(0)  # requests run between slices of a big batch
                cur = await conn.execute(INSERT_SQL)
                return cur.rowcount

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT request_id FROM litellm_usage WHERE request_id = ANY(%s)", (list(ids),))
            return {row[0] for row in await cur.fetchall()}

    async def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def execute(self, sql: str, params: Sequence = ()) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    @staticmethod
    def decimal(value) -> Decimal:
        return value if isinstance(value, Decimal) else Decimal(str(value or 0))
