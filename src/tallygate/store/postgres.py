"""The ledger on Postgres (psycopg 3, async, a small pool: 50 Cloud Run instances
times the pool size must fit Cloud SQL's connection limit)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from ..metering.record import EXTRA_TOKEN_COLUMNS, LEDGER_COLUMNS, UsageRecord
from ..settings import PostgresSettings
from . import rollups
from .errors import RowsRefused, StoreUnavailable
from .migrations import migrations

if TYPE_CHECKING:  # psycopg_pool is imported in a thread at connect (start-up stays fast)
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("tallygate.store")

_COLUMNS = ", ".join(LEDGER_COLUMNS)
_CASTS = {
    "created_at": "timestamptz",
    "stream": "boolean",
    "status_code": "integer",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "total_tokens": "integer",
    "cached_tokens": "integer",
    "reasoning_tokens": "integer",
    **dict.fromkeys(EXTRA_TOKEN_COLUMNS, "integer"),
    "cost_usd": "numeric",
    "latency_ms": "double precision",
    "ttft_ms": "double precision",
}
# A batch is one statement with one parameter: the rows as a JSON array of arrays (orjson,
# about a microsecond a row), unpacked by the server. On an autocommit connection that is
# one round trip, atomic on its own; COPY into a temporary table inside a transaction
# took five, and psycopg spends tens of microseconds of CPU on each. Costs travel as
# decimal strings and are cast to numeric: exact. The same statement appends the sums of
# the rows it really inserted (RETURNING: not those skipped as already present) to the
# rollup deltas (store/rollups.py), so a retried batch counts once in both; an append, not
# an upsert: no rollup row is locked or rewritten per batch (docs/DESIGN.md, "The ledger at
# scale"). The conflict target is the partitioned table's key, (request_id, created_at): a
# retry or a replay carries the record's created_at unchanged.
_ROWS_SQL = (
    f"INSERT INTO litellm_usage ({_COLUMNS}) SELECT "
    + ", ".join(f"(r->>{i})::{_CASTS[c]}" if c in _CASTS else f"r->>{i}" for i, c in enumerate(LEDGER_COLUMNS))
    + " FROM jsonb_array_elements(%s::jsonb) AS r ON CONFLICT (request_id, created_at) DO NOTHING"
)
INSERT_SQL = (
    f"WITH ins AS ({_ROWS_SQL} RETURNING {', '.join(rollups.ROW_INPUTS)}, "
    f"{rollups.LATENCY_BUCKET_SQL} AS latency_bucket), "
    f"delta AS ({rollups.delta_insert_sql('ins')}) "
    "SELECT count(*) FROM ins"
)
WRITER_CONN_MAX_AGE = 600.0  # seconds the ledger writer keeps one connection
MIGRATION_LOCK = 7301265  # pg_advisory_xact_lock key: one instance migrates at a time


def explain(exc: BaseException, settings: PostgresSettings) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libpq quotes the connection string in some errors: never the password
    for secret in sorted(settings.secrets, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, "[password]")
    if "SSL" in text and ("not support" in text or "was required" in text):
        return (
            f"Postgres at {settings.description} does not accept TLS, but sslmode is "
            f"{settings.sslmode!r}; set PGSSL=disable (or PGSSLMODE=disable) for a server "
            "without TLS, such as a local one"
        )
    return f"Postgres at {settings.description}: {text}"


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the ledger")


async def _scalar(conn: AsyncConnection[Any], sql: str):
    """The first column of a one-row query's row."""
    row = await (await conn.execute(sql)).fetchone()
    return None if row is None else row[0]


class PostgresStore:
    dialect = "postgres"

    def __init__(self, settings: PostgresSettings, pool_max: int = 5, wait_timeout: float = 2.0) -> None:
        self.settings = settings
        self.pool_max = pool_max
        # how long fetch() and execute() (admin calls, /v1/usage, budget start values, key
        # refreshes) wait for a working connection before StoreUnavailable
        self.wait_timeout = wait_timeout
        self._pool: AsyncConnectionPool | None = None
        # the ledger writer's connection, kept between batches (why: docs/DESIGN.md, "What the code taught us")
        self._writer_conn: AsyncConnection[Any] | None = None
        self._writer_since = 0.0

    @property
    def description(self) -> str:
        return f"postgres {self.settings.description}"

    async def connect(self, timeout: float = 10.0) -> None:
        import asyncio
        import importlib

        # imported in a thread: /health answers while the ledger comes up (docs/DESIGN.md, "Start-up")
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
                self.settings.conninfo,
                min_size=1,
                max_size=self.pool_max,
                open=False,
                timeout=timeout,
                # a failed connection attempt is tried again (backing off from 1 s) for as long
                # as a caller waits; 0 gave up at once, and a caller queued during an outage
                # then waited its whole timeout with no attempt left, the database long back
                reconnect_timeout=self.wait_timeout,
                name="tallygate-ledger",
                kwargs={"autocommit": True},
            )  # every statement stands alone; migrations use transaction()
            await self._pool.open(wait=False)
        await self.ping(timeout)

    @property
    def _open_pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise StoreUnavailable(f"{self.description}: not connected yet")
        return self._pool

    async def ping(self, timeout: float = 5.0) -> None:
        import psycopg

        try:
            async with self._open_pool.connection(timeout=timeout) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            raise StoreUnavailable(explain(exc, self.settings)) from None
        except Exception as exc:  # PoolTimeout carries the last connection error
            raise StoreUnavailable(explain(exc, self.settings)) from None

    async def close(self) -> None:
        await self._release_writer_conn()
        if self._pool is not None:
            await self._pool.close(timeout=2.0)
            self._pool = None

    async def needs_migration(self) -> bool:
        async with self._open_pool.connection() as conn:
            if await _scalar(conn, "SELECT to_regclass('tallygate_schema_migrations')") is None:
                return True
            cur = await conn.execute("SELECT version FROM tallygate_schema_migrations")
            applied = {row[0] for row in await cur.fetchall()}
        # every shipped migration, not only the newest: a database can hold a later one and lack an earlier
        return any(m.version not in applied for m in migrations(self.dialect))

    async def migrate(self) -> list[int]:
        applied = []
        async with self._open_pool.connection() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                done: set[int] = set()
                if await _scalar(conn, "SELECT to_regclass('tallygate_schema_migrations')") is not None:
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
        import psycopg

        payload = orjson.dumps([r.ledger_row() for r in records], default=_json_default).decode()
        if self._writer_conn is not None and time.monotonic() - self._writer_since >= WRITER_CONN_MAX_AGE:
            await self._release_writer_conn()  # the pool renews the connections it gets back
        kept = self._writer_conn is not None
        try:
            return await self._insert(payload)
        except psycopg.OperationalError:
            if not kept:
                raise
            # the kept connection was closed meanwhile (a database restart, an idle timeout
            # on the way): once more on a fresh one; the insert is idempotent
            return await self._insert(payload)

    async def _insert(self, payload: str) -> int:
        import psycopg

        if self._writer_conn is None:
            # bounded like every other caller's wait (TALLYGATE_DB_TIMEOUT): the writer backs off
            # and asks again, and each ask starts a connection attempt if none is under way
            self._writer_conn = await self._open_pool.getconn(timeout=self.wait_timeout)
            self._writer_since = time.monotonic()
        try:
            cur = await self._writer_conn.execute(INSERT_SQL, (payload,))
            row = await cur.fetchone()
            return 0 if row is None else int(row[0])
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # the statement failed; the connection is fine (autocommit: no transaction left open)
            raise RowsRefused(str(exc).strip().splitlines()[0]) from None
        except BaseException:  # the database went away, or a cancel mid-statement
            await self._release_writer_conn()
            raise

    async def _release_writer_conn(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None and self._pool is not None:
            try:
                await self._pool.putconn(conn)
            except Exception:  # a pool closing meanwhile: the connection is closed with it
                log.debug("could not return the ledger connection to the pool", exc_info=True)

    @contextlib.asynccontextmanager
    async def _connection(self):
        """A working pooled connection within `wait_timeout`, else StoreUnavailable.

        Each is checked first (an empty query): after a database restart the pool still
        holds connections to the old server, and each would fail one request. (Not the
        pool's own `check`: the ledger writer keeps its connection and handles that itself.)"""
        if self._pool is None:
            raise StoreUnavailable(f"{self.description}: not connected yet")
        import psycopg

        deadline = time.monotonic() + self.wait_timeout
        try:
            while True:
                conn = await self._pool.getconn(timeout=max(0.01, deadline - time.monotonic()))
                try:
                    await conn.execute("")
                    break
                except psycopg.OperationalError:
                    await self._pool.putconn(conn)  # broken: the pool discards and replaces it
                    if time.monotonic() >= deadline:
                        raise
            try:
                yield conn
            finally:
                await self._pool.putconn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:  # PoolTimeout too
            raise StoreUnavailable(explain(exc, self.settings)) from None

    async def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        async with self._connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def execute(self, sql: str, params: Sequence = ()) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def transaction(self, steps: Sequence[tuple[str, Sequence]]) -> list[list[tuple]]:
        """The statements in one transaction; each one's rows ([] for none)."""
        out: list[list[tuple]] = []
        async with self._connection() as conn:
            async with conn.transaction():
                for sql, params in steps:
                    cur = await conn.execute(sql, params)
                    out.append(await cur.fetchall() if cur.description else [])
        return out

    @contextlib.asynccontextmanager
    async def try_lock(self, key: int):
        """A session advisory lock if no one holds it (yields True), else yields False at once:
        of many gateway instances, one does the ledger's maintenance."""
        async with self._connection() as conn:
            got = bool(await _scalar(conn, f"SELECT pg_try_advisory_lock({int(key)})"))
            try:
                yield got
            finally:
                if got:
                    await conn.execute(f"SELECT pg_advisory_unlock({int(key)})")
