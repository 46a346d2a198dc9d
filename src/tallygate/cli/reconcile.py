"""`tallygate reconcile openai|anthropic --day YYYY-MM-DD`: the ledger against the
provider's usage and cost reports (src/tallygate/reconcile/, docs/reconciliation.md).

Exit status: 0 when every difference is within the tolerance, 3 when one is not, 1 on
an error (no admin key, the provider's API refused, bad arguments)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta

import orjson

from .db import CommandError, open_ledger

EXIT_DIFFERENCES = 3
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
BASE_URL_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
ADMIN_KEY_ENV = {"openai": "OPENAI_ADMIN_KEY", "anthropic": "ANTHROPIC_ADMIN_KEY"}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="reconcile_provider", metavar="PROVIDER", required=True)
    for name, what in (("openai", "OpenAI's Usage and Costs APIs"), ("anthropic", "Anthropic's usage and cost report")):
        r = sub.add_parser(name, help=f"the ledger against {what}")
        r.add_argument("--day", required=True, help="the UTC day, YYYY-MM-DD")
        r.add_argument(
            "--base-url", help=f"the provider's API (default ${BASE_URL_ENV[name]} or {DEFAULT_BASE_URLS[name]})"
        )
        r.add_argument("--keys", help="TOML mapping provider keys/projects/workspaces to routes and tenants")
        r.add_argument("--routes", help="the gateway's routes file (default $TALLYGATE_CONFIG)")
        r.add_argument(
            "--json",
            dest="json_file",
            help="also write the comparison as JSON to this file ('-': stdout, the table to stderr)",
        )
        r.add_argument("--tolerance", default="1%", help="relative difference allowed (default 1%%)")
        if name == "openai":
            r.add_argument(
                "--costs-by-key",
                action="store_true",
                help="compare dollars per API key (Costs API grouped by api_key_id), not per project",
            )
        r.add_argument("--floor-requests", type=int, default=0, help="request differences up to this are ignored")
        r.add_argument("--floor-tokens", type=int, default=0, help="token differences up to this are ignored")
        r.add_argument("--floor-usd", default="0.01", help="dollar differences up to this are ignored (default 0.01)")


def _day(text: str) -> tuple[datetime, datetime]:
    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CommandError(f"--day: not a day: {text!r} (use YYYY-MM-DD, a UTC day)") from None
    return day, day + timedelta(days=1)


def _limits(args):
    from decimal import Decimal, InvalidOperation

    from ..reconcile.compare import Limits, ToleranceError, parse_tolerance

    try:
        tolerance = parse_tolerance(args.tolerance)
    except ToleranceError as exc:
        raise CommandError(f"--tolerance: {exc}") from None
    try:
        floor_usd = Decimal(args.floor_usd)
    except InvalidOperation:
        floor_usd = Decimal("NaN")
    if not floor_usd.is_finite() or floor_usd < 0 or args.floor_requests < 0 or args.floor_tokens < 0:
        raise CommandError("the floors must be numbers of zero or more")
    return Limits(tolerance, args.floor_requests, args.floor_tokens, floor_usd)


async def reconcile_command(args) -> int:
    from ..reconcile.admin_api import AdminApi, AdminApiError
    from ..reconcile.compare import as_json, compare, format_table
    from ..reconcile.keymap import KeyMapError, load_keymap
    from ..reconcile.ledger import ledger_figures
    from ..reconcile.providers import ANTHROPIC_VERSION, anthropic_report, openai_report

    provider = args.reconcile_provider
    start, end = _day(args.day)
    limits = _limits(args)
    admin_key = os.environ.get(ADMIN_KEY_ENV[provider], "").strip()
    if not admin_key:
        raise CommandError(f"set {ADMIN_KEY_ENV[provider]} to an admin key of the organization")
    base_url = args.base_url or os.environ.get(BASE_URL_ENV[provider]) or DEFAULT_BASE_URLS[provider]
    if not base_url.startswith(("http://", "https://")):
        raise CommandError(f"the base URL must start with http:// or https://: {base_url!r}")
    if provider == "anthropic":
        # the SDK's ANTHROPIC_BASE_URL has no /v1 (the paths carry it); accept one given anyway
        base_url = base_url.rstrip("/").removesuffix("/v1")
    try:
        keymap = load_keymap(args.keys, args.routes or os.environ.get("TALLYGATE_CONFIG"))
    except KeyMapError as exc:
        raise CommandError(str(exc)) from None
    now = datetime.now(UTC)
    if end > now - timedelta(hours=1):
        sys.stderr.write(
            f"tallygate: {args.day} ended less than an hour ago (or has not ended): "
            "the provider's reports lag, expect differences\n"
        )

    store = await open_ledger()
    try:
        ledger = await ledger_figures(store, provider, start, end, keymap)
    finally:
        await store.close()

    costs_by_key = provider == "openai" and args.costs_by_key
    if provider == "openai":
        headers = {"Authorization": f"Bearer {admin_key}"}
    else:
        headers = {"x-api-key": admin_key, "anthropic-version": ANTHROPIC_VERSION}
    try:
        async with AdminApi(base_url, headers) as api:
            if provider == "openai":
                report = await openai_report(api, start, end, keymap, costs_by_key)
            else:
                report = await anthropic_report(api, start, end, keymap)
    except AdminApiError as exc:
        raise CommandError(f"{provider}: {exc}") from None

    rows = compare(ledger, report, keymap, limits, costs_by_key)
    doc = as_json(provider, args.day, rows, limits, report)
    # with the JSON on stdout the table goes to stderr, so the JSON can be piped on as it is
    table = sys.stderr if args.json_file == "-" else sys.stdout
    over = [r for r in rows if r.over]
    table.write(
        f"{provider} {args.day} (UTC): ledger against the provider, tolerance {doc['tolerance_percent']}%\n\n"
        + format_table(rows)
        + (f"\n\n{len(over)} group(s) over the tolerance\n" if over else "\n\nwithin the tolerance\n")
    )
    if args.json_file:
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        if args.json_file == "-":
            sys.stdout.write(data.decode())
        else:
            try:
                with open(args.json_file, "wb") as fh:
                    fh.write(data)
            except OSError as exc:
                raise CommandError(f"--json: cannot write {args.json_file}: {exc.strerror}") from None
    status = EXIT_DIFFERENCES if over else 0
    _record(doc, status)
    return status


def _record(doc: dict, status: int) -> None:
    """Keep the run where the console reads it ($TALLYGATE_RECONCILE_DIR, reconcile/runs.py)."""
    from ..reconcile.runs import RECONCILE_DIR_ENV, RunsError, record_run

    directory = os.environ.get(RECONCILE_DIR_ENV, "").strip()
    if directory:
        try:
            record_run(directory, doc, status)
        except RunsError as exc:
            raise CommandError(str(exc)) from None
