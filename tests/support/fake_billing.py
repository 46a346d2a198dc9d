"""Fakes of the billing services, on loopback in the test process (a thread each).

FakeStripe serves POST /v1/billing/meter_events as Stripe's API reference describes it:
form-encoded event_name, identifier, timestamp, payload[stripe_customer_id], payload[value];
a `billing.meter_event` object back; errors as {"error": {"type", "message", "code", "param"}}:
401 for a wrong key, 400 for a missing parameter, a value of more than 15 significant
digits or a timestamp outside the past 35 days / next 5 minutes, 400 "An event already
exists with identifier ..." (Stripe-Should-Retry: false) for an identifier seen in the last
24 hours, 429 code rate_limit when asked to (`rate_limit_every`). `stall_after` N: the
request after the Nth accepted one is accepted, then never answered (a crash right after
Stripe took an event).

The same FakeStripe serves Stripe's API v2 meter event stream: POST /v2/billing/meter_event_session
(API key; JSON; a `v2.billing.meter_event_session` with an `authentication_token` and RFC 3339
`created` / `expires_at`, 15 minutes on) on the API host, and POST /v2/billing/meter_event_stream
on a separate meter-events host (`meter_events_url`, its own loopback server): JSON
{"events": [...]}, 1 to 100 events, bearer session token; `{}` back. As on Stripe, the
events are validated after the answer: an invalid one (no customer, a non-integer value, a
timestamp outside the past 35 days / next 5 minutes) lands in `error_reports`, an identifier
seen within 24 hours is dropped silently (`duplicates`). Errors in v2's shape
{"error": {"type", "code", "message"}}: 401 temporary_session_expired /
billing_meter_event_session_expired for an expired token (`session_calls` N: a token
expires after N stream calls it took), 401 for an unknown token, 400 for a body that is not 1-100
events, 429 type rate_limit (`rate_limit_every`, counted over both hosts' calls), 500
(`fail_every`; `fail_after` N: every call once N were taken). `stall_after` works as for v1, the call that passes it is taken then never
answered.

FakeOpenMeter serves POST /api/v1/events (application/cloudevents+json or
application/cloudevents-batch+json, bearer key): 204, events deduplicated by (id, source),
400 problem+json for an event without the required CloudEvents attributes, 401 for a wrong
key, 429 with Retry-After when asked to (`rate_limit_every`), 503 after `fail_after` requests.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DAY = 86400


class _Server:
    def __init__(self, handler_cls, state: _Server | None = None) -> None:
        """`state`: the fake whose counters the handler keeps (another server's, for a
        second host of the same service)."""
        self.lock = state.lock if state is not None else threading.Lock()
        outer = state if state is not None else self

        class Handler(handler_cls):
            fake = outer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        release = getattr(self, "release", None)
        if release is not None:
            release.set()  # a stalled answer ends
        self.httpd.shutdown()
        self.httpd.server_close()


class _StripeHandler(BaseHTTPRequestHandler):
    fake: FakeStripe

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_{int(time.time() * 1e6)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, param: str | None = None,
               headers: dict | None = None) -> None:
        err = {"type": "invalid_request_error", "message": message}
        if code:
            err["code"] = code
        if param:
            err["param"] = param
        self._send(status, {"error": err}, headers)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if self.path == "/v2/billing/meter_event_session":
            self._session()
            return
        form = dict(urllib.parse.parse_qsl(raw))
        if self.path != "/v1/billing/meter_events":
            self._error(404, f"Unrecognized request URL (POST: {self.path}).")
            return
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {fake.api_key}":
            self._error(401, "Invalid API Key provided: " + (auth[7:15] + "****" if auth else ""))
            return
        with fake.lock:
            fake.calls += 1
            if fake.rate_limit_every and fake.calls % fake.rate_limit_every == 0:
                fake.rate_limited += 1
                self._error(429, "Request rate limit exceeded. Please retry with exponential backoff.", "rate_limit")
                return
        for param in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
            if not form.get(param):
                self._error(400, f"Missing required param: {param}.", "parameter_missing", param)
                return
        value = form["payload[value]"]
        digits = value.lstrip("-").replace(".", "").lstrip("0")
        if not value.lstrip("-").replace(".", "", 1).isdigit() or len(digits) > 15:
            self._error(400, "Invalid payload[value]: must be a number with at most 15 significant digits.",
                        "parameter_invalid_integer", "payload[value]")
            return
        now = int(time.time())
        ts = int(form.get("timestamp") or now)
        if ts < now - 35 * DAY or ts > now + 300:
            self._error(400, "Timestamp must be within the past 35 calendar days and at most 5 minutes in the future.",
                        "parameter_invalid_integer", "timestamp")
            return
        ident = form.get("identifier") or f"gen_{now}_{fake.calls}"
        stall = False
        with fake.lock:
            seen = fake.identifiers.get(ident)
            if seen is not None and seen > time.time() - DAY:
                fake.duplicates += 1
                duplicate = True
            else:
                duplicate = False
                fake.identifiers[ident] = time.time()
                event = {"identifier": ident, "event_name": form["event_name"], "timestamp": ts,
                         "customer": form["payload[stripe_customer_id]"], "value": int(value)}
                fake.events.append(event)
                if fake.stall_after is not None and len(fake.events) > fake.stall_after:
                    stall = True
        if duplicate:
            self._error(400, f"An event already exists with identifier {ident}.",
                        headers={"Stripe-Should-Retry": "false"})
            return
        if stall:
            fake.release.wait(600)  # the client gives up or is killed first
            return
        self._send(200, {"object": "billing.meter_event", "created": now, "event_name": form["event_name"],
                         "identifier": ident, "livemode": False,
                         "payload": {"stripe_customer_id": form["payload[stripe_customer_id]"], "value": value},
                         "timestamp": ts})


    def _session(self) -> None:
        fake = self.fake
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {fake.api_key}":
            self._send(401, {"error": {"type": "invalid_request_error", "code": "unauthorized",
                                       "message": "Invalid API Key provided."}})
            return
        now = time.time()
        with fake.lock:
            fake.sessions += 1
            token = f"mes_tok_{fake.sessions}_{int(now * 1e6)}"
            fake.tokens[token] = {"expires": now + 900, "calls": 0}
        self._send(200, {"id": f"mes_{fake.sessions}", "object": "v2.billing.meter_event_session",
                         "authentication_token": token, "created": _rfc3339(now),
                         "expires_at": _rfc3339(now + 900), "livemode": False})


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _parse_rfc3339(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


class _StreamHandler(_StripeHandler):
    """The meter-events host: POST /v2/billing/meter_event_stream."""

    def _v2_error(self, status: int, type_: str, message: str, code: str | None = None) -> None:
        err = {"type": type_, "message": message}
        if code:
            err["code"] = code
        self._send(status, {"error": err})

    def do_POST(self) -> None:  # noqa: N802
        fake = self.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v2/billing/meter_event_stream":
            self._v2_error(404, "invalid_request_error", f"Unrecognized request URL (POST: {self.path}).")
            return
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        with fake.lock:
            session = fake.tokens.get(token)
            expired = session is not None and (
                session["expires"] <= time.time()
                or (fake.session_calls is not None and session["calls"] >= fake.session_calls))
            fake.stream_calls += 1
            fake.calls += 1
            limited = bool(fake.rate_limit_every and fake.calls % fake.rate_limit_every == 0)
            failed = bool(fake.fail_every and fake.stream_calls % fake.fail_every == 0) or (
                fake.fail_after is not None and len(fake.stream_batches) >= fake.fail_after)
        if session is None:
            self._v2_error(401, "invalid_request_error", "Invalid authentication token.", "unauthorized")
            return
        if expired:
            fake.expired += 1
            self._v2_error(401, "temporary_session_expired", "The temporary session token has expired.",
                           "billing_meter_event_session_expired")
            return
        if limited:
            fake.rate_limited += 1
            self._v2_error(429, "rate_limit", "Request rate limit exceeded. Please retry with exponential backoff.",
                           "rate_limit")
            return
        if failed:
            fake.server_errors += 1
            self._v2_error(500, "api_error", "An unknown error occurred.")
            return
        try:
            events = json.loads(raw)["events"]
            assert isinstance(events, list) and 1 <= len(events) <= 100
        except (ValueError, KeyError, TypeError, AssertionError):
            self._v2_error(400, "invalid_request_error", "events must be a list of 1 to 100 meter events.",
                           "invalid_fields")
            return
        stall = False
        now = time.time()
        with fake.lock:
            session["calls"] += 1
            fake.stream_batches.append(len(events))
            for e in events:  # validated after the answer, as Stripe does
                payload = e.get("payload") or {}
                value = str(payload.get("value", ""))
                try:
                    ts = _parse_rfc3339(e["timestamp"]) if e.get("timestamp") else int(now)
                except ValueError:
                    ts = -1
                if (not e.get("event_name") or not payload.get("stripe_customer_id") or not value.isdigit()
                        or len(value.lstrip("0")) > 15 or not now - 35 * DAY <= ts <= now + 300):
                    fake.error_reports.append(e)
                    continue
                ident = e.get("identifier") or f"gen_{now}_{fake.stream_calls}"
                seen = fake.identifiers.get(ident)
                if seen is not None and seen > now - DAY:
                    fake.duplicates += 1
                    continue
                fake.identifiers[ident] = now
                fake.events.append({"identifier": ident, "event_name": e["event_name"], "timestamp": ts,
                                    "customer": payload["stripe_customer_id"], "value": int(value)})
            if fake.stall_after is not None and len(fake.events) > fake.stall_after:
                stall = True
        if stall:
            fake.release.wait(600)
            return
        self._send(200, {})


class FakeStripe(_Server):
    def __init__(self, api_key: str = "sk_test_fake_0123456789") -> None:
        self.api_key = api_key
        self.events: list[dict] = []  # accepted, in order
        self.identifiers: dict[str, float] = {}
        self.calls = 0
        self.duplicates = 0
        self.rate_limited = 0
        self.rate_limit_every = 0
        self.stall_after: int | None = None
        self.release = threading.Event()
        # the v2 meter event stream
        self.sessions = 0
        self.tokens: dict[str, dict] = {}
        self.session_calls: int | None = None  # a token expires after this many stream calls
        self.stream_calls = 0
        self.stream_batches: list[int] = []  # events per call Stripe took
        self.expired = 0
        self.fail_every = 0  # every Nth stream call: 500
        self.fail_after: int | None = None  # 500 for every stream call once this many were taken
        self.server_errors = 0
        self.error_reports: list[dict] = []
        super().__init__(_StripeHandler)
        self.stream = _StreamServer(self)
        self.meter_events_url = self.stream.url

    def stop(self) -> None:
        super().stop()
        self.stream.stop()

    def totals(self, event_name: str = "tallygate_cost_micro_usd") -> dict[str, int]:
        """Sum of accepted values per customer."""
        out: dict[str, int] = {}
        with self.lock:
            for e in self.events:
                if e["event_name"] == event_name:
                    out[e["customer"]] = out.get(e["customer"], 0) + e["value"]
        return out


class _StreamServer(_Server):
    """The meter-events host, on its own port, sharing the FakeStripe's state."""

    def __init__(self, stripe: FakeStripe) -> None:
        self.release = stripe.release
        super().__init__(_StreamHandler, stripe)


class _OpenMeterHandler(BaseHTTPRequestHandler):
    fake: FakeOpenMeter

    def _problem(self, status: int, title: str, detail: str) -> None:
        data = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        fake = self.fake
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/api/v1/events":
            self._problem(404, "Not Found", self.path)
            return
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            self._problem(401, "Unauthorized", "invalid or missing API token")
            return
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc = json.loads(body)
        except ValueError:
            self._problem(400, "Bad Request", "request body is not JSON")
            return
        if ctype == "application/cloudevents-batch+json" and isinstance(doc, list):
            events = doc
        elif ctype in ("application/cloudevents+json", "application/json") and isinstance(doc, dict):
            events = [doc]
        else:
            self._problem(400, "Bad Request", f"unsupported content type {ctype!r} for this body")
            return
        for e in events:
            missing = [k for k in ("specversion", "id", "source", "type", "subject") if not e.get(k)]
            if missing or e.get("specversion") != "1.0":
                self._problem(400, "Bad Request", f"invalid CloudEvent: missing {missing}")
                return
        with fake.lock:
            fake.requests += 1
            if fake.rate_limit_every and fake.requests % fake.rate_limit_every == 0:
                fake.rate_limited += 1
                self.send_response(429)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/problem+json")
                data = json.dumps({"type": "about:blank", "title": "Too Many Requests", "status": 429,
                                   "detail": "rate limit exceeded"}).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if fake.fail_after is not None and fake.requests > fake.fail_after:
                self._problem(503, "Service Unavailable", "ingest is down")
                return
            for e in events:
                key = (e["id"], e["source"])
                if key in fake.seen:
                    fake.duplicates += 1
                    continue
                fake.seen.add(key)
                fake.events.append(e)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FakeOpenMeter(_Server):
    def __init__(self, api_key: str = "om_test_key_0123456789") -> None:
        self.api_key = api_key
        self.events: list[dict] = []
        self.seen: set[tuple[str, str]] = set()
        self.requests = 0
        self.duplicates = 0
        self.fail_after: int | None = None
        self.rate_limit_every = 0  # every Nth request: 429 with Retry-After: 0
        self.rate_limited = 0
        super().__init__(_OpenMeterHandler)
