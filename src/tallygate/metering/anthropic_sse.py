"""Usage, model and completeness of Anthropic Messages streams, metered as they are relayed.

The stream passes through byte for byte: nothing is injected upstream, so nothing is taken
out on the way back, and bytes go to the client as they arrive (an event split over two
reads is parsed once whole). What is read:

- `message_start`: the model (`message.model`) and the usage so far (input, cache reads and
  writes with their 5-minute/1-hour split, the service tier; `output_tokens` a first count);
- `message_delta`: cumulative usage (`output_tokens`; newer API versions repeat the input
  and cache counts, and `server_tool_use` once a server tool ran), merged over the above;
- `message_stop`: the stream is complete;
- `content_block_delta`: counted, the basis of an estimate if the stream breaks off.

`ping` and `content_block_start`/`stop` are not parsed, nor is any event's text. Usage is
the provider's once a `message_delta` arrived. A stream cut before that (a client that hangs
up, an upstream that breaks off) is an estimate (`partial`): message_start's input, cache
and tier counts, which are exact, and as output the larger of its first count and the
content deltas delivered.
"""

from __future__ import annotations

import orjson

from .sse import DEFAULT_MAX_EVENT, _event_data
from .usage import Usage, _anthropic_usage, model_name

# every event line follows a newline (a JSON data line holds none): searched with it in
# front, an event name is never matched inside a text
_DELTA = b"\nevent: content_block_delta\n"
_MESSAGE = b"\nevent: message_"  # message_start, message_delta, message_stop
_STOP = b"event: message_stop"


class AnthropicStreamMeter:
    """The meter of one Messages stream: `feed` returns the bytes to send on (all of them)."""

    __slots__ = (
        "_pending",
        "_usage",
        "_final",
        "_read_usage",
        "model",
        "content_events",
        "done",
        "max_event",
        "oversized",
        "_skip",
    )

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._pending = b""  # the start of an event whose end has not arrived yet
        self._usage: dict | None = None  # message_start's usage, message_delta's merged over it
        self._final = False  # a message_delta arrived: the counts are the provider's last word
        self._read_usage: Usage | None = None  # `usage`, computed once it is asked for
        self.model: str | None = None
        self.content_events = 0
        self.done = False
        self.max_event = max_event  # an event longer than this is passed through unread
        self.oversized = 0
        self._skip = False  # inside such an event, until its end

    @property
    def usage(self) -> Usage | None:
        if not self._final or self._usage is None:
            return None
        if self._read_usage is None:
            self._read_usage = _anthropic_usage(self._usage)
        return self._read_usage

    def partial(self) -> Usage | None:
        """The estimate of a stream cut before its final usage (None: not even message_start)."""
        if self._usage is None:
            return None
        usage = _anthropic_usage(self._usage)
        if self.content_events > usage.completion_tokens:
            usage.completion_tokens = self.content_events
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return usage

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        if data.find(b"\r") >= 0:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._hold(data)
            return chunk
        if self._skip:  # the oversized event ends here: what follows is read again
            self._skip = False
            first = data.find(b"\n\n")
            complete = data[first + 2 : end]
        else:
            complete = data[:end]
        self._hold(data[end + 2 :])
        if complete:
            self._read(complete)
        return chunk

    def _hold(self, rest: bytes) -> None:
        if self._skip:
            return
        if len(rest) > self.max_event:
            self._pending = b""
            self._skip = True
            self.oversized += 1
            return
        self._pending = rest

    def _read(self, complete: bytes) -> None:
        """Whole events: the message_* ones parsed, the content deltas counted (plain
        searches: a stream's first read often holds all of it, twenty events or more)."""
        block = b"\n" + complete + b"\n"
        if block.find(b"\nevent:") < 0:  # events without their name (not Anthropic's own)
            for event in complete.split(b"\n\n"):
                self._take(event)
            return
        self.content_events += block.count(_DELTA)
        i = block.find(_MESSAGE)
        while i >= 0:
            end = block.find(b"\n\n", i + 1)
            event = block[i + 1 : end if end >= 0 else len(block)]
            if event.startswith(_STOP):
                self.done = True
            else:
                self._take(event)
            i = block.find(_MESSAGE, i + 1)

    def _take(self, event: bytes) -> None:
        j = event.find(b"\ndata:")
        # the usual shape, an `event:` line and one `data:` line; else every line is looked at
        data = event[j + 6 :] if j >= 0 and event.find(b"\n", j + 1) < 0 else _event_data(event)
        if not data:
            return
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        kind = doc.get("type")
        if kind == "message_delta":
            usage = doc.get("usage")
            if isinstance(usage, dict):
                merged = self._usage if self._usage is not None else {}
                # cumulative counts: each one given replaces the earlier one; a null is no news
                merged.update((k, v) for k, v in usage.items() if v is not None)
                self._usage = merged
                self._final = True
                self._read_usage = None
        elif kind == "message_start":
            message = doc.get("message")
            if isinstance(message, dict):
                self.model = model_name(message.get("model"))
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._usage = dict(usage)
        elif kind == "content_block_delta":  # an event without its `event:` line
            self.content_events += 1
        elif kind == "message_stop":
            self.done = True

    def flush(self) -> bytes:
        """Nothing is held back: every byte was sent as it came."""
        self._pending = b""
        return b""
