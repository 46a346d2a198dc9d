"""The admin API (master key only) and a tenant key's own usage (`/v1/usage`)."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from ..errors import GatewayError, bad_request, forbidden, not_found, unauthorized
from ..reports import ReportError, parse_group_by, parse_since, parse_time, usage_report


def query_params(scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


class Admin:
    def __init__(self, gateway) -> None:
        self.g = gateway

    def require_master(self, scope) -> None:
        headers = dict(scope["headers"])
        authz = headers.get(b"authorization")
        if not authz:
            raise unauthorized("Missing credentials: the admin API needs the master key.")
        if self.g.settings.master_key is None:
            raise forbidden("The admin API is disabled: set PROXY_MASTER_KEY to enable it.")
        if not self.g.auth.is_master(authz):
            # a valid non-master credential is a 403, anything else a 401
            try:
                self.g.auth.credential(authz)
            except GatewayError:
                raise
            raise forbidden("The admin API needs the master key.")

    async def handle(self, scope, receive, send, method: bytes, path: bytes) -> None:
        from ..app import send_json

        if path == b"/v1/usage" and method == b"GET":
            headers = dict(scope["headers"])
            principal = self.g.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
            params = query_params(scope)
            params.pop("tenant_id", None)
            rows = await self._usage(params, tenant=principal.tenant_id,
                                     key=principal.key_id if principal.key_id else None)
            await send_json(send, 200, {"object": "list", "tenant_id": principal.tenant_id, "data": rows})
            return
        self.require_master(scope)
        if path == b"/admin/usage" and method == b"GET":
            params = query_params(scope)
            rows = await self._usage(params, tenant=params.get("tenant_id") or None,
                                     key=params.get("api_key_id") or None)
            await send_json(send, 200, {"object": "list", "data": rows})
            return
        extra = getattr(self.g, "admin_extra", None)
        if extra is not None:
            handled = await extra(scope, receive, send, method, path)
            if handled:
                return
        raise not_found(f"Unknown admin path {path.decode('latin-1')[:200]!r}.")

    async def _usage(self, params: dict, tenant: str | None, key: str | None) -> list[dict]:
        if not self.g.ledger_ready:
            raise GatewayError(503, "The ledger is not reachable yet.", "service_unavailable", "ledger_unavailable")
        try:
            start = parse_since(params.get("start") or params.get("since") or "30d")
            end = parse_time(params["end"]) if params.get("end") else None
            group_by = parse_group_by(params.get("group_by"))
        except ReportError as exc:
            raise bad_request(str(exc), "invalid_parameter") from None
        return await usage_report(self.g.store, start, end, tenant, key, group_by)


def json_body(raw: bytes) -> dict:
    try:
        doc = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(doc, dict):
        raise bad_request("Request body must be a JSON object.", "invalid_json")
    return doc
