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

The request path stays cheap (measured under callgrind with a canned request: about
3,000 instructions a request more than uvicorn's own protocol): no timer or clock read
per request, one attribute per connection, uvicorn's (0.54) short `on_message_complete`
copied rather than called through super().
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


# The bounds, set by configure() from the settings (these are the settings' defaults).
# Module globals: on Python 3.11 a class attribute read through an instance is not
# specialised, and costs several hundred instructions on the request path.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0

BODY = -1
REFUSED = -2

_base_headers_complete = _HttpToolsProtocol.on_headers_complete  # no super() object per request


class HttpToolsProtocol(_HttpToolsProtocol):
    # One attribute only: uvicorn's protocol has 28, and past 29 an instance's attributes
    # leave CPython's shared-key layout, and attribute reads on the request path slow down
    # (+2,000 instructions a request, measured under callgrind).
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # >= 0: reading a request head (or waiting for one), this many bytes of it so far;
        # BODY: reading a body; REFUSED: answered and closing, nothing more is read
        self._head = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        _sweeper(self).track()

    # -- reading ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        head = self._head
        if head >= 0:
            self._head = head + len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._head == REFUSED:  # refused in a callback (_Refused): answered already
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
        head = self._head  # > 0: a head is unfinished after this read
        if head > 0 and (head > MAX_HEADER_BYTES or self.headers is not None and len(self.headers) > MAX_HEADERS):
            self._refuse_head("bytes" if head > MAX_HEADER_BYTES else "count")

    def on_headers_complete(self) -> None:
        # the bytes counted include the whole last read (maybe a body too): only then count exactly
        if self._head > MAX_HEADER_BYTES and self._head_size() > MAX_HEADER_BYTES:
            self._refuse_head("bytes")
            raise _Refused()
        if len(self.headers) > MAX_HEADERS:
            self._refuse_head("count")
            raise _Refused()
        self._head = BODY
        _base_headers_complete(self)
        if self.scope["http_version"] == "1.0" and self.cycle is not None and self.cycle.scope is self.scope:
            # before its task first runs, so the app is handed this class's send
            self.cycle.__class__ = _Http10Cycle

    def on_message_complete(self) -> None:
        self._head = 0
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
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self._head = REFUSED
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
        log.warning(
            "request refused: its headers are over the limit",
            extra={"fields": {"limit": "TALLYGATE_MAX_HEADERS" if what == "count" else "TALLYGATE_MAX_HEADER_BYTES"}},
        )
        if self._response_in_progress():  # a pipelined head: no room for an answer
            self._head = REFUSED
            self.transport.close()
            return
        if what == "count":
            message = f"Too many request headers: the limit is {MAX_HEADERS}."
        else:
            message = f"Request headers too large: the limit is {MAX_HEADER_BYTES} bytes."
        self._answer_and_close(431, error_body(message, "invalid_request_error", "request_headers_too_large"))

    def _timed_out(self, phase: str) -> None:
        """Called by the sweeper: the connection spent too long in `phase`."""
        if phase in ("idle", "drain"):  # nothing asked (yet), or the answer was sent already
            self._head = REFUSED
            self.transport.close()
            return
        log.warning(
            "request timed out while the client was sending it",
            extra={"fields": {"limit": "TALLYGATE_HEADER_TIMEOUT" if phase == "head" else "TALLYGATE_BODY_TIMEOUT"}},
        )
        if phase == "head":
            message = f"The request headers did not arrive within {HEADER_TIMEOUT:g} s."
        else:
            message = f"The request body did not arrive within {BODY_TIMEOUT:g} s."
        self._answer_and_close(408, error_body(message, "invalid_request_error", "request_timeout"))

    def _check(self, now: float, seen: tuple | None) -> tuple | None:
        """The sweeper's look at this connection: which phase it is in, since when (`seen`:
        what the last look found; returned: what this one found)."""
        transport = self.transport
        head = self._head
        if transport is None or head == REFUSED or transport.is_closing():
            return None
        cycle = self.cycle
        if head >= 0:
            if head:
                if cycle is not None and not cycle.response_complete:
                    return None  # a head pipelined behind a response still being sent
                phase, timeout = "head", HEADER_TIMEOUT
            elif cycle is None:
                phase, timeout = "idle", self.timeout_keep_alive  # connected, never sent a byte
            else:
                return None  # between requests: uvicorn's keep-alive timer
        else:
            if cycle.waiting_for_100_continue or self.flow.read_paused:
                return None  # the app is not reading yet: the client is not late
            if not cycle.response_started:
                phase = "body"
            elif cycle.response_complete:
                phase = "drain"  # answered before the body ended: the rest is only read away
            else:
                return None
            timeout = BODY_TIMEOUT
        if seen is not None and seen[0] == phase and seen[1] is cycle:  # as last time
            if now - seen[2] >= timeout:
                self._timed_out(phase)
                return None
            return seen
        return (phase, cycle, now)


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
        self.seen: dict = {}  # connection -> (phase, cycle, since when)

    def track(self) -> None:
        if self.handle is None:
            self.handle = self.loop.call_later(_interval(), self.sweep)

    def sweep(self) -> None:
        self.handle = None
        now = self.loop.time()
        last, self.seen = self.seen, {}
        for conn in list(self.connections):
            check = getattr(conn, "_check", None)
            if check is not None:
                found = check(now, last.get(conn))
                if found is not None:
                    self.seen[conn] = found
        if self.connections:
            self.track()


_sweepers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sweeper(protocol: HttpToolsProtocol) -> _Sweeper:
    state = protocol.server_state
    sweeper = _sweepers.get(state)
    if sweeper is None:
        sweeper = _sweepers[state] = _Sweeper(protocol.loop, protocol.connections)
    return sweeper


def _interval() -> float:
    """Timeouts fire between their value and one interval later."""
    return max(0.05, min(1.0, HEADER_TIMEOUT / 4, BODY_TIMEOUT / 4))


class _Http10Cycle(RequestResponseCycle):
    """The response to an HTTP/1.0 request: one without Content-Length is close-delimited
    (no Transfer-Encoding; the body ends when the connection closes)."""

    close_delimited = False

    async def send(self, message) -> None:
        if not self.response_started:
            if (
                message["type"] == "http.response.start"
                and self.scope["method"] != "HEAD"
                and message["status"] not in (204, 304)
                and not any(
                    n.lower() in (b"content-length", b"transfer-encoding") for n, _ in message.get("headers", ())
                )
            ):
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
    global MAX_HEADER_BYTES, MAX_HEADERS, HEADER_TIMEOUT, BODY_TIMEOUT
    MAX_HEADER_BYTES = settings.max_header_bytes
    MAX_HEADERS = settings.max_headers
    HEADER_TIMEOUT = settings.header_timeout
    BODY_TIMEOUT = settings.body_timeout
