"""`tallygate keys create|list|revoke`: tenant keys from the shell."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from ..tenants.model import InvalidInput, check_tenant, parse_limits, parse_time
from ..tenants.store import KeyStore
from .db import open_ledger


async def keys_command(args) -> int:
    store = await open_ledger()
    try:
        return await _keys(KeyStore(store), args)
    finally:
        await store.close()


async def _keys(ks: KeyStore, args) -> int:
    if args.keys_command == "create":
        doc = {
            "rpm_limit": args.rpm,
            "tpm_limit": args.tpm,
            "budget_usd": args.budget_usd,
            "budget_period": args.budget_period,
            "models": [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
        }
        try:
            tenant = check_tenant(args.tenant_id)
            limits = parse_limits(doc)
            expires = parse_time(args.expires_at, "--expires-at")
        except InvalidInput as exc:
            sys.stderr.write(f"tallygate: {exc}\n")
            return 1
        secret, key = await ks.create_key(tenant, limits, args.name, expires)
        print(
            f"key_id: {key.key_id}\ntenant: {tenant}\nkey:    {secret}\n\nThe key is shown only now; store it safely."
        )
        return 0
    if args.keys_command == "list":
        keys = await ks.keys(args.tenant)
        if not keys:
            print("no keys")
            return 0
        print(f"{'key_id':22}  {'prefix':12}  {'tenant':20}  {'state':8}  limits")
        for k in keys:
            lim = k.limits
            parts = [
                f"rpm={lim.rpm_limit}" if lim.rpm_limit else "",
                f"tpm={lim.tpm_limit}" if lim.tpm_limit else "",
                f"budget=${lim.budget_usd}/{lim.budget_period}" if lim.budget_usd is not None else "",
                f"models={','.join(lim.models)}" if lim.models else "",
            ]
            state = (
                "revoked"
                if k.revoked_at
                else ("expired" if k.expires_at and k.expires_at <= datetime.now(UTC) else "active")
            )
            print(f"{k.key_id:22}  {k.key_prefix:12}  {k.tenant_id:20}  {state:8}  {' '.join(p for p in parts if p)}")
        return 0
    if args.keys_command == "revoke":
        if not await ks.revoke_key(args.key_id):
            sys.stderr.write(f"tallygate: no key {args.key_id}\n")
            return 1
        print(f"revoked {args.key_id}")
        return 0
    return 2
