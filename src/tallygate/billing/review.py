"""Outbox events set aside for an operator: first offered to Stripe longer ago than
Stripe's identifier dedupe window, so sending them again could count them twice. The
operator checks Stripe (the customer's meter event summaries for the window, or the
dashboard) and decides: `--resend` (Stripe does not have it: sent by the next run, its
dedupe window starting afresh) or `--sent` (Stripe has it: marked sent, never resent)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .db import ExportDB


@dataclass(frozen=True)
class Held:
    identifier: str
    export: str
    tenant_id: str
    window_start: datetime
    event_name: str
    value: int
    customer_id: str | None
    first_attempt_at: datetime | None
    attempts: int


def needing_review(db: ExportDB) -> list[Held]:
    t = db.time
    return [
        Held(r[0], r[1], r[2], t(r[3]), r[4], int(r[5]), r[6], t(r[7]) if r[7] else None, int(r[8]))
        for r in db.fetch(
            "SELECT identifier, name, tenant_id, window_start, event_name, value, customer_id, first_attempt_at, "
            "attempts FROM billing_export_outbox WHERE sent_at IS NULL AND needs_review_at IS NOT NULL "
            "ORDER BY name, window_start, identifier"
        )
    ]


def decide(db: ExportDB, identifiers: list[str], resend: bool) -> list[str]:
    """Apply the operator's decision to those of `identifiers` that need review; returns
    the ones it applied to (the others are unknown or not waiting for review)."""
    p, tp = db.dialect.placeholder, db.dialect.time_param
    done = []
    with db.transaction():
        now = db.now()
        for ident in identifiers:
            if resend:
                sql = (
                    "UPDATE billing_export_outbox SET needs_review_at = NULL, first_attempt_at = NULL "
                    f"WHERE identifier = {p} AND sent_at IS NULL AND needs_review_at IS NOT NULL"
                )
                params: tuple = (ident,)
            else:  # kept: needs_review_at says it was settled by hand
                sql = (
                    f"UPDATE billing_export_outbox SET sent_at = {p}, last_error = 'marked sent by an operator' "
                    f"WHERE identifier = {p} AND sent_at IS NULL AND needs_review_at IS NOT NULL"
                )
                params = (tp(now), ident)
            if db.execute(sql, params):
                done.append(ident)
    return done
