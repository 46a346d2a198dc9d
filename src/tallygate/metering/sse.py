"""Token usage, model and completeness of SSE streams, metered as they are relayed.

Two paths: a stream the gateway did not change passes through byte for byte and is
only scanned for the events that matter (`_pass_through`); a stream the gateway added
`include_usage` to is rewritten event by event (`_rewrite`), to take the injected usage
chunk and the `"usage":null` fields back out.
"""

from __future__ import annotations

import re

import orjson

from .usage import Usage, add_response_facts, model_name, usage_from_object


# the end of a chat stream: an event whose data is [DONE] (never the text inside a chunk)
def _done_line(data: bytes) -> int:
    """Start of a `data: [DONE]` line in `data`, or -1 (never "[DONE]" inside a text).
    A plain search: an alternation regex here cost 40 us per chunk."""
    i = data.find(b"[DONE]")
    while i >= 0:
        start = data.rfind(b"\n", 0, i) + 1
        end = data.find(b"\n", i)
        if data[start : end if end >= 0 else len(data)].strip() in (b"data: [DONE]", b"data:[DONE]"):
            return start
        i = data.find(b"[DONE]", i + 6)
    return -1


def _event_end(data: bytes) -> int:
    """Where the first SSE event in `data` ends (after its blank line, with the line
    endings the meter accepts: \n\n, \n\r\n, \r\n\r\n), or -1. Two plain searches: a
    regex went through 64 KB of a long event at ~0.7 ms."""
    if data.find(b"\n") < 0:  # memchr: the usual case inside a long event
        return -1
    i = data.find(b"\n\n")
    j = data.find(b"\n\r\n")
    if j >= 0 and (i < 0 or j < i):
        return j + 3
    return i + 2 if i >= 0 else -1


# the longest event parsed (TALLYGATE_SSE_MAX_EVENT_BYTES): a Responses stream's final
# event holds the whole response, images as base64 included (a few MB)
DEFAULT_MAX_EVENT = 8 * 1024 * 1024
# events worth parsing when bytes pass through; "usage": null is skipped
_USAGE = b'"usage"'
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')
# Responses API streams end with one of these events (and carry usage in them)
_RESPONSES_MARKERS = (b"response.completed", b"response.failed", b"response.incomplete")
RESPONSES_FINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


def _event_data(event: bytes) -> bytes | None:
    """The data of one SSE event; None without a `data:` line."""
    if event.startswith(b"data: ") and event.find(b"\n") < 0:  # the usual one-line event
        return event[6:].strip()
    data = None
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
    return data


class SSEMeter:
    """Watches an SSE stream as it is relayed: finds usage, model and content events.

    `feed` takes raw upstream bytes and returns the bytes to send to the client now:
    whole events only, so an injected usage-only chunk can be removed. When
    `strip_usage` is set the client did not ask for usage: the usage-only chunk is
    dropped and the `"usage":null` fields the upstream then adds are removed.
    """

    __slots__ = (
        "_buf",
        "strip_usage",
        "responses",
        "usage",
        "_model",
        "_first",
        "content_events",
        "done",
        "_parts",
        "_size",
        "_skipping",
        "max_event",
        "oversized",
    )

    def __init__(self, strip_usage: bool = False, responses: bool = False, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._buf = b""  # the last 3 bytes of a pending event (its end may span two reads)
        # an event arriving in many reads: its pieces, joined once when it is complete
        # (joining at every read was quadratic), and their size
        self._parts: list[bytes] = []
        self._size = 0
        self.max_event = max_event  # an event longer than this is passed through unread
        self._skipping = False  # passing such an event through, until its end
        self.oversized = 0  # events passed through unread
        self.strip_usage = strip_usage
        self.responses = responses  # a Responses API stream: its final events matter too
        self.usage: Usage | None = None
        self._model: str | None = None
        self._first: bytes | None = None  # the first event, read for the model only if needed
        # content events, the basis of an estimate when the provider sends no usage;
        # once usage is known they are no longer counted
        self.content_events = 0
        self.done = False

    @property
    def model(self) -> str | None:
        """The upstream's model: from the usage event when there is one (every chat chunk
        names it), else from the first event."""
        if self._model is None and self._first is not None:
            first, self._first = self._first, None
            data = _event_data(first[: first.find(b"\n\n")])
            if data:
                try:
                    doc = orjson.loads(data)
                except orjson.JSONDecodeError:
                    doc = None
                if isinstance(doc, dict):
                    response = doc.get("response")
                    self._model = model_name((response if isinstance(response, dict) else doc).get("model"))
        return self._model

    def feed(self, chunk: bytes) -> bytes:
        if self._skipping:
            return self._skip(chunk)
        if self._parts:
            # an event still incomplete: look for its end in the new bytes only (plus the
            # 3 bytes before them, for an end split across reads)
            if _event_end(chunk) < 0 and _event_end(self._buf + chunk[:3]) < 0:
                self._parts.append(chunk)
                self._size += len(chunk)
                self._buf = (self._buf + chunk[-3:])[-3:]
                if self._size > self.max_event:
                    return self._oversized()
                return b""
            self._parts.append(chunk)
            data = b"".join(self._parts)
            self._parts = []
            self._size = 0
        else:
            data = chunk
        if data.find(b"\r") >= 0:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._parts = [data]
            self._size = len(data)
            self._buf = data[-3:]
            if self._size > self.max_event:
                return self._oversized()
            return b""
        end += 2
        if end == len(data):
            complete = data
        else:
            rest = data[end:]
            self._parts = [rest]
            self._size = len(rest)
            self._buf = rest[-3:]
            complete = data[:end]
            if self._size > self.max_event:
                return self._complete(complete) + self._oversized()
        return self._complete(complete)

    def _complete(self, complete: bytes) -> bytes:
        if self.strip_usage:
            return self._rewrite(complete)
        self._pass_through(complete)
        return complete  # passed through untouched

    def _pass_through(self, complete: bytes) -> None:
        """Read only the events of passing bytes that matter: the last one with a usage
        object, a final Responses event; keep the first (for the model); count the rest.
        An upstream often sends a whole short stream in one read: parsing every event
        cost more than relaying it."""
        if self._model is None and self._first is None:
            self._first = complete  # its first event is cut out only if it is ever needed
        parsed: list[int] = []
        i = complete.rfind(_USAGE)
        while i >= 0:  # the last usage object is the one that counts
            # '"usage":null' (every chunk of a stream with include_usage) is not worth a parse
            if not (complete.startswith(b'"usage":null', i) or _USAGE_NULL.match(complete, i)):
                self._mark(complete, i, parsed)
                break
            i = complete.rfind(_USAGE, 0, i)
        if self.responses:
            for needle in _RESPONSES_MARKERS:
                i = complete.find(needle)
                while i >= 0:
                    self._mark(complete, i, parsed)
                    i = complete.find(needle, i + len(needle))
            parsed.sort()
        for start in parsed:
            self._read_event(complete[start : complete.find(b"\n\n", start)])
        if self.usage is None:
            self.content_events += complete.count(b"\n\n") - len(parsed)
        if not self.done:
            # `bytes in bytes` is slow on CPython 3.11 (it first tries the needle as an int)
            if complete.endswith(b"\n\ndata: [DONE]\n\n"):  # the usual place: last
                j = len(complete) - 14
            elif complete.find(b"[DONE]") >= 0:
                j = _done_line(complete)
            else:
                j = -1
            if j >= 0:
                self.done = True
                if j not in parsed and self.usage is None:
                    self.content_events -= 1

    def _read_event(self, event: bytes) -> None:
        """Read one event that passes through unchanged (it names usage or ends a
        Responses stream)."""
        data = _event_data(event)
        if data is not None:
            self._take(data)

    def _take(self, data: bytes) -> tuple[dict | None, Usage | None]:
        """Take what one event's JSON says: the model, usage (an event without it counts
        as content), the end of a Responses stream. Returns (the document, its usage);
        the document is None when the data is not a JSON object or is a Responses event."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.content_events += 1
            return None, None
        if not isinstance(doc, dict):
            return None, None
        response = doc.get("response")
        if isinstance(response, dict):  # Responses API events carry the response object
            if self._model is None and isinstance(response.get("model"), str):
                self._model = model_name(response["model"])
            usage = usage_from_object(response.get("usage"))
            if usage is not None:
                self.usage = add_response_facts(usage, response)
            if doc.get("type") in RESPONSES_FINAL_EVENTS:
                self.done = True  # Responses streams end here, with no [DONE]
            return None, usage
        if self._model is None:
            model = doc.get("model")
            if isinstance(model, str):
                self._model = model_name(model)
        usage = usage_from_object(doc.get("usage"))
        if usage is not None:
            tier = doc.get("service_tier")  # every chat chunk names it: the usage chunk too
            if isinstance(tier, str):
                usage.service_tier = tier[:32]
            self.usage = usage
        else:
            self.content_events += 1
        return doc, usage

    @staticmethod
    def _mark(complete: bytes, i: int, starts: list) -> None:
        """Note the start of the event holding position i (once)."""
        j = complete.rfind(b"\n\n", 0, i)
        start = 0 if j < 0 else j + 2
        if start not in starts:
            starts.append(start)

    def _oversized(self) -> bytes:
        """The pending event is longer than max_event: pass what there is through unread
        and the rest of the event as it comes, up to its end."""
        out = b"".join(self._parts)
        self._parts = []
        self._size = 0
        self._skipping = True
        self.oversized += 1
        if self.usage is None:
            self.content_events += 1
        head = out[:512]
        if self.responses and any(head.find(m) >= 0 for m in _RESPONSES_MARKERS):
            self.done = True  # a final event too large to read: the stream is complete, its usage unknown
        self._buf = out[-3:]
        return out

    def _skip(self, chunk: bytes) -> bytes:
        end = _event_end(self._buf + chunk[:3])  # an end across the two reads, or early in this one
        if end >= 0:
            end = max(0, end - len(self._buf))
        else:
            end = _event_end(chunk)
            if end < 0:
                self._buf = (self._buf + chunk[-3:])[-3:]
                return chunk
        self._skipping = False
        self._buf = b""
        rest = chunk[end:]
        return chunk[:end] + (self.feed(rest) if rest else b"")

    def flush(self) -> bytes:
        """Whatever is left when the upstream closes (a stream cut mid-event)."""
        rest = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return rest

    def _rewrite(self, complete: bytes) -> bytes:
        """The events of `complete` as the client gets them: the injected usage taken out."""
        out = []
        for event in complete.split(b"\n\n")[:-1]:
            keep = self._rewrite_event(event)
            if keep is not None:
                out.append(keep)
                out.append(b"\n\n")
        return b"".join(out)

    def _rewrite_event(self, event: bytes) -> bytes | None:
        """One event as the client gets it; None: dropped (the usage-only chunk)."""
        data = _event_data(event)
        if data is None:  # comments, bare `event:` lines
            return event
        if data == b"[DONE]":
            self.done = True
            return event
        has_usage = b'"usage"' in data
        if self._model is not None:
            if not has_usage:
                self.content_events += 1
                return event
            if b'"usage":null' in data or b'"usage": null' in data:
                self.content_events += 1
                return self._strip_null(event) if self.strip_usage else event
        doc, usage = self._take(data)
        if doc is None:
            return event
        if usage is not None and self.strip_usage and not doc.get("choices"):
            return None  # the usage-only chunk the client did not ask for
        if self.strip_usage and has_usage:
            event = self._strip_null(event)
        return event

    @staticmethod
    def _strip_null(event: bytes) -> bytes:
        return event.replace(b',"usage":null', b"").replace(b', "usage": null', b"")
