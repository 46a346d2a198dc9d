"""`tallygate billing export stripe`: closed windows -> outbox -> Stripe meter events.

Order of a run: lead (or stand by), send what an earlier run left unsent (a crash between
the outbox commit and Stripe's answer: the same identifiers again, which Stripe refuses as
duplicates when it has them already), then account the windows closed since, a batch of
windows per transaction, sending each batch's events once it committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ..money import usd_text
from .config import STRIPE_MAX_AGE_DAYS, ExportError, ExportOptions, StripeConfig
from .db import ExportDB, Rollback
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

RATE_LIMIT_RETRIES = 8
RATE_LIMIT_BACKOFF = 0.5  # seconds, doubled per retry, at most 30


@dataclass
class Sent:
    sent: int = 0
    duplicates: int = 0  # Stripe had the identifier already: delivered by an earlier attempt
    rate_limited: int = 0  # 429 answers waited out
    held: dict[str, int] = field(default_factory=dict)  # tenant without a Stripe customer -> events held
    failed: list[tuple[str, str]] = field(default_factory=list)  # (identifier, Stripe's message)


def stripe_client(cfg: StripeConfig):
    import stripe

    # the SDK retries connection errors and 5xx itself (with an idempotency key); 429s are ours
    return stripe.StripeClient(cfg.api_key, base_addresses={"api": cfg.api_base}, max_network_retries=2)


def _is_duplicate(exc) -> bool:
    message = (getattr(exc, "user_message", None) or str(exc) or "").lower()
    code = getattr(exc, "code", None)
    return code == "duplicate_meter_event" or ("already exists" in message and "identifier" in message)


def send_unsent(
    db: ExportDB, name: str, client, now: datetime, sent: Sent, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Every unsent outbox row of the export, oldest window first; each marked sent at once."""
    import stripe

    p, tp = db.dialect.placeholder, db.dialect.time_param
    customers = {r[0]: r[1] for r in db.fetch("SELECT tenant_id, stripe_customer_id FROM tallygate_tenants")}
    rows = db.fetch(
        "SELECT identifier, tenant_id, window_start, event_name, value, customer_id FROM billing_export_outbox "
        f"WHERE name = {p} AND sent_at IS NULL ORDER BY window_start, identifier",
        (name,),
    )
    oldest = int((now - timedelta(days=STRIPE_MAX_AGE_DAYS) + timedelta(hours=1)).timestamp())
    for ident, tenant, start, event_name, value, customer in rows:
        if customer is None:
            customer = customers.get(tenant)
            if customer is None:
                sent.held[tenant] = sent.held.get(tenant, 0) + 1
                continue
            db.execute(f"UPDATE billing_export_outbox SET customer_id = {p} WHERE identifier = {p}", (customer, ident))
        # the window's start, or the oldest time Stripe takes for a window held past 35 days
        timestamp = max(int(db.time(start).timestamp()), oldest)
        params = {
            "event_name": event_name,
            "identifier": ident,
            "timestamp": timestamp,
            "payload": {"stripe_customer_id": customer, "value": str(int(value))},
        }
        delay, delivered = RATE_LIMIT_BACKOFF, False
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                client.v1.billing.meter_events.create(params=params)
                sent.sent += 1
                delivered = True
                break
            except stripe.RateLimitError:
                if attempt == RATE_LIMIT_RETRIES:
                    raise ExportError(
                        f"Stripe kept answering 429 (rate limited) after {RATE_LIMIT_RETRIES} retries; "
                        "the events not sent stay in the outbox for the next run"
                    ) from None
                sent.rate_limited += 1
                sleep(delay)
                delay = min(delay * 2, 30.0)
            except stripe.InvalidRequestError as exc:
                if _is_duplicate(exc):
                    sent.duplicates += 1
                    delivered = True
                    break
                message = (exc.user_message or str(exc))[:500]
                db.execute(
                    f"UPDATE billing_export_outbox SET attempts = attempts + 1, last_error = {p} WHERE identifier = {p}",
                    (message, ident),
                )
                sent.failed.append((ident, message))
                log.error("Stripe refused meter event %s: %s", ident, message)
                break
            except (stripe.AuthenticationError, stripe.PermissionError) as exc:
                raise ExportError(f"Stripe refused the API key (STRIPE_API_KEY): {exc.user_message or exc}") from None
            except stripe.StripeError as exc:  # connection errors and 5xx the SDK's retries did not overcome
                raise ExportError(
                    f"Stripe is not reachable ({type(exc).__name__}: {exc.user_message or exc}); "
                    "the events not sent stay in the outbox for the next run"
                ) from None
        if not delivered:
            continue
        db.execute(
            f"UPDATE billing_export_outbox SET sent_at = {p}, attempts = attempts + 1 WHERE identifier = {p}",
            (tp(datetime.now(UTC)), ident),
        )


@dataclass
class StripeRun:
    led: bool = True
    plan: Plan = field(default_factory=Plan)
    sent: Sent = field(default_factory=Sent)
    closed_before: datetime | None = None
    resumed: bool = False  # the export had a cursor: --since did not apply


def export_stripe(db: ExportDB, cfg: StripeConfig, opts: ExportOptions, client=None, name: str = "stripe") -> StripeRun:
    """One run. With opts.dry_run everything is planned in a transaction rolled back and
    nothing is sent (`client` is not needed)."""
    run = StripeRun()
    if not db.try_lead(name):
        run.led = False
        return run
    if not opts.dry_run:
        send_unsent(db, name, client, db.now(), run.sent)
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
        send_unsent(db, name, client, now, run.sent)
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
    write(f"sent {s.sent}, already at Stripe {s.duplicates}, 429s waited out {s.rate_limited}")
    for tenant, count in sorted(s.held.items()):
        write(
            f"held: tenant {tenant!r} has no Stripe customer: {count} event(s) wait in the outbox "
            f'(PUT /admin/tenants/{tenant} {{"stripe_customer_id": "cus_..."}})'
        )
    for ident, message in s.failed:
        write(f"refused: {ident}: {message}")
    for tenant, start in plan.shrunk:
        write(f"skipped: tenant {tenant!r}, window {start.isoformat()}: the ledger holds less than was exported")
