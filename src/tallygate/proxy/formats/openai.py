"""The OpenAI format: chat completions, completions, embeddings, responses.

Bodies go upstream as the client sent them; the one change is adding
`stream_options.include_usage` to streams that did not ask for usage (the usage
chunk is then removed on the way back, metering/sse.py).
"""

from __future__ import annotations

import orjson

from ...errors import GatewayError, bad_request
from ...metering.bounds import request_caps
from ...metering.sse import SSEMeter
from ...metering.usage import from_json_body

# endpoints whose streams accept stream_options.include_usage
STREAM_USAGE_ENDPOINTS = frozenset({"/chat/completions", "/completions"})


class OpenAIFormat:
    wire = "openai"  # the routes that speak it (upstream.Router.for_wire)
    api_key_header: bytes | None = None  # the credential is an Authorization header only
    endpoints = {
        b"/v1/chat/completions": "/chat/completions",
        b"/v1/completions": "/completions",
        b"/v1/embeddings": "/embeddings",
        b"/v1/responses": "/responses",
    }

    def __init__(self) -> None:
        # the format's readers are plain functions of metering/ (the budget's bounds and the
        # usage of a JSON body); methods below take `self` only because an instance's
        # methods are found faster than static ones on the hot path
        self.caps = request_caps
        self.usage = from_json_body

    def parse(self, body: bytes) -> tuple[dict, str, bool]:
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

    def prepare(
        self, route, name: str, model: str, endpoint: str, doc: dict, body: bytes, stream: bool
    ) -> tuple[bytes, bool]:
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

    def meter(self, strip_usage: bool, endpoint: str, max_event: int) -> SSEMeter:
        return SSEMeter(strip_usage, endpoint == "/v1/responses", max_event)

    def error_event(self, code: str, message: str) -> bytes:
        return (
            b"data: "
            + orjson.dumps({"error": {"message": message, "type": "upstream_error", "param": None, "code": code}})
            + b"\n\n"
        )

    def error_body(self, err: GatewayError) -> bytes:
        return err.body()


OPENAI = OpenAIFormat()
