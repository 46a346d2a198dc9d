"""`tallygate db`, and the ledger connection every database command starts from."""

from __future__ import annotations

import sys

from .. import settings as settings_module
from ..settings import SettingsError


class CommandError(Exception):
    pass


async def open_ledger(schema_required: bool = True):
    """The configured store, connected. Only `db init` (and the server, with
    TALLYGATE_AUTO_MIGRATE) changes a schema: every other command needs it in place
    already and says so, rather than create tables in whatever database PG* names."""
    from pathlib import Path

    from ..store import open_store

    try:
        settings = settings_module.load()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None
    store = open_store(settings)
    if (
        schema_required
        and store.dialect == "sqlite"
        and settings.sqlite_path != ":memory:"
        and not Path(settings.sqlite_path).exists()
    ):
        raise CommandError(
            f"no ledger at {store.description}: run `tallygate db init` first "
            "(or point PG*/DATABASE_URL/TALLYGATE_SQLITE_PATH at the ledger)"
        )
    try:
        await store.connect()
        missing = schema_required and await store.needs_migration()
    except Exception as exc:
        await store.close()
        raise CommandError(f"cannot use the ledger: {exc}") from None
    if missing:
        await store.close()
        raise CommandError(f"the ledger schema is missing or old in {store.description}: run `tallygate db init` first")
    return store


async def db_command(args) -> int:
    if args.db_command == "schema":
        from ..store.migrations import schema_sql

        sys.stdout.write(schema_sql("postgres"))
        return 0
    from ..store.partitions import ensure_partitions

    store = await open_ledger(schema_required=False)
    try:
        applied = await store.migrate()
        await ensure_partitions(store)  # the daily partitions to a week ahead (Postgres)
    finally:
        await store.close()
    print(f"{store.description}: schema up to date" + (f" (applied {applied})" if applied else ""))
    return 0
