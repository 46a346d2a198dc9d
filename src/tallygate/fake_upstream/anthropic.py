"""The fake upstream's Anthropic Messages API: `POST /v1/messages` (a Message, or its SSE
event sequence) and `POST /v1/messages/count_tokens`, in the shapes of Anthropic's API
reference. A request steers it with a "fake" body field, as on the OpenAI paths:

    "fake": {"input_tokens": 1000, "output_tokens": 200,   # usage (input excludes the cache)
             "cache_read": 5000, "cache_5m": 2000, "cache_1h": 1000,   # cache reads, writes
             "web_search_requests": 2,                     # server tool use (search blocks too)
             "service_tier": "priority",                   # default "standard"
             "delta_usage": "full",                        # message_delta repeats the input and
                                                           # cache counts (newer API versions);
                                                           # default: output_tokens only
             "chunks": 5, "chunk_delay": 0.1, "cut_after": 3, "upstream_model": "...",
             "error_after": 4}                             # streams: an `error` event (overloaded)
                                                           # after 4 events, then the end

and the shared fault behaviours (status, fail_first/key, retry_after, delay, ...), whose
error answers take Anthropic's shape here: {"type": "error", "error": {"type", "message"},
"request_id"} (529 overloaded_error, 429 rate_limit_error, ...).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from ..proxy.formats.anthropic import ERROR_TYPES  # Anthropic's documented status -> type table
from .answers import WORDS

REQUEST_ID = "req_011CFakeAnthropicUpstream"
MESSAGE_ID = "msg_01FakeUpstreamMessage"
SEARCH_ID = "srvtoolu_01FakeWebSearch"


def error_body(status: int, message: str) -> dict:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if status == 529:
        message = "Overloaded"
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": REQUEST_ID}


def prompt_size(doc: dict) -> int:
    return max(1, len(orjson.dumps([doc.get("system"), doc.get("messages"), doc.get("tools")])) // 4)


def usage(doc: dict, fake: dict) -> dict:
    """A Message's usage object: `input_tokens` without the cache reads and writes."""
    five, hour = int(fake.get("cache_5m", 0)), int(fake.get("cache_1h", 0))
    out = {
        "input_tokens": int(fake.get("input_tokens", prompt_size(doc))),
        "cache_creation_input_tokens": five + hour,
        "cache_read_input_tokens": int(fake.get("cache_read", 0)),
        "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
        "output_tokens": int(fake.get("output_tokens", fake.get("chunks", 5))),
        "service_tier": str(fake.get("service_tier", "standard")),
    }
    searches = int(fake.get("web_search_requests", 0))
    if searches:
        out["server_tool_use"] = {"web_search_requests": searches, "web_fetch_requests": 0}
    return out


def _search_blocks(n: int) -> list[dict]:
    """What a message that searched the web holds before its text: the tool call and its results."""
    blocks: list[dict] = []
    for i in range(n):
        blocks.append(
            {
                "type": "server_tool_use",
                "id": f"{SEARCH_ID}{i}",
                "name": "web_search",
                "input": {"query": "fake upstream news"},
            }
        )
        blocks.append(
            {
                "type": "web_search_tool_result",
                "tool_use_id": f"{SEARCH_ID}{i}",
                "content": [
                    {
                        "type": "web_search_result",
                        "url": "https://example.com/",
                        "title": "Example",
                        "encrypted_content": "ZmFrZQ==",
                        "page_age": None,
                    }
                ],
            }
        )
    return blocks


def message(doc: dict, fake: dict, model: str) -> dict:
    words = [WORDS[i % len(WORDS)] for i in range(int(fake.get("chunks", 5)))]
    content = [*_search_blocks(int(fake.get("web_search_requests", 0))), {"type": "text", "text": "".join(words)}]
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage(doc, fake),
    }


def _event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_events(doc: dict, fake: dict, model: str) -> list[bytes]:
    """The documented event sequence: message_start, per block content_block_start, deltas and
    content_block_stop (a ping after the first start), message_delta with usage, message_stop."""
    full = usage(doc, fake)
    start_usage = {**full, "output_tokens": 1}  # message_start carries a first output count
    start_usage.pop("server_tool_use", None)
    start = {**message(doc, fake, model), "content": [], "stop_reason": None, "usage": start_usage}
    events = [_event("message_start", {"type": "message_start", "message": start})]
    index = 0
    for block in _search_blocks(int(fake.get("web_search_requests", 0))):
        if block["type"] == "server_tool_use":
            opened = {**block, "input": {}}
            events.append(
                _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": opened})
            )
            events.append(
                _event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()},
                    },
                )
            )
        else:
            events.append(
                _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
            )
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    events.append(
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        )
    )
    events.append(_event("ping", {"type": "ping"}))
    for i in range(int(fake.get("chunks", 5))):
        events.append(
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": WORDS[i % len(WORDS)]},
                },
            )
        )
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    if fake.get("delta_usage") == "full":
        delta_usage = {k: v for k, v in full.items() if k not in ("cache_creation", "service_tier")}
    else:
        delta_usage = {"output_tokens": full["output_tokens"]}
        if "server_tool_use" in full:
            delta_usage["server_tool_use"] = full["server_tool_use"]
    events.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage,
            },
        )
    )
    events.append(_event("message_stop", {"type": "message_stop"}))
    if fake.get("error_after") is not None:  # as Anthropic reports an overload mid-stream
        events = events[: int(fake["error_after"])] + [_event("error", error_body(529, "Overloaded"))]
    return events


class AnthropicAnswers:
    """The Messages handlers, on the fake upstream's shared request log and fault behaviours."""

    def __init__(self, fake) -> None:
        self.fake = fake  # the FakeUpstream: _begin (faults, the request log) and _sse

    async def messages(self, request: web.Request) -> web.StreamResponse:
        doc, fake, error = await self.fake._begin(request, error_body)
        if error is not None:
            return error
        model = str(fake.get("upstream_model", doc.get("model", "claude-sonnet-4-5")))
        if not doc.get("stream"):
            return web.Response(
                body=orjson.dumps(message(doc, fake, model)),
                content_type="application/json",
                headers={"request-id": REQUEST_ID, "anthropic-ratelimit-requests-remaining": "99"},
            )
        return await self.fake._sse(request, stream_events(doc, fake, model), fake, {"request-id": REQUEST_ID})

    async def count_tokens(self, request: web.Request) -> web.Response:
        doc, fake, error = await self.fake._begin(request, error_body)
        if error is not None:
            return error
        return web.Response(
            body=orjson.dumps({"input_tokens": int(fake.get("input_tokens", prompt_size(doc)))}),
            content_type="application/json",
            headers={"request-id": REQUEST_ID},
        )
