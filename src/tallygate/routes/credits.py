"""Prepaid credits over HTTP: a tenant's own balance (`GET /v1/balance`) and the admin API's
top-ups, adjustments and entries (`/admin/tenants/{tenant_id}/credits`)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from ..credits.model import NANO, InvalidCredit, parse_credit
from ..credits.store import CreditConflict, CreditStore
from ..errors import GatewayError, bad_request, unavailable
from ..http import json_object, read_body, send_json
from ..money import usd_text
from ..store import StoreUnavailable
from ..tenants.cache import KeyCache

BODY_LIMIT = 1 << 16


def _iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


class Credits:
    def __init__(self, auth, credits: CreditStore, keys: KeyCache, guard, ledger_ready: Callable[[], bool]) -> None:
        self.auth = auth
        self.credits = credits
        self.keys = keys  # this instance's cache: a top-up here is in force here at once
        self.guard = guard  # its counters hold what requests in flight reserved
        self.ledger_ready = ledger_ready

    async def balance_doc(self, tenant_id: str) -> dict:
        """The tenant's balance: credited (its entries) minus spent (the usage ledger's cost
        since it became prepaid), both exact; reserved: what requests in flight hold in the
        counters beyond the ledger's spend (nano-dollars)."""
        account = await self.credits.account(tenant_id)
        doc: dict = {"object": "balance", "tenant_id": tenant_id, "prepaid": account is not None}
        if account is None:
            return {
                **doc,
                "prepaid_since": None,
                "credited_usd": None,
                "spent_usd": None,
                "balance_usd": None,
                "reserved_usd": None,
                "available_usd": None,
            }
        spent = await self.credits.spent(tenant_id, account.prepaid_since)
        balance = account.credited - spent
        reserved: Decimal | None = None
        try:
            self.guard.prepare_account(account)
            counted = await self.guard.counters.value(account.counter_key)
            spent_nanos = int((spent * NANO).to_integral_value(rounding="ROUND_CEILING"))
            counted = spent_nanos if counted is None else counted  # no request since the counter went
            reserved = Decimal(max(0, counted - spent_nanos)) / NANO
        except Exception:  # the counters are down: the ledger's figures still stand
            reserved = None
        return {
            **doc,
            "prepaid_since": _iso(account.prepaid_since),
            "credited_usd": usd_text(account.credited),
            "spent_usd": usd_text(spent),
            "balance_usd": usd_text(balance),
            "reserved_usd": None if reserved is None else usd_text(reserved),
            "available_usd": None if reserved is None else usd_text(balance - reserved),
        }

    def _require_ledger(self) -> None:
        if not self.ledger_ready():
            raise unavailable("The database is not reachable. Retry shortly.", "ledger_unavailable")

    async def balance(self, scope, receive, send) -> None:
        """GET /v1/balance: the caller's tenant (a tenant key, or the gateway token with X-Tenant-ID)."""
        headers = dict(scope["headers"])
        principal = self.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
        self._require_ledger()
        try:
            doc = await self.balance_doc(principal.tenant_id)
        except StoreUnavailable:
            raise unavailable("The database is not reachable. Retry shortly.", "ledger_unavailable") from None
        await send_json(send, 200, doc)

    async def admin(self, scope, receive, send, method: bytes, tenant_id: str) -> None:
        """/admin/tenants/{tenant_id}/credits (the master key is already checked)."""
        from ..tenants.model import InvalidInput, check_tenant

        try:
            check_tenant(tenant_id)
        except InvalidInput as exc:
            raise bad_request(str(exc), "invalid_parameter") from None
        self._require_ledger()
        if method == b"GET":
            entries = await self.credits.entries(tenant_id)
            await send_json(
                send,
                200,
                {
                    "object": "list",
                    "tenant_id": tenant_id,
                    "data": [e.as_json() for e in entries],
                    "balance": await self.balance_doc(tenant_id),
                },
            )
            return
        if method != b"POST":
            raise GatewayError(
                405, "Method not allowed.", "invalid_request_error", "method_not_allowed", [(b"allow", b"GET, POST")]
            )
        doc = json_object(await read_body(receive, BODY_LIMIT, dict(scope["headers"])))
        try:
            amount, reference, note = parse_credit(doc)
        except InvalidCredit as exc:
            raise bad_request(str(exc), "invalid_parameter") from None
        try:
            entry, created = await self.credits.add(tenant_id, amount, reference, note)
        except CreditConflict as exc:
            raise GatewayError(409, str(exc), "invalid_request_error", "credit_conflict") from None
        account = await self.credits.account(tenant_id)
        if account is not None:
            self.keys.set_prepaid(account)  # in force here at once, elsewhere on refresh
        await send_json(
            send, 201 if created else 200, {**entry.as_json(), "balance": await self.balance_doc(tenant_id)}
        )
