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
    def __init__(self, handler_cls) -> None:
        self.lock = threading.Lock()
        outer = self

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
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
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
        super().__init__(_StripeHandler)

    def totals(self, event_name: str = "tallygate_cost_micro_usd") -> dict[str, int]:
        """Sum of accepted values per customer."""
        out: dict[str, int] = {}
        with self.lock:
            for e in self.events:
                if e["event_name"] == event_name:
                    out[e["customer"]] = out.get(e["customer"], 0) + e["value"]
        return out


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
