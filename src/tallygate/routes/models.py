"""GET /v1/models: the upstream's list, plus the models the routes file names;
GET /v1/models/{id}: one of them (a routes-file model answered here, others by the upstream)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import orjson

from ..auth import Authenticator
from ..errors import GatewayError, not_found
from ..http import json_headers, send_bytes
from ..upstream import Router, scrub


class Models:
    def __init__(
        self, auth: Authenticator, router: Router, client: Callable[[], Awaitable], upstream_secrets: tuple[bytes, ...]
    ) -> None:
        self.auth = auth
        self.router = router
        self.client = client  # the upstream client session, once it is open
        self.upstream_secrets = upstream_secrets

    async def _get(self, path: str) -> tuple[int, bytes]:
        route = self.router.default
        session = await self.client()
        import aiohttp

        try:
            async with session.get(route.url(path), headers=route.headers) as resp:
                data = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise GatewayError(
                502, f"Could not reach the upstream: {type(exc).__name__}.", "upstream_error", "upstream_unreachable"
            ) from None
        return status, scrub(data, self.upstream_secrets) if status >= 400 else data

    async def retrieve(self, scope, receive, send, model_id: str) -> None:
        headers = dict(scope["headers"])
        self.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
        if not model_id or len(model_id) > 256 or any(c in "?#" or c < " " or c == "\x7f" for c in model_id):
            raise not_found(f"Unknown model {model_id[:256]!r}.")
        route = self.router.exact.get(model_id)
        if route is not None:  # named by the routes file: the gateway knows it, whatever the upstream lists
            doc = {"id": model_id, "object": "model", "created": 0, "owned_by": route.provider}
            data = orjson.dumps(doc)
            await send_bytes(send, 200, json_headers(data), data)
            return
        status, data = await self._get("/models/" + quote(model_id, safe=":@"))
        await send_bytes(send, status, json_headers(data), data)

    async def handle(self, scope, receive, send) -> None:
        headers = dict(scope["headers"])
        self.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
        status, data = await self._get("/models")
        extra = self.router.models()
        if status == 200 and extra:
            try:
                doc = orjson.loads(data)
                known = {m.get("id") for m in doc.get("data", []) if isinstance(m, dict)}
                for name in extra:
                    if name not in known:
                        doc["data"].append(
                            {"id": name, "object": "model", "created": 0, "owned_by": self.router.exact[name].provider}
                        )
                data = orjson.dumps(doc)
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                pass
        await send_bytes(send, status, json_headers(data), data)
