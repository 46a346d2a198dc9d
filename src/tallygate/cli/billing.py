"""`tallygate billing export stripe|openmeter`, `billing status`, `billing review` and `billing set-customer`."""

from __future__ import annotations

import asyncio
import sys

from .. import settings as settings_module
from .db import CommandError, open_ledger


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="billing_command", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="export closed windows (Stripe) or requests (OpenMeter), exactly once")
    e.add_argument("target", choices=("stripe", "openmeter"))
    e.add_argument("--since", help="where a new export starts: 24h, 7d or an ISO time (default 35d back)")
    e.add_argument("--window", default="1h", help="Stripe: the window events sum over per tenant (default 1h)")
    e.add_argument("--dry-run", action="store_true", help="print what would be sent; send and save nothing")
    e.add_argument("--loop", action="store_true", help="keep exporting (leader-elected through the database)")
    e.add_argument("--interval", default="60s", help="--loop: time between runs (default 60s)")
    e.add_argument(
        "--settle",
        default=None,
        help="how old a ledger row must be to count (default $TALLYGATE_BILLING_SETTLE or 60s)",
    )
    e.add_argument("--batch", type=int, default=500, help="windows per transaction / OpenMeter events per request")
    sub.add_parser("status", help="each export's cursor and its outbox (unsent, held, refused, needing review)")
    r = sub.add_parser(
        "review",
        help="events first offered to Stripe past its 24-hour dedupe window: list them, or decide (--resend / --sent)",
    )
    how = r.add_mutually_exclusive_group()
    how.add_argument("--resend", action="store_true", help="Stripe does not have them: send them on the next run")
    how.add_argument("--sent", action="store_true", help="Stripe has them: mark them sent, never send them again")
    r.add_argument("identifiers", nargs="*", metavar="IDENTIFIER", help="outbox identifiers (with --resend/--sent)")
    c = sub.add_parser("set-customer", help="map a tenant to its Stripe customer (or --clear)")
    c.add_argument("tenant_id")
    c.add_argument("customer_id", nargs="?", help="cus_...")
    c.add_argument("--clear", action="store_true", help="remove the mapping (the tenant's events are then held)")


async def billing_command(args) -> int:
    if args.billing_command == "set-customer":
        return await _set_customer(args)
    if args.billing_command == "status":
        return await _status()
    if args.billing_command == "review":
        return await _review(args)
    import os

    from ..billing.config import ExportError, ExportOptions, duration_seconds, settle_seconds
    from ..billing.export import run_export
    from ..reports import ReportError, parse_since

    try:
        since = parse_since(args.since) if args.since else None
        opts = ExportOptions(
            window_seconds=duration_seconds(args.window, "--window"),
            since=since,
            settle_seconds=duration_seconds(args.settle, "--settle") if args.settle else settle_seconds(os.environ),
            dry_run=args.dry_run,
            batch=max(1, min(args.batch, 10_000)),
        )
        interval = duration_seconds(args.interval, "--interval")
    except (ExportError, ReportError) as exc:
        raise CommandError(str(exc)) from None
    store = await open_ledger()  # the schema must be in place (tallygate db init)
    await store.close()
    settings = settings_module.load()
    try:
        return await asyncio.to_thread(run_export, args.target, settings, opts, args.loop, float(interval))
    except ExportError as exc:  # a missing or bad setting (STRIPE_API_KEY, OPENMETER_URL, ...)
        raise CommandError(str(exc)) from None


async def _status() -> int:
    from ..billing.db import open_export_db
    from ..billing.export import status_lines

    store = await open_ledger()
    await store.close()

    def read() -> list[str]:
        db = open_export_db(settings_module.load())
        try:
            return status_lines(db)
        finally:
            db.close()

    sys.stdout.write("\n".join(await asyncio.to_thread(read)) + "\n")
    return 0


async def _review(args) -> int:
    from ..billing.db import open_export_db
    from ..billing.review import decide, needing_review

    deciding = args.resend or args.sent
    if deciding != bool(args.identifiers):
        raise CommandError("give --resend or --sent with the outbox identifiers (or neither, to list them)")
    store = await open_ledger()
    await store.close()

    def run() -> tuple[int, list[str]]:
        db = open_export_db(settings_module.load())
        try:
            if deciding:
                done = decide(db, args.identifiers, resend=args.resend)
                missing = [i for i in args.identifiers if i not in done]
                verb = "will be sent by the next run" if args.resend else "marked sent"
                lines = [f"{i}: {verb}" for i in done] + [f"{i}: not waiting for review" for i in missing]
                return (1 if missing else 0), lines
            held = needing_review(db)
            lines = [
                f"{h.identifier}  export {h.export}  tenant {h.tenant_id}  window {h.window_start.isoformat()}  "
                f"{h.event_name}={h.value}  customer {h.customer_id or '-'}  first offered "
                f"{h.first_attempt_at.isoformat() if h.first_attempt_at else '-'}  attempts {h.attempts}"
                for h in held
            ]
            if held:
                lines.append(
                    "check each in Stripe (the customer's meter event summaries for the window), then: "
                    "tallygate billing review --resend ID... (Stripe does not have it) or --sent ID... (it does)"
                )
            return 0, lines or ["no event needs review"]
        finally:
            db.close()

    status, lines = await asyncio.to_thread(run)
    sys.stdout.write("\n".join(lines) + "\n")
    return status


async def _set_customer(args) -> int:
    from ..tenants.model import InvalidInput, check_tenant, parse_stripe_customer
    from ..tenants.store import KeyStore

    if args.clear == (args.customer_id is not None):
        raise CommandError("give a Stripe customer id (cus_...) or --clear")
    try:
        tenant = check_tenant(args.tenant_id)
        customer = parse_stripe_customer(args.customer_id)
    except InvalidInput as exc:
        raise CommandError(str(exc)) from None
    store = await open_ledger()
    try:
        await KeyStore(store).set_stripe_customer(tenant, customer)
    finally:
        await store.close()
    sys.stdout.write(f"tenant {tenant}: stripe_customer_id {customer or 'cleared'}\n")
    return 0
