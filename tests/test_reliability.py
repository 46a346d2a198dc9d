"""Upstream faults, client disconnects and SIGTERM, caused for real: a fake upstream
that fails, stalls and cuts off, clients that hang up, a signal to the process."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
import uuid

import openai
import pytest

from support import FakeUpstream, StreamReader, post, routes_file, wait_until

MESSAGES = [{"role": "user", "content": "Say hello"}]
FAST_RETRIES = {"TALLYGATE_RETRY_BACKOFF": "0.01", "TALLYGATE_RETRY_MAX_BACKOFF": "0.5"}


def key() -> str:
    return uuid.uuid4().hex[:12]


def chat(gw, fake: dict, model: str = "gpt-4o-mini", stream: bool = False, **extra) -> tuple[int, dict, bytes]:
    body = {"model": model, "messages": MESSAGES, "fake": fake, **extra}
    if stream:
        body["stream"] = True
    return post(gw.base_url + "/chat/completions", body, gw.headers())


def by_id(gw, request_id: str) -> dict:
    recs = [r for r in gw.records() if r["request_id"] == request_id]
    assert len(recs) == 1, recs
    return recs[0]


@pytest.fixture
def fresh_upstream():
    fake = FakeUpstream()
    yield fake
    fake.stop()


def test_retries_on_5xx_429_and_dropped_connections(gateway, fake_upstream):
    gw = gateway(**FAST_RETRIES)
    stats = lambda: fake_upstream.stats()["by_key"]  # noqa: E731

    k = key()  # two 503s, then an answer
    s, h, data = chat(gw, {"key": k, "fail_first": 2, "prompt_tokens": 10, "completion_tokens": 2})
    assert s == 200 and json.loads(data)["usage"]["total_tokens"] == 12
    assert stats()[k] == 3
    rec = by_id(gw, h["x-tallygate-request-id"]) if gw.wait_records(1) else None
    assert rec["status"] == "ok" and rec["total_tokens"] == 12

    k = key()  # 429 with a short Retry-After, honoured
    started = time.monotonic()
    s, _, _ = chat(gw, {"key": k, "fail_first": 1, "fail_status": 429, "retry_after": "0.3"})
    assert s == 200 and stats()[k] == 2 and time.monotonic() - started >= 0.3

    k = key()  # the connection is closed twice without an answer
    s, _, _ = chat(gw, {"key": k, "drop_first": 2})
    assert s == 200 and stats()[k] == 3

    k = key()  # streams are retried too: nothing had been sent yet
    s, h, data = chat(gw, {"key": k, "fail_first": 2}, stream=True)
    assert s == 200 and data.rstrip().endswith(b"data: [DONE]") and stats()[k] == 3

    k = key()  # still failing after 1 + 2 attempts: the upstream's own 503 comes back unchanged
    s, h, data = chat(gw, {"key": k, "fail_first": 10})
    assert s == 503 and json.loads(data) == {"error": {"message": "fake upstream error 503", "type": "server_error",
                                                       "param": None, "code": None}}
    assert h["x-request-id"] == "req_fake_err" and stats()[k] == 3
    failed_id = h["x-tallygate-request-id"]

    k = key()  # a 4xx is the caller's problem: passed through at once, never retried
    s, h, data = chat(gw, {"key": k, "fail_first": 10, "fail_status": 400})
    assert s == 400 and json.loads(data)["error"]["message"] == "fake upstream error 400" and stats()[k] == 1

    k = key()  # a Retry-After longer than the backoff cap is not waited for
    started = time.monotonic()
    s, h, _ = chat(gw, {"key": k, "fail_first": 10, "fail_status": 429, "retry_after": "60"})
    assert s == 429 and h["retry-after"] == "60" and stats()[k] == 1 and time.monotonic() - started < 2

    recs = gw.wait_records(7)
    time.sleep(0.3)  # not a wait for something: a second record of a retried request would show by now
    assert len(gw.records()) == 7, "one record per request, however many attempts"
    rec = by_id(gw, failed_id)
    assert rec["status"] == "upstream_error" and rec["status_code"] == 503
    retries = [l for l in gw.lines() if l.get("message") == "upstream attempt failed, retrying"]
    assert {l["request_id"] for l in retries} >= {failed_id}
    assert all(l["severity"] == "WARNING" and l["retry_in_ms"] >= 0 for l in retries)
    assert {r["status"] for r in recs} == {"ok", "upstream_error"}


def test_retries_are_configurable(gateway, fake_upstream):
    gw = gateway(TALLYGATE_RETRIES="0")
    k = key()
    s, _, _ = chat(gw, {"key": k, "fail_first": 1})
    assert s == 503 and fake_upstream.stats()["by_key"][k] == 1


def test_fallbacks_in_order(gateway, fake_upstream, tmp_path):
    base = fake_upstream.base_url
    routes_file(tmp_path / "routes.toml",
                {"model": "primary", "base_url": base, "fallbacks": ["backup-a", "backup-b"]},
                {"model": "backup-b", "base_url": base, "upstream_model": "backup-b-2025"},
                {"model": "dead", "base_url": "http://127.0.0.1:9/v1", "fallbacks": ["gpt-4o-mini"]},
                {"model": "picky", "base_url": base, "fallbacks": ["gpt-4o-mini"]})
    gw = gateway(TALLYGATE_CONFIG=tmp_path / "routes.toml", TALLYGATE_RETRIES="1", **FAST_RETRIES)
    fake_upstream.reset()
    failing = {"by_model": {"primary": {"status": 503}, "backup-a": {"status": 500}},
               "prompt_tokens": 100, "completion_tokens": 10}
    s, h, data = chat(gw, failing, model="primary")
    assert s == 200, data
    models = [json.loads(r["body"])["model"] for r in fake_upstream.requests()]
    assert models == ["primary", "primary", "backup-a", "backup-a", "backup-b-2025"]
    rec = by_id(gw, h["x-tallygate-request-id"]) if gw.wait_records(1) else None
    assert rec["model"] == "backup-b" and rec["upstream_model"] == "backup-b-2025" and rec["total_tokens"] == 110

    s, h, data = chat(gw, failing, model="primary", stream=True)  # the same for a stream
    assert s == 200 and b"data: [DONE]" in data

    s, h, data = chat(gw, {}, model="dead")  # unreachable route: its fallback answers
    assert s == 200 and json.loads(data)["model"] == "gpt-4o-mini"

    fake_upstream.reset()  # a 4xx is the caller's problem: no fallback
    s, h, data = chat(gw, {"status": 400}, model="picky")
    assert s == 400 and len(fake_upstream.requests()) == 1

    s, h, data = chat(gw, {"status": 503}, model="primary")  # every route fails: the last answer
    assert s == 503 and json.loads(data)["error"]["message"] == "fake upstream error 503"
    recs = gw.wait_records(5)
    assert by_id(gw, h["x-tallygate-request-id"])["model"] == "backup-b"
    falls = [l for l in gw.lines() if l.get("message") == "upstream failed, trying a fallback"]
    assert len(falls) >= 5 and {"request_id", "model", "fallback_model", "reason"} <= set(falls[0])
    assert len(recs) == 5


def _stalled_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A port whose accept queue is full: new connections hang in SYN, as behind a dead host."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(srv.getsockname())
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.1)  # the kernel settles the fillers' handshakes; nothing the test could ask about
    return srv, fillers


def test_timeouts_connect_first_byte_and_idle(gateway, tmp_path):
    srv, fillers = _stalled_listener()
    try:
        (tmp_path / "routes.toml").write_text(f'''
[[routes]]
model = "blackhole"
base_url = "http://127.0.0.1:{srv.getsockname()[1]}/v1"
''')
        gw = gateway(TALLYGATE_CONFIG=tmp_path / "routes.toml", TALLYGATE_CONNECT_TIMEOUT="0.5",
                     TALLYGATE_FIRST_BYTE_TIMEOUT="0.6", TALLYGATE_READ_TIMEOUT="1.2", TALLYGATE_RETRIES="0")
        started = time.monotonic()
        s, h, data = chat(gw, {}, model="blackhole")
        took = time.monotonic() - started
        assert s == 504 and json.loads(data)["error"]["code"] == "upstream_connect_timeout", data
        assert 0.4 < took < 1.5, took

        started = time.monotonic()  # no headers in time: the first-byte timeout, shorter than read
        s, h, data = chat(gw, {"delay": 3})
        took = time.monotonic() - started
        assert s == 504 and json.loads(data)["error"] == {
            "message": "The upstream did not answer in time.", "type": "upstream_error", "param": None,
            "code": "upstream_timeout"}
        assert 0.5 < took < 1.1, took

        # headers at once, then silence: nothing was sent yet, so a clean JSON 504
        s, h, data = chat(gw, {"first_event_delay": 5}, stream=True)
        assert s == 504 and json.loads(data)["error"]["code"] == "upstream_timeout"

        # silence between chunks after the stream started: an error event ends it
        s, h, data = chat(gw, {"chunks": 4, "chunk_delay": 3}, stream=True)
        assert s == 200 and data.count(b'"content":"Hello"') == 1
        assert b'"code":"upstream_timeout"' in data and b"[DONE]" not in data
        recs = gw.wait_records(4)
        assert [r["status"] for r in recs] == ["timeout"] * 4
        assert [r["status_code"] for r in recs] == [504, 504, 504, 200]
        assert recs[3]["usage_source"] == "estimated" and recs[3]["completion_tokens"] == 1
    finally:
        for c in fillers:
            c.close()
        srv.close()


def test_client_disconnects_cancel_upstream_and_meter_once(gateway, fresh_upstream):
    gw = gateway(upstream=fresh_upstream.base_url)
    h = gw.headers()

    # 1. mid-stream, before any usage arrived: estimated from what was delivered
    r = StreamReader(gw.port, "/v1/chat/completions", {
        "model": "disc-estimated", "messages": MESSAGES, "stream": True,
        "fake": {"chunks": 100, "chunk_delay": 0.05}}, h)
    r.read_until(b"data: ", 3)
    r.hang_up()
    gone = wait_until(lambda: fresh_upstream.stats()["disconnects"], timeout=5)
    assert gone[0]["sent_events"] < 20 and gone[0]["planned_events"] == 103, gone
    rec = wait_until(lambda: [x for x in gw.records() if x["model"] == "disc-estimated"])[0]
    assert rec["status"] == "client_disconnected" and rec["status_code"] == 200
    assert rec["usage_source"] == "estimated" and 3 <= rec["completion_tokens"] < 20 and rec["prompt_tokens"] > 0

    # 2. after the provider's usage chunk, before [DONE]: the provider's numbers
    r = StreamReader(gw.port, "/v1/chat/completions", {
        "model": "disc-provider", "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True},
        "fake": {"prompt_tokens": 70, "completion_tokens": 7, "done_delay": 3}}, h)
    r.read_until(b'"usage":{')
    r.hang_up()
    rec = wait_until(lambda: [x for x in gw.records() if x["model"] == "disc-provider"], timeout=5)[0]
    assert rec["status"] == "client_disconnected" and rec["usage_source"] == "provider"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (70, 7)

    # 3. before the first event: 499, nothing delivered
    r = StreamReader(gw.port, "/v1/chat/completions", {
        "model": "disc-early", "messages": MESSAGES, "stream": True, "fake": {"first_event_delay": 3}}, h)
    wait_until(lambda: any("disc-early" in x["body"] for x in fresh_upstream.requests()),
               message="the request at the upstream")
    r.hang_up()
    rec = wait_until(lambda: [x for x in gw.records() if x["model"] == "disc-early"], timeout=5)[0]
    assert rec["status"] == "client_disconnected" and rec["status_code"] == 499
    assert rec["completion_tokens"] == 0 and rec["usage_source"] == "estimated"

    # 4. not streamed: metered when the upstream answers, with the provider's usage
    r = StreamReader(gw.port, "/v1/chat/completions", {
        "model": "disc-json", "messages": MESSAGES, "fake": {"delay": 1, "prompt_tokens": 5}}, h)
    wait_until(lambda: any("disc-json" in x["body"] for x in fresh_upstream.requests()),
               message="the request at the upstream")
    r.hang_up()
    time.sleep(0.5)  # part of the scenario: the upstream is still working (1 s); nothing may be metered yet
    assert not [x for x in gw.records() if x["model"] == "disc-json"]
    rec = wait_until(lambda: [x for x in gw.records() if x["model"] == "disc-json"], timeout=5)[0]
    assert rec["usage_source"] == "provider" and rec["prompt_tokens"] == 5

    time.sleep(0.5)  # not a wait for something: a duplicate record would show by now
    models = [x["model"] for x in gw.records()]
    assert sorted(models) == ["disc-early", "disc-estimated", "disc-json", "disc-provider"], models
    wait_until(lambda: len(fresh_upstream.stats()["disconnects"]) == 3)  # the upstream saw each stream closed


def test_openai_sdk_stream_closed_early_is_metered_once(gateway, fresh_upstream):
    gw = gateway(upstream=fresh_upstream.base_url)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                      default_headers={"X-Tenant-ID": "acme"})
    stream = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                       extra_body={"fake": {"chunks": 50, "chunk_delay": 0.05}})
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    c.close()
    rec = gw.wait_records(1)[0]
    assert rec["status"] == "client_disconnected" and rec["usage_source"] == "estimated"
    assert wait_until(lambda: fresh_upstream.stats()["disconnects"], timeout=5)[0]["sent_events"] < 50


def _ledger_rows(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT request_id, status, status_code, usage_source, completion_tokens "
                            "FROM litellm_usage").fetchall()


def test_sigterm_lets_in_flight_stream_finish(gateway, tmp_path):
    gw = gateway()
    r = StreamReader(gw.port, "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
        "fake": {"chunks": 8, "chunk_delay": 0.3}}, gw.headers())
    r.read_until(b"data: ", 1)
    sent_at = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
        except OSError:
            return True
        return False

    wait_until(refused, timeout=3, message="no new connections once stopping")
    data = r.read_all()
    assert data.count(b"data: ") == 10 and b"data: [DONE]" in data  # 8 words, the finish chunk, [DONE]
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - sent_at < 8
    rows = _ledger_rows(tmp_path / "ledger.db")
    assert len(rows) == 1 and rows[0][1:4] == ("ok", 200, "provider")
    assert [l for l in gw.lines() if l.get("message") == "shutdown complete"]


def test_sigterm_grace_exceeded_still_meters_the_cut_stream(gateway, tmp_path):
    gw = gateway(TALLYGATE_SHUTDOWN_GRACE="1")
    r = StreamReader(gw.port, "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
        "fake": {"chunks": 40, "chunk_delay": 0.25}}, gw.headers())
    r.read_until(b"data: ", 2)
    t = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    data = r.read_all()
    assert b"[DONE]" not in data
    assert gw.proc.wait(10) == 0 and time.monotonic() - t < 4
    rows = _ledger_rows(tmp_path / "ledger.db")
    assert len(rows) == 1
    _, status, code, source, completion = rows[0]
    assert (status, code, source) == ("timeout", 200, "estimated") and 2 <= completion < 40
    recs = gw.records()
    assert len(recs) == 1 and recs[0]["request_id"] == rows[0][0]


def test_sigterm_waits_for_non_streamed_request(gateway, fake_upstream, tmp_path):
    gw = gateway()
    fake_upstream.reset()
    result = {}

    def call():
        result["answer"] = post(gw.base_url + "/chat/completions",
                                {"model": "gpt-4o-mini", "messages": MESSAGES, "fake": {"delay": 1.5}},
                                gw.headers())

    t = threading.Thread(target=call)
    t.start()
    wait_until(fake_upstream.requests, message="the request at the upstream")
    gw.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert result["answer"][0] == 200
    assert gw.proc.wait(10) == 0
    assert [r[1] for r in _ledger_rows(tmp_path / "ledger.db")] == ["ok"]


def test_upstream_redirect_is_not_followed(gateway, fresh_upstream):
    """A 3xx from an upstream (a moved API, a wrong base_url) is a clear 502, not a GET to
    somewhere else: the HTTP client would repeat a 301/302 POST as a GET without the body."""
    gw = gateway(upstream=fresh_upstream.base_url, **FAST_RETRIES)
    for stream in (False, True):
        before = fresh_upstream.stats()["calls"]
        s, h, data = chat(gw, {"redirect": "/internal/moved-here"}, model=f"moved-{stream}", stream=stream)
        assert s == 502, data
        err = json.loads(data)["error"]
        assert err["code"] == "upstream_redirect" and "HTTP 307" in err["message"]
        assert "/internal/moved-here" not in data.decode()  # where it points is for the operator only
        assert fresh_upstream.stats()["calls"] == before + 1  # asked once, not followed, not retried
        model = f"moved-{stream}"
        rec = wait_until(lambda model=model: [x for x in gw.records() if x["model"] == model])[0]
        assert rec["status_code"] == 502 and rec["status"] == "upstream_error" and rec["stream"] is stream
        rid = rec["request_id"]
        warn = wait_until(lambda rid=rid: [x for x in gw.lines() if x.get("request_id") == rid
                                 and x.get("upstream_status") == 307])[0]
        assert warn["location"].endswith("/internal/moved-here") and warn["severity"] == "WARNING"
