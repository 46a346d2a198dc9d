"""HTTP-level bounds, attacked from outside over raw sockets against real gateway processes:
head size and count (431), slow heads and bodies (408), idle connections, duplicate
credentials headers, compressed request bodies, streams to HTTP/1.0 clients."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib

from support import TOKEN, body_of, post, raw_exchange, request_bytes, status_of

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _error(resp: bytes) -> dict:
    head = resp.partition(b"\r\n\r\n")[0].lower()
    assert b"content-type: application/json" in head, resp[:300]
    return json.loads(body_of(resp))["error"]


def _head(path: str = "/health", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def _chat_bytes(body: bytes, extra: dict | None = None, version: str = "HTTP/1.1") -> bytes:
    raw = request_bytes("POST", "/v1/chat/completions", body, {
        "Authorization": f"Bearer {TOKEN}", "X-Tenant-ID": "acme", "Content-Type": "application/json",
        **(extra or {})})
    return raw.replace(b"HTTP/1.1", version.encode(), 1)


def test_oversized_heads_are_refused_with_431(gateway):
    gw = gateway()
    # one huge header, complete
    resp = raw_exchange(gw.port, _head(extra=b"X-Big: " + b"a" * 100_000 + b"\r\n"), timeout=5)
    assert status_of(resp) == 431, resp[:200]
    assert _error(resp)["code"] == "request_headers_too_large"
    assert b"connection: close" in resp.lower()
    # a huge request target
    resp = raw_exchange(gw.port, b"GET /health?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert status_of(resp) == 431, resp[:200]
    # too many headers
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    resp = raw_exchange(gw.port, _head(extra=many), timeout=5)
    assert status_of(resp) == 431 and "headers" in _error(resp)["message"]
    # 50,000 headers: refused, and fast
    started = time.monotonic()
    resp = raw_exchange(gw.port, _head(extra=b"a: b\r\n" * 50_000), timeout=5)
    assert status_of(resp) == 431 and time.monotonic() - started < 3
    # under the limits: served
    resp = raw_exchange(gw.port, _head(extra=b"X-Big: " + b"a" * 50_000 + b"\r\n"), timeout=5,
                        read_until_close=False)
    assert status_of(resp) == 200, resp[:200]
    resp = raw_exchange(gw.port, _head(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(95))), timeout=5,
                        read_until_close=False)
    assert status_of(resp) == 200, resp[:200]
    # a large body in the same packets as its head is not taken for a large head
    big = json.dumps({**CHAT, "pad": "x" * 500_000}).encode()
    resp = raw_exchange(gw.port, _chat_bytes(big), timeout=10, read_until_close=False)
    assert status_of(resp) == 200, resp[:300]


def test_unfinished_huge_heads_do_not_exhaust_memory(gateway):
    """100 connections each sending an endless header (4 MB of it, no line end): before the
    bound, the gateway buffered all of it (100 x 16 MB took RSS from 75 MB to 1.8 GB)."""
    gw = gateway()
    base = rss_mb(gw.proc.pid)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak.append(rss_mb(gw.proc.pid))
            time.sleep(0.02)

    answers: list[bytes] = []

    def flood():
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        got = b""
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
            block = b"a" * 65536
            for _ in range(64):  # 4 MB
                s.sendall(block)
        except OSError:
            pass
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        s.close()
        answers.append(got)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=flood) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    sampler.join()
    assert len(answers) == 100  # every connection was ended by the gateway
    growth = max(peak) - base
    assert growth < 40, f"RSS grew by {growth:.0f} MB (from {base:.0f} MB)"
    # those that were still reading saw the 431 (the others were cut while writing)
    assert all(status_of(a) == 431 for a in answers if a)
    assert gw.proc.poll() is None
    assert post(gw.base_url + "/chat/completions", CHAT, gw.headers())[0] == 200


def _drip(port: int, first: bytes, drip: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Send `first`, then `drip` a byte every `every` s; (seconds until the gateway
    answered or closed, what it sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    started = time.monotonic()
    s.sendall(first)
    got = b""
    s.settimeout(every)
    for i in range(100_000):
        if time.monotonic() - started > limit:
            break
        if drip:
            try:
                s.sendall(drip[i % len(drip):i % len(drip) + 1])
            except OSError:
                break
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    elapsed = time.monotonic() - started
    s.close()
    return elapsed, got


def test_slow_heads_and_bodies_time_out(gateway):
    gw = gateway(TALLYGATE_HEADER_TIMEOUT="1", TALLYGATE_BODY_TIMEOUT="1.5", TALLYGATE_KEEP_ALIVE_TIMEOUT="2.5")
    # slowloris: a head that never ends, a byte every 0.2 s
    elapsed, got = _drip(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X-Slow: aaaa\r\n", 0.2, 10)
    assert status_of(got) == 408 and _error(got)["code"] == "request_timeout", got[:200]
    assert 1.0 <= elapsed < 2.5, elapsed
    # a body that stops
    head = _chat_bytes(b"")[:-len(b"\r\n\r\n")].replace(b"Content-Length: 0", b"Content-Length: 500") + b"\r\n\r\n"
    elapsed, got = _drip(gw.port, head + b'{"model":', b"", 0.2, 10)
    assert status_of(got) == 408 and "body" in _error(got)["message"], got[:200]
    assert 1.5 <= elapsed < 3.0, elapsed
    # a body that drips, a byte every 0.3 s (each byte in time, the whole far too slow)
    elapsed, got = _drip(gw.port, head, b" " * 500, 0.3, 10)
    assert status_of(got) == 408, got[:200]
    assert 1.5 <= elapsed < 3.5, elapsed
    # a connection that never sends anything is closed after the keep-alive timeout
    elapsed, got = _drip(gw.port, b"", b"", 0.2, 10)
    assert got == b"" and 2.5 <= elapsed < 4.0, elapsed
    assert gw.records() == []  # none of them reached the upstream

    # what is not slow is not cut: a stream longer than both timeouts
    status, headers, data = post(gw.base_url + "/chat/completions", {
        **CHAT, "stream": True, "fake": {"chunks": 12, "chunk_delay": 0.25}}, gw.headers())
    assert status == 200 and data.rstrip().endswith(b"data: [DONE]")
    # a keep-alive connection idle longer than the header timeout between two requests
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        for _ in range(2):
            s.sendall(_head())
            resp = _read_response(s)
            assert status_of(resp) == 200, resp[:200]
            time.sleep(1.6)
    # a body sent in parts within the body timeout
    body = json.dumps(CHAT).encode()
    raw = _chat_bytes(body)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        cut = len(raw) - len(body)
        s.sendall(raw[:cut])
        for part in (body[:10], body[10:20], body[20:]):
            time.sleep(0.3)
            s.sendall(part)
        resp = _read_response(s)
        assert status_of(resp) == 200, resp[:200]
    gw.wait_records(2)


def test_duplicate_credential_headers_are_refused(gateway, fake_upstream):
    gw = gateway()
    fake_upstream.reset()
    body = json.dumps(CHAT).encode()
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    cases = [
        auth + auth + b"X-Tenant-ID: acme\r\n",  # the same value twice
        auth + b"Authorization: Bearer tg-other\r\nX-Tenant-ID: acme\r\n",
        auth + b"X-Tenant-ID: acme\r\nX-Tenant-ID: victim\r\n",
        auth + b"x-tenant-id: acme\r\nX-TENANT-ID: acme\r\n",
    ]
    for extra in cases:
        raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra
               + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        resp = raw_exchange(gw.port, raw, timeout=5, read_until_close=False)
        assert status_of(resp) == 400, (extra, resp[:300])
        assert _error(resp)["code"] == "duplicate_header"
    for path in (b"/v1/models", b"/admin/keys", b"/metrics", b"/v1/usage"):
        resp = raw_exchange(gw.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + auth + b"\r\n",
                            timeout=5, read_until_close=False)
        assert status_of(resp) == 400 and _error(resp)["code"] == "duplicate_header", (path, resp[:300])
    assert fake_upstream.requests() == [] and gw.records() == []
    # other repeated headers are fine
    raw = _chat_bytes(body, {"Accept": "application/json"}).replace(b"\r\n\r\n", b"\r\nAccept: */*\r\n\r\n", 1)
    assert status_of(raw_exchange(gw.port, raw, timeout=5, read_until_close=False)) == 200


def test_compressed_request_bodies(gateway, fake_upstream):
    gw = gateway(TALLYGATE_MAX_BODY_BYTES=str(1024 * 1024))
    url = gw.base_url + "/chat/completions"
    doc = {**CHAT, "messages": [{"role": "user", "content": "compressed " * 50}]}
    plain = json.dumps(doc).encode()
    raw_deflate = zlib.compressobj(wbits=-15)
    for encoding, data in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain)),
                           ("deflate", raw_deflate.compress(plain) + raw_deflate.flush()),
                           ("gzip, identity", gzip.compress(plain))):
        fake_upstream.reset()
        status, _, answer = post(url, data, {**gw.headers(), "Content-Encoding": encoding})
        assert status == 200, (encoding, answer)
        seen = fake_upstream.requests()
        assert len(seen) == 1 and json.loads(seen[0]["body"]) == doc  # the upstream got plain JSON
    status, _, answer = post(url, plain, {**gw.headers(), "Content-Encoding": "br"})
    err = json.loads(answer)["error"]
    assert status == 415 and "Content-Encoding" in err["message"] and err["code"] == "unsupported_content_encoding"
    status, _, answer = post(url, b"\x1f\x8b not gzip at all", {**gw.headers(), "Content-Encoding": "gzip"})
    assert status == 400 and json.loads(answer)["error"]["code"] == "invalid_body_encoding"
    assert "UTF-8" not in json.loads(answer)["error"]["message"]
    # a 60 KB body that inflates to 64 MB: 413, and the gateway does not hold 64 MB
    bomb = gzip.compress(b'{"model":"gpt-4o-mini","pad":"' + b"0" * (64 * 1024 * 1024) + b'"}')
    assert len(bomb) < 100_000
    base = rss_mb(gw.proc.pid)
    status, _, answer = post(url, bomb, {**gw.headers(), "Content-Encoding": "gzip"})
    assert status == 413 and json.loads(answer)["error"]["code"] == "request_too_large"
    assert rss_mb(gw.proc.pid) - base < 20


def _read_response(s: socket.socket) -> bytes:
    """One response with a Content-Length, from a connection that stays open."""
    out = b""
    while b"\r\n\r\n" not in out or len(out.partition(b"\r\n\r\n")[2]) < _length(out):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def _length(resp: bytes) -> int:
    for line in resp.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _read_until_close(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_stream_to_http10_client_is_close_delimited(gateway):
    gw = gateway()
    stream = json.dumps({**CHAT, "stream": True, "fake": {"chunks": 4}}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(_chat_bytes(stream, version="HTTP/1.0"))
        resp = _read_until_close(s)  # the end of the body is the end of the connection
    head, _, body = resp.partition(b"\r\n\r\n")
    lower = head.lower()
    assert status_of(resp) == 200 and b"text/event-stream" in lower
    assert b"transfer-encoding" not in lower and b"content-length" not in lower
    assert b"connection: close" in lower
    assert body.startswith(b"data: {") and body.rstrip().endswith(b"data: [DONE]")  # no chunk sizes
    assert all(not line or line.startswith(b"data: ") for line in body.split(b"\n"))
    # a JSON answer to HTTP/1.0 keeps its Content-Length; HTTP/1.1 streams stay chunked
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(_chat_bytes(json.dumps(CHAT).encode(), version="HTTP/1.0"))
        resp = _read_until_close(s)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert status_of(resp) == 200 and b"content-length" in head.lower() and json.loads(body)["object"]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(_chat_bytes(stream, {"Connection": "close"}))
        resp = _read_until_close(s)
    assert b"transfer-encoding: chunked" in resp.partition(b"\r\n\r\n")[0].lower()
    assert body_of(resp).rstrip().endswith(b"data: [DONE]")
    recs = gw.wait_records(3)
    assert all(r["status"] == "ok" and r["status_code"] == 200 for r in recs)
