"""The `tallygate` command: serve, db, ledger, usage, keys, credits, billing, deploy, fake-upstream.

This module parses the arguments; the commands that use the ledger database live in
db.py, ledger.py, usage.py, keys.py, credits.py and reconcile.py, imported only when run."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .. import __version__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; `command` (the first argument) lets `serve` skip importing
    what only other commands need (start-up time matters on Cloud Run)."""
    parser = argparse.ArgumentParser(
        prog="tallygate", description="A multi-tenant, metering OpenAI-compatible gateway."
    )
    parser.add_argument("--version", action="version", version=f"tallygate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=None, help="default: $PORT or 8080")
    p.add_argument("--workers", type=int, default=1, help="processes (one per core)")
    p.add_argument(
        "--dev", action="store_true", help="generate and print a gateway token when PROXY_GATEWAY_TOKEN is not set"
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="start the built-in fake upstream and send requests there (no OpenAI key needed)",
    )

    p = sub.add_parser("db", help="ledger database")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    dbsub.add_parser("init", help="apply the schema (idempotent)")
    dbsub.add_parser("schema", help="print the Postgres schema (db/schema.sql)")

    p = sub.add_parser("ledger", help="ledger maintenance")
    lsub = p.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    r = lsub.add_parser("replay", help="re-import records from JSON log lines (idempotent)")
    r.add_argument("files", nargs="+", help="files of JSON lines ('-' for stdin)")
    r.add_argument("--batch-size", type=int, default=1000)

    p = sub.add_parser("usage", help="usage report from the ledger")
    p.add_argument("--since", default="24h", help="24h, 7d, 30m or an ISO time (default 24h)")
    p.add_argument("--until", default=None, help="ISO time (default now)")
    p.add_argument("--tenant", default=None)
    p.add_argument("--key", default=None, help="api key id")
    p.add_argument("--by", default="tenant", help="comma list of tenant,model,day,key,endpoint,status")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = sub.add_parser("reconcile", help="the ledger against the provider's usage and cost reports")
    if command in (None, "reconcile", "-h", "--help"):
        from .reconcile import add_arguments as add_reconcile_arguments

        add_reconcile_arguments(p)

    p = sub.add_parser("keys", help="tenant keys")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kc = ksub.add_parser("create", help="create a key (printed once)")
    kc.add_argument("tenant_id")
    kc.add_argument("--name")
    kc.add_argument("--rpm", type=int)
    kc.add_argument("--tpm", type=int)
    kc.add_argument("--budget-usd")
    kc.add_argument("--budget-period", choices=("day", "month", "total"), default="month")
    kc.add_argument("--models", help="comma list of allowed models")
    kc.add_argument("--expires-at", help="ISO time")
    kl = ksub.add_parser("list", help="list keys (no secrets)")
    kl.add_argument("--tenant")
    kr = ksub.add_parser("revoke", help="revoke a key")
    kr.add_argument("key_id")

    p = sub.add_parser("credits", help="prepaid credits of a tenant")
    csub = p.add_subparsers(dest="credits_command", metavar="ACTION", required=True)
    ct = csub.add_parser(
        "topup", help="add credit (a negative amount: an adjustment); the first top-up makes the tenant prepaid"
    )
    ct.add_argument("tenant_id")
    ct.add_argument("amount_usd", help="exact decimal USD, e.g. 25 or -1.50")
    ct.add_argument("--reference", required=True, help="idempotency reference (a payment id): once per tenant")
    ct.add_argument("--note")
    csub.add_parser("list", help="list the credit entries").add_argument("tenant_id")
    csub.add_parser("balance", help="credited, spent and balance").add_argument("tenant_id")

    p = sub.add_parser("billing", help="billing exports (Stripe meter events, OpenMeter)")
    if command in (None, "billing", "-h", "--help"):
        from .billing import add_arguments as billing_arguments

        billing_arguments(p)

    p = sub.add_parser("deploy", help="deploy to a cloud")
    dsub = p.add_subparsers(dest="deploy_target", metavar="TARGET", required=True)
    p = dsub.add_parser("cloudrun", help="Google Cloud Run: build, deploy, observability")
    if command in (None, "deploy", "-h", "--help"):
        from ..deploy import cloudrun

        cloudrun.add_arguments(p)

    p = sub.add_parser("fake-upstream", help="a fake OpenAI upstream for demos and tests")
    if command in (None, "fake-upstream", "-h", "--help"):
        from ..fake_upstream import add_arguments

        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    cmd = args.command
    if cmd is None:
        parser.print_help()
        return 2
    if cmd == "serve":
        from ..server import serve

        return serve(args.host, args.port, args.workers, args.dev, args.demo)
    if cmd == "fake-upstream":
        from ..fake_upstream import run

        return run(args)
    if cmd == "deploy":
        from ..deploy import cloudrun

        return cloudrun.run(args)
    from .db import CommandError

    try:
        return asyncio.run(_run_database_command(args))
    except CommandError as exc:
        sys.stderr.write(f"tallygate: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


async def _run_database_command(args) -> int:
    from ..store import StoreUnavailable
    from .db import CommandError

    try:
        if args.command == "db":
            from .db import db_command

            return await db_command(args)
        if args.command == "ledger":
            from .ledger import replay

            return await replay(args.files, args.batch_size)
        if args.command == "usage":
            from .usage import usage_command

            return await usage_command(args)
        if args.command == "reconcile":
            from .reconcile import reconcile_command

            return await reconcile_command(args)
        if args.command == "keys":
            from .keys import keys_command

            return await keys_command(args)
        if args.command == "credits":
            from .credits import credits_command

            return await credits_command(args)
        if args.command == "billing":
            from .billing import billing_command

            return await billing_command(args)
    except StoreUnavailable as exc:  # the database went away mid-command
        raise CommandError(f"cannot use the ledger: {exc}") from None
    raise CommandError(f"unknown command {args.command}")
