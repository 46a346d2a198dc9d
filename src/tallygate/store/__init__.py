"""Database access: the ledger table, migrations and reports, on Postgres or SQLite."""

from __future__ import annotations

from ..settings import Settings
from .errors import RowsRefused, StoreUnavailable

__all__ = ["RowsRefused", "StoreUnavailable", "open_store"]


def open_store(settings: Settings):
    """The configured store (not yet connected): Postgres when PG*/DATABASE_URL is set."""
    if settings.postgres is not None:
        from .postgres import PostgresStore

        return PostgresStore(settings.postgres, pool_max=settings.ledger_pool_max, wait_timeout=settings.db_timeout)
    from .sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)
