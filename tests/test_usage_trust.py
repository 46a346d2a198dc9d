"""Metering does not trust the upstream blindly.

A misbehaving fake upstream: usage counts far beyond what the request allows, 200
answers that are HTML, garbage or JSON without usage, and an SSE event of 100 MB
without a blank line. Real gateway processes; see docs/reliability.md, "Budget bounds
and usage plausibility".
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
import uuid
from decimal import Decimal

from support import MASTER, TOKEN

MESSAGES = [{"role": "user", "content": "hi"}]
MILLION = Decimal(1_000_000)
LIE = 10**15


def post(gw, path: str, body: dict, token: str = TOKEN, tenant: str | None = "trust"):
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    if tenant:
        headers["X-Tenant-ID"] = tenant
    req = urllib.request.Request(gw.base_url + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def record_of(gw, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for rec in gw.records():
            if rec["request_id"] == request_id:
                return rec
        time.sleep(0.02)
    raise AssertionError(f"no record {request_id}:\n{gw.output()[-3000:]}")


def test_lying_usage_is_billed_at_the_requests_bounds(gateway):
    """1e15 tokens reported for a request of max_tokens 50 x n 2 (it billed $1,610): output
    clamped to 100, input to the context window, flagged, a WARNING with the request id."""
    gw = gateway()
    for stream in (False, True):
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50, "n": 2, "stream": stream,
                "fake": {"prompt_tokens": LIE, "completion_tokens": LIE}}
        status, headers, data = post(gw, "/chat/completions", body)
        assert status == 200
        if not stream:  # the client still gets the upstream's answer unchanged
            assert json.loads(data)["usage"]["completion_tokens"] == LIE
        rid = headers["x-tallygate-request-id"]
        rec = record_of(gw, rid)
        assert rec["usage_source"] == "clamped" and rec["usage_flag"] == "implausible", rec
        assert rec["completion_tokens"] == 100 and rec["prompt_tokens"] == 128000  # gpt-4o-mini's window
        assert rec["total_tokens"] == 128100 and rec["status"] == "ok"
        assert Decimal(rec["cost_usd_exact"]) == (128000 * Decimal("0.15") + 100 * Decimal("0.6")) / MILLION
        warnings = [l for l in gw.lines() if l.get("message", "").startswith("implausible usage")
                    and l.get("request_id") == rid]
        assert len(warnings) == 1 and warnings[0]["severity"] == "WARNING", gw.output()[-2000:]
        assert warnings[0]["reported_completion_tokens"] == 2**31 - 1
        assert warnings[0]["completion_bound"] == 100


def test_output_beyond_the_default_cap_is_clamped(gateway, tmp_path):
    """A model priced by the override file with no context window: without max_tokens the
    output bound is TALLYGATE_DEFAULT_MAX_OUTPUT_TOKENS."""
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."house-model"]\ninput_mtok = 1\noutput_mtok = 2\n')
    gw = gateway(TALLYGATE_PRICES_FILE=prices, TALLYGATE_DEFAULT_MAX_OUTPUT_TOKENS="1000",
                 TALLYGATE_DEFAULT_CONTEXT_TOKENS="5000")
    body = {"model": "house-model", "messages": MESSAGES,
            "fake": {"prompt_tokens": 9000, "completion_tokens": 4000}}
    status, headers, _ = post(gw, "/chat/completions", body)
    rec = record_of(gw, headers["x-tallygate-request-id"])
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["usage_source"]) == (5000, 1000, "clamped")
    assert Decimal(rec["cost_usd_exact"]) == (5000 * 1 + 1000 * 2) / MILLION
    # within the bounds: billed as reported
    body["fake"] = {"prompt_tokens": 4000, "completion_tokens": 900}
    status, headers, _ = post(gw, "/chat/completions", body)
    rec = record_of(gw, headers["x-tallygate-request-id"])
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["usage_source"]) == (4000, 900, "provider")
    assert "usage_flag" not in rec


def test_answer_without_usage_is_estimated_and_charged(gateway, postgres_env):
    """A 200 with HTML, garbage or JSON without usage was `ok` at $0 and never reached the
    budget: now its usage is estimated, flagged, counted and charged."""
    gw = gateway(**postgres_env)
    req = urllib.request.Request(gw.url + "/admin/keys", method="POST", data=json.dumps(
        {"tenant_id": f"nousage-{uuid.uuid4().hex[:6]}", "budget_usd": "0.002", "budget_period": "day"}).encode(),
        headers={"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"})
    key = json.loads(urllib.request.urlopen(req).read())
    html = "<html><body>" + "maintenance " * 400 + "</body></html>"
    answers = [{"raw_body": html, "content_type": "text/html"},
               {"raw_body": "\x00\x01 not json at all \xff" * 50, "content_type": "application/json"},
               {"raw_body": json.dumps({"id": "x", "choices": [{"message": {"content": "hi"}}]}),
                "content_type": "application/json"}]
    ids = []
    for fake in answers:
        status, headers, data = post(gw, "/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES,
                                                                "fake": fake}, token=key["key"], tenant=None)
        assert status == 200
        assert data == fake["raw_body"].encode("utf-8", "surrogateescape")  # passed through unchanged
        ids.append(headers["x-tallygate-request-id"])
    recs = [record_of(gw, rid) for rid in ids]
    for rec, fake in zip(recs, answers, strict=True):
        assert rec["usage_source"] == "estimated" and rec["usage_flag"] == "missing", rec
        assert rec["status"] == "ok" and rec["prompt_tokens"] > 0
        assert rec["completion_tokens"] == len(fake["raw_body"].encode("utf-8", "surrogateescape")) // 4
        assert Decimal(rec["cost_usd_exact"]) > 0
    # charged to the budget: ~$0.0008 an HTML answer, so the budget runs out
    statuses = [post(gw, "/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES,
                                               "fake": answers[0]}, token=key["key"], tenant=None)[0]
                for _ in range(3)]
    assert 429 in statuses, statuses
    metrics = urllib.request.urlopen(urllib.request.Request(
        gw.url + "/metrics", headers={"Authorization": f"Bearer {MASTER}"})).read().decode()
    line = [l for l in metrics.splitlines() if l.startswith("tallygate_usage_flagged_total{")]
    assert any('flag="missing"' in l and 'model="gpt-4o-mini"' in l and float(l.split()[-1]) >= 4 for l in line), line


def test_stream_without_usage_is_flagged(gateway):
    gw = gateway()
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "fake": {"no_usage": True}}
    status, headers, data = post(gw, "/chat/completions", body)
    assert status == 200 and data.endswith(b"data: [DONE]\n\n")
    rec = record_of(gw, headers["x-tallygate-request-id"])
    assert rec["usage_source"] == "estimated" and rec["usage_flag"] == "missing" and rec["status"] == "ok"


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_sse_event_without_blank_line_is_bounded(gateway):
    """An upstream sends one 100 MB event without a blank line, then the usual stream: it was
    buffered quadratically (13 s, the loop stalled 643 ms, 503 MB peak). Now it is passed
    through unread past TALLYGATE_SSE_MAX_EVENT_BYTES, the rest is metered as usual, and the
    gateway's memory and event loop stay free."""
    gw = gateway()
    size = 100 * 1024 * 1024
    post(gw, "/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})  # warm up
    before = _peak_rss_kb(gw.proc.pid)
    stalls: list[float] = []
    done = threading.Event()

    def probe():
        while not done.is_set():
            t = time.perf_counter()
            urllib.request.urlopen(gw.url + "/health", timeout=10).read()
            stalls.append(time.perf_counter() - t)
            time.sleep(0.01)
    prober = threading.Thread(target=probe)
    prober.start()
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                       "fake": {"sse_blob": size, "prompt_tokens": 7, "completion_tokens": 3}})
    conn.request("POST", "/v1/chat/completions", body=body, headers={
        "Authorization": f"Bearer {TOKEN}", "X-Tenant-ID": "blob", "Content-Type": "application/json"})
    resp = conn.getresponse()
    received = 0
    head = b""
    tail = b""
    while True:
        piece = resp.read1(1 << 20)
        if not piece:
            break
        if len(head) < 16:
            head += piece[:16]
        received += len(piece)
        tail = (tail + piece)[-4096:]
    elapsed = time.perf_counter() - started
    done.set()
    prober.join()
    rid = resp.getheader("x-tallygate-request-id")
    conn.close()
    peak = _peak_rss_kb(gw.proc.pid)
    print(f"\n100 MB event: relayed in {elapsed:.2f} s, gateway peak RSS {before / 1024:.1f} -> "
          f"{peak / 1024:.1f} MB, slowest /health during it {max(stalls) * 1000:.0f} ms ({len(stalls)} probes)")
    assert head.startswith(b"data: xxxx") and received > size
    assert tail.endswith(b"data: [DONE]\n\n") and b'"usage"' not in tail  # the injected usage chunk removed
    rec = record_of(gw, rid)
    assert rec["status"] == "ok" and rec["usage_source"] == "provider"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (7, 3)
    assert any(l.get("message", "").startswith("SSE events over") and l.get("request_id") == rid
               for l in gw.lines())
    assert peak - before < 64 * 1024, (before, peak)  # KB: the event is not held whole
    assert max(stalls) < 0.5, max(stalls)
