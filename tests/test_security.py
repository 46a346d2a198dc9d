"""Secrets never reach the output, headers cannot forge log lines, admin needs the master
key, SQL takes values only as parameters. Tested by running gateways through normal and
failing scenarios and reading everything they printed."""

from __future__ import annotations

import json
import signal
import socket

from support import (
    MASTER,
    TOKEN,
    UPSTREAM_KEY,
    StreamReader,
    base_env,
    call,
    free_port,
    post,
    raw_exchange,
    request_bytes,
    status_of,
)

PG_PASSWORD = "pg-secret-password-9f8e7d"
MESSAGES = [{"role": "user", "content": "hi"}]


def _exercise(gw, tenant_keys: list[str], keys_loaded: bool = True) -> None:
    """Normal traffic, failures, retries, disconnects, bad credentials, admin calls.
    Before tenant keys are loaded, an unknown `tg-` token is a 503 (it may be a key), not a 401."""
    url = gw.base_url + "/chat/completions"
    h = gw.headers()
    assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES}, h)[0] == 200
    assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}, h)[0] == 200
    assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES, "fake": {"status": 401}}, h)[0] == 401
    assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES, "fake": {"status": 503}}, h)[0] == 503
    assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES, "fake": {"delay": 2}}, h)[0] == 504
    r = StreamReader(gw.port, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                                                       "fake": {"chunks": 30, "chunk_delay": 0.05}}, h)
    r.read_until(b"data: ", 2)
    r.hang_up()
    for secret in (TOKEN, MASTER, UPSTREAM_KEY):  # near misses and the secrets in odd places
        for wrong in (secret + "x", secret[:-1], secret.upper()):
            expected = 401 if keys_loaded or not wrong.startswith("tg-") else 503
            assert post(url, {"model": "m"}, {"Authorization": f"Bearer {wrong}", "X-Tenant-ID": "a"})[0] == expected
        assert post(url + f"?api_key={secret}", {"model": "m"}, {"X-Tenant-ID": "a"})[0] == 401
        assert post(url, {"model": "m"}, {"Authorization": f"Basic {secret}", "X-Tenant-ID": "a"})[0] == 401
        assert post(url, {"model": "m"}, {**h, "X-Tenant-ID": secret + "!"})[0] == 400
        assert post(gw.url + f"/v1/nope/{secret}", {"model": "m"}, h)[0] == 404
        raw_exchange(gw.port, b"GET /" + secret.encode() + b" HTTP/1.1\r\nHost: \x00" + secret.encode() + b"\r\n\r\n",
                     timeout=1)
    assert call(gw.url + "/metrics", token=MASTER)[0] == 200
    assert call(gw.url + "/metrics", token=TOKEN)[0] == 403
    for key in tenant_keys:
        assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES}, {"Authorization": f"Bearer {key}"})[0] == 200
        assert post(url, {"model": "m"}, {"Authorization": f"Bearer {key}x"})[0] == 401


def _assert_clean(output: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in output, f"a secret ({secret[:6]}...) appeared in the output"
    # the formatter's scrubbing is the last line of defence: no code path should need it
    assert "[redacted]" not in output


def test_no_secret_in_any_output(gateway, postgres_env, tmp_path):
    gw = gateway(**postgres_env, TALLYGATE_FIRST_BYTE_TIMEOUT="1", TALLYGATE_RETRY_BACKOFF="0.01")
    status, _, data = call(gw.url + "/admin/keys", "POST", {"tenant_id": "sec-tenant"}, token=MASTER)
    assert status == 201, data
    tenant_key = json.loads(data)["key"]
    _exercise(gw, [tenant_key])
    assert call(gw.url + "/admin/keys", token=MASTER)[0] == 200
    gw.wait_records(7)
    assert gw.stop() == 0
    _assert_clean(gw.output(), [TOKEN, MASTER, UPSTREAM_KEY, tenant_key])

    # a Postgres password in DATABASE_URL, the database unreachable: errors are logged, the password is not
    dead = free_port()
    gw2 = gateway(DATABASE_URL=f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{dead}/x?sslmode=disable",
                  PGPASSWORD=PG_PASSWORD, TALLYGATE_FIRST_BYTE_TIMEOUT="1", ready=False,
                  TALLYGATE_LIMITS_ON_DB_DOWN="open")  # served while the database is down
    _exercise(gw2, [], keys_loaded=False)
    gw2.wait_records(6)
    assert gw2.stop() == 0
    out2 = gw2.output()
    assert "ledger unavailable" in out2  # the failure was reported
    _assert_clean(out2, [TOKEN, MASTER, UPSTREAM_KEY, PG_PASSWORD])

    # a start-up that is refused prints why, without the secrets it was given
    gw3_env = {"TALLYGATE_CONFIG": str(tmp_path / "missing.toml")}
    import subprocess
    import sys

    env = base_env("http://127.0.0.1:9/v1", tmp_path, **gw3_env)
    proc = subprocess.run([sys.executable, "-m", "tallygate", "serve", "--port", str(free_port())],
                          env=env, capture_output=True, timeout=30)
    assert proc.returncode != 0 and b"missing.toml" in proc.stdout + proc.stderr
    _assert_clean((proc.stdout + proc.stderr).decode(errors="replace"), [TOKEN, MASTER, UPSTREAM_KEY])


def test_headers_and_bodies_cannot_forge_log_lines(gateway):
    gw = gateway(GOOGLE_CLOUD_PROJECT="proj")
    forged = '{"severity":"CRITICAL","message":"forged"}'
    url = gw.base_url + "/chat/completions"
    h = gw.headers()
    models = ["x\n" + forged, "x\r\n" + forged, "x\u2028" + forged, "x\"," + forged[1:], "\x1b[31mred"]
    for model in models:
        assert post(url, {"model": model, "messages": MESSAGES}, h)[0] == 200
    for header, value in (("X-Cloud-Trace-Context", f'abc"}},{forged}'), ("traceparent", f"00-{forged}-x-01"),
                          ("User-Agent", forged), ("X-Request-ID", forged), ("OpenAI-Organization", forged)):
        assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES}, {**h, header: value})[0] == 200
    # raw header bytes a library would refuse to send
    for value in (b"acme\x0b" + forged.encode(), b"acme\x00", b"acme\xc2\x85" + forged.encode()):
        resp = raw_exchange(gw.port, request_bytes("POST", "/v1/chat/completions", b'{"model":"m"}', {
            "Authorization": f"Bearer {TOKEN}"}).replace(b"\r\n\r\n", b"\r\nX-Tenant-ID: " + value + b"\r\n\r\n", 1),
            timeout=2, read_until_close=False)
        assert status_of(resp) == 400, resp[:200]
    recs = gw.wait_records(len(models) + 5)
    assert sorted(r["model"] for r in recs[:len(models)]) == sorted(models)  # JSON-escaped, intact
    out = gw.output()
    assert out.splitlines() == out.split("\n")[:-1]  # no U+2028, U+2029, U+0085 left raw to split a line
    for line in out.splitlines():
        entry = json.loads(line)  # every line is one JSON object: nothing split a line
        assert isinstance(entry, dict) and entry.get("severity") and "message" in entry
        assert entry["message"] != "forged" and entry["severity"] != "CRITICAL"
        assert "logging.googleapis.com/trace" not in entry or "forged" not in entry["logging.googleapis.com/trace"]


def test_stream_headers_from_a_hostile_upstream_do_not_break_the_response(gateway):
    """Upstream header values with control characters are not relayed raw."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    import threading

    def serve():
        for _ in range(1):
            conn, _ = srv.accept()
            conn.recv(65536)
            body = b'{"id":"x","object":"chat.completion","model":"m","choices":[]}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: a\tb\x7f\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    gw = gateway(upstream=f"http://127.0.0.1:{port}/v1")
    status, headers, data = post(gw.base_url + "/chat/completions", {"model": "m", "messages": MESSAGES}, gw.headers())
    assert status == 200 and json.loads(data)["id"] == "x" and "x-request-id" not in headers
    assert "Exception in ASGI" not in gw.output()
    srv.close()
    assert gw.proc.poll() is None
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(10) == 0


def test_upstream_cookies_never_cross_to_another_request(gateway, fake_upstream):
    """One upstream client serves every tenant: a Set-Cookie from the upstream must not
    come back on a later request (another tenant's). (A host name: a cookie jar ignores
    cookies from IP addresses.)"""
    gw = gateway(OPENAI_BASE_URL=fake_upstream.base_url.replace("127.0.0.1", "localhost"))
    url = gw.base_url + "/chat/completions"
    fake_upstream.reset()
    assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES, "fake": {"set_cookie": "__cf_bm=tenant-a"}},
                {**gw.headers(), "X-Tenant-ID": "tenant-a"})[0] == 200
    assert post(url, {"model": "gpt-4o-mini", "messages": MESSAGES}, {**gw.headers(), "X-Tenant-ID": "tenant-b"})[0] == 200
    seen = fake_upstream.requests()
    assert len(seen) == 2 and [r["cookie"] for r in seen] == [None, None]
