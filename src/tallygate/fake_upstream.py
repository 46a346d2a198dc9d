"""A deterministic fake OpenAI upstream on loopback, for demos and tests.

`tallygate fake-upstream --port 9100` answers chat completions, completions,
embeddings, responses (JSON and SSE, with usage) and models. A request can steer
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

`--fail-rate 0.1` answers 500 on every tenth call, for fault runs. What it
received is listed at GET /_fake/requests (cleared by POST /_fake/reset); GET
/_fake/stats counts calls and lists streams whose reader hung up
(`disconnects`: path, events sent, events planned).
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web

CREATED = 1735689600  # fixed, so answers are byte-for-byte repeatable
WORDS = ["Hello", " from", " the", " fake", " upstream", ".", " It", " counts", " every", " token", "."]


def _usage_numbers(doc: dict, fake: dict) -> tuple[int, int, int, int]:
    if "prompt_tokens" in fake:
        prompt = int(fake["prompt_tokens"])
    else:
        prompt = max(1, len(orjson.dumps(doc.get("messages") or doc.get("input") or doc.get("prompt") or "")) // 4)
    completion = int(fake.get("completion_tokens", fake.get("chunks", 5)))
    return prompt, completion, int(fake.get("cached_tokens", 0)), int(fake.get("reasoning_tokens", 0))


def chat_usage(doc, fake) -> dict:
    p, c, cached, reasoning = _usage_numbers(doc, fake)
    return {
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


def responses_usage(doc, fake) -> dict:
    p, c, cached, reasoning = _usage_numbers(doc, fake)
    return {
        "input_tokens": p,
        "output_tokens": c,
        "total_tokens": p + c,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }


BLOB_PIECE = 64 * 1024


def _raw_answer(fake: dict) -> web.Response:
    """A 200 whose body is whatever the test says (HTML, garbage, JSON without usage)."""
    return web.Response(
        body=str(fake["raw_body"]).encode("utf-8", "surrogateescape"),
        headers={"Content-Type": str(fake.get("content_type", "text/html"))},
    )


def _blob_event(size: int) -> bytes:
    """One SSE event of `size` bytes (no blank line until its very end)."""
    return b"data: " + b"x" * max(0, size - 8) + b"\n\n"


async def _write_pieces(resp, event: bytes) -> None:
    view = memoryview(event)
    for start in range(0, len(event), BLOB_PIECE):
        await resp.write(bytes(view[start : start + BLOB_PIECE]))


def _closed(request) -> bool:
    return request.transport is None or request.transport.is_closing()


class FakeUpstream:
    def __init__(self, fail_rate: float = 0.0) -> None:
        self.requests: list[dict] = []
        self.calls = 0
        self.fail_every = int(round(1 / fail_rate)) if fail_rate > 0 else 0
        self.failed = 0  # answers that were --fail-rate errors
        self.by_key: dict[str, int] = {}  # calls per fake "key", for fail_first / drop_first
        self.disconnects: list[dict] = []
        self.completed_streams = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/models", self.models)
        app.on_response_prepare.append(self._cookie)
        app.router.add_get("/_fake/requests", self.list_requests)
        app.router.add_post("/_fake/reset", self.reset)
        app.router.add_get("/_fake/stats", self.stats)
        return app

    async def _begin(self, request: web.Request):
        raw = await request.read()
        self.calls += 1
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        given = doc.get("fake")
        fake: dict = given if isinstance(given, dict) else {}
        by_model = fake.get("by_model")
        if isinstance(by_model, dict) and isinstance(by_model.get(doc.get("model")), dict):
            fake = {**fake, **by_model[doc.get("model")]}
        self.requests.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "cookie": request.headers.get("Cookie"),
                "body": raw.decode("utf-8", "replace"),
            }
        )
        if fake.get("set_cookie"):
            request["set_cookie"] = str(fake["set_cookie"])  # added to the answer (_cookie)
        del self.requests[:-200]
        if fake.get("delay"):
            await asyncio.sleep(float(fake["delay"]))
        if fake.get("redirect"):  # a moved API: 307 to the given path, which answers normally
            raise web.HTTPTemporaryRedirect(str(fake["redirect"]))
        status = int(fake.get("status", 0))
        if "key" in fake and ("fail_first" in fake or "drop_first" in fake):
            key = str(fake["key"])
            n = self.by_key[key] = self.by_key.get(key, 0) + 1
            if n <= int(fake.get("drop_first", 0)):
                if request.transport is not None:
                    request.transport.close()  # no answer at all: a connection error for the caller
                return None, None, web.Response(status=599)
            if not status and n <= int(fake.get("drop_first", 0)) + int(fake.get("fail_first", 0)):
                status = int(fake.get("fail_status", 503))
        if not status and self.fail_every and self.calls % self.fail_every == 0:
            status = 500
            self.failed += 1
        if status:
            message = f"fake upstream error {status}"
            if fake.get("quote_key"):  # as some upstreams do: the key they were sent, in the message
                key = request.headers.get("Authorization", "").removeprefix("Bearer ")
                message = f"Incorrect API key provided: {key or request.headers.get('api-key', '')}"
            body = {
                "error": {
                    "message": message,
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            headers = {"x-request-id": "req_fake_err"}
            if fake.get("retry_after") is not None:
                headers["retry-after"] = str(fake["retry_after"])
            if fake.get("cut_body") is not None:
                return None, None, await self._cut(request, status, orjson.dumps(body), headers, fake)
            return (
                None,
                None,
                web.json_response(body, status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode()),
            )
        return doc, fake, None

    @staticmethod
    async def _cookie(request, response) -> None:
        if request.get("set_cookie"):
            response.headers["Set-Cookie"] = request["set_cookie"] + "; Path=/"

    async def _cut(self, request, status: int, body: bytes, headers: dict, fake: dict) -> web.StreamResponse:
        """An answer that breaks off: the status and headers (with the full Content-Length),
        `cut_body` bytes of the body, then (after `stall_body` seconds) the connection closed."""
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_type = "application/json"
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: int(fake["cut_body"])])
        if fake.get("stall_body"):
            await self._sleep_while_connected(request, float(fake["stall_body"]))
        if request.transport is not None:
            request.transport.close()
        return resp

    def _model(self, doc, fake) -> str:
        return str(fake.get("upstream_model", doc.get("model", "gpt-4o-mini")))

    async def _sse(self, request, events: list[bytes], fake: dict) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "x-request-id": "req_fake_stream",
                "x-ratelimit-remaining-requests": "99",
            }
        )
        await resp.prepare(request)
        cut = fake.get("cut_after")
        delay = float(fake.get("chunk_delay", 0))
        first_delay = float(fake.get("first_event_delay", 0))
        done_delay = float(fake.get("done_delay", 0))
        for i, event in enumerate(events):
            if cut is not None and i >= int(cut):
                request.transport.close()  # cut off mid-stream, no [DONE]
                return resp
            wait = (first_delay if not i else delay) + (done_delay if event == b"data: [DONE]\n\n" else 0)
            if wait and not await self._sleep_while_connected(request, wait) or _closed(request):
                self._disconnected(request, i, len(events))
                return resp
            try:
                if len(event) > BLOB_PIECE:
                    await _write_pieces(resp, event)
                else:
                    await resp.write(event)
            except (ConnectionError, RuntimeError):
                self._disconnected(request, i, len(events))
                return resp
        await resp.write_eof()
        self.completed_streams += 1
        return resp

    @staticmethod
    async def _sleep_while_connected(request, seconds: float) -> bool:
        """Sleep, but notice a reader that hangs up meanwhile (False)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.05))
            if _closed(request):
                return False

    def _disconnected(self, request, sent: int, planned: int) -> None:
        self.disconnects.append({"path": request.path, "sent_events": sent, "planned_events": planned})
        del self.disconnects[:-1000]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._chat_like(request, "chat.completion")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._chat_like(request, "text_completion")

    async def _chat_like(self, request, kind: str) -> web.StreamResponse:
        doc, fake, error = await self._begin(request)
        if error is not None:
            return error
        model = self._model(doc, fake)
        n = int(fake.get("chunks", 5))
        words = [WORDS[i % len(WORDS)] for i in range(n)]
        created = CREATED
        usage = chat_usage(doc, fake)
        if fake.get("raw_body") is not None and not doc.get("stream"):
            return _raw_answer(fake)
        if not doc.get("stream"):
            if kind == "chat.completion":
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            else:
                choice = {"index": 0, "text": "".join(words), "logprobs": None, "finish_reason": "stop"}
            body = {
                "id": "chatcmpl-fake",
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice],
                "system_fingerprint": "fp_fake",
            }
            if not fake.get("no_usage"):
                body["usage"] = usage
            headers = {
                "x-request-id": "req_fake",
                "x-ratelimit-limit-requests": "100",
                "x-ratelimit-remaining-requests": "99",
                "x-fake-secret-header": "x",
            }
            if fake.get("cut_body") is not None and not fake.get("cut_errors"):
                return await self._cut(request, 200, orjson.dumps(body), headers, fake)
            return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)
        include = isinstance(doc.get("stream_options"), dict) and doc["stream_options"].get("include_usage") is True
        include = include and not fake.get("no_usage")
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
        events = []
        for i, word in enumerate(words):
            if kind == "chat.completion":
                delta = {"content": word} if i else {"role": "assistant", "content": word}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": word, "logprobs": None, "finish_reason": None}
            chunk = {
                "id": "chatcmpl-fake",
                "object": chunk_kind,
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [choice],
            }
            if include:
                chunk["usage"] = None
            events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        last = (
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
            if kind == "chat.completion"
            else {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
        )
        chunk = {
            "id": "chatcmpl-fake",
            "object": chunk_kind,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [last],
        }
        if include:
            chunk["usage"] = None
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if include:
            events.append(
                b"data: "
                + orjson.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": chunk_kind,
                        "created": created,
                        "model": model,
                        "system_fingerprint": "fp_fake",
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        events.append(b"data: [DONE]\n\n")
        if fake.get("sse_blob"):
            events.insert(0, _blob_event(int(fake["sse_blob"])))
        return await self._sse(request, events, fake)

    async def embeddings(self, request: web.Request) -> web.Response:
        doc, fake, error = await self._begin(request)
        if error is not None:
            return error
        inputs = doc.get("input", "")
        count = len(inputs) if isinstance(inputs, list) else 1
        dims = int(fake.get("dimensions", doc.get("dimensions", 8)))
        data = [
            {"object": "embedding", "index": i, "embedding": [round(0.001 * (i + j), 6) for j in range(dims)]}
            for i in range(count)
        ]
        p, _, _, _ = _usage_numbers(doc, fake)
        body = {
            "object": "list",
            "data": data,
            "model": self._model(doc, fake),
            "usage": {"prompt_tokens": p, "total_tokens": p},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        doc, fake, error = await self._begin(request)
        if error is not None:
            return error
        model = self._model(doc, fake)
        n = int(fake.get("chunks", 5))
        words = [WORDS[i % len(WORDS)] for i in range(n)]
        text = "".join(words)
        created = CREATED
        message = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }

        def response(status: str, output: list, usage) -> dict:
            return {
                "id": "resp_fake",
                "object": "response",
                "created_at": created,
                "status": status,
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": usage,
                "error": None,
                "incomplete_details": None,
                "instructions": None,
                "metadata": {},
                "temperature": 1.0,
                "top_p": 1.0,
            }

        usage = None if fake.get("no_usage") else responses_usage(doc, fake)
        if not doc.get("stream"):
            return web.Response(
                body=orjson.dumps(response("completed", [message], usage)), content_type="application/json"
            )
        events = [
            b"event: response.created\ndata: "
            + orjson.dumps(
                {"type": "response.created", "sequence_number": 0, "response": response("in_progress", [], None)}
            )
            + b"\n\n"
        ]
        for i, word in enumerate(words):
            events.append(
                b"event: response.output_text.delta\ndata: "
                + orjson.dumps(
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": i + 1,
                        "item_id": "msg_fake",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": word,
                        "logprobs": [],
                    }
                )
                + b"\n\n"
            )
        events.append(
            b"event: response.completed\ndata: "
            + orjson.dumps(
                {
                    "type": "response.completed",
                    "sequence_number": n + 1,
                    "response": response("completed", [message], usage),
                }
            )
            + b"\n\n"
        )
        return await self._sse(request, events, fake)

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
            for m in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
        ]
        return web.json_response({"object": "list", "data": data})

    async def list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": self.calls,
                "failed": self.failed,
                "by_key": self.by_key,
                "completed_streams": self.completed_streams,
                "disconnects": self.disconnects,
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.calls = 0
        self.failed = 0
        self.by_key.clear()
        self.disconnects.clear()
        self.completed_streams = 0
        return web.json_response({"ok": True})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tallygate fake-upstream", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--fail-rate", type=float, default=0.0, help="answer 500 on this fraction of calls")


def run(args: argparse.Namespace) -> int:
    fake = FakeUpstream(args.fail_rate)
    print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(fake.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
