"""The fake upstream's aiohttp application: one handler per OpenAI endpoint, Anthropic's
Messages API (anthropic.py), plus /_fake/*."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from .answers import (
    BLOB_PIECE,
    CREATED,
    WORDS,
    blob_event,
    chat_usage,
    closed,
    raw_answer,
    responses_events,
    responses_usage,
    usage_numbers,
    write_pieces,
)
from .anthropic import AnthropicAnswers
from .batches import FakeBatches
from .media import FakeMedia
from .objects import FakeObjects, new_id
from .structured import chat_finished, json_text, pieces, responses_finished, tool_call

# request headers listed by /_fake/requests (the ones a test checks were passed on, or not)
_RECORDED_HEADERS = ("x-api-key", "anthropic-version", "anthropic-beta", "api-key", "openai-beta")


class FakeUpstream:
    def __init__(self, fail_rate: float = 0.0, batch_delay: float = 1.0) -> None:
        self.requests: list[dict] = []
        self.calls = 0
        self.fail_every = int(round(1 / fail_rate)) if fail_rate > 0 else 0
        self.failed = 0  # answers that were --fail-rate errors
        self.by_key: dict[str, int] = {}  # calls per fake "key", for fail_first / drop_first
        self.disconnects: list[dict] = []
        self.completed_streams = 0
        self.objects = FakeObjects()  # stored responses, conversations, files
        self.batches = FakeBatches(self.objects, batch_delay)  # the Batch API, finished after batch_delay s

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.model)
        anthropic = AnthropicAnswers(self)
        app.router.add_post("/v1/messages", anthropic.messages)
        app.router.add_post("/v1/messages/count_tokens", anthropic.count_tokens)
        self.objects.add_routes(app)
        FakeMedia(self).add_routes(app)
        self.batches.add_routes(app)
        app.on_response_prepare.append(self._cookie)
        app.router.add_get("/_fake/requests", self.list_requests)
        app.router.add_post("/_fake/reset", self.reset)
        app.router.add_get("/_fake/stats", self.stats)
        return app

    async def _begin(self, request: web.Request, error_body=None):
        """(doc, fake, None), or (None, None, the error answer) as "fake" asks; `error_body(status,
        message)`: the error's JSON in the API's shape (None: OpenAI's)."""
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
                "headers": {k: request.headers[k] for k in _RECORDED_HEADERS if k in request.headers},
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
                key = key or request.headers.get("api-key") or request.headers.get("x-api-key") or ""
                message = f"Incorrect API key provided: {key}"
            body = {
                "error": {
                    "message": message,
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            if error_body is not None:
                body = error_body(status, message)
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

    async def _sse(self, request, events: list[bytes], fake: dict, headers: dict | None = None) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers=headers
            or {
                "x-request-id": "req_fake_stream",
                "x-ratelimit-remaining-requests": "99",
            }
        )
        resp.headers["Content-Type"] = "text/event-stream; charset=utf-8"
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
            if wait and not await self._sleep_while_connected(request, wait) or closed(request):
                self._disconnected(request, i, len(events))
                return resp
            try:
                if len(event) > BLOB_PIECE:
                    await write_pieces(resp, event)
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
            if closed(request):
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
        # tools and JSON mode (structured.py): a call, or a JSON text, instead of the words
        call = tool_call(doc, chat_finished(doc)) if kind == "chat.completion" else None
        as_json = json_text(doc.get("response_format")) if kind == "chat.completion" else None
        if as_json is not None:
            words = pieces(as_json, n)
        finish = "tool_calls" if call is not None else "stop"
        if fake.get("raw_body") is not None and not doc.get("stream"):
            return raw_answer(fake)
        if not doc.get("stream"):
            if kind == "chat.completion":
                message: dict = {"role": "assistant", "content": "".join(words), "refusal": None}
                if call is not None:
                    message["content"] = None
                    message["tool_calls"] = [
                        {"id": "call_fake_1", "type": "function", "function": {"name": call[0], "arguments": call[1]}}
                    ]
                choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": "".join(words), "logprobs": None, "finish_reason": "stop"}
            body = {
                "id": "chatcmpl-fake",
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice],
                "system_fingerprint": "fp_fake",
                "service_tier": fake.get("service_tier", "default"),
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
        if call is not None:  # the call's name first, then its arguments in pieces
            words = pieces(call[1], n)
        for i, word in enumerate(words):
            if kind == "chat.completion":
                delta: dict = {"content": word} if i else {"role": "assistant", "content": word}
                if call is not None:
                    fn = {"arguments": word} if i else {"name": call[0], "arguments": word}
                    tc: dict = {"index": 0, "function": fn}
                    if not i:
                        tc.update(id="call_fake_1", type="function")
                    delta = {"tool_calls": [tc]} if i else {"role": "assistant", "content": None, "tool_calls": [tc]}
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
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
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
                        "service_tier": fake.get("service_tier", "default"),
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        events.append(b"data: [DONE]\n\n")
        if fake.get("sse_blob"):
            events.insert(0, blob_event(int(fake["sse_blob"])))
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
        p, _, _, _ = usage_numbers(doc, fake)
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
        text_format = doc.get("text").get("format") if isinstance(doc.get("text"), dict) else None
        as_json = json_text(text_format)
        if as_json is not None:
            words = pieces(as_json, n)
        text = "".join(words)
        created = CREATED
        response_id = new_id("resp_")
        message: dict | None = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        # tool calls the answer made before its message (e.g. web_search_call items)
        output = [*fake.get("output_items", []), message]
        call = tool_call(doc, responses_finished(doc))
        if call is not None:  # a function call is the answer's last item, instead of a message
            message = None
            output[-1] = {
                "type": "function_call",
                "id": "fc_fake",
                "call_id": "call_fake_1",
                "name": call[0],
                "arguments": call[1],
                "status": "completed",
            }

        def response(status: str, output: list, usage) -> dict:
            return {
                "id": response_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": doc.get("tools") or [],
                "text": {"format": text_format or {"type": "text"}},
                "usage": usage,
                "service_tier": fake.get("service_tier", "default"),
                "error": None,
                "incomplete_details": None,
                "instructions": None,
                "metadata": {},
                "temperature": 1.0,
                "top_p": 1.0,
            }

        usage = None if fake.get("no_usage") else responses_usage(doc, fake)
        self.objects.remember_response(response("completed", output, usage), doc)
        if not doc.get("stream"):
            return web.Response(
                body=orjson.dumps(response("completed", output, usage)), content_type="application/json"
            )
        return await self._sse(request, responses_events(response, output, usage, words, message), fake)

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
            for m in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
        ]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small"):
            return web.json_response({"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"})
        error = {
            "message": f"The model '{name}' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
        return web.json_response({"error": error}, status=404)

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
