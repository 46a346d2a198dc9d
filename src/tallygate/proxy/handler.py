"""One proxied request: read and parse (through its wire format) -> admit (limits) ->
record -> forward (retries.py), answered by relay.py."""

from __future__ import annotations

import logging
import time

from ..http import read_body
from ..metering.record import opened, utcnow
from ..upstream import FORWARD_HEADERS, Route
from .disconnect import Watchers
from .ids import new_request_id
from .relay import Relay
from .retries import Retries

log = logging.getLogger("tallygate.upstream")
# the OpenAI endpoints whose prompts may quote an uploaded file (input_file, chat file parts)
QUOTES_FILES = frozenset({"/responses", "/chat/completions"})


class ProxyHandler:
    """The proxy endpoints of every wire format (formats/, ENDPOINTS)."""

    def __init__(
        self,
        *,
        router,
        guard,
        pipeline,
        client,
        loop,
        max_body_bytes: int,
        sse_max_event_bytes: int,
        retries: int,
        retry_backoff: float,
        retry_max_backoff: float,
        first_byte_timeout: float | None,
        trace_for,
        secrets: tuple[bytes, ...],
        scrub,
        references=None,
    ) -> None:
        """`client`: async () -> the upstream client session; `trace_for(headers)`: the record's
        trace; `scrub(data, secrets)`: upstream keys out; `references(principal, doc)`: a 404
        unless the stored response or conversation a Responses request continues is the caller's."""
        self.router = router
        self.guard = guard  # limits and budgets (None: nothing to enforce)
        self.max_body_bytes = max_body_bytes
        self.trace_for = trace_for
        self.watchers = Watchers(loop)
        self.relay = Relay(pipeline, max_event=sse_max_event_bytes, secrets=secrets, scrub=scrub)
        self.retries = Retries(
            self.relay,
            self.watchers,
            client,
            retries=retries,
            backoff=retry_backoff,
            max_backoff=retry_max_backoff,
            first_byte_timeout=first_byte_timeout,
        )
        self._forward = self.retries.forward
        self.references = references

    async def handle(self, scope, receive, send, endpoint: tuple, principal, headers: dict) -> None:
        """`endpoint`: (upstream path, WireFormat, Router), the ENDPOINTS entry of the request's
        path with the routes that speak its format (App.endpoints)."""
        started = time.perf_counter()
        created = utcnow()
        path, fmt, router = endpoint
        body = await read_body(receive, self.max_body_bytes, headers)  # the limit, Content-Encoding
        doc, model, stream = fmt.parse(body)
        route: Route = router.resolve(model)
        if self.references is not None and (
            (path == "/responses" and ("previous_response_id" in doc or "conversation" in doc))
            # a quoted file id (or an escape that could spell the key) is walked for: a file of the
            # caller's. find(), not `in`: bytes `in` first tries the needle as an int (~2.5k instructions)
            or (path in QUOTES_FILES and (body.find(b'file_id"') >= 0 or body.find(b"\\u") >= 0))
        ):
            await self.references(principal, doc)

        # the model asked for, then the fallbacks that may serve it (the budget reserves for the dearest)
        chain = self._chain(router, model, principal) if route.fallbacks else [(model, route)]
        caps = fmt.caps(doc)  # (output cap, choices): the bounds of its usage (metering/bounds.py)
        reservation = None
        guard = self.guard
        if guard is not None and guard.applies(principal):
            reservation = await guard.admit(
                principal,
                model,
                doc,
                body,
                route.provider,
                route.upstream_model,
                [(r.provider, name, r.upstream_model) for name, r in chain[1:]],
                endpoint=path,
                caps=caps,
            )

        record = opened(
            new_request_id(),
            created,
            principal.tenant_id,
            model,
            "/v1" + path,
            stream,
            principal.key_id,
            route.provider,
            self.trace_for(headers),
            caps[0],
            caps[1],
            len(body),
        )
        if reservation is not None:
            # registered before forwarding: the pipeline may price the record at any await
            guard.settle_later(reservation, record)

        extra = (
            [] if FORWARD_HEADERS.isdisjoint(headers) else [(k, v) for k, v in headers.items() if k in FORWARD_HEADERS]
        )
        try:
            await self._forward(send, receive, fmt, path, model, doc, body, extra, record, started, chain)
        finally:
            if reservation is not None and not record.submitted:
                guard.cancel(reservation, record)  # never reached the pipeline: free the reservation

    def _chain(self, router, model: str, principal) -> list:
        """The model asked for, then its fallbacks that the key and tenant may use."""
        chain = router.chain(model)
        guard = self.guard
        if guard is None:
            return chain
        skipped = [name for name, _ in chain[1:] if not guard.allows(principal, name)]
        if skipped:
            log.info(
                "fallbacks outside the caller's model list are skipped",
                extra={"fields": {"model": model, "skipped": skipped}},
            )
        return [chain[0]] + [(name, r) for name, r in chain[1:] if name not in skipped]
