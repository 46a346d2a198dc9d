"""A deterministic fake OpenAI upstream on loopback, for demos and tests.

`tallygate fake-upstream --port 9100` answers chat completions, completions,
embeddings, responses (JSON and SSE, with usage), models, images, audio and the stateful
endpoints below. A request can steer
it with an extra body field the gateway forwards untouched:

    "fake": {"prompt_tokens": 1000, "completion_tokens": 200, "cached_tokens": 500,
             "reasoning_tokens": 0, "upstream_model": "gpt-4o-2024-08-06",
             "status": 500, "delay": 0.5, "chunk_delay": 0.1, "chunks": 5,
             "cut_after": 2, "no_usage": true}

Fault behaviours (all optional):

    "fake": {"key": "t1", "fail_first": 2, "fail_status": 503,  # the first 2 calls with key t1 fail
             "drop_first": 1,            # ... or are dropped: connection closed, no answer
             "retry_after": "0.1",       # Retry-After header on error answers
             "first_event_delay": 2,     # streams: headers at once, first event after 2 s
             "done_delay": 1,            # streams: wait before the final [DONE]
             "by_model": {"gpt-4o": {"status": 503}},  # overrides for one model name
             "set_cookie": "__cf_bm=abc",  # a Set-Cookie header on the answer
             "quote_key": true,          # error answers quote the key the caller sent
             "cut_body": 20,             # non-streamed answers: the status, headers and full
                                         # Content-Length, 20 bytes of the body, then the
                                         # connection closed
             "cut_errors": true,         # ... only error answers are cut
             "stall_body": 5}            # ... the rest is never sent: 5 s of silence, then the close

Untrustworthy answers (chat and completions):

    "fake": {"raw_body": "<html>...", "content_type": "text/html",  # a 200 with this body, not JSON
             "sse_blob": 100000000}  # streams: first an event of this many bytes, written in 64 KB pieces

Billable parts beyond tokens (chat, completions, responses):

    "fake": {"details": {"input": {"audio_tokens": 40, "cache_write_tokens": 100},
                         "output": {"audio_tokens": 30}},   # added to the usage's token details
             "service_tier": "flex",                        # the tier the answer says it ran at
             "output_items": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}
                                                            # responses: items before the message

Responses streams carry the documented event sequence (response.created, in_progress,
each output item added and done, a message's content part and text deltas, completed), so
the SDKs' `responses.stream` helpers work against it.

Tool calls and JSON mode (fake_upstream/structured.py): a request offering function tools
gets a call of one (chat `tool_calls` with finish_reason "tool_calls", a Responses
`function_call` item with its argument delta events), its arguments an instance of the
tool's schema, until the conversation ends with the tool's result; `response_format`
json_object / json_schema (Responses: `text.format`) gets JSON text valid for the schema.

Images and audio (fake_upstream/media.py): image generations and edits (dall-e-* per image,
gpt-image-* with token usage, streamed with partial images), transcriptions and translations
(json, verbose_json, text, srt, vtt; streamed), speech (audio bytes, or SSE).

Stateful endpoints (fake_upstream/objects.py, in memory, random ids): stored responses
(retrieve, delete, cancel, input items; every non-`store: false` response is kept),
`responses/input_tokens`, conversations and their items, moderations, files (multipart
upload, list, retrieve, delete, content: the first MiB of each file is kept), and the Batch
API (fake_upstream/batches.py: a batch finishes `--batch-delay` seconds after its creation, its
output and error files in OpenAI's line format).

`--fail-rate 0.1` answers 500 on every tenth call, for fault runs. What it
received is listed at GET /_fake/requests (cleared by POST /_fake/reset); GET
/_fake/stats counts calls and lists streams whose reader hung up
(`disconnects`: path, events sent, events planned).
"""

from __future__ import annotations

import argparse

from aiohttp import web

from .server import FakeUpstream

__all__ = ["FakeUpstream", "add_arguments", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tallygate fake-upstream", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--fail-rate", type=float, default=0.0, help="answer 500 on this fraction of calls")
    parser.add_argument("--batch-delay", type=float, default=1.0, help="seconds until a batch finishes")


def run(args: argparse.Namespace) -> int:
    fake = FakeUpstream(args.fail_rate, args.batch_delay)
    print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(fake.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0
