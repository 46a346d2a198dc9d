"""Answers to the client: the JSON answer, the SSE relay, error answers; the record finished.

Upstream bytes are relayed as they arrive. Metering ends in exactly one UsageRecord handed
to the pipeline, whatever happens: a timeout, a client that hangs up, a server stopping.
Once an upstream has answered 2xx, a body that breaks off is not retried (the provider
did, and bills, the work): it is answered 502/504 and metered from an estimate.
"""

from __future__ import annotations

import asyncio
import logging
import re

from ..errors import GatewayError
from ..metering.bounds import EMBEDDINGS
from ..metering.record import UsageRecord
from ..metering.usage import PRICED_PARTS, has_priced_parts
from ..upstream import PASS_HEADERS
from .ids import elapsed_ms
from .retries import Failure

log = logging.getLogger("tallygate.upstream")

# control characters an upstream header value must not carry on to the client
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
# upstream response header names as sent -> the name passed on (lower case), or None:
# an upstream sends the same few names every time
_PASSED: dict[bytes, bytes | None] = {}
_UNSEEN = object()


def _passed_name(name: bytes) -> bytes | None:
    lname = name.lower()
    out = lname if lname in PASS_HEADERS or lname.startswith((b"x-ratelimit-", b"anthropic-ratelimit-")) else None
    if len(_PASSED) < 1024:  # bounded: names are chosen by the upstream
        _PASSED[name] = out
    return out


def estimate_prompt_tokens(body_len: int) -> int:
    """A rough prompt size (4 bytes a token) for records without provider usage."""
    return max(1, body_len // 4)


def _finish(record: UsageRecord, started: float, status_code: int, status: str) -> None:
    record.latency_ms = elapsed_ms(started)
    record.status_code = status_code
    record.status = status


def _set_usage(record: UsageRecord, usage, source: str) -> None:
    record.prompt_tokens = usage.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.total_tokens = usage.total_tokens
    record.cached_tokens = usage.cached_tokens
    record.reasoning_tokens = usage.reasoning_tokens
    record.service_tier = usage.service_tier
    record.object_id = usage.response_id
    if has_priced_parts(usage):  # rare: the record's own are 0 until then
        for field in PRICED_PARTS:
            setattr(record, field, getattr(usage, field))
    record.usage_source = source


def _estimate(record: UsageRecord, meter, body_len: int) -> None:
    """No usage from the provider: the meter's partial usage if it has one (Anthropic's
    message_start), else the prompt from the body size, the completion from the content
    events delivered."""
    if meter is not None:
        if meter.usage is not None:
            _set_usage(record, meter.usage, "provider")
            return
        partial = getattr(meter, "partial", None)  # a format's meter that knows part of the usage
        usage = partial() if partial is not None else None
        if usage is not None:
            _set_usage(record, usage, "estimated")
            return
    record.prompt_tokens = estimate_prompt_tokens(body_len)
    record.completion_tokens = meter.content_events if meter is not None else 0
    record.total_tokens = record.prompt_tokens + record.completion_tokens
    record.usage_source = "estimated"


def _response_headers(resp, record: UsageRecord) -> list:
    out: list = [(b"x-tallygate-request-id", record.request_id.encode())]
    passed = _PASSED.get
    for name, value in resp.raw_headers:
        lname = passed(name, _UNSEEN)
        if lname is _UNSEEN:
            lname = _passed_name(name)
        if lname is not None and not _BAD_VALUE.search(value):
            out.append((lname, value))
    return out


def _stream_headers(resp, record: UsageRecord) -> list:
    headers = _response_headers(resp, record)
    headers.extend(SSE_HEADERS)
    return headers


class Relay:
    """Sends the answer of an upstream (or the gateway's own error) and hands the record on."""

    __slots__ = ("pipeline", "max_event", "secrets", "scrub", "upstream_errors")

    def __init__(self, pipeline, *, max_event: int, secrets: tuple[bytes, ...], scrub) -> None:
        self.pipeline = pipeline  # records are submitted to it (in sync-ledger mode it waits for the row)
        self.max_event = max_event  # TALLYGATE_SSE_MAX_EVENT_BYTES
        self.secrets = secrets  # upstream keys: scrubbed from relayed error bodies by scrub(data, secrets)
        self.scrub = scrub
        # the HTTP client's errors, once it has loaded (retries.py sets them with the session)
        self.upstream_errors: tuple[type[BaseException], ...] = (OSError,)

    async def answer(self, send, fmt, resp, data: bytes, record: UsageRecord, started: float) -> None:
        """Relay a whole (non-streamed) upstream answer: success or the upstream's own error."""
        record.latency_ms = elapsed_ms(started)
        record.status_code = resp.status
        if resp.status < 400:
            usage, upstream_model = fmt.usage(data)
            record.upstream_model = upstream_model
            if usage is not None:
                _set_usage(record, usage, "provider")
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
        headers = _response_headers(resp, record)
        headers.append((b"content-length", str(len(data)).encode()))
        committed = self.pipeline.submit(record, wait=True)
        if committed is not None:  # sync-ledger mode: the row first, then the answer
            await committed
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def _scrub(self, data: bytes) -> bytes:
        """An upstream error body may quote the key it was sent: not to the tenant."""
        for secret in self.secrets:
            if secret in data:
                return self.scrub(data, self.secrets)
        return data

    async def stream(
        self, send, fmt, resp, record: UsageRecord, strip_usage: bool, started: float, body_len: int, watch
    ) -> Failure | None:
        """Relay an SSE answer through the format's meter. A Failure: the stream broke
        before its first event (nothing sent, the caller may try again)."""
        meter = fmt.meter(strip_usage, record.endpoint, self.max_event)
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
                            await send(
                                {"type": "http.response.start", "status": 200, "headers": _stream_headers(resp, record)}
                            )
                            sent = True
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    if watch.gone:
                        break
        except TimeoutError:
            status = "timeout"
        except self.upstream_errors:
            status = "upstream_error"
        except asyncio.CancelledError:
            if watch.gone:  # our own cancellation: the client hung up
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
            else:
                # the server stopped past its grace period: meter what was delivered, then go
                watch.resp = None
                resp.close()
                _estimate(record, meter, body_len)
                _finish(record, started, 200 if sent else 503, "timeout")
                record.upstream_model = meter.model
                self.pipeline.submit(record)
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
                return Failure(
                    504, "timeout", "The upstream stream sent nothing in time.", "upstream_timeout", retryable=False
                )
            return Failure(
                502,
                "upstream_error",
                "The upstream ended the stream before its first event.",
                "upstream_disconnected",
                retryable=True,
            )
        _finish(record, started, 200 if sent or status == "ok" else 499, status)
        if last and not sent:
            record.ttft_ms = record.latency_ms  # the whole stream came in one read
        record.upstream_model = meter.model
        if meter.usage is not None:
            _set_usage(record, meter.usage, "provider")
        else:
            _estimate(record, meter, body_len)
            if status == "ok":
                record.usage_flag = "missing"  # a complete stream without usage
        if meter.oversized:
            log.warning(
                "SSE events over TALLYGATE_SSE_MAX_EVENT_BYTES were passed through unread",
                extra={
                    "fields": {
                        "request_id": record.request_id,
                        "model": record.model,
                        "events": meter.oversized,
                        "limit_bytes": self.max_event,
                    }
                },
            )
        if status == "ok":
            tail = last + meter.flush()
        elif status == "client_disconnected":
            tail = b""
        elif status == "timeout":
            tail = fmt.error_event("upstream_timeout", "The upstream stream timed out.")
        else:
            tail = fmt.error_event("upstream_disconnected", "The upstream stream ended before it was complete.")
        committed = self.pipeline.submit(record, wait=status != "client_disconnected")
        if committed is not None:
            await committed
        if status == "client_disconnected":
            return None  # nobody to send to
        if not sent:
            await send({"type": "http.response.start", "status": 200, "headers": _stream_headers(resp, record)})
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        return None

    async def broke_after_status(
        self, send, fmt, resp, record: UsageRecord, started: float, body_len: int, timed_out: bool
    ) -> None:
        """The upstream answered with a status (2xx, or a 4xx), then its body broke off
        (connection closed or silent past the read timeout). A 2xx means the provider did
        the work and bills for it: the call is not repeated (not on this route, not on a
        fallback, and the SDK is told not to), and it is metered from an estimate so the
        ledger and the budget count it. A 4xx is not retried either, as when it arrives whole."""
        billed = resp.status < 300
        if billed:
            _estimate(record, None, body_len)
        log.warning(
            "the upstream connection broke after the upstream began answering: not retried",
            extra={
                "fields": {
                    "request_id": record.request_id,
                    "model": record.model,
                    "upstream_status": resp.status,
                    "timed_out": timed_out,
                }
            },
        )
        what = "stopped sending" if timed_out else "connection broke"
        message = (
            f"The upstream {what} after it began answering (HTTP {resp.status}), before the "
            "response was complete."
            + (" The request may have been processed and billed, so the gateway did not repeat it." if billed else "")
        )
        if timed_out:
            await self.fail(send, fmt, record, started, 504, "timeout", message, "upstream_timeout")
        else:
            await self.fail(send, fmt, record, started, 502, "upstream_error", message, "upstream_disconnected")

    def client_left_early(self, record: UsageRecord, started: float, body_len: int) -> None:
        """A streaming client hung up before its stream started (499, as nginx logs it)."""
        _estimate(record, None, body_len)
        _finish(record, started, 499, "client_disconnected")
        self.pipeline.submit(record)

    def server_stopped(self, record: UsageRecord, started: float, body_len: int) -> None:
        """The server stopped past its grace period while the request was in flight."""
        if record.status_code == 0:
            _estimate(record, None, body_len)
            _finish(record, started, 503, "timeout")
            self.pipeline.submit(record)

    async def fail(
        self,
        send,
        fmt,
        record: UsageRecord,
        started: float,
        status_code: int,
        status: str,
        message: str,
        code: str,
        should_retry: bool | None = False,
    ) -> None:
        """An error answer in the format's shape; `should_retry` is sent as `x-should-retry`
        (None: no header, the SDK's own rules apply)."""
        _finish(record, started, status_code, status)
        self.pipeline.submit(record)
        body = fmt.error_body(GatewayError(status_code, message, "upstream_error", code))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-tallygate-request-id", record.request_id.encode()),
        ]
        if should_retry is not None:
            headers.append((b"x-should-retry", b"true" if should_retry else b"false"))
        await send({"type": "http.response.start", "status": status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
