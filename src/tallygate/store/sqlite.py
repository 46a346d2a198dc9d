"""The ledger in an embedded SQLite file: the default, so `make run` needs nothing else.

One connection used from one worker thread keeps sqlite3 off the event loop.
Costs are stored as exact decimal text and summed with a Decimal aggregate.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

from ..metering.record import LEDGER_COLUMNS, UsageRecord
from ..money import usd_text
from . import rollups
from .dialect import SQLITE
from .errors import StoreUnavailable
from .migrations import migrations

_COLUMNS = ", ".join(LEDGER_COLUMNS)
# A batch goes into a temporary table first (one row per request id), loses the rows the
# ledger already holds, and what is left is inserted and added to the hourly rollups, in
# one transaction under the write lock: a retried batch counts once in both.
BATCH = "temp.tallygate_batch"
CREATE_BATCH_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS tallygate_batch AS SELECT * FROM litellm_usage WHERE 0",
    "CREATE UNIQUE INDEX IF NOT EXISTS temp.tallygate_batch_id ON tallygate_batch (request_id)",
)
BATCH_INSERT_SQL = f"INSERT OR IGNORE INTO {BATCH} ({_COLUMNS}) VALUES ({', '.join('?' for _ in LEDGER_COLUMNS)})"
BATCH_DROP_PRESENT_SQL = (  # a key lookup per batch row (a join let the planner scan the ledger)
    f"DELETE FROM {BATCH} WHERE EXISTS "
    "(SELECT 1 FROM main.litellm_usage AS u WHERE u.request_id = tallygate_batch.request_id)"
)
# ingested_at: when the row reached the ledger (billing exports find late rows by it)
BATCH_TO_LEDGER_SQL = (
    f"INSERT INTO main.litellm_usage ({_COLUMNS}, ingested_at) "
    f"SELECT {_COLUMNS}, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z' FROM {BATCH} WHERE true"
)
BATCH_TO_ROLLUPS_SQL = rollups.upsert_sql(SQLITE, rollups.aggregate_rows_sql(SQLITE, BATCH))


class DecimalSum:
    """sqlite aggregate dsum(text): an exact sum of decimal strings."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value) -> None:
        if value is not None:
            self.total += Decimal(str(value))

    def finalize(self) -> str:
        return str(self.total)


def dadd(a, b) -> str:
    """sqlite function dadd(text, text): an exact sum of two decimal strings, as plain digits."""
    return format(Decimal(str(a or 0)) + Decimal(str(b or 0)), "f")


def _row(r: UsageRecord) -> tuple:
    row = list(r.ledger_row())
    row[1] = r.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    row[8] = int(r.stream)
    row[16] = usd_text(r.cost_usd)
    return tuple(row)


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._batch_ready = False  # the temporary batch table exists on this connection
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tallygate-sqlite")

    @property
    def description(self) -> str:
        return f"sqlite {self.path}"

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"{self.description}: not open yet")
        return self._conn

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA temp_store=MEMORY")  # the batch table (store/sqlite.py _write) never touches disk
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from None
        conn.create_aggregate("dsum", 1, DecimalSum)  # type: ignore[arg-type]  # a class is its own factory
        conn.create_function("dadd", 2, dadd, deterministic=True)
        self._conn = conn

    async def connect(self, timeout: float = 10.0) -> None:
        await self._run(self._open)

    async def ping(self, timeout: float = 5.0) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._batch_ready = False
            await self._run(conn.close)

    def _applied(self) -> set[int]:
        exists = self._db.execute("SELECT 1 FROM sqlite_master WHERE name='tallygate_schema_migrations'").fetchone()
        if not exists:
            return set()
        return {r[0] for r in self._db.execute("SELECT version FROM tallygate_schema_migrations")}

    async def needs_migration(self) -> bool:
        applied = await self._run(self._applied)
        return any(m.version not in applied for m in migrations(self.dialect))

    def _migrate(self) -> list[int]:
        applied = []
        self._db.execute("DROP TABLE IF EXISTS temp.tallygate_batch")  # made again with the new columns
        self._batch_ready = False
        self._db.execute("BEGIN IMMEDIATE")
        try:
            done = self._applied()
            for m in migrations(self.dialect):
                if m.version not in done:
                    for statement in m.sql.split(";\n"):
                        if statement.strip():
                            self._db.execute(statement)
                    applied.append(m.version)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return applied

    async def migrate(self) -> list[int]:
        return await self._run(self._migrate)

    def _write(self, rows: list[tuple]) -> int:
        db = self._db
        if not self._batch_ready:
            for statement in CREATE_BATCH_SQL:
                db.execute(statement)
            self._batch_ready = True
        db.execute("BEGIN IMMEDIATE")  # the write lock first: nothing lands between the check and the insert
        try:
            db.executemany(BATCH_INSERT_SQL, rows)
            db.execute(BATCH_DROP_PRESENT_SQL)
            added = db.execute(BATCH_TO_LEDGER_SQL).rowcount
            if added:
                db.execute(BATCH_TO_ROLLUPS_SQL)
            db.execute(f"DELETE FROM {BATCH}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    async def write(self, records: Sequence[UsageRecord]) -> int:
        if self._conn is None:
            raise StoreUnavailable(f"{self.description}: not open yet")
        try:
            return await self._run(self._write, [_row(r) for r in records])
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from None

    async def _query(self, fn):
        if self._conn is None:
            raise StoreUnavailable(f"{self.description}: not open yet")
        try:
            return await self._run(fn)
        except sqlite3.OperationalError as exc:  # locked, disk I/O, unreadable file
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from None

    async def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return await self._query(lambda: self._db.execute(sql, tuple(params)).fetchall())

    async def execute(self, sql: str, params: Sequence = ()) -> int:
        return await self._query(lambda: self._db.execute(sql, tuple(params)).rowcount)

    def _transaction(self, steps: Sequence[tuple[str, Sequence]]) -> list[list[tuple]]:
        out = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in steps:
                out.append(self._db.execute(sql, tuple(params)).fetchall())
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return out

    async def transaction(self, steps: Sequence[tuple[str, Sequence]]) -> list[list[tuple]]:
        """The statements in one transaction (under the write lock); each one's rows."""
        return await self._query(lambda: self._transaction(steps))
