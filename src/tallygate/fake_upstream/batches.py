"""The fake upstream's Batch API, shaped as OpenAI's reference documents it: a batch object
(`validating` -> `in_progress` -> `completed`, or `expired`, `failed`, `cancelling` ->
`cancelled`) with `request_counts`, `output_file_id` and `error_file_id`; the files hold one
line per request, `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}`, answered with the usage the synchronous endpoints would report.

A batch finishes `--batch-delay` seconds after it was created (metadata `fake_delay` for one
batch). Steering, in the metadata (strings, as OpenAI's metadata is): `fake_expire_after`: N
runs the first N requests and expires the rest (their lines `batch_expired` in the error file).
A request line's body may carry `"fake": {"status": 500}` to fail (its line in the error file),
and the usage fields of the other endpoints (`prompt_tokens`, `cached_tokens`, ...).
"""

from __future__ import annotations

import time
import uuid

import orjson
from aiohttp import web

from .answers import WORDS, chat_usage, responses_usage, usage_numbers
from .objects import FakeObjects, Store, _json, _not_found, _page, new_id

ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations")
EXPIRED = "This request could not be executed before the completion window expired."
CANCELLED = "This request was not executed because the batch was cancelled."


def _error(message: str, status: int = 400, param: str | None = None) -> web.Response:
    return _json({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}, status)


def _parsed(line: bytes) -> object:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # fails the batch's validation


def _number(value: object, default: float) -> float:
    try:
        return float(value) if isinstance(value, (str, int, float)) else default
    except ValueError:
        return default


def _answer(url: str, body: dict) -> tuple[int, dict]:
    """What the synchronous endpoint would have answered a request line."""
    given = body.get("fake")
    fake: dict = given if isinstance(given, dict) else {}
    model = str(fake.get("upstream_model") or body.get("model") or "gpt-4o-mini")
    if fake.get("status"):
        status = int(_number(fake["status"], 500))
        return status, {
            "error": {
                "message": "The fake upstream failed this request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    text = "".join(WORDS[i % len(WORDS)] for i in range(int(fake.get("chunks", 5))))
    if url == "/v1/embeddings":
        inputs = body.get("input", "")
        count = len(inputs) if isinstance(inputs, list) else 1
        p = usage_numbers(body, fake)[0]
        data = [{"object": "embedding", "index": i, "embedding": [0.001 * j for j in range(8)]} for i in range(count)]
        return 200, {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": p, "total_tokens": p}}
    if url == "/v1/responses":
        return 200, {
            "id": new_id("resp_"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "service_tier": "default",
            "error": None,
            "incomplete_details": None,
            "output": [
                {
                    "type": "message",
                    "id": new_id("msg_"),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": responses_usage(body, fake),
        }
    if url == "/v1/moderations":
        return 200, {"id": new_id("modr-"), "model": model, "results": [{"flagged": False}]}
    choice: dict = {"index": 0, "logprobs": None, "finish_reason": "stop"}
    if url == "/v1/completions":
        choice["text"] = text
    else:
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
    return 200, {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion" if url != "/v1/completions" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
        "usage": chat_usage(body, fake),
    }


class FakeBatches:
    def __init__(self, objects: FakeObjects, delay: float = 1.0) -> None:
        self.objects = objects
        self.delay = delay
        self.batches: Store = Store()  # id -> [batch object, monotonic creation time, input lines]

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/batches", self.create)
        r.add_get("/v1/batches", self.list)
        r.add_get("/v1/batches/{id}", self.retrieve)
        r.add_post("/v1/batches/{id}/cancel", self.cancel)

    async def create(self, request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return _error("We could not parse the JSON body of your request.")
        file_id, endpoint = doc.get("input_file_id"), doc.get("endpoint")
        if doc.get("completion_window") != "24h":
            return _error("Invalid value for 'completion_window': only '24h' is supported.", param="completion_window")
        if endpoint not in ENDPOINTS:
            return _error(f"Invalid value for 'endpoint': {endpoint!r} is not supported.", param="endpoint")
        found = self.objects.files.get(file_id) if isinstance(file_id, str) else None
        if found is None:
            return _not_found("file", str(file_id))
        now = int(time.time())
        metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else None
        lines = [_parsed(x) for x in found[1].splitlines() if x.strip()]
        batch = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        bad = [i for i, x in enumerate(lines) if not isinstance(x, dict) or x.get("url") != endpoint]
        if bad:  # validation fails: the batch runs nothing
            batch.update(
                status="failed",
                failed_at=now,
                errors={
                    "object": "list",
                    "data": [
                        {
                            "code": "invalid_url",
                            "message": "The line's url does not match the batch's endpoint.",
                            "param": "url",
                            "line": i + 1,
                        }
                        for i in bad
                    ],
                },
            )
        self.batches.put(batch["id"], [batch, time.monotonic(), lines])
        return _json(batch)

    def _advance(self, entry: list) -> dict:
        """Move a batch along its statuses by the time since it was created."""
        batch, born, lines = entry
        meta = batch.get("metadata") or {}
        delay = _number(meta.get("fake_delay"), self.delay)
        elapsed = time.monotonic() - born
        now = int(time.time())
        if batch["status"] == "validating" and elapsed >= delay / 4:
            batch.update(status="in_progress", in_progress_at=now)
        if batch["status"] == "in_progress" and elapsed >= delay:
            run = int(_number(meta.get("fake_expire_after"), len(lines)))
            self._finish(batch, lines, run, "expired" if run < len(lines) else "completed")
        elif batch["status"] == "cancelling" and elapsed >= delay:
            self._finish(batch, lines, len(lines) // 2, "cancelled")
        return batch

    def _finish(self, batch: dict, lines: list[dict], run: int, status: str) -> None:
        now = int(time.time())
        out: list[dict] = []
        err: list[dict] = []
        for i, line in enumerate(lines):
            ident = "batch_req_" + uuid.uuid4().hex
            custom_id = line.get("custom_id")
            if i >= run:
                code, message = ("batch_cancelled", CANCELLED) if status == "cancelled" else ("batch_expired", EXPIRED)
                err.append(
                    {"id": ident, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
                )
                continue
            given = line.get("body")
            body: dict = given if isinstance(given, dict) else {}
            code_, answer = _answer(str(line.get("url")), body)
            result = {
                "id": ident,
                "custom_id": custom_id,
                "response": {"status_code": code_, "request_id": "req_" + uuid.uuid4().hex, "body": answer},
                "error": None,
            }
            (out if code_ < 400 else err).append(result)
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        if out:
            batch["output_file_id"] = self._file(out, "batch_output")
        if err:
            batch["error_file_id"] = self._file(err, "batch_output")
        batch.update(status=status, finalizing_at=now, **{f"{status}_at": now})

    def _file(self, lines: list[dict], purpose: str) -> str:
        content = b"".join(orjson.dumps(x) + b"\n" for x in lines)
        ident = new_id("file-")
        file = {
            "id": ident,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "expires_at": None,
            "filename": "batch_output.jsonl",
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.objects.files.put(ident, (file, content))
        return ident

    async def retrieve(self, request: web.Request) -> web.Response:
        entry = self.batches.get(request.match_info["id"])
        if entry is None:
            return _not_found("batch", request.match_info["id"])
        return _json(self._advance(entry))

    async def cancel(self, request: web.Request) -> web.Response:
        entry = self.batches.get(request.match_info["id"])
        if entry is None:
            return _not_found("batch", request.match_info["id"])
        batch = self._advance(entry)
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
        return _json(batch)

    async def list(self, request: web.Request) -> web.Response:
        return _json(_page([self._advance(e) for e in self.batches.values()], request))
