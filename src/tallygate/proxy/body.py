"""Reading a request body: the size limit, Content-Length, Content-Encoding.

(The admin API reads its bodies here too; the ASGI plumbing module takes these in.)
"""

from __future__ import annotations

from ..errors import GatewayError, bad_request


class ClientGone(Exception):
    pass


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


# Content-Encoding values a request body may have (brotli and zstd would need a library)
DECODERS = {b"gzip": 16 + 15, b"x-gzip": 16 + 15, b"deflate": 15}


def decode_body(body: bytes, header: bytes, limit: int) -> bytes:
    """A compressed request body, decompressed (at most `limit` bytes come out: a small
    body that inflates to gigabytes is a 413, not memory)."""
    import zlib

    codings = [c.strip().lower() for c in header.split(b",") if c.strip()]
    if len(codings) > 2:
        raise GatewayError(415, "Content-Encoding lists more than two codings.",
                           "invalid_request_error", "unsupported_content_encoding")
    for coding in reversed(codings):  # the last applied is listed last
        if coding == b"identity":
            continue
        wbits = DECODERS.get(coding)
        if wbits is None:
            shown = coding[:40].decode("ascii", "replace")
            raise GatewayError(415, f"Content-Encoding {shown!r} is not supported: send the body uncompressed, "
                               "or as gzip or deflate.", "invalid_request_error", "unsupported_content_encoding")
        if coding == b"deflate" and not (len(body) >= 2 and body[0] & 0x0F == 8
                                         and ((body[0] << 8) | body[1]) % 31 == 0):
            wbits = -15  # "deflate" means zlib-wrapped; some clients send it raw
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(body, limit + 1)
            if not d.unconsumed_tail:
                out += d.flush()
            if len(out) > limit or d.unconsumed_tail:
                raise GatewayError(413, f"Request body too large once decompressed: the limit is {limit} bytes.",
                                   "invalid_request_error", "request_too_large")
            if not d.eof:
                raise zlib.error("truncated")
        except zlib.error:
            raise bad_request(f"Request body is not valid {coding.decode()} data (Content-Encoding).",
                              "invalid_body_encoding") from None
        body = out
    return body
