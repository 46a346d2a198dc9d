"""uvicorn's httptools protocol with the gateway's HTTP bounds and error shape.

- Requests it cannot parse get an OpenAI-style JSON 400 (instead of plain text), so every
  error the gateway sends has the same shape.
- A request head (request line and headers) is bounded in size and count
  (`TALLYGATE_MAX_HEADER_BYTES`, `TALLYGATE_MAX_HEADERS`): past the bound the request is
  answered 431 and the connection closed at once, so an unfinished head holds at most the
  bound plus one socket read in memory. The bytes are counted as they arrive, before the
  parser has found the end of anything.
- A head must be complete within `TALLYGATE_HEADER_TIMEOUT` of when it started arriving,
  a body within `TALLYGATE_BODY_TIMEOUT` of its head (408, closed); a connection that
  never sends a byte is closed after the keep-alive timeout. One timer per server checks
  every connection (no timer, no clock read per request).
- A response without Content-Length to an HTTP/1.0 client (a stream) is sent
  close-delimited: HTTP/1.0 has no chunked encoding (RFC 9112 section 6.1).

The request path copies a few of uvicorn's (0.54) short callbacks instead of calling
them through super(): a Python call per header or per request is measurable.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol

from .errors import error_body

log = logging.getLogger("tallygate.http")

_BODY = error_body("Invalid HTTP request: it could not be parsed.", "invalid_request_error", "invalid_http")


class _Refused(Exception):
    """Raised from a parser callback after the request was answered: stops the parser."""


class HttpToolsProtocol(_HttpToolsProtocol):
    # bounds, set by configure() from the settings; these are the settings' defaults
    max_header_bytes = 64 * 1024
    max_headers = 100
    header_timeout = 10.0
    body_timeout = 30.0
    _refused = False  # answered and closing: nothing more is read

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # reading a request head (or waiting for one)
        self._head_bytes = 0  # bytes received of the current head
        self._seen = None  # what the sweeper saw last (phase, cycle), and when
        self._seen_at = 0.0
        _sweeper(self).track()

    # -- reading ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:  # refused in a callback (_Refused): answered already
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse_head("bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self.max_headers:
            self._refuse_head("count")
            raise _Refused()

    def on_headers_complete(self) -> None:
        self._in_head = False
        # the bytes counted include the whole last read (maybe a body too): only then count exactly
        if self._head_bytes > self.max_header_bytes and self._head_size() > self.max_header_bytes:
            self._refuse_head("bytes")
            raise _Refused()
        super().on_headers_complete()
        if self.scope["http_version"] == "1.0" and self.cycle is not None and self.cycle.scope is self.scope:
            # before its task first runs, so the app is handed this class's send
            self.cycle.__class__ = _Http10Cycle

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.cycle.more_body = False
        self.cycle.message_event.set()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) + 16

    # -- answering ---------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, _BODY)

    def _answer_and_close(self, status: int, body: bytes) -> None:
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])
        self._refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # a request still being handled (an earlier one, pipelined, or this one's body
            # timed out): its app gets a disconnect, and its answer goes nowhere
            cycle.disconnected = True
            cycle.message_event.set()
        transport = self.transport
        transport.write(b"".join(content))
        if not transport.can_write_eof():
            transport.close()
            return
        # closing with the client's bytes unread would reset the connection, and the client
        # would never see the answer: end our side, then read and drop what still comes
        transport.write_eof()
        transport.set_protocol(_Linger(self, transport))
        transport.resume_reading()

    def _response_in_progress(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.response_started and not cycle.response_complete

    def _refuse_head(self, what: str) -> None:
        log.warning("request refused: its headers are over the limit", extra={"fields": {
            "limit": "TALLYGATE_MAX_HEADERS" if what == "count" else "TALLYGATE_MAX_HEADER_BYTES"}})
        if self._response_in_progress():  # a pipelined head: no room for an answer
            self.transport.close()
            return
        if what == "count":
            message = f"Too many request headers: the limit is {self.max_headers}."
        else:
            message = f"Request headers too large: the limit is {self.max_header_bytes} bytes."
        self._answer_and_close(431, error_body(message, "invalid_request_error", "request_headers_too_large"))

    def _timed_out(self, phase: str) -> None:
        """Called by the sweeper: the connection spent too long in `phase`."""
        if phase in ("idle", "drain"):  # nothing asked (yet), or the answer was sent already
            self.transport.close()
            return
        log.warning("request timed out while the client was sending it", extra={"fields": {
            "limit": "TALLYGATE_HEADER_TIMEOUT" if phase == "head" else "TALLYGATE_BODY_TIMEOUT"}})
        if phase == "head":
            message = f"The request headers did not arrive within {self.header_timeout:g} s."
        else:
            message = f"The request body did not arrive within {self.body_timeout:g} s."
        self._answer_and_close(408, error_body(message, "invalid_request_error", "request_timeout"))

    def _check(self, now: float) -> None:
        """The sweeper's look at this connection: which phase it is in, since when."""
        transport = self.transport
        if transport is None or self._refused or transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head:
            if self._head_bytes:
                if cycle is not None and not cycle.response_complete:
                    return  # a head pipelined behind a response still being sent
                phase, timeout = "head", self.header_timeout
            elif cycle is None:
                phase, timeout = "idle", self.timeout_keep_alive  # connected, never sent a byte
            else:
                return  # between requests: uvicorn's keep-alive timer
        else:
            if cycle.waiting_for_100_continue or self.flow.read_paused:
                self._seen = None  # the app is not reading yet: the client is not late
                return
            if not cycle.response_started:
                phase = "body"
            elif cycle.response_complete:
                phase = "drain"  # answered before the body ended: the rest is only read away
            else:
                return
            timeout = self.body_timeout
        key = (phase, cycle)  # the same phase of the same request as last time?
        if key == self._seen:
            if now - self._seen_at >= timeout:
                self._timed_out(phase)
            return
        self._seen = key
        self._seen_at = now


class _Linger(asyncio.Protocol):
    """A refused connection's last moments: what the client still sends is read and
    dropped (so it sees the answer, not a reset) for LINGER seconds or LINGER_BYTES."""

    LINGER = 2.0
    LINGER_BYTES = 1 << 20

    def __init__(self, owner: HttpToolsProtocol, transport) -> None:
        self.owner = owner
        self.transport = transport
        self.left = self.LINGER_BYTES
        self.timer = owner.loop.call_later(self.LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # the client is done too: close

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc) -> None:
        self.timer.cancel()
        self.owner.connection_lost(exc)


class _Sweeper:
    """One timer per server: every `interval` it looks at each open connection."""

    def __init__(self, loop, connections: set) -> None:
        self.loop = loop
        self.connections = connections
        self.handle = None

    def track(self) -> None:
        if self.handle is None:
            self.handle = self.loop.call_later(_interval(), self.sweep)

    def sweep(self) -> None:
        self.handle = None
        now = self.loop.time()
        for conn in list(self.connections):
            check = getattr(conn, "_check", None)
            if check is not None:
                check(now)
        if self.connections:
            self.track()


_sweepers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _sweeper(protocol: HttpToolsProtocol) -> _Sweeper:
    state = protocol.server_state
    sweeper = _sweepers.get(state)
    if sweeper is None:
        sweeper = _sweepers[state] = _Sweeper(protocol.loop, protocol.connections)
    return sweeper


def _interval() -> float:
    """Timeouts fire between their value and one interval later."""
    p = HttpToolsProtocol
    return max(0.05, min(1.0, p.header_timeout / 4, p.body_timeout / 4))


class _Http10Cycle(RequestResponseCycle):
    """The response to an HTTP/1.0 request: one without Content-Length is close-delimited
    (no Transfer-Encoding; the body ends when the connection closes)."""

    close_delimited = False

    async def send(self, message) -> None:
        if not self.response_started:
            if (message["type"] == "http.response.start" and self.scope["method"] != "HEAD"
                    and message["status"] not in (204, 304)
                    and not any(n.lower() in (b"content-length", b"transfer-encoding")
                                for n, _ in message.get("headers", ()))):
                self.close_delimited = True
                self.chunked_encoding = False  # uvicorn would choose chunked
                self.keep_alive = False
            await super().send(message)
            return
        if not self.close_delimited or self.response_complete or message["type"] != "http.response.body":
            await super().send(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        body = message.get("body", b"")
        if body:
            self.transport.write(body)
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()


def configure(settings) -> None:
    """Take the bounds from the settings (each server process calls this before it serves)."""
    p = HttpToolsProtocol
    p.max_header_bytes = settings.max_header_bytes
    p.max_headers = settings.max_headers
    p.header_timeout = settings.header_timeout
    p.body_timeout = settings.body_timeout
