"""ASGI plumbing in one place: response starts, request bodies, query strings.

Plain functions over ASGI's `send`/`receive`: no request or response objects, which
would cost more per request than the metering does.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from .errors import GatewayError, bad_request

JSON = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def json_headers(body: bytes, extra=()) -> list:
    """The head of a JSON answer: content type and length, then `extra`."""
    return [JSON, (b"content-length", str(len(body)).encode()), *extra]


async def send_bytes(send, status: int, headers: list, body: bytes) -> None:
    """A whole response in two messages; `headers` must carry the content length."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send, status: int, doc, extra=()) -> None:
    """`doc` serialised (or bytes already JSON) with `extra` headers."""
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    await send({"type": "http.response.start", "status": status, "headers": json_headers(body, extra)})
    await send({"type": "http.response.body", "body": body})


async def send_error(send, err: GatewayError) -> None:
    await send_json(send, err.status, err.body(), err.headers)


async def send_text(send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> None:
    await send_bytes(
        send, status, [(b"content-type", content_type), (b"content-length", str(len(body)).encode())], body
    )


def declared_length(headers: dict) -> int | None:
    """The request's Content-Length (None when absent); a 400 when it is not a number."""
    cl = headers.get(b"content-length")
    if cl is None:
        return None
    try:
        return int(cl)
    except ValueError:
        raise bad_request("Invalid Content-Length header.", "invalid_request") from None


async def read_body(receive, limit: int, headers: dict | None = None) -> bytes:
    """The request body, at most `limit` bytes, decoded from its Content-Encoding (a 413
    past the limit, before reading when the declared Content-Length is over); ClientGone
    when the client hangs up first. `headers`: the request's, as a dict."""
    content_length = declared_length(headers) if headers is not None else None
    if content_length is not None and content_length > limit:
        raise GatewayError(
            413,
            f"Request body too large: {content_length} bytes, the limit is {limit}.",
            "invalid_request_error",
            "request_too_large",
        )
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
                raise GatewayError(
                    413,
                    f"Request body too large: the limit is {limit} bytes.",
                    "invalid_request_error",
                    "request_too_large",
                )
            chunks.append(body)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if headers is not None and b"content-encoding" in headers:
        body = decode_body(body, headers[b"content-encoding"], limit)
    return body


# Content-Encoding values a request body may have (brotli and zstd would need a library)
DECODERS = {b"gzip": 16 + 15, b"x-gzip": 16 + 15, b"deflate": 15}


def decode_body(body: bytes, header: bytes, limit: int) -> bytes:
    """A compressed request body, decompressed (at most `limit` bytes come out: a small
    body that inflates to gigabytes is a 413, not memory)."""
    import zlib

    codings = [c.strip().lower() for c in header.split(b",") if c.strip()]
    if len(codings) > 2:
        raise GatewayError(
            415,
            "Content-Encoding lists more than two codings.",
            "invalid_request_error",
            "unsupported_content_encoding",
        )
    for coding in reversed(codings):  # the last applied is listed last
        if coding == b"identity":
            continue
        wbits = DECODERS.get(coding)
        if wbits is None:
            shown = coding[:40].decode("ascii", "replace")
            raise GatewayError(
                415,
                f"Content-Encoding {shown!r} is not supported: send the body uncompressed, or as gzip or deflate.",
                "invalid_request_error",
                "unsupported_content_encoding",
            )
        if coding == b"deflate" and not (
            len(body) >= 2 and body[0] & 0x0F == 8 and ((body[0] << 8) | body[1]) % 31 == 0
        ):
            wbits = -15  # "deflate" means zlib-wrapped; some clients send it raw
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(body, limit + 1)
            if not d.unconsumed_tail:
                out += d.flush()
            if len(out) > limit or d.unconsumed_tail:
                raise GatewayError(
                    413,
                    f"Request body too large once decompressed: the limit is {limit} bytes.",
                    "invalid_request_error",
                    "request_too_large",
                )
            if not d.eof:
                raise zlib.error("truncated")
        except zlib.error:
            raise bad_request(
                f"Request body is not valid {coding.decode()} data (Content-Encoding).", "invalid_body_encoding"
            ) from None
        body = out
    return body


def json_object(raw: bytes) -> dict:
    """A request body that must be a JSON object (empty: {}), or a 400."""
    try:
        doc = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(doc, dict):
        raise bad_request("Request body must be a JSON object.", "invalid_json")
    return doc


def query_params(scope) -> dict[str, str]:
    """The query string as a dict; a repeated name keeps its last value."""
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
