"""The background look at unfinished batches: every TALLYGATE_BATCH_POLL_INTERVAL, the one
instance leading (the billing export's leader election, billing/db.py: a Postgres advisory
lock held by a connection of its own; on SQLite, one host, always the leader) retrieves each
unsettled batch from the upstream and records the finished ones (batches/settle.py). The
others stand by and take over when the leader's connection goes."""

from __future__ import annotations

import asyncio
import logging

from ..store.errors import StoreUnavailable
from .settle import BatchBilling
from .store import BatchStore

log = logging.getLogger("tallygate.batches")

LEADER_NAME = "batch-poller"  # the leader lock's name (billing/db.py try_lead)


async def poll_once(billing: BatchBilling, batches: BatchStore) -> int:
    """One look at every unsettled batch; the number of batches recorded."""
    recorded = 0
    for creator in await batches.unsettled():
        try:
            doc = await billing.fetch(creator.batch_id)
        except Exception as exc:  # the upstream unreachable: the next pass tries again
            log.warning("batch poll: upstream not reachable: %s", type(exc).__name__)
            return recorded
        if doc is None:
            continue
        task = billing.start(doc, creator)
        if task is not None and await task is not None:
            recorded += 1
    return recorded


async def poll_loop(billing: BatchBilling, batches: BatchStore, settings, interval: float) -> None:
    from ..billing.db import ExportDB, open_export_db

    loop = asyncio.get_running_loop()
    db: ExportDB | None = None
    was_leading = False
    try:
        while True:
            try:
                if db is None:
                    db = await loop.run_in_executor(None, open_export_db, settings)
                leading = await loop.run_in_executor(None, db.try_lead, LEADER_NAME)
                if leading != was_leading:
                    log.info("batch poller %s", "leads" if leading else "stands by")
                    was_leading = leading
                if leading:
                    await poll_once(billing, batches)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("batch poll skipped: %s", exc)
            except Exception as exc:  # the lock's connection lost: reconnect, contend again
                log.warning("batch poll failed: %s", str(exc).strip().splitlines()[0] if str(exc) else exc)
                if db is not None:
                    await loop.run_in_executor(None, _close, db)
                db, was_leading = None, False
            await asyncio.sleep(interval)
    finally:
        if db is not None:
            _close(db)


def _close(db) -> None:
    try:
        db.close()
    except Exception:
        log.debug("closing the batch poller's connection", exc_info=True)
