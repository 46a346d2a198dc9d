"""The service endpoints: /health and /live, /ready, /metrics, /openapi.json."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from .. import __version__
from ..auth import Authenticator
from ..errors import not_found
from ..http import send_json, send_text

METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Service:
    def __init__(
        self, auth: Authenticator, metrics_mode: str, render_metrics: Callable[[], bytes], is_ready: Callable[[], bool]
    ) -> None:
        self.auth = auth
        self.metrics_mode = metrics_mode  # auth | public | off
        self.render_metrics = render_metrics
        self.is_ready = is_ready
        self._health = orjson.dumps({"status": "ok", "version": __version__})

    def routes(self) -> dict:
        return {
            (b"GET", b"/health"): self.health,
            (b"GET", b"/live"): self.health,
            (b"GET", b"/ready"): self.ready,
            (b"GET", b"/metrics"): self.metrics,
            (b"GET", b"/openapi.json"): self.openapi,
        }

    async def health(self, scope, receive, send) -> None:
        await send_json(send, 200, self._health)

    async def ready(self, scope, receive, send) -> None:
        # unauthenticated: no error text, no host or database name
        if self.is_ready():
            await send_json(send, 200, {"status": "ready"})
        else:
            await send_json(send, 503, {"status": "starting", "detail": "the ledger is not reachable yet"})

    async def metrics(self, scope, receive, send) -> None:
        if self.metrics_mode == "off":
            raise not_found("Metrics are turned off (TALLYGATE_METRICS=off).")
        if self.metrics_mode == "auth":
            self.auth.require_master(
                dict(scope["headers"]).get(b"authorization"), "/metrics", " (or TALLYGATE_METRICS=public)"
            )
        await send_text(send, 200, self.render_metrics(), METRICS_TYPE)

    async def openapi(self, scope, receive, send) -> None:
        from ..openapi import spec

        await send_json(send, 200, spec())
