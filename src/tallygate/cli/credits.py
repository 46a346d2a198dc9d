"""`tallygate credits topup|list|balance`: prepaid credits from the shell.

A top-up written here reaches every running gateway within TALLYGATE_KEYS_REFRESH."""

from __future__ import annotations

import sys

from ..credits.model import InvalidCredit, parse_credit
from ..credits.store import CreditConflict, CreditStore
from ..money import usd_text
from ..tenants.model import InvalidInput, check_tenant
from .db import open_ledger


async def credits_command(args) -> int:
    store = await open_ledger()
    try:
        return await _credits(CreditStore(store), args)
    finally:
        await store.close()


async def _credits(cs: CreditStore, args) -> int:
    try:
        tenant = check_tenant(args.tenant_id)
    except InvalidInput as exc:
        sys.stderr.write(f"tallygate: {exc}\n")
        return 1
    if args.credits_command == "topup":
        doc = {"amount_usd": args.amount_usd, "reference": args.reference}
        if args.note is not None:
            doc["note"] = args.note
        try:
            amount, reference, note = parse_credit(doc)
            entry, created = await cs.add(tenant, amount, reference, note)
        except (InvalidCredit, CreditConflict) as exc:
            sys.stderr.write(f"tallygate: {exc}\n")
            return 1
        state = "added" if created else "already recorded (same reference), nothing added"
        print(f"{entry.kind} {entry.entry_id}: {usd_text(entry.amount_usd)} USD for {tenant}, {state}")
        return await _balance(cs, tenant)
    if args.credits_command == "list":
        entries = await cs.entries(tenant)
        if not entries:
            print(f"no credit entries for {tenant}")
            return 0
        print(f"{'id':20}  {'created_at':27}  {'kind':10}  {'amount_usd':>20}  reference")
        for e in entries:
            when = e.created_at.isoformat().replace("+00:00", "Z")
            print(f"{e.entry_id:20}  {when:27}  {e.kind:10}  {usd_text(e.amount_usd):>20}  {e.reference}")
        return 0
    if args.credits_command == "balance":
        return await _balance(cs, tenant)
    return 2


async def _balance(cs: CreditStore, tenant: str) -> int:
    account = await cs.account(tenant)
    if account is None:
        print(f"{tenant} is postpaid (no top-up yet)")
        return 0
    spent = await cs.spent(tenant, account.prepaid_since)
    print(
        f"tenant:        {tenant}\nprepaid_since: {account.prepaid_since.isoformat().replace('+00:00', 'Z')}\n"
        f"credited_usd:  {usd_text(account.credited)}\nspent_usd:     {usd_text(spent)}\n"
        f"balance_usd:   {usd_text(account.credited - spent)}"
    )
    return 0
