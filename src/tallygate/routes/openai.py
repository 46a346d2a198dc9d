"""The OpenAI-compatible surface: forward, relay, meter.

Bodies go upstream as the client sent them; the one change is adding
`stream_options.include_usage` to streams that did not ask for usage (the usage
chunk is then removed on the way back). Upstream bytes are relayed as they
arrive. Metering ends in one UsageRecord handed to the pipeline.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import orjson

from ..errors import GatewayError, bad_request
from ..metering.extract import SSEMeter, from_json_body
from ..metering.record import UsageRecord, utcnow
from ..upstream import FORWARD_HEADERS, PASS_HEADERS, Route

ENDPOINTS = {
    b"/v1/chat/completions": "/chat/completions",
    b"/v1/completions": "/completions",
    b"/v1/embeddings": "/embeddings",
    b"/v1/responses": "/responses",
}
# endpoints whose streams accept stream_options.include_usage
STREAM_USAGE_ENDPOINTS = frozenset({"/chat/completions", "/completions"})
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class ClientGone(Exception):
    pass


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


async def read_body(receive, limit: int, content_length: int | None) -> bytes:
    if content_length is not None and content_length > limit:
        raise GatewayError(413, f"Request body too large: {content_length} bytes, the limit is {limit}.",
                           "invalid_request_error", "request_too_large")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body = message.get("body", b"")
        if body:
            size += len(body)
            if size > limit:
                raise GatewayError(413, f"Request body too large: the limit is {limit} bytes.",
                                   "invalid_request_error", "request_too_large")
            chunks.append(body)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false.", "invalid_stream", "stream")
    return doc, model, stream


def estimate_prompt_tokens(body_len: int) -> int:
    """A rough prompt size (4 bytes a token) for records without provider usage."""
    return max(1, body_len // 4)


class OpenAIProxy:
    def __init__(self, gateway) -> None:
        self.g = gateway  # the Gateway (app.py): settings, auth, router, session, pipeline

    async def handle(self, scope, receive, send, endpoint: str, principal, headers: dict) -> None:
        g = self.g
        started = time.perf_counter()
        created = utcnow()
        cl = headers.get(b"content-length")
        try:
            content_length = int(cl) if cl is not None else None
        except ValueError:
            raise bad_request("Invalid Content-Length header.", "invalid_request") from None
        body = await read_body(receive, g.settings.max_body_bytes, content_length)
        doc, model, stream = parse_request(body)
        route: Route = g.router.resolve(model)

        reservation = None
        if g.guard is not None:
            reservation = await g.guard.admit(principal, model, doc, body)

        record = UsageRecord(
            request_id=new_request_id(), created_at=created, tenant_id=principal.tenant_id,
            model=model, endpoint="/v1" + endpoint, stream=stream, api_key_id=principal.key_id,
            provider=route.provider, trace=g.trace_for(headers),
        )

        strip_usage = False
        payload = body
        if route.upstream_model is not None:
            doc["model"] = route.upstream_model
        if stream and endpoint in STREAM_USAGE_ENDPOINTS and route.stream_usage:
            opts = doc.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                opts = dict(opts) if isinstance(opts, dict) else {}
                opts["include_usage"] = True
                doc["stream_options"] = opts
                strip_usage = True
        if strip_usage or route.upstream_model is not None:
            payload = orjson.dumps(doc)

        req_headers = route.headers
        extra = [(k, v) for k, v in headers.items() if k in FORWARD_HEADERS]
        if extra:
            req_headers = dict(req_headers)
            for k, v in extra:
                req_headers[k.decode()] = v.decode("latin-1")

        try:
            await self._forward(send, receive, route, endpoint, payload, req_headers, record,
                                strip_usage, started, len(body))
        finally:
            if reservation is not None:
                g.guard.settle_later(reservation, record)

    async def _forward(self, send, receive, route: Route, endpoint: str, payload: bytes,
                       req_headers, record: UsageRecord, strip_usage: bool, started: float,
                       body_len: int) -> None:
        g = self.g
        try:
            resp = await g.session.post(route.url(endpoint), data=payload, headers=req_headers)
        except asyncio.TimeoutError:
            await self._fail(send, record, started, 504, "timeout",
                             "The upstream did not answer in time.", "upstream_timeout")
            return
        except aiohttp.ClientError as exc:
            await self._fail(send, record, started, 502, "upstream_error",
                             f"Could not reach the upstream: {type(exc).__name__}.", "upstream_unreachable")
            return
        try:
            ctype = resp.headers.get("Content-Type", "")
            if record.stream and resp.status == 200 and ctype.startswith("text/event-stream"):
                await self._relay_stream(send, receive, resp, record, strip_usage, started, body_len)
            else:
                await self._relay_json(send, resp, record, started)
        finally:
            resp.release()

    def _response_headers(self, resp, record: UsageRecord) -> list:
        out = [(b"x-tallygate-request-id", record.request_id.encode())]
        for name, value in resp.raw_headers:
            lname = name.lower()
            if lname in PASS_HEADERS or lname.startswith(b"x-ratelimit-"):
                out.append((lname, value))
        return out

    async def _relay_json(self, send, resp, record: UsageRecord, started: float) -> None:
        g = self.g
        try:
            data = await resp.read()
        except asyncio.TimeoutError:
            await self._fail(send, record, started, 504, "timeout",
                             "The upstream stopped answering mid-response.", "upstream_timeout")
            return
        except aiohttp.ClientError as exc:
            await self._fail(send, record, started, 502, "upstream_error",
                             f"The upstream connection failed mid-response: {type(exc).__name__}.",
                             "upstream_disconnected")
            return
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        record.status_code = resp.status
        if resp.status < 400:
            usage, upstream_model = from_json_body(data)
            record.upstream_model = upstream_model
            if usage is not None:
                self._set_usage(record, usage, "provider")
        else:
            record.status = "upstream_error"
        headers = self._response_headers(resp, record)
        headers.append((b"content-length", str(len(data)).encode()))
        if g.sync_ledger:
            await g.commit(record)
        else:
            g.pipeline.submit(record)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _relay_stream(self, send, receive, resp, record: UsageRecord, strip_usage: bool,
                            started: float, body_len: int) -> None:
        g = self.g
        headers = self._response_headers(resp, record)
        headers.extend(SSE_HEADERS)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        meter = SSEMeter(strip_usage)
        gone = False

        def client_left(task: asyncio.Task) -> None:
            nonlocal gone
            if not task.cancelled() and task.result().get("type") == "http.disconnect":
                gone = True
                resp.close()  # stops the upstream read below: nobody is listening

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(client_left)
        status = "ok"
        try:
            async for chunk in resp.content.iter_any():
                out = meter.feed(chunk)
                if out:
                    if record.ttft_ms is None:
                        record.ttft_ms = round((time.perf_counter() - started) * 1000, 3)
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if gone:
                    break
        except asyncio.TimeoutError:
            status = "timeout"
        except (aiohttp.ClientError, ConnectionError):
            status = "upstream_error"
        finally:
            watcher.remove_done_callback(client_left)
            if not watcher.done():
                watcher.cancel()
        if gone:
            status = "client_disconnected"
        elif status == "ok" and not meter.done:
            status = "upstream_error"  # the upstream closed before [DONE]
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        record.status_code = 200
        record.status = status
        record.upstream_model = meter.model
        if meter.usage is not None:
            self._set_usage(record, meter.usage, "provider")
        else:
            # no usage from the provider: estimate from what was delivered
            record.prompt_tokens = estimate_prompt_tokens(body_len)
            record.completion_tokens = meter.content_events
            record.total_tokens = record.prompt_tokens + record.completion_tokens
            record.usage_source = "estimated"
        if status == "ok":
            tail = meter.flush()
        elif status == "client_disconnected":
            tail = b""
        else:
            # an OpenAI-style error event: SDKs raise it instead of taking a cut stream as complete
            message = ("The upstream stream timed out." if status == "timeout"
                       else "The upstream stream ended before it was complete.")
            tail = b"data: " + orjson.dumps({"error": {
                "message": message, "type": "upstream_error", "param": None,
                "code": "upstream_timeout" if status == "timeout" else "upstream_disconnected"}}) + b"\n\n"
        if g.sync_ledger and not gone:
            await g.commit(record)
        else:
            g.pipeline.submit(record)
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    @staticmethod
    def _set_usage(record: UsageRecord, usage, source: str) -> None:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.total_tokens = usage.total_tokens
        record.cached_tokens = usage.cached_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.usage_source = source

    async def _fail(self, send, record: UsageRecord, started: float, status_code: int,
                    status: str, message: str, code: str) -> None:
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        record.status_code = status_code
        record.status = status
        self.g.pipeline.submit(record)
        error = GatewayError(status_code, message, "upstream_error", code)
        body = error.body()
        await send({"type": "http.response.start", "status": status_code, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-tallygate-request-id", record.request_id.encode())]})
        await send({"type": "http.response.body", "body": body})
