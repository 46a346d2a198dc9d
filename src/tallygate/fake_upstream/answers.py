"""What the fake upstream answers: usage numbers and the bodies it builds from a request."""

from __future__ import annotations

import orjson
from aiohttp import web

CREATED = 1735689600  # fixed, so answers are byte-for-byte repeatable
WORDS = ["Hello", " from", " the", " fake", " upstream", ".", " It", " counts", " every", " token", "."]


def usage_numbers(doc: dict, fake: dict) -> tuple[int, int, int, int]:
    if "prompt_tokens" in fake:
        prompt = int(fake["prompt_tokens"])
    else:
        prompt = max(1, len(orjson.dumps(doc.get("messages") or doc.get("input") or doc.get("prompt") or "")) // 4)
    completion = int(fake.get("completion_tokens", fake.get("chunks", 5)))
    return prompt, completion, int(fake.get("cached_tokens", 0)), int(fake.get("reasoning_tokens", 0))


def _with_details(usage: dict, fake: dict, names: tuple[str, str]) -> dict:
    """`fake.details`: {"input": {...}, "output": {...}} added to the usage object's token
    details (audio, cache writes, images), as a provider reports them."""
    details = fake.get("details") or {}
    for side, name in zip(("input", "output"), names, strict=True):
        if details.get(side):
            usage[name] = {**usage.get(name, {}), **details[side]}
    return usage


def chat_usage(doc, fake) -> dict:
    p, c, cached, reasoning = usage_numbers(doc, fake)
    usage = {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return _with_details(usage, fake, ("prompt_tokens_details", "completion_tokens_details"))


def responses_usage(doc, fake) -> dict:
    p, c, cached, reasoning = usage_numbers(doc, fake)
    usage = {
        "input_tokens": p,
        "output_tokens": c,
        "total_tokens": p + c,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }
    return _with_details(usage, fake, ("input_tokens_details", "output_tokens_details"))


BLOB_PIECE = 64 * 1024


def raw_answer(fake: dict) -> web.Response:
    """A 200 whose body is whatever the test says (HTML, garbage, JSON without usage)."""
    return web.Response(
        body=str(fake["raw_body"]).encode("utf-8", "surrogateescape"),
        headers={"Content-Type": str(fake.get("content_type", "text/html"))},
    )


def blob_event(size: int) -> bytes:
    """One SSE event of `size` bytes (no blank line until its very end)."""
    return b"data: " + b"x" * max(0, size - 8) + b"\n\n"


async def write_pieces(resp, event: bytes) -> None:
    view = memoryview(event)
    for start in range(0, len(event), BLOB_PIECE):
        await resp.write(bytes(view[start : start + BLOB_PIECE]))


def closed(request) -> bool:
    return request.transport is None or request.transport.is_closing()


def responses_events(response, output: list, usage, words: list[str], message: dict | None) -> list[bytes]:
    """A Responses stream as the API reference documents it: created, in_progress, each
    output item added and done (a message's content part and text deltas between; a function
    call's argument deltas when the last item is one: `message` None), completed.
    `response(status, output, usage)` builds the response object at each stage."""
    events: list[dict] = [
        {"type": "response.created", "response": response("in_progress", [], None)},
        {"type": "response.in_progress", "response": response("in_progress", [], None)},
    ]
    tools = output[:-1]
    for index, item in enumerate(tools):
        events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    index = len(tools)
    if message is None:
        call = output[-1]
        at = {"item_id": call["id"], "output_index": index}
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**call, "arguments": "", "status": "in_progress"},
            }
        )
        args = call["arguments"]
        step = max(1, -(-len(args) // max(1, len(words))))
        events.extend(
            {"type": "response.function_call_arguments.delta", **at, "delta": args[i : i + step]}
            for i in range(0, len(args), step)
        )
        events.append({"type": "response.function_call_arguments.done", **at, "name": call["name"], "arguments": args})
        events.append({"type": "response.output_item.done", "output_index": index, "item": call})
        events.append({"type": "response.completed", "response": response("completed", output, usage)})
        return _numbered(events)
    item_id = message["id"]
    text = "".join(words)
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    events.append(
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**message, "status": "in_progress", "content": []},
        }
    )
    events.append({"type": "response.content_part.added", **where, "part": part})
    events.extend({"type": "response.output_text.delta", **where, "delta": w, "logprobs": []} for w in words)
    events.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
    events.append({"type": "response.content_part.done", **where, "part": {**part, "text": text}})
    events.append({"type": "response.output_item.done", "output_index": index, "item": message})
    events.append({"type": "response.completed", "response": response("completed", output, usage)})
    return _numbered(events)


def _numbered(events: list[dict]) -> list[bytes]:
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": i}) + b"\n\n"
        for i, e in enumerate(events)
    ]
