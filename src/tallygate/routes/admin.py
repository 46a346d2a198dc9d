"""The admin API (master key only) and a tenant key's own usage (`/v1/usage`)."""

from __future__ import annotations

from collections.abc import Callable

from ..auth import Authenticator
from ..errors import GatewayError, bad_request, not_found, unavailable
from ..http import json_object, query_params, read_body, send_json
from ..reports import ReportError, parse_group_by, parse_since, parse_time, usage_report
from ..store import StoreUnavailable
from ..tenants.cache import KeyCache
from ..tenants.store import KeyStore

ADMIN_BODY_LIMIT = 1 << 20


def ledger_unavailable() -> GatewayError:
    return unavailable("The database is not reachable. Retry shortly.", "ledger_unavailable")


class Admin:
    def __init__(
        self,
        auth: Authenticator,
        keystore: KeyStore,
        keys: KeyCache,
        store,
        ledger_ready: Callable[[], bool],
        credits=None,
    ) -> None:
        self.credits = credits  # routes/credits.py: /admin/tenants/{tenant_id}/credits
        self.auth = auth
        self.keystore = keystore  # the keys and tenants in the database
        self.keys = keys  # this instance's cache of them: changes here take effect at once
        self.store = store  # for the usage reports
        self.ledger_ready = ledger_ready

    def require_master(self, scope) -> None:
        self.auth.require_master(dict(scope["headers"]).get(b"authorization"), "the admin API")

    async def handle(self, scope, receive, send, method: bytes, path: bytes) -> None:
        """Every endpoint here reads or writes the database: while it is down, a JSON 503
        within the store's wait bound (TALLYGATE_DB_TIMEOUT), never a hang or a 500."""
        try:
            await self._handle(scope, receive, send, method, path)
        except StoreUnavailable:
            raise ledger_unavailable() from None

    async def _handle(self, scope, receive, send, method: bytes, path: bytes) -> None:
        if path == b"/v1/usage" and method == b"GET":
            headers = dict(scope["headers"])
            principal = self.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
            params = query_params(scope)
            params.pop("tenant_id", None)
            rows = await self._usage(
                params, tenant=principal.tenant_id, key=principal.key_id if principal.key_id else None
            )
            await send_json(send, 200, {"object": "list", "tenant_id": principal.tenant_id, "data": rows})
            return
        self.require_master(scope)
        self._require_ledger()
        if path == b"/admin/usage" and method == b"GET":
            params = query_params(scope)
            rows = await self._usage(
                params, tenant=params.get("tenant_id") or None, key=params.get("api_key_id") or None
            )
            await send_json(send, 200, {"object": "list", "data": rows})
            return
        if path == b"/admin/keys":
            if method == b"POST":
                await self._create_key(dict(scope["headers"]), receive, send)
                return
            if method == b"GET":
                params = query_params(scope)
                keys = await self.keystore.keys(params.get("tenant_id") or None)
                await send_json(send, 200, {"object": "list", "data": [k.as_json() for k in keys]})
                return
            raise _method_not_allowed(b"GET, POST")
        if path.startswith(b"/admin/keys/"):
            if method != b"DELETE":
                raise _method_not_allowed(b"DELETE")
            key_id = path[len(b"/admin/keys/") :].decode("latin-1")
            if not await self.keystore.revoke_key(key_id):
                raise not_found(f"No key {key_id[:100]!r}.")
            self.keys.revoke_local(key_id)
            await send_json(send, 200, {"key_id": key_id, "revoked": True})
            return
        if path == b"/admin/tenants":
            if method != b"GET":
                raise _method_not_allowed(b"GET")
            tenants = await self.keystore.tenants()
            customers = await self.keystore.stripe_customers()
            data = [
                {"tenant_id": t, **lim.as_json(), "stripe_customer_id": customers.get(t)} for t, lim in tenants.items()
            ]
            await send_json(send, 200, {"object": "list", "data": data})
            return
        if (
            self.credits is not None
            and path.startswith(b"/admin/tenants/")
            and path.endswith(b"/credits")
            and len(path) > len(b"/admin/tenants//credits")
        ):
            tenant_id = path[len(b"/admin/tenants/") : -len(b"/credits")].decode("latin-1")
            await self.credits.admin(scope, receive, send, method, tenant_id)
            return
        if path.startswith(b"/admin/tenants/"):
            if method != b"PUT":
                raise _method_not_allowed(b"PUT")
            tenant_id = path[len(b"/admin/tenants/") :].decode("latin-1")
            await self._put_tenant(tenant_id, dict(scope["headers"]), receive, send)
            return
        raise not_found(f"Unknown admin path {path.decode('latin-1')[:200]!r}.")

    async def _create_key(self, headers: dict, receive, send) -> None:
        from ..tenants.model import InvalidInput, check_tenant, parse_limits, parse_time

        self._require_ledger()
        doc = json_object(await read_body(receive, ADMIN_BODY_LIMIT, headers))
        try:
            tenant = check_tenant(doc.get("tenant_id"))
            limits = parse_limits(doc, ("tenant_id", "name", "expires_at"))
            name = doc.get("name")
            if name is not None and (not isinstance(name, str) or len(name) > 200):
                raise InvalidInput("name must be a string of at most 200 characters")
            expires = parse_time(doc.get("expires_at"), "expires_at")
        except InvalidInput as exc:
            raise bad_request(str(exc), "invalid_parameter") from None
        secret, key = await self.keystore.create_key(tenant, limits, name, expires)
        self.keys.add(secret, key)
        await send_json(send, 201, {"key": secret, **key.as_json()})

    async def _put_tenant(self, tenant_id: str, headers: dict, receive, send) -> None:
        """Limits are replaced as a whole when the body names any (or names nothing);
        `stripe_customer_id` alone changes only the customer, and limits alone keep it."""
        from ..tenants.model import LIMIT_FIELDS, InvalidInput, check_tenant, parse_limits, parse_stripe_customer

        self._require_ledger()
        doc = json_object(await read_body(receive, ADMIN_BODY_LIMIT, headers))
        customer_given = "stripe_customer_id" in doc
        limits_given = not customer_given or any(f in doc for f in LIMIT_FIELDS)
        try:
            check_tenant(tenant_id)
            customer = parse_stripe_customer(doc.pop("stripe_customer_id", None))
            limits = parse_limits(doc) if limits_given else None
        except InvalidInput as exc:
            raise bad_request(str(exc), "invalid_parameter") from None
        if limits is not None:
            await self.keystore.put_tenant(tenant_id, limits)
            self.keys.set_tenant(tenant_id, limits)  # in force here at once, elsewhere on refresh
        else:
            limits = await self.keystore.tenant_limits(tenant_id)
        if customer_given:
            await self.keystore.set_stripe_customer(tenant_id, customer)
        else:
            customer = (await self.keystore.stripe_customers()).get(tenant_id)
        await send_json(send, 200, {"tenant_id": tenant_id, **limits.as_json(), "stripe_customer_id": customer})

    def _require_ledger(self) -> None:
        if not self.ledger_ready():
            raise ledger_unavailable()

    async def _usage(self, params: dict, tenant: str | None, key: str | None) -> list[dict]:
        self._require_ledger()
        try:
            start = parse_since(params.get("start") or params.get("since") or "30d")
            end = parse_time(params["end"]) if params.get("end") else None
            group_by = parse_group_by(params.get("group_by"))
        except ReportError as exc:
            raise bad_request(str(exc), "invalid_parameter") from None
        return await usage_report(self.store, start, end, tenant, key, group_by)


def _method_not_allowed(allow: bytes) -> GatewayError:
    return GatewayError(405, "Method not allowed.", "invalid_request_error", "method_not_allowed", [(b"allow", allow)])
