"""`tallygate billing export stripe|openmeter`, `billing status` and `billing set-customer`."""

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
    sub.add_parser("status", help="each export's cursor and its outbox (unsent, held, refused events)")
    c = sub.add_parser("set-customer", help="map a tenant to its Stripe customer (or --clear)")
    c.add_argument("tenant_id")
    c.add_argument("customer_id", nargs="?", help="cus_...")
    c.add_argument("--clear", action="store_true", help="remove the mapping (the tenant's events are then held)")


async def billing_command(args) -> int:
    if args.billing_command == "set-customer":
        return await _set_customer(args)
    if args.billing_command == "status":
        return await _status()
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
