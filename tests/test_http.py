"""tallygate.http: request bodies (limit, Content-Length, Content-Encoding), JSON bodies,
query strings and the response helpers, over ASGI's receive/send; and the admin API
reading its bodies through them."""

from __future__ import annotations

import gzip
import json
import urllib.request
import zlib

import pytest

from support import MASTER
from tallygate.errors import GatewayError
from tallygate.http import ClientGone, json_object, query_params, read_body, send_error, send_json, send_text


def receiver(*chunks: bytes, disconnect: bool = False):
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or disconnect}
                for i, c in enumerate(chunks)]
    if disconnect:
        messages.append({"type": "http.disconnect"})

    async def receive():
        return messages.pop(0)
    return receive


def sender():
    sent: list = []

    async def send(message):
        sent.append(message)
    return send, sent


async def refused(coro) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    return info.value


async def test_read_body_joins_chunks_and_keeps_to_the_limit():
    assert await read_body(receiver(b"ab", b"", b"cd"), 4) == b"abcd"
    assert await read_body(receiver(b"abcd"), 4, {b"content-length": b"4"}) == b"abcd"
    err = await refused(read_body(receiver(b"abc", b"de"), 4))
    assert (err.status, err.code) == (413, "request_too_large")
    # a declared length over the limit is refused before anything is read
    err = await refused(read_body(receiver(), 4, {b"content-length": b"5"}))
    assert err.status == 413 and "5 bytes" in err.message
    err = await refused(read_body(receiver(b"x"), 4, {b"content-length": b"four"}))
    assert (err.status, err.code) == (400, "invalid_request")
    with pytest.raises(ClientGone):
        await read_body(receiver(b"ab", disconnect=True), 4)


async def test_read_body_decodes_content_encoding_within_the_limit():
    doc = b'{"model": "gpt-4o-mini"}' * 10
    raw_deflate = zlib.compressobj(wbits=-15)
    for header, data in ((b"gzip", gzip.compress(doc)), (b"x-gzip", gzip.compress(doc)),
                         (b"deflate", zlib.compress(doc)),
                         (b"deflate", raw_deflate.compress(doc) + raw_deflate.flush()),
                         (b"identity", doc), (b"gzip, identity", gzip.compress(doc)),
                         (b"deflate, GZIP", gzip.compress(zlib.compress(doc)))):
        assert await read_body(receiver(data), 10_000, {b"content-encoding": header}) == doc, header
    bomb = gzip.compress(b"\0" * 1_000_000)  # ~1 KB that inflates to 1 MB
    err = await refused(read_body(receiver(bomb), 10_000, {b"content-encoding": b"gzip"}))
    assert (err.status, err.code) == (413, "request_too_large") and "decompressed" in err.message
    err = await refused(read_body(receiver(doc), 10_000, {b"content-encoding": b"br"}))
    assert (err.status, err.code) == (415, "unsupported_content_encoding")
    err = await refused(read_body(receiver(doc), 10_000, {b"content-encoding": b"gzip, gzip, gzip"}))
    assert err.status == 415
    cut = gzip.compress(doc)[:-12]
    err = await refused(read_body(receiver(cut), 10_000, {b"content-encoding": b"gzip"}))
    assert (err.status, err.code) == (400, "invalid_body_encoding")
    err = await refused(read_body(receiver(b"not gzip"), 10_000, {b"content-encoding": b"gzip"}))
    assert err.code == "invalid_body_encoding"


def test_json_object_is_a_dict_or_a_400():
    assert json_object(b"") == {}
    assert json_object(b'{"a": 1}') == {"a": 1}
    for raw in (b"[1, 2]", b'"text"', b"3", b"null"):
        with pytest.raises(GatewayError) as info:
            json_object(raw)
        assert (info.value.status, info.value.code) == (400, "invalid_json")
        assert "JSON object" in info.value.message
    with pytest.raises(GatewayError) as info:
        json_object(b'{"a": ')
    assert info.value.code == "invalid_json" and "not valid JSON" in info.value.message


def test_query_params_keep_the_last_value_and_blanks():
    assert query_params({"query_string": b"a=1&b=&a=2&c=%20x"}) == {"a": "2", "b": "", "c": " x"}
    assert query_params({}) == {}


async def test_responses_carry_their_length_and_type():
    send, sent = sender()
    await send_json(send, 201, {"ok": True}, [(b"x-extra", b"1")])
    await send_error(send, GatewayError(429, "slow down", "rate_limit_error", "rate_limited",
                                        [(b"retry-after", b"3")]))
    await send_text(send, 200, b"metric 1\n", b"text/plain; version=0.0.4")
    heads, bodies = sent[0::2], sent[1::2]
    assert [h["status"] for h in heads] == [201, 429, 200]
    for head, body in zip(heads, bodies, strict=True):
        headers = dict(head["headers"])
        assert int(headers[b"content-length"]) == len(body["body"])
        assert "more_body" not in body or not body["more_body"]
    assert dict(heads[0]["headers"])[b"x-extra"] == b"1" and json.loads(bodies[0]["body"]) == {"ok": True}
    assert dict(heads[1]["headers"])[b"retry-after"] == b"3"
    assert json.loads(bodies[1]["body"])["error"]["code"] == "rate_limited"
    assert dict(heads[2]["headers"])[b"content-type"] == b"text/plain; version=0.0.4"


def test_admin_api_reads_compressed_bodies_and_refuses_bad_json(gateway):
    gw = gateway()
    limits = gzip.compress(json.dumps({"rpm_limit": 7}).encode())

    def put(data: bytes, encoding: str | None = None):
        headers = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
        if encoding:
            headers["Content-Encoding"] = encoding
        req = urllib.request.Request(gw.url + "/admin/tenants/zipped", data=data, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, doc = put(limits, "gzip")
    assert status == 200 and doc["rpm_limit"] == 7, doc
    status, doc = put(b"[1]")
    assert status == 400 and doc["error"]["code"] == "invalid_json"
    status, doc = put(gzip.compress(b" " * ((1 << 20) + 1)), "gzip")  # the admin API's 1 MiB, decoded
    assert status == 413 and doc["error"]["code"] == "request_too_large"
