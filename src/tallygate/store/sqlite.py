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
from .errors import StoreUnavailable
from .migrations import migrations

# ingested_at: when the row reached the ledger (billing exports find late rows by it)
INSERT_SQL = (
    f"INSERT INTO litellm_usage ({', '.join(LEDGER_COLUMNS)}, ingested_at) VALUES "
    f"({', '.join('?' for _ in LEDGER_COLUMNS)}, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z') "
    "ON CONFLICT (request_id) DO NOTHING"
)


class DecimalSum:
    """sqlite aggregate dsum(text): an exact sum of decimal strings."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value) -> None:
        if value is not None:
            self.total += Decimal(str(value))

    def finalize(self) -> str:
        return str(self.total)


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
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from None
        conn.create_aggregate("dsum", 1, DecimalSum)  # type: ignore[arg-type]  # a class is its own factory
        self._conn = conn

    async def connect(self, timeout: float = 10.0) -> None:
        await self._run(self._open)

    async def ping(self, timeout: float = 5.0) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
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
        before = self._db.total_changes
        self._db.execute("BEGIN")
        try:
            self._db.executemany(INSERT_SQL, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self._db.total_changes - before

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
