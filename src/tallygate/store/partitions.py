"""Ledger maintenance: daily partitions created ahead, and retention.

Postgres: `litellm_usage` is partitioned by UTC day (`litellm_usage_pYYYYMMDD`, plus a
DEFAULT partition so a row of any date lands); `tallygate_ledger_partitions_ahead()`
(migration 0004) creates yesterday's to a week ahead. Retention drops whole daily
partitions older than TALLYGATE_LEDGER_RETENTION, never one holding a row a billing
export has not yet passed (`ledger_export_cursors`). SQLite has no partitions: retention
deletes the rows instead. The hourly rollups are kept.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .dialect import dialect_of
from .errors import StoreUnavailable

log = logging.getLogger("tallygate.store")

MAINTENANCE_LOCK = 7301266  # pg_try_advisory_lock key: one of many instances maintains the ledger
MAINTENANCE_INTERVAL = 3600.0  # seconds between maintenance passes in the gateway
FOLD_INTERVAL = 2.0  # seconds between folds of the writers' rollup deltas (readers add the unfolded ones)
DAYS_AHEAD = 7
_PARTITION = re.compile(r"litellm_usage_p(\d{8})")


@dataclass
class Retention:
    cutoff: datetime  # rows before it are past the retention period
    keep_from: datetime  # ... and before this too, once every billing export passed them
    export_cursor: datetime | None  # the least exported_before of the export cursors (None: no export)
    dropped: list[str] = field(default_factory=list)  # partitions dropped (or, dry run, to drop)
    held_for_export: list[str] = field(default_factory=list)  # past retention, not yet exported
    rows_deleted: int = 0  # rows deleted one by one (SQLite; Postgres: the DEFAULT partition's)


async def ensure_partitions(store, days_ahead: int = DAYS_AHEAD) -> int:
    """Create the daily partitions from yesterday to `days_ahead` days ahead; how many were new."""
    if store.dialect != "postgres":
        return 0
    # a short lock wait: DDL queued behind a long report would hold the writers' inserts back
    # behind it; a pass that times out is retried by the next (a week ahead leaves time)
    _, rows = await store.transaction(
        [("SET LOCAL lock_timeout = '2s'", ()), ("SELECT tallygate_ledger_partitions_ahead(%s)", (days_ahead,))]
    )
    return int(rows[0][0])


async def daily_partitions(store) -> list[tuple[str, datetime]]:
    """(name, first instant) of each daily partition, oldest first (Postgres)."""
    rows = await store.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'litellm_usage'::regclass"
    )
    out = []
    for (name,) in rows:
        m = _PARTITION.fullmatch(name)
        if m:
            out.append((name, datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC)))
    return sorted(out, key=lambda p: p[1])


async def apply_retention(store, days: int, now: datetime | None = None, dry_run: bool = False) -> Retention:
    dialect = dialect_of(store)
    ph = dialect.placeholder
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=days)
    least = (await store.fetch("SELECT min(exported_before) FROM ledger_export_cursors"))[0][0]
    cursor = dialect.time_value(least)
    keep_from = cutoff if cursor is None else min(cutoff, cursor)
    result = Retention(cutoff, keep_from, cursor)
    if dialect.name == "postgres":
        for name, day in await daily_partitions(store):
            end = day + timedelta(days=1)
            if end > cutoff:
                break
            if end > keep_from:
                result.held_for_export.append(name)
                continue
            result.dropped.append(name)
            if not dry_run:
                # a short lock wait: the writers' inserts queue behind the DROP's lock
                await store.transaction([("SET LOCAL lock_timeout = '5s'", []), (f'DROP TABLE "{name}"', [])])
        table = "litellm_usage_default"  # rows of days that had no partition when written
    else:
        table = "litellm_usage"
    where, params = f"created_at < {ph}", [dialect.time_param(keep_from)]
    if dry_run:
        result.rows_deleted = int((await store.fetch(f"SELECT count(*) FROM {table} WHERE {where}", params))[0][0])
        return result
    result.rows_deleted = await store.execute(f"DELETE FROM {table} WHERE {where}", params)
    if result.dropped or result.rows_deleted:
        # no row before keep_from is left: `ledger rebuild-rollups` keeps the rollups before it
        await _remember_retained_from(store, keep_from)
    return result


async def _remember_retained_from(store, start: datetime) -> None:
    dialect = dialect_of(store)
    ph = dialect.placeholder
    from .rollups import retained_from

    current = await retained_from(store)
    if current is not None and current >= start:
        return
    await store.execute(
        f"INSERT INTO tallygate_ledger_state (name, value) VALUES ('retained_from', {ph}) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [dialect.time_param(start)],
    )


async def maintain(store, retention_days: int | None) -> dict | None:
    """One maintenance pass, if no other instance is doing one (Postgres); None: skipped."""
    if store.dialect != "postgres":
        return None
    async with store.try_lock(MAINTENANCE_LOCK) as got:
        if not got:
            return None
        made = await ensure_partitions(store)
        out: dict = {"partitions_created": made}
        from .rollups import seal_days

        await seal_days(store)  # yesterday's hourly sums into the daily ones
        if retention_days is not None:
            r = await apply_retention(store, retention_days)
            out.update(partitions_dropped=r.dropped, held_for_export=r.held_for_export)
        return out


async def maintenance_loop(
    store, retention_days: int | None, interval: float = MAINTENANCE_INTERVAL, fold_interval: float = FOLD_INTERVAL
) -> None:
    """The gateway's background pass (off the request path): the writers' rollup deltas
    folded every `fold_interval`, partitions, sealing and retention every `interval`.
    Errors are logged and retried next time."""
    from .rollups import fold_deltas

    next_pass = 0.0
    while True:
        try:
            if time.monotonic() >= next_pass:
                next_pass = time.monotonic() + interval
                done = await maintain(store, retention_days)
                if done and (done.get("partitions_created") or done.get("partitions_dropped")):
                    log.info("ledger maintenance", extra={"fields": done})
            await fold_deltas(store)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            log.warning("ledger maintenance skipped: %s", exc)
        except Exception as exc:  # a lock timeout, say: the next pass tries again
            log.warning("ledger maintenance failed: %s", str(exc).strip().splitlines()[0] if str(exc) else exc)
        await asyncio.sleep(fold_interval)
