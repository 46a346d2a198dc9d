"""The console's billing page: the billing exports' status (the figures `tallygate billing
status` prints, read by the same function, billing.export.export_status) and the last
reconciliation runs (`tallygate reconcile` with TALLYGATE_RECONCILE_DIR set, read by
reconcile.runs.recent_runs).

The exports' tables are read on a connection of their own (billing/db.py, synchronous,
in a worker thread), as the CLI does: this page is opened now and then, never on the
request path."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import psycopg

from ..billing.db import open_export_db
from ..billing.export import export_status
from ..reconcile.runs import recent_runs
from ..store import StoreUnavailable


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Status:
    def __init__(self, settings) -> None:
        self.settings = settings

    def _exports(self, tenant: str | None) -> list[dict]:
        try:
            db = open_export_db(self.settings)
            try:
                return export_status(db, tenant)
            finally:
                db.close()
        except (psycopg.OperationalError, sqlite3.OperationalError) as exc:  # not reachable: a 503, not a 500
            raise StoreUnavailable(type(exc).__name__) from None

    async def billing(self, tenant: str | None) -> dict:
        """Every export's cursor and outbox; a tenant's session sees its own events only."""
        rows = await asyncio.to_thread(self._exports, tenant)
        data = [{**r, **{k: _iso(r[k]) for k in ("since", "closed_before", "scanned_to", "updated_at")}} for r in rows]
        return {"object": "list", "tenant_id": tenant, "data": data}

    async def reconciliation(self) -> dict:
        """The newest reconciliation runs (master key's session only: they name upstream keys)."""
        return {"object": "list", **await asyncio.to_thread(recent_runs, self.settings.reconcile_dir)}
