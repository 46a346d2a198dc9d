"""`tallygate billing export stripe`: closed windows -> outbox -> Stripe meter events.

Order of a run: lead (or stand by), send what an earlier run left unsent (a crash between
the outbox commit and Stripe's answer: the same identifiers again, which Stripe drops as
duplicates when it has them already, within its 24-hour dedupe window only: older first
attempts wait for an operator), then account the windows closed since, a batch of windows
per transaction, sending each batch's events once it committed. stripe_send puts them on
the wire (v1 per event, or the v2 stream 100 a call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ..money import usd_text
from .config import STRIPE_MAX_AGE_DAYS, ExportOptions, StripeConfig
from .db import ExportDB, Rollback
from .stripe_send import STREAM_BATCH, Marks, OutboxEvent, Sent, Undelivered
from .windows import (
    Plan,
    candidate_windows,
    exported_before,
    floor_time,
    load_state,
    plan_windows,
    save_cursor,
    save_state,
)

log = logging.getLogger("tallygate.billing")

# Stripe drops a repeated identifier within "a rolling period of at least 24 hours"; an
# event first offered to Stripe longer ago than RESEND_WITHIN is set aside for an operator
# instead of being sent again (an hour's margin for clocks and a call in flight).
DEDUPE_WINDOW = timedelta(hours=24)
RESEND_WITHIN = DEDUPE_WINDOW - timedelta(hours=1)


class _OutboxMarks(Marks):
    def __init__(self, db: ExportDB) -> None:
        self.db = db
        self.fresh: set[str] = set()  # first offered in this run: a refusal now says all there is

    def delivered(self, identifiers: list[str]) -> None:
        p, tp = self.db.dialect.placeholder, self.db.dialect.time_param
        at = tp(datetime.now(UTC))
        self.db.executemany(
            f"UPDATE billing_export_outbox SET sent_at = {p}, attempts = attempts + 1 WHERE identifier = {p}",
            [(at, ident) for ident in identifiers],
        )

    def refused(self, identifier: str, message: str) -> None:
        # a refusal is Stripe's answer that this call was not taken; when no earlier run
        # offered the event, Stripe does not have it and its first attempt is forgotten (an
        # earlier attempt that may have landed keeps its time)
        p = self.db.dialect.placeholder
        forget = ", first_attempt_at = NULL" if identifier in self.fresh else ""
        self.db.execute(
            f"UPDATE billing_export_outbox SET attempts = attempts + 1, last_error = {p}{forget} WHERE identifier = {p}",
            (message, identifier),
        )


def send_unsent(db: ExportDB, name: str, sender, sent: Sent) -> None:
    """Every unsent outbox row of the export, oldest window first, in calls of up to 100:
    each call's events are stamped with their first attempt before it (committed), and
    marked sent once Stripe took them. An event first offered more than RESEND_WITHIN ago
    is not sent again: it is marked for review (`tallygate billing review`)."""
    p, tp = db.dialect.placeholder, db.dialect.time_param
    now = db.now()
    customers = {r[0]: r[1] for r in db.fetch("SELECT tenant_id, stripe_customer_id FROM tallygate_tenants")}
    rows = db.fetch(
        "SELECT identifier, tenant_id, window_start, event_name, value, customer_id, first_attempt_at "
        f"FROM billing_export_outbox WHERE name = {p} AND sent_at IS NULL AND needs_review_at IS NULL "
        "ORDER BY window_start, identifier",
        (name,),
    )
    oldest = int((now - timedelta(days=STRIPE_MAX_AGE_DAYS) + timedelta(hours=1)).timestamp())
    ready: list[OutboxEvent] = []
    for ident, tenant, start, event_name, value, customer, first in rows:
        if customer is None:
            customer = customers.get(tenant)
            if customer is None:
                sent.held[tenant] = sent.held.get(tenant, 0) + 1
                continue
            db.execute(f"UPDATE billing_export_outbox SET customer_id = {p} WHERE identifier = {p}", (customer, ident))
        if first is not None and now - db.time(first) >= RESEND_WITHIN:
            db.execute(
                f"UPDATE billing_export_outbox SET needs_review_at = {p} WHERE identifier = {p}", (tp(now), ident)
            )
            sent.review.append(ident)
            log.warning(
                "meter event %s (tenant %s) needs review: first offered to Stripe at %s, past Stripe's 24-hour "
                "dedupe window; not sent again (tallygate billing review)",
                ident,
                tenant,
                db.time(first).isoformat(),
            )
            continue
        # the window's start, or the oldest time Stripe takes for a window held past 35 days
        timestamp = max(int(db.time(start).timestamp()), oldest)
        ready.append(OutboxEvent(ident, event_name, timestamp, customer, int(value), first is None))
    marks = _OutboxMarks(db)
    for i in range(0, len(ready), STREAM_BATCH):
        chunk = ready[i : i + STREAM_BATCH]
        fresh = [e.identifier for e in chunk if e.fresh]
        marks.fresh = set(fresh)
        db.executemany(
            f"UPDATE billing_export_outbox SET first_attempt_at = {p} WHERE identifier = {p}",
            [(tp(now), ident) for ident in fresh],
        )
        try:
            sender.send(chunk, marks, sent)
        except Undelivered as exc:
            # what Stripe certainly does not have (offered in no call, or refused whole) keeps
            # no first attempt from this run: its resend window starts when it is really sent
            forget = set(exc.not_landed) & set(fresh) | {e.identifier for e in ready[i + STREAM_BATCH :] if e.fresh}
            db.executemany(
                f"UPDATE billing_export_outbox SET first_attempt_at = NULL WHERE identifier = {p} AND sent_at IS NULL",
                [(ident,) for ident in sorted(forget)],
            )
            raise


@dataclass
class StripeRun:
    led: bool = True
    plan: Plan = field(default_factory=Plan)
    sent: Sent = field(default_factory=Sent)
    closed_before: datetime | None = None
    resumed: bool = False  # the export had a cursor: --since did not apply
    api: str = "v1"  # the meter event endpoint used (TALLYGATE_STRIPE_METER_API)


def export_stripe(db: ExportDB, cfg: StripeConfig, opts: ExportOptions, sender=None, name: str = "stripe") -> StripeRun:
    """One run. With opts.dry_run everything is planned in a transaction rolled back and
    nothing is sent (`sender`, stripe_send.make_sender's, is not needed)."""
    run = StripeRun(api=cfg.meter_api)
    if not db.try_lead(name):
        run.led = False
        return run
    if not opts.dry_run:
        send_unsent(db, name, sender, run.sent)
    try:
        with db.transaction():
            now = db.now()
            state = load_state(db, name, opts, now)
            run.resumed = not state.new
            horizon = now - timedelta(seconds=opts.settle_seconds)
            close = floor_time(horizon, state.window_seconds)
            if close <= state.since:
                close = state.since
            windows = candidate_windows(db, state, close, opts.settle_seconds)
            if opts.dry_run:
                plan_windows(db, name, state, windows, horizon, cfg.cost_event, cfg.tokens_event, run.plan, now)
                raise Rollback
    except Rollback:
        run.closed_before = close
        return run
    # a batch of windows per transaction, each batch sent once it committed
    for i in range(0, max(len(windows), 1), opts.batch):
        with db.transaction():
            plan_windows(
                db, name, state, windows[i : i + opts.batch], horizon, cfg.cost_event, cfg.tokens_event, run.plan, now
            )
            if i + opts.batch >= len(windows):  # the last batch moves the cursor
                state.closed_before = max(close, state.closed_before or close)
                state.scanned_to = horizon
                save_state(db, name, state, now)
                save_cursor(db, name, exported_before(db, state.closed_before, horizon), now)
        send_unsent(db, name, sender, run.sent)
    run.closed_before = state.closed_before
    return run


def report(run: StripeRun, opts: ExportOptions, write: Callable[[str], None] = print) -> None:
    if not run.led:
        write("another exporter leads this export (pg advisory lock held elsewhere): nothing done")
        return
    plan = run.plan
    if run.resumed and opts.since is not None:
        write("note: this export resumes from its cursor; --since applies only to a new export")
    mode = "dry run, nothing sent or saved: " if opts.dry_run else ""
    total = sum(plan.accounted.values(), Decimal(0))
    write(
        f"{mode}{plan.windows} window(s) looked at, {len(plan.events)} meter event(s) "
        f"{'would be written' if opts.dry_run else 'written'}, ${usd_text(total)} accounted; "
        f"closed before {run.closed_before.isoformat() if run.closed_before else '-'}"
    )
    if opts.dry_run:
        for e in plan.events:
            held = "" if e.customer_id else " (held: tenant has no stripe_customer_id)"
            write(f"  {e.identifier}  {e.event_name}={e.value}  customer={e.customer_id or '-'}{held}")
        return
    s = run.sent
    if run.api == "v2":
        write(
            f"sent {s.sent} in {s.calls} meter event stream call(s) ({s.sessions} session(s)), "
            f"429s waited out {s.rate_limited}, 5xx retried {s.server_errors}"
        )
    else:
        write(
            f"sent {s.sent}, already at Stripe {s.duplicates}, 429s waited out {s.rate_limited}, "
            f"5xx retried {s.server_errors}"
        )
    if s.review:
        write(
            f"needs review: {len(s.review)} event(s) first offered to Stripe more than "
            f"{int(RESEND_WITHIN.total_seconds() // 3600)}h ago, past Stripe's 24-hour dedupe window: not sent "
            "again, as Stripe could count them twice (tallygate billing review)"
        )
    for tenant, count in sorted(s.held.items()):
        write(
            f"held: tenant {tenant!r} has no Stripe customer: {count} event(s) wait in the outbox "
            f'(PUT /admin/tenants/{tenant} {{"stripe_customer_id": "cus_..."}})'
        )
    for ident, message in s.failed:
        write(f"refused: {ident}: {message}")
    for tenant, start in plan.shrunk:
        write(f"skipped: tenant {tenant!r}, window {start.isoformat()}: the ledger holds less than was exported")
