"""The OpenAI-compatible surface: forward, relay, meter.

Bodies go upstream as the client sent them; the one change is adding
`stream_options.include_usage` to streams that did not ask for usage (the usage
chunk is then removed on the way back). Upstream bytes are relayed as they
arrive. Metering ends in exactly one UsageRecord handed to the pipeline, whatever
happens: retries, fallbacks, timeouts, a client that hangs up, a server stopping.

Failed attempts (connection errors, 429, 5xx) are retried with backoff and jitter, then
the route's fallbacks are tried, all while nothing has been sent to the client: a
stream's response starts with its first event, so a stream that fails before it can
still be retried. Once an upstream has answered 2xx, a body that breaks off is not retried
(the provider did, and bills, the work): it is answered 502/504 and metered from an
estimate. Error answers tell the SDKs not to retry on top (`x-should-retry: false`). See
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import orjson

from ..errors import GatewayError, bad_request
from ..http import ClientGone, json_headers, read_body, send_bytes  # noqa: F401 (ClientGone: was defined here)
from ..metering.bounds import EMBEDDINGS, request_caps
from ..metering.extract import SSEMeter, from_json_body
from ..metering.record import UsageRecord, utcnow
from ..upstream import FORWARD_HEADERS, PASS_HEADERS, Route, backoff_delay, retry_after, retryable_status, scrub

log = logging.getLogger("tallygate.upstream")

# The HTTP client library (aiohttp, ~0.25 s to import) is loaded in a thread once the server
# listens (Gateway.start_client); requests wait for it, /health does not.
aiohttp = None

ENDPOINTS = {
    b"/v1/chat/completions": "/chat/completions",
    b"/v1/completions": "/completions",
    b"/v1/embeddings": "/embeddings",
    b"/v1/responses": "/responses",
}
# endpoints whose streams accept stream_options.include_usage
STREAM_USAGE_ENDPOINTS = frozenset({"/chat/completions", "/completions"})
# control characters an upstream header value must not carry on to the client
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
# on an error answer the gateway has already retried what is safe to retry (or judged it
# unsafe): the official SDKs honour this and do not repeat the call on top
NO_SDK_RETRY = (b"x-should-retry", b"false")
# upstream response header names as sent -> the name passed on (lower case), or None:
# an upstream sends the same few names every time
_PASSED: dict[bytes, bytes | None] = {}
_UNSEEN = object()


def _passed_name(name: bytes) -> bytes | None:
    lname = name.lower()
    out = lname if lname in PASS_HEADERS or lname.startswith(b"x-ratelimit-") else None
    if len(_PASSED) < 1024:  # bounded: names are chosen by the upstream
        _PASSED[name] = out
    return out


def _no_sdk_retry(send):
    """`send` that adds `x-should-retry: false` to the response head (error answers only)."""
    async def send_no_retry(message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message["headers"], NO_SDK_RETRY]
        await send(message)
    return send_no_retry


class Failure:
    """One attempt that did not produce an answer for the client (yet)."""

    __slots__ = ("status_code", "status", "message", "code", "retryable", "retry_after", "resp", "data")

    def __init__(self, status_code: int, status: str, message: str, code: str | None, *,
                 retryable: bool, retry_after: float | None = None, resp=None, data: bytes | None = None) -> None:
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


# A stream shorter than this never starts a watcher (a task per stream costs more than
# the rest of its relay); a longer one notices a client that hangs up at most twice this
# much later.
WATCH_AFTER = 0.025


class ClientWatch:
    """Notices a streaming client that hangs up and stops the relay then, so the upstream
    stops generating for nobody.

    The relay is stopped by cancelling its task, and the relay closes the upstream
    response itself: closing it from this callback, under a waiting reader, leaks about
    8 KB of the HTTP client's buffers per disconnect.
    """

    __slots__ = ("gone", "resp", "task", "owner", "receive", "watchers")

    def __init__(self, receive, watchers: "Watchers") -> None:
        self.gone = False
        self.resp = None  # set while the relay reads the upstream
        self.owner = asyncio.current_task(watchers.loop)
        self.receive = receive
        self.task = None
        self.watchers = watchers
        watchers.add(self)

    def start(self) -> None:
        self.task = self.watchers.loop.create_task(self.receive())
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if task.result().get("type") == "http.disconnect":
            self.gone = True
            if self.resp is not None and self.owner is not None:
                self.owner.cancel()

    def stop(self) -> None:
        if self.task is None:
            self.watchers.discard(self)
            return
        self.task.remove_done_callback(self._done)
        if not self.task.done():
            self.task.cancel()


class Watchers:
    """Starts the watchers of streams that outlive one to two WATCH_AFTER periods.

    One timer for all streams: a timer per stream (created, then cancelled when the
    stream ends first, as nearly all do) cost ~1.8 us a stream under uvloop. The loop
    is kept, not looked up: on Python 3.11 finding the running loop is a getpid()
    system call.
    """

    __slots__ = ("loop", "young", "old", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.young: set[ClientWatch] = set()  # started within the current period
        self.old: set[ClientWatch] = set()  # started in the previous one
        self.timer = None

    def add(self, watch: ClientWatch) -> None:
        self.young.add(watch)
        if self.timer is None:
            self.timer = self.loop.call_later(WATCH_AFTER, self._sweep)

    def discard(self, watch: ClientWatch) -> None:
        self.young.discard(watch)
        self.old.discard(watch)

    def _sweep(self) -> None:
        due, self.old, self.young = self.old, self.young, set()
        for watch in due:
            watch.start()
        self.timer = self.loop.call_later(WATCH_AFTER, self._sweep) if self.old else None


# Request ids are random (a counter would tell a client how busy the gateway is), drawn
# from the OS 512 at a time: formatting a 96-bit random int per request cost 4x more.
_id_hex = ""
_id_pos = 0


def new_request_id() -> str:
    global _id_hex, _id_pos
    start = _id_pos
    if start >= len(_id_hex):
        _id_hex = os.urandom(12 * 512).hex()
        start = 0
    _id_pos = start + 24
    return "req_" + _id_hex[start:start + 24]


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (perf_counter), to the microsecond. round(x, 3) is
    correctly rounded through decimal digits: three times the cost, per request."""
    return int((time.perf_counter() - started) * 1e6 + 0.5) / 1000


def parse_request(body: bytes) -> tuple[dict, str, bool]:
    """(document, model, stream) or a 400 that says what is wrong."""
    if not body:
        raise bad_request("Request body is empty: expected a JSON object.", "invalid_json")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(doc, dict):
        raise bad_request("Request body must be a JSON object.", "invalid_json")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string.", "invalid_model", "model")
    if len(model) > 256:
        raise bad_request("'model' is too long.", "invalid_model", "model")
    if "\x00" in model:  # no database text column can hold it
        raise bad_request("'model' must not contain NUL characters.", "invalid_model", "model")
    stream = doc.get("stream")
    if stream is None:  # absent or null: not a stream
        stream = False
    elif not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false.", "invalid_stream", "stream")
    return doc, model, stream


def estimate_prompt_tokens(body_len: int) -> int:
    """A rough prompt size (4 bytes a token) for records without provider usage."""
    return max(1, body_len // 4)


class OpenAIProxy:
    def __init__(self, gateway) -> None:
        self.g = gateway  # the Gateway (app.py): settings, auth, router, session, pipeline
        self._watchers: Watchers | None = None

    @property
    def watchers(self) -> Watchers:
        if self._watchers is None:
            self._watchers = Watchers(self.g.loop or asyncio.get_running_loop())
        return self._watchers

    async def handle(self, scope, receive, send, endpoint: str, principal, headers: dict) -> None:
        g = self.g
        started = time.perf_counter()
        created = utcnow()
        body = await read_body(receive, g.settings.max_body_bytes, headers)
        doc, model, stream = parse_request(body)
        route: Route = g.router.resolve(model)

        # the model asked for, then the fallbacks that may serve it (the budget reserves for the dearest)
        chain = self._chain(model, route, principal) if route.fallbacks else [(model, route)]
        caps = request_caps(doc)  # (output cap, choices): the bounds of its usage (metering/bounds.py)
        reservation = None
        if g.guard is not None and g.guard.applies(principal):
            reservation = await g.guard.admit(principal, model, doc, body, route.provider, route.upstream_model,
                                              [(r.provider, name, r.upstream_model) for name, r in chain[1:]],
                                              endpoint=endpoint, caps=caps)

        record = UsageRecord(
            request_id=new_request_id(), created_at=created, tenant_id=principal.tenant_id,
            model=model, endpoint="/v1" + endpoint, stream=stream, api_key_id=principal.key_id,
            provider=route.provider, trace=g.trace_for(headers),
            out_cap=caps[0], choices=caps[1], body_len=len(body),
        )
        if reservation is not None:
            # registered before forwarding: the pipeline may price the record at any await
            g.guard.settle_later(reservation, record)

        extra = [] if FORWARD_HEADERS.isdisjoint(headers) else [
            (k, v) for k, v in headers.items() if k in FORWARD_HEADERS]
        try:
            await self._forward(send, receive, endpoint, model, doc, body, extra, record, started, chain)
        finally:
            if reservation is not None and not record.submitted:
                g.guard.cancel(reservation, record)  # never reached the pipeline: free the reservation

    @staticmethod
    def _prepare(route: Route, name: str, model: str, endpoint: str, doc: dict, body: bytes,
                 stream: bool) -> tuple[bytes, bool]:
        """(payload, strip_usage) for one route: the client's own bytes unless the model
        name changes (upstream_model, a fallback) or stream usage is added."""
        changed = False
        target = route.upstream_model or (name if name != model else None)
        if target is not None:
            doc["model"] = target
            changed = True
        strip_usage = False
        if stream and endpoint in STREAM_USAGE_ENDPOINTS and route.stream_usage:
            opts = doc.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                opts = dict(opts) if isinstance(opts, dict) else {}
                opts["include_usage"] = True
                doc["stream_options"] = opts
                strip_usage = True
        return (orjson.dumps(doc) if changed or strip_usage else body), strip_usage

    @staticmethod
    def _request_headers(route: Route, extra: list):
        if not extra:
            return route.client_headers()
        req_headers = route.client_headers().copy()
        for k, v in extra:
            req_headers[k.decode()] = v.decode("latin-1")
        return req_headers

    async def _forward(self, send, receive, endpoint: str, model: str, doc: dict, body: bytes,
                       extra: list, record: UsageRecord, started: float, chain: list) -> None:
        """Attempts, retries and fallbacks along `chain` until one answer reaches the client."""
        g = self.g
        s = g.settings
        watch = ClientWatch(receive, self.watchers) if record.stream else None
        failure: Failure | None = None
        try:
            for index, (name, route) in enumerate(chain):
                if index:
                    doc = orjson.loads(body)  # a fresh copy: the previous route may have changed it
                    log.warning("upstream failed, trying a fallback", extra={"fields": {
                        "request_id": record.request_id, "model": record.model, "fallback_model": name,
                        "reason": failure.reason}})
                    record.model = name  # the model that serves (and prices) the request
                    record.provider = route.provider
                payload, strip_usage = self._prepare(route, name, model, endpoint, doc, body, record.stream)
                url = route.target(endpoint)
                req_headers = self._request_headers(route, extra)
                last_route = index == len(chain) - 1
                for attempt in range(s.retries + 1):
                    if watch is not None and watch.gone:
                        self._client_left_early(record, started, len(body))
                        return
                    failure = await self._attempt(send, url, payload, req_headers, record, strip_usage,
                                                  started, len(body), watch)
                    if failure is None:
                        return
                    delay = None
                    if failure.retryable and attempt < s.retries:
                        delay = backoff_delay(attempt, s.retry_backoff, s.retry_max_backoff,
                                              failure.retry_after)
                    if delay is None:
                        break  # this route is done: next fallback, or the last word below
                    log.warning("upstream attempt failed, retrying", extra={"fields": {
                        "request_id": record.request_id, "model": record.model, "attempt": attempt + 1,
                        "reason": failure.reason, "retry_in_ms": round(delay * 1000, 1)}})
                    await asyncio.sleep(delay)
                if last_route:
                    break
            if watch is not None and watch.gone:
                self._client_left_early(record, started, len(body))
                return
            # nothing left to try: the upstream's own answer, or an OpenAI-style 502/504. The
            # SDKs are told not to retry on top of the gateway's retries; only when the gateway
            # made one attempt at a failure it would have retried (TALLYGATE_RETRIES=0, no
            # fallback) are they left to their own rules.
            no_retry = s.retries > 0 or index > 0 or not failure.retryable
            if failure.resp is not None:
                await self._answer(_no_sdk_retry(send) if no_retry else send, failure.resp, failure.data,
                                   record, started)
            else:
                await self._fail(send, record, started, failure.status_code, failure.status,
                                 failure.message, failure.code, should_retry=False if no_retry else None)
        except asyncio.CancelledError:
            # the server stopped past its grace period while this request was in flight
            if record.status_code == 0:
                self._estimate(record, None, len(body))
                self._finish(record, started, 503, "timeout")
                g.pipeline.submit(record)
            raise
        finally:
            if watch is not None:
                watch.stop()

    def _chain(self, model: str, route: Route, principal) -> list:
        """The model asked for, then its fallbacks that the key and tenant may use."""
        chain = self.g.router.chain(model)
        guard = self.g.guard
        if guard is None:
            return chain
        skipped = [name for name, _ in chain[1:] if not guard.allows(principal, name)]
        if skipped:
            log.info("fallbacks outside the caller's model list are skipped",
                     extra={"fields": {"model": model, "skipped": skipped}})
        return [chain[0]] + [(name, r) for name, r in chain[1:] if name not in skipped]

    async def _attempt(self, send, url, payload: bytes, req_headers, record: UsageRecord,
                       strip_usage: bool, started: float, body_len: int,
                       watch: ClientWatch | None) -> Failure | None:
        """One upstream call. None: the client got its answer (and the record is
        submitted); a Failure: nothing was sent, the caller may try again."""
        g = self.g
        first_byte = g.settings.first_byte_timeout
        session = g.session or await g.client()  # only the first requests after start-up wait
        try:
            # redirects are not followed: the HTTP client would repeat a 301/302 as a GET
            # without the body, and a POST to an API that moved is a misconfigured base_url
            if first_byte is None:
                resp = await session.post(url, data=payload, headers=req_headers, allow_redirects=False)
            else:
                async with asyncio.timeout(first_byte):
                    resp = await session.post(url, data=payload, headers=req_headers, allow_redirects=False)
        except aiohttp.ConnectionTimeoutError:
            return Failure(504, "timeout", "The upstream did not accept a connection in time.",
                           "upstream_connect_timeout", retryable=True)
        except TimeoutError:  # first byte (or read) timeout: the upstream may still be working
            return Failure(504, "timeout", "The upstream did not answer in time.", "upstream_timeout",
                           retryable=False)
        except (aiohttp.ClientError, OSError) as exc:
            return Failure(502, "upstream_error", f"Could not reach the upstream: {type(exc).__name__}.",
                           "upstream_unreachable", retryable=True)
        try:
            if 300 <= resp.status < 400:
                return self._redirected(resp, record)
            if (record.stream and resp.status == 200
                    and resp.headers.get("Content-Type", "").startswith("text/event-stream")):
                return await self._relay_stream(send, resp, record, strip_usage, started, body_len, watch)
            try:
                data = await resp.read()
            except TimeoutError:
                if not retryable_status(resp.status):
                    await self._broke_after_status(send, resp, record, started, body_len, True)
                    return None
                return Failure(504, "timeout", "The upstream stopped answering mid-response.",
                               "upstream_timeout", retryable=False)
            except (aiohttp.ClientError, OSError) as exc:
                if not retryable_status(resp.status):
                    await self._broke_after_status(send, resp, record, started, body_len, False)
                    return None
                # a 429/5xx whose body broke off: the upstream did no billable work, try again
                return Failure(502, "upstream_error",
                               f"The upstream connection failed mid-response: {type(exc).__name__}.",
                               "upstream_disconnected", retryable=True)
            if retryable_status(resp.status):
                return Failure(resp.status, "upstream_error", "", None, retryable=True,
                               retry_after=retry_after(resp.headers), resp=resp, data=data)
            # a 4xx is passed through and never retried: the SDKs are told so too
            await self._answer(send if resp.status < 400 else _no_sdk_retry(send), resp, data, record, started)
            return None
        finally:
            resp.release()

    async def _broke_after_status(self, send, resp, record: UsageRecord, started: float, body_len: int,
                                  timed_out: bool) -> None:
        """The upstream answered with a status (2xx, or a 4xx), then its body broke off
        (connection closed or silent past the read timeout). A 2xx means the provider did
        the work and bills for it: the call is not repeated (not on this route, not on a
        fallback, and the SDK is told not to), and it is metered from an estimate so the
        ledger and the budget count it. A 4xx is not retried either, as when it arrives whole."""
        billed = resp.status < 300
        if billed:
            self._estimate(record, None, body_len)
        log.warning("the upstream connection broke after the upstream began answering: not retried",
                    extra={"fields": {"request_id": record.request_id, "model": record.model,
                                      "upstream_status": resp.status, "timed_out": timed_out}})
        what = "stopped sending" if timed_out else "connection broke"
        message = (f"The upstream {what} after it began answering (HTTP {resp.status}), before the "
                   "response was complete." + (" The request may have been processed and billed, so the "
                                               "gateway did not repeat it." if billed else ""))
        if timed_out:
            await self._fail(send, record, started, 504, "timeout", message, "upstream_timeout")
        else:
            await self._fail(send, record, started, 502, "upstream_error", message, "upstream_disconnected")

    @staticmethod
    def _redirected(resp, record: UsageRecord) -> Failure:
        """An upstream that answers an API call with a redirect: where it points goes to the
        gateway's log (it may name hosts the client should not see), a 502 to the client."""
        log.warning("the upstream answered with a redirect, which is not followed: check the route's base_url",
                    extra={"fields": {"request_id": record.request_id, "model": record.model,
                                      "upstream_status": resp.status,
                                      "location": resp.headers.get("Location", "")[:500]}})
        return Failure(502, "upstream_error", f"The upstream answered with a redirect (HTTP {resp.status}), "
                       "which the gateway does not follow; the route's base_url may be wrong.",
                       "upstream_redirect", retryable=False)

    def _response_headers(self, resp, record: UsageRecord) -> list:
        out = [(b"x-tallygate-request-id", record.request_id.encode())]
        passed = _PASSED.get
        for name, value in resp.raw_headers:
            lname = passed(name, _UNSEEN)
            if lname is _UNSEEN:
                lname = _passed_name(name)
            if lname is not None and not _BAD_VALUE.search(value):
                out.append((lname, value))
        return out

    async def _answer(self, send, resp, data: bytes, record: UsageRecord, started: float) -> None:
        """Relay a whole (non-streamed) upstream answer: success or the upstream's own error."""
        g = self.g
        record.latency_ms = elapsed_ms(started)
        record.status_code = resp.status
        if resp.status < 400:
            usage, upstream_model = from_json_body(data)
            record.upstream_model = upstream_model
            if usage is not None:
                self._set_usage(record, usage, "provider")
            else:
                # a 2xx without usage (HTML, garbage, a body without "usage") is not free:
                # the prompt from the request's size, the completion from the answer's
                record.prompt_tokens = estimate_prompt_tokens(record.body_len)
                record.completion_tokens = 0 if record.endpoint == EMBEDDINGS else len(data) // 4
                record.total_tokens = record.prompt_tokens + record.completion_tokens
                record.usage_source = "estimated"
                record.usage_flag = "missing"
        else:
            record.status = "upstream_error"
        if resp.status >= 400:
            data = self._scrub(data)
        headers = self._response_headers(resp, record)
        headers.append((b"content-length", str(len(data)).encode()))
        committed = g.pipeline.submit(record, wait=True)  # None unless the ledger mode is sync
        if committed is not None:
            await committed
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def _scrub(self, data: bytes) -> bytes:
        """An upstream error body may quote the key it was sent: not to the tenant."""
        for secret in self.g.upstream_secrets_b:
            if secret in data:
                return scrub(data, self.g.upstream_secrets_b)
        return data

    async def _relay_stream(self, send, resp, record: UsageRecord, strip_usage: bool,
                            started: float, body_len: int, watch: ClientWatch) -> Failure | None:
        g = self.g
        meter = SSEMeter(strip_usage, record.endpoint == "/v1/responses", g.settings.sse_max_event_bytes)
        sent = False  # the response starts with the first event: until then a retry is possible
        status = "ok"
        last = b""  # the stream's final bytes, sent with the end of the response
        watch.resp = resp
        try:
            if watch.gone:
                resp.close()
            else:
                content = resp.content
                async for chunk in content.iter_any():
                    out = meter.feed(chunk)
                    if out:
                        if meter.done and content.at_eof():
                            last = out  # the upstream has finished: one write for the rest
                            break
                        if not sent:
                            record.ttft_ms = elapsed_ms(started)
                            await send({"type": "http.response.start", "status": 200,
                                        "headers": self._stream_headers(resp, record)})
                            sent = True
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    if watch.gone:
                        break
        except TimeoutError:
            status = "timeout"
        except (aiohttp.ClientError, OSError):
            status = "upstream_error"
        except asyncio.CancelledError:
            if watch.gone:  # our own cancellation: the client hung up
                asyncio.current_task().uncancel()
            else:
                # the server stopped past its grace period: meter what was delivered, then go
                watch.resp = None
                resp.close()
                self._estimate(record, meter, body_len)
                self._finish(record, started, 200 if sent else 503, "timeout")
                record.upstream_model = meter.model
                g.pipeline.submit(record)
                raise
        finally:
            watch.resp = None
        if watch.gone:
            resp.close()  # the upstream stops generating for nobody
            status = "client_disconnected"
        elif status == "ok" and not meter.done:
            status = "upstream_error"  # the upstream closed before [DONE]
        if not sent and status != "client_disconnected" and status != "ok":
            if status == "timeout":
                return Failure(504, "timeout", "The upstream stream sent nothing in time.", "upstream_timeout",
                               retryable=False)
            return Failure(502, "upstream_error", "The upstream ended the stream before its first event.",
                           "upstream_disconnected", retryable=True)
        self._finish(record, started, 200 if sent or status == "ok" else 499, status)
        if last and not sent:
            record.ttft_ms = record.latency_ms  # the whole stream came in one read
        record.upstream_model = meter.model
        if meter.usage is not None:
            self._set_usage(record, meter.usage, "provider")
        else:
            self._estimate(record, meter, body_len)
            if status == "ok":
                record.usage_flag = "missing"  # a complete stream without usage
        if meter.oversized:
            log.warning("SSE events over TALLYGATE_SSE_MAX_EVENT_BYTES were passed through unread",
                        extra={"fields": {"request_id": record.request_id, "model": record.model,
                                          "events": meter.oversized,
                                          "limit_bytes": g.settings.sse_max_event_bytes}})
        if status == "ok":
            tail = last + meter.flush()
        elif status == "client_disconnected":
            tail = b""
        else:
            # an OpenAI-style error event: SDKs raise it instead of taking a cut stream as complete
            message = ("The upstream stream timed out." if status == "timeout"
                       else "The upstream stream ended before it was complete.")
            tail = b"data: " + orjson.dumps({"error": {
                "message": message, "type": "upstream_error", "param": None,
                "code": "upstream_timeout" if status == "timeout" else "upstream_disconnected"}}) + b"\n\n"
        committed = g.pipeline.submit(record, wait=status != "client_disconnected")
        if committed is not None:
            await committed
        if status == "client_disconnected":
            return None  # nobody to send to
        if not sent:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self._stream_headers(resp, record)})
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        return None

    def _stream_headers(self, resp, record: UsageRecord) -> list:
        headers = self._response_headers(resp, record)
        headers.extend(SSE_HEADERS)
        return headers

    @staticmethod
    def _finish(record: UsageRecord, started: float, status_code: int, status: str) -> None:
        record.latency_ms = elapsed_ms(started)
        record.status_code = status_code
        record.status = status

    @staticmethod
    def _estimate(record: UsageRecord, meter: SSEMeter | None, body_len: int) -> None:
        """No usage from the provider: the prompt from the body size, the completion from
        the content events delivered."""
        if meter is not None and meter.usage is not None:
            OpenAIProxy._set_usage(record, meter.usage, "provider")
            return
        record.prompt_tokens = estimate_prompt_tokens(body_len)
        record.completion_tokens = meter.content_events if meter is not None else 0
        record.total_tokens = record.prompt_tokens + record.completion_tokens
        record.usage_source = "estimated"

    def _client_left_early(self, record: UsageRecord, started: float, body_len: int) -> None:
        """A streaming client hung up before its stream started (499, as nginx logs it)."""
        self._estimate(record, None, body_len)
        self._finish(record, started, 499, "client_disconnected")
        self.g.pipeline.submit(record)

    @staticmethod
    def _set_usage(record: UsageRecord, usage, source: str) -> None:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.total_tokens = usage.total_tokens
        record.cached_tokens = usage.cached_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.usage_source = source

    async def _fail(self, send, record: UsageRecord, started: float, status_code: int,
                    status: str, message: str, code: str, should_retry: bool | None = False) -> None:
        """An OpenAI-style error answer; `should_retry` is sent as `x-should-retry` (None:
        no header, the SDK's own rules apply)."""
        self._finish(record, started, status_code, status)
        self.g.pipeline.submit(record)
        error = GatewayError(status_code, message, "upstream_error", code)
        body = error.body()
        headers = json_headers(body, ((b"x-tallygate-request-id", record.request_id.encode()),))
        if should_retry is not None:
            headers.append((b"x-should-retry", b"true" if should_retry else b"false"))
        await send_bytes(send, status_code, headers, body)
