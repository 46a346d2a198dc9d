"""Bad input never causes a 5xx or a crash, and every error is OpenAI-shaped JSON:
malformed bodies, limits, paths, methods, tenants, credentials, garbage on the socket."""

from __future__ import annotations

import json
import random
import socket
from concurrent.futures import ThreadPoolExecutor

from support import MASTER, TOKEN, body_of, post, raw_exchange, request_bytes, status_of

LIMIT = 4096


def assert_openai_error(status: int, data: bytes, what) -> dict:
    assert 400 <= status < 500, (what, status, data[:300])
    err = json.loads(data)["error"]
    assert isinstance(err["message"], str) and err["message"], what
    assert isinstance(err["type"], str) and "code" in err, what
    return err


def test_malformed_bodies_are_400_or_413(gateway):
    gw = gateway(TALLYGATE_MAX_BODY_BYTES=str(LIMIT))
    url = gw.base_url + "/chat/completions"
    cases = [
        (b"", "invalid_json"), (b"   ", "invalid_json"), (b"{nope", "invalid_json"), (b"[1]", "invalid_json"),
        (b'"text"', "invalid_json"), (b"1", "invalid_json"), (b"null", "invalid_json"), (b"true", "invalid_json"),
        (b"[" * 3000, "invalid_json"), (b'\xef\xbb\xbf{"model": "m"}', "invalid_json"),
        (b'{"model": "m", "x": NaN}', "invalid_json"), (b'{"model": "\xff\xfe"}', "invalid_json"),
        (b'{"model": "m"}}', "invalid_json"), (b"\x00\x01\x02", "invalid_json"),
        (b"{}", "invalid_model"), (b'{"model": null}', "invalid_model"), (b'{"model": ""}', "invalid_model"),
        (b'{"model": ["gpt-4o"]}', "invalid_model"), (b'{"model": {"a": 1}}', "invalid_model"),
        (b'{"model": 4}', "invalid_model"), (b'{"model": "' + b"x" * 300 + b'"}', "invalid_model"),
        (b'{"model": "m", "stream": 1}', "invalid_stream"), (b'{"model": "m", "stream": "true"}', "invalid_stream"),
        (b'{"model": "m", "x": "' + b"a" * LIMIT + b'"}', "request_too_large"),
    ]
    for endpoint in ("/chat/completions", "/embeddings", "/responses", "/completions"):
        for data, code in cases:
            status, _, body = post(gw.base_url + endpoint, data, gw.headers())
            err = assert_openai_error(status, body, (endpoint, data[:40]))
            assert err["code"] == code, (endpoint, data[:40], err)
            assert status == (413 if code == "request_too_large" else 400)
            # the field at fault is named, as OpenAI's errors do
            assert err["param"] == {"invalid_model": "model", "invalid_stream": "stream"}.get(code), err
    # the body limit holds without a Content-Length too (chunked)
    chunk = b"a" * 1000
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           + f"Authorization: Bearer {TOKEN}\r\nX-Tenant-ID: acme\r\n\r\n".encode()
           + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 6 + b"0\r\n\r\n")
    resp = raw_exchange(gw.port, raw, timeout=3, read_until_close=False)
    assert status_of(resp) == 413 and json.loads(body_of(resp))["error"]["code"] == "request_too_large"
    # "stream": null is a non-streamed request, as OpenAI takes it
    status, _, _ = post(url, {"model": "gpt-4o-mini", "messages": [], "stream": None}, gw.headers())
    assert status == 200
    assert len(gw.wait_records(1)) == 1
    assert not [l for l in gw.lines() if l.get("severity") in ("ERROR", "CRITICAL")]


def test_paths_methods_tenants_and_credentials(gateway):
    gw = gateway()
    ok_body = {"model": "gpt-4o-mini", "messages": []}
    for path in ("/v1/nope", "/v2/chat/completions", "/v1/chat/completions/", "//v1/chat/completions",
                 "/../etc/passwd", "/v1/chat/completions%00", "/" + "a" * 5000, "/admin"):
        status, _, data = post(gw.url + path, ok_body, gw.headers())
        assert status == 404, (path, status)
        assert_openai_error(status, data, path)
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        resp = raw_exchange(gw.port, request_bytes(method, "/v1/chat/completions", headers=gw.headers()),
                            timeout=3, read_until_close=False)
        assert status_of(resp) == 405, (method, resp[:200])
        assert_openai_error(405, body_of(resp), method)
        assert b"allow: POST" in resp.lower().replace(b"allow: post", b"allow: POST")
    resp = raw_exchange(gw.port, request_bytes("POST", "/health", b"{}"), timeout=3, read_until_close=False)
    assert status_of(resp) == 405

    url = gw.base_url + "/chat/completions"
    for tenant in ("", " ", "a b", "x" * 129, "../x", "a/b", "a\tb", "tenant;drop", "\u00fc".encode().decode("latin-1")):
        status, _, data = post(url, ok_body, {"Authorization": f"Bearer {TOKEN}", "X-Tenant-ID": tenant})
        assert status == 400 and assert_openai_error(status, data, tenant)["code"] == "invalid_tenant", repr(tenant)
    bad_credentials = [
        {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
        {"Authorization": f"Token {TOKEN}"}, {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": "Bearer \u00ff\u00fe".encode().decode("latin-1")},
        {"X-Api-Key": TOKEN}, {"Api-Key": TOKEN}, {"Authorization": f"Bearer {TOKEN}, Bearer {TOKEN}"},
    ]
    for headers in bad_credentials:
        status, h, data = post(url, ok_body, {**headers, "X-Tenant-ID": "acme"})
        assert status == 401, (headers, status, data)
        assert assert_openai_error(status, data, headers)["code"] == "invalid_api_key"
    # the key in a query string is never accepted, on any path
    for query in (f"?api_key={TOKEN}", f"?key={TOKEN}", f"?authorization=Bearer%20{TOKEN}", f"?token={MASTER}"):
        status, _, data = post(url + query, ok_body, {"X-Tenant-ID": "acme"})
        assert status == 401, query
        assert_openai_error(status, data, query)
        resp = raw_exchange(gw.port, request_bytes("GET", "/admin/keys" + query), timeout=3, read_until_close=False)
        assert status_of(resp) == 401, (query, resp[:200])
    status, _, _ = post(url, ok_body, gw.headers())
    assert status == 200
    assert len(gw.wait_records(1)) == 1  # only the authenticated request was metered


GARBAGE = [
    b"\x00\x01\x02garbage\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)),
    b"GET /health HTTP/9.9\r\n\r\n", b"GET\r\n\r\n", b"\r\n\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: \x01\x7f\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\n" + b"X-H: 1\r\n" * 2000 + b"\r\n",
    b"GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /%00%ff%0d%0a HTTP/1.1\r\nHost: x\r\n\r\n", b"CONNECT evil:443 HTTP/1.1\r\nHost: evil\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
    + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode(),
    b"GET /health HTTP/1.0\r\n\r\n", b"get /health http/1.1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":",  # then hang up
]


def _random_garbage(n: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        if i % 3 == 0:
            out.append(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + junk + b"\r\n\r\n")
        elif i % 3 == 1:
            out.append(junk)
        else:
            out.append(b"GET /" + junk.replace(b" ", b"") + b" HTTP/1.1\r\n\r\n")
    return out


def test_garbage_on_the_socket(gateway):
    gw = gateway()

    def one(data: bytes) -> tuple[bytes, bytes]:
        try:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)  # and nothing more: the server must not wait forever
                out = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    out += chunk
                return data, out
        except OSError:
            return data, b""

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, GARBAGE + _random_garbage(60)))
    answered = 0
    for data, resp in results:
        if not resp:
            continue  # closed without an answer: fine
        answered += 1
        status = status_of(resp)
        assert status is not None and status < 500, (data[:80], resp[:200])
        if status >= 400 and status != 405 or b"application/json" in resp.split(b"\r\n\r\n")[0]:
            if b"HEAD" not in data[:5]:
                body = body_of(resp)
                if body:
                    assert "error" in json.loads(body) or status < 400, (data[:80], resp[:300])
    assert answered > 20
    status, _, data = post(gw.base_url + "/chat/completions", {"model": "gpt-4o-mini", "messages": []}, gw.headers())
    assert status == 200 and gw.proc.poll() is None
    out = gw.output()
    assert "Traceback" not in out and "Exception in ASGI" not in out
    assert not [l for l in gw.lines() if l.get("severity") in ("ERROR", "CRITICAL")]
