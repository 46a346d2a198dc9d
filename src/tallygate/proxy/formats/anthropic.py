"""Anthropic's Messages API: `/v1/messages` (JSON and SSE) and `/v1/messages/count_tokens`.

Bodies go upstream as the client sent them (the model name changes only for a route's
upstream_model or a fallback); streams come back byte for byte (metering/anthropic_sse.py).
Usage is Anthropic's: `input_tokens` excludes cache reads and writes, which are added to
the record's prompt (metering/usage.py, `_anthropic_usage`). Errors, the gateway's own and
in-stream ones, are in Anthropic's shape: {"type": "error", "error": {"type", "message"}}.

`count_tokens` is forwarded and recorded as a row of its own endpoint with no tokens and
no cost: counting is free at Anthropic, and the count is the size of a prompt not sent.
It is admitted like any request (rpm limits count it; its budget reservation is its body
at the input rate, settled to $0).
"""

from __future__ import annotations

import orjson

from ...errors import GatewayError
from ...metering.anthropic_sse import AnthropicStreamMeter
from ...metering.bounds import request_caps
from ...metering.usage import Usage, _anthropic_usage, model_name
from .openai import OPENAI

# HTTP status of an error -> Anthropic's error type (docs.anthropic.com, "Errors")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    kind = ERROR_TYPES.get(status)
    if kind is not None:
        return kind
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


# stream error codes of the relay -> the status whose error type an in-stream error event has
_STREAM_ERRORS = {"upstream_timeout": 504}


def _message_usage(body: bytes) -> tuple[Usage | None, str | None]:
    """(usage, model) of a Message: its top-level `usage` object. Parsed whole at any size
    (a Message is text, not megabytes of floats; orjson reads ~1 GB/s)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    usage_doc = doc.get("usage")
    model = model_name(doc.get("model"))
    if not isinstance(usage_doc, dict):
        return None, model
    return _anthropic_usage(usage_doc), model


class AnthropicFormat:
    """POST /v1/messages."""

    endpoints = {b"/v1/messages": "/messages"}
    wire = "anthropic"  # the routes that speak it (upstream.Router.for_wire)
    api_key_header: bytes | None = b"x-api-key"  # read as the credential when there is no Authorization header

    def __init__(self) -> None:
        self.parse = OPENAI.parse  # the same checks: a JSON object, a model name, a stream flag
        self.caps = request_caps  # max_tokens (required by the API)

    def prepare(
        self, route, name: str, model: str, endpoint: str, doc: dict, body: bytes, stream: bool
    ) -> tuple[bytes, bool]:
        target = route.upstream_model or (name if name != model else None)
        if target is None:
            return body, False
        doc["model"] = target
        return orjson.dumps(doc), False

    def usage(self, body: bytes) -> tuple[Usage | None, str | None]:
        return _message_usage(body)

    def meter(self, strip_usage: bool, endpoint: str, max_event: int) -> AnthropicStreamMeter:
        return AnthropicStreamMeter(max_event)

    def error_event(self, code: str, message: str) -> bytes:
        return b"event: error\ndata: " + anthropic_error(_STREAM_ERRORS.get(code, 500), message) + b"\n\n"

    def error_body(self, err: GatewayError) -> bytes:
        return anthropic_error(err.status, err.message)


class AnthropicCountTokens(AnthropicFormat):
    """POST /v1/messages/count_tokens: forwarded, recorded with no tokens and no cost."""

    endpoints = {b"/v1/messages/count_tokens": "/messages/count_tokens"}

    def __init__(self) -> None:
        super().__init__()
        self.caps = self._no_output

    @staticmethod
    def _no_output(doc: dict) -> tuple[int, int]:
        return 0, 0  # no choices: nothing generated, the output bound is 0

    def usage(self, body: bytes) -> tuple[Usage | None, str | None]:
        return Usage(), None  # an answer of {"input_tokens": N}: a count, not usage


ANTHROPIC = AnthropicFormat()
ANTHROPIC_COUNT_TOKENS = AnthropicCountTokens()
