"""GET /v1/models: the upstream's list, plus the models the routes file names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson

from ..auth import Authenticator
from ..errors import GatewayError
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

    async def handle(self, scope, receive, send) -> None:
        headers = dict(scope["headers"])
        self.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
        route = self.router.default
        session = await self.client()
        import aiohttp

        try:
            async with session.get(route.url("/models"), headers=route.headers) as resp:
                data = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise GatewayError(
                502, f"Could not reach the upstream: {type(exc).__name__}.", "upstream_error", "upstream_unreachable"
            ) from None
        if status >= 400:
            data = scrub(data, self.upstream_secrets)
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
