"""The retry x fallback policy: attempts on a route, backoff, the fallback chain.

Failed attempts (connection errors, 429, 5xx) are retried with backoff and jitter, then
the route's fallbacks are tried, all while nothing has been sent to the client: a
stream's response starts with its first event, so a stream that fails before it can
still be retried. Error answers tell the SDKs not to retry on top (`x-should-retry:
false`). See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from ..metering.record import UsageRecord
from ..upstream import backoff_delay, retry_after, retryable_status
from .disconnect import ClientWatch

log = logging.getLogger("tallygate.upstream")

# on an error answer the gateway has already retried what is safe to retry (or judged it
# unsafe): the official SDKs honour this and do not repeat the call on top
NO_SDK_RETRY = (b"x-should-retry", b"false")


def no_sdk_retry(send):
    """`send` that adds `x-should-retry: false` to the response head (error answers only)."""

    async def send_no_retry(message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message["headers"], NO_SDK_RETRY]
        await send(message)

    return send_no_retry


class Failure:
    """One attempt that did not produce an answer for the client (yet)."""

    __slots__ = ("status_code", "status", "message", "code", "retryable", "retry_after", "resp", "data")

    def __init__(
        self,
        status_code: int,
        status: str,
        message: str,
        code: str | None,
        *,
        retryable: bool,
        retry_after: float | None = None,
        resp=None,
        data: bytes | None = None,
    ) -> None:
        self.status_code = status_code
        self.status = status  # the record's status if this is the last word
        self.message = message
        self.code = code
        self.retryable = retryable  # worth another attempt on the same route
        self.retry_after = retry_after
        self.resp = resp  # an upstream answer (429/5xx), relayed as is when nothing else works
        self.data = data

    @property
    def reason(self) -> str:
        return f"status {self.status_code}" if self.resp is not None else (self.code or self.status)


class _NotYet(Exception):
    """Stands in for the HTTP client's exception classes until it has loaded (never raised)."""


def _request_headers(route, extra: list):
    if not extra:
        return route.client_headers()
    req_headers = route.client_headers().copy()
    for k, v in extra:
        req_headers[k.decode()] = v.decode("latin-1")
    return req_headers


def _redirected(resp, record: UsageRecord) -> Failure:
    """An upstream that answers an API call with a redirect: where it points goes to the
    gateway's log (it may name hosts the client should not see), a 502 to the client."""
    log.warning(
        "the upstream answered with a redirect, which is not followed: check the route's base_url",
        extra={
            "fields": {
                "request_id": record.request_id,
                "model": record.model,
                "upstream_status": resp.status,
                "location": resp.headers.get("Location", "")[:500],
            }
        },
    )
    return Failure(
        502,
        "upstream_error",
        f"The upstream answered with a redirect (HTTP {resp.status}), "
        "which the gateway does not follow; the route's base_url may be wrong.",
        "upstream_redirect",
        retryable=False,
    )


class Retries:
    """Attempts, retries and fallbacks along a request's chain until one answer reaches the client."""

    def __init__(
        self,
        relay,
        watchers,
        client,
        *,
        retries: int,
        backoff: float,
        max_backoff: float,
        first_byte_timeout: float | None,
    ) -> None:
        self.relay = relay
        self.watchers = watchers
        self.client = client  # async () -> the upstream client session (waits for it after start-up)
        self.session = None
        self.retries = retries  # TALLYGATE_RETRIES: further attempts on one route
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.first_byte_timeout = first_byte_timeout
        # the HTTP client's exception classes: aiohttp is imported in a thread at start-up
        # (~0.25 s), so they are taken once its session exists
        self.connect_timeout: type[BaseException] = _NotYet
        self.upstream_errors: tuple[type[BaseException], ...] = (OSError,)

    async def _open(self):
        session = await self.client()
        import aiohttp  # loaded by now: the session is made of it

        self.connect_timeout = aiohttp.ConnectionTimeoutError
        self.upstream_errors = self.relay.upstream_errors = (aiohttp.ClientError, OSError)
        self.session = session
        return session

    async def forward(
        self,
        send,
        receive,
        fmt,
        endpoint: str,
        model: str,
        doc: dict,
        body: bytes,
        extra: list,
        record: UsageRecord,
        started: float,
        chain: list,
    ) -> None:
        relay = self.relay
        retries = self.retries
        watch = ClientWatch(receive, self.watchers) if record.stream else None
        failure: Failure | None = None
        try:
            for index, (name, route) in enumerate(chain):
                if index:
                    doc = orjson.loads(body)  # a fresh copy: the previous route may have changed it
                    assert failure is not None  # the route before this one failed
                    log.warning(
                        "upstream failed, trying a fallback",
                        extra={
                            "fields": {
                                "request_id": record.request_id,
                                "model": record.model,
                                "fallback_model": name,
                                "reason": failure.reason,
                            }
                        },
                    )
                    record.model = name  # the model that serves (and prices) the request
                    record.provider = route.provider
                payload, strip_usage = fmt.prepare(route, name, model, endpoint, doc, body, record.stream)
                url = route.target(endpoint)
                req_headers = _request_headers(route, extra)
                last_route = index == len(chain) - 1
                for attempt in range(retries + 1):
                    if watch is not None and watch.gone:
                        relay.client_left_early(record, started, len(body))
                        return
                    failure = await self.attempt(
                        send, fmt, url, payload, req_headers, record, strip_usage, started, len(body), watch
                    )
                    if failure is None:
                        return
                    delay = None
                    if failure.retryable and attempt < retries:
                        delay = backoff_delay(attempt, self.backoff, self.max_backoff, failure.retry_after)
                    if delay is None:
                        break  # this route is done: next fallback, or the last word below
                    log.warning(
                        "upstream attempt failed, retrying",
                        extra={
                            "fields": {
                                "request_id": record.request_id,
                                "model": record.model,
                                "attempt": attempt + 1,
                                "reason": failure.reason,
                                "retry_in_ms": round(delay * 1000, 1),
                            }
                        },
                    )
                    await asyncio.sleep(delay)
                if last_route:
                    break
            if watch is not None and watch.gone:
                relay.client_left_early(record, started, len(body))
                return
            # nothing left to try: the upstream's own answer, or an OpenAI-style 502/504. The
            # SDKs are told not to retry on top of the gateway's retries; only when the gateway
            # made one attempt at a failure it would have retried (TALLYGATE_RETRIES=0, no
            # fallback) are they left to their own rules.
            assert failure is not None  # every attempt failed: the chain is never empty
            no_retry = retries > 0 or index > 0 or not failure.retryable
            if failure.resp is not None:
                await relay.answer(
                    no_sdk_retry(send) if no_retry else send, fmt, failure.resp, failure.data, record, started
                )
            else:
                await relay.fail(
                    send,
                    fmt,
                    record,
                    started,
                    failure.status_code,
                    failure.status,
                    failure.message,
                    failure.code,
                    should_retry=False if no_retry else None,
                )
        except asyncio.CancelledError:
            relay.server_stopped(record, started, len(body))
            raise
        finally:
            if watch is not None:
                watch.stop()

    async def attempt(
        self,
        send,
        fmt,
        url,
        payload: bytes,
        req_headers,
        record: UsageRecord,
        strip_usage: bool,
        started: float,
        body_len: int,
        watch: ClientWatch | None,
    ) -> Failure | None:
        """One upstream call. None: the client got its answer (and the record is
        submitted); a Failure: nothing was sent, the caller may try again."""
        first_byte = self.first_byte_timeout
        session = self.session or await self._open()  # only the first requests after start-up wait
        try:
            # redirects are not followed: the HTTP client would repeat a 301/302 as a GET
            # without the body, and a POST to an API that moved is a misconfigured base_url
            if first_byte is None:
                resp = await session.post(url, data=payload, headers=req_headers, allow_redirects=False)
            else:
                async with asyncio.timeout(first_byte):
                    resp = await session.post(url, data=payload, headers=req_headers, allow_redirects=False)
        except self.connect_timeout:
            return Failure(
                504,
                "timeout",
                "The upstream did not accept a connection in time.",
                "upstream_connect_timeout",
                retryable=True,
            )
        except TimeoutError:  # first byte (or read) timeout: the upstream may still be working
            return Failure(504, "timeout", "The upstream did not answer in time.", "upstream_timeout", retryable=False)
        except self.upstream_errors as exc:
            return Failure(
                502,
                "upstream_error",
                f"Could not reach the upstream: {type(exc).__name__}.",
                "upstream_unreachable",
                retryable=True,
            )
        try:
            if 300 <= resp.status < 400:
                return _redirected(resp, record)
            if (
                record.stream
                and resp.status == 200
                and resp.headers.get("Content-Type", "").startswith("text/event-stream")
            ):
                return await self.relay.stream(send, fmt, resp, record, strip_usage, started, body_len, watch)
            try:
                data = await resp.read()
            except TimeoutError:
                if not retryable_status(resp.status):
                    await self.relay.broke_after_status(send, fmt, resp, record, started, body_len, True)
                    return None
                return Failure(
                    504, "timeout", "The upstream stopped answering mid-response.", "upstream_timeout", retryable=False
                )
            except self.upstream_errors as exc:
                if not retryable_status(resp.status):
                    await self.relay.broke_after_status(send, fmt, resp, record, started, body_len, False)
                    return None
                # a 429/5xx whose body broke off: the upstream did no billable work, try again
                return Failure(
                    502,
                    "upstream_error",
                    f"The upstream connection failed mid-response: {type(exc).__name__}.",
                    "upstream_disconnected",
                    retryable=True,
                )
            if retryable_status(resp.status):
                return Failure(
                    resp.status,
                    "upstream_error",
                    "",
                    None,
                    retryable=True,
                    retry_after=retry_after(resp.headers),
                    resp=resp,
                    data=data,
                )
            # a 4xx is passed through and never retried: the SDKs are told so too
            await self.relay.answer(send if resp.status < 400 else no_sdk_retry(send), fmt, resp, data, record, started)
            return None
        finally:
            resp.release()
