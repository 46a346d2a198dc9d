"""The fake upstream's stateful endpoints, shaped as OpenAI's API reference documents them:
stored responses (retrieve, delete, cancel, input items, input token counts), conversations
and their items, moderations and files (uploaded multipart, listed, downloaded). State is
in memory; ids are random, as the real ones are."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict

import orjson
from aiohttp import BodyPartReader, web

KEEP = 10_000  # objects of each kind kept (oldest dropped first)
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _json(doc, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _not_found(what: str, ident: str) -> web.Response:
    error = {
        "message": f"No {what} found with id '{ident}'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    return _json({"error": error}, 404)


def _page(items: list[dict], request: web.Request) -> dict:
    """A cursor page (`after`, `limit`, `order`) as the list endpoints answer it."""
    q = request.query
    if q.get("order", "desc") == "desc":
        items = items[::-1]
    after = q.get("after")
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(q.get("limit", 20) or 20)
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def _input_items(doc: dict) -> list[dict]:
    given = doc.get("input")
    if isinstance(given, str):
        given = [{"role": "user", "content": given}]
    items = []
    for item in given if isinstance(given, list) else []:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        items.append(
            {
                "id": item.get("id") or new_id("msg_"),
                "type": item.get("type", "message"),
                "role": item.get("role", "user"),
                "status": "completed",
                "content": content if isinstance(content, list) else [],
            }
        )
    return items


class Store(OrderedDict):
    def put(self, key: str, value) -> None:
        self[key] = value
        while len(self) > KEEP:
            self.popitem(last=False)


class FakeObjects:
    def __init__(self) -> None:
        self.responses: Store = Store()  # id -> (response object, input items)
        self.conversations: Store = Store()  # id -> (conversation object, items)
        self.files: Store = Store()  # id -> (file object, content)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/responses/input_tokens", self.input_tokens)
        r.add_get("/v1/responses/{id}", self.response_get)
        r.add_delete("/v1/responses/{id}", self.response_delete)
        r.add_post("/v1/responses/{id}/cancel", self.response_cancel)
        r.add_get("/v1/responses/{id}/input_items", self.response_input_items)
        r.add_post("/v1/conversations", self.conversation_create)
        r.add_get("/v1/conversations/{id}", self.conversation_get)
        r.add_post("/v1/conversations/{id}", self.conversation_update)
        r.add_delete("/v1/conversations/{id}", self.conversation_delete)
        r.add_get("/v1/conversations/{id}/items", self.items_list)
        r.add_post("/v1/conversations/{id}/items", self.items_create)
        r.add_get("/v1/conversations/{id}/items/{item}", self.item_get)
        r.add_delete("/v1/conversations/{id}/items/{item}", self.item_delete)
        r.add_post("/v1/moderations", self.moderations)
        r.add_post("/v1/files", self.file_create)
        r.add_get("/v1/files", self.files_list)
        r.add_get("/v1/files/{id}", self.file_get)
        r.add_delete("/v1/files/{id}", self.file_delete)
        r.add_get("/v1/files/{id}/content", self.file_content)

    # -- responses (stored by the /v1/responses handler through remember_response) ---------
    def remember_response(self, response: dict, doc: dict) -> None:
        if doc.get("store", True) is not False:
            self.responses.put(response["id"], (response, _input_items(doc)))

    async def response_get(self, request: web.Request) -> web.Response:
        found = self.responses.get(request.match_info["id"])
        if found is None:
            return _not_found("response", request.match_info["id"])
        return _json(found[0])

    async def response_delete(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if self.responses.pop(ident, None) is None:
            return _not_found("response", ident)
        return _json({"id": ident, "object": "response.deleted", "deleted": True})

    async def response_cancel(self, request: web.Request) -> web.Response:
        found = self.responses.get(request.match_info["id"])
        if found is None:
            return _not_found("response", request.match_info["id"])
        found[0]["status"] = "cancelled"
        return _json(found[0])

    async def response_input_items(self, request: web.Request) -> web.Response:
        found = self.responses.get(request.match_info["id"])
        if found is None:
            return _not_found("response", request.match_info["id"])
        return _json(_page(list(found[1]), request))

    async def input_tokens(self, request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read() or b"{}")
        count = max(1, len(orjson.dumps(doc.get("input") or "")) // 4)
        return _json({"object": "response.input_tokens", "input_tokens": count})

    # -- conversations ---------------------------------------------------------------
    async def conversation_create(self, request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read() or b"{}")
        ident = new_id("conv_")
        conv = {"id": ident, "object": "conversation", "created_at": int(time.time()), "metadata": {}}
        conv["metadata"] = doc.get("metadata") or {}
        self.conversations.put(ident, (conv, _input_items({"input": doc.get("items") or []})))
        return _json(conv)

    async def conversation_get(self, request: web.Request) -> web.Response:
        found = self.conversations.get(request.match_info["id"])
        return _json(found[0]) if found else _not_found("conversation", request.match_info["id"])

    async def conversation_update(self, request: web.Request) -> web.Response:
        found = self.conversations.get(request.match_info["id"])
        if found is None:
            return _not_found("conversation", request.match_info["id"])
        doc = orjson.loads(await request.read() or b"{}")
        found[0]["metadata"] = doc.get("metadata") or {}
        return _json(found[0])

    async def conversation_delete(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if self.conversations.pop(ident, None) is None:
            return _not_found("conversation", ident)
        return _json({"id": ident, "object": "conversation.deleted", "deleted": True})

    async def items_list(self, request: web.Request) -> web.Response:
        found = self.conversations.get(request.match_info["id"])
        if found is None:
            return _not_found("conversation", request.match_info["id"])
        return _json(_page(list(found[1]), request))

    async def items_create(self, request: web.Request) -> web.Response:
        found = self.conversations.get(request.match_info["id"])
        if found is None:
            return _not_found("conversation", request.match_info["id"])
        doc = orjson.loads(await request.read() or b"{}")
        added = _input_items({"input": doc.get("items") or []})
        found[1].extend(added)
        return _json(
            {
                "object": "list",
                "data": added,
                "first_id": added[0]["id"] if added else None,
                "last_id": added[-1]["id"] if added else None,
                "has_more": False,
            }
        )

    def _item(self, request: web.Request):
        found = self.conversations.get(request.match_info["id"])
        if found is None:
            return None, None, _not_found("conversation", request.match_info["id"])
        for item in found[1]:
            if item["id"] == request.match_info["item"]:
                return found, item, None
        return None, None, _not_found("item", request.match_info["item"])

    async def item_get(self, request: web.Request) -> web.Response:
        _, item, error = self._item(request)
        return error if error is not None else _json(item)

    async def item_delete(self, request: web.Request) -> web.Response:
        found, item, error = self._item(request)
        if error is not None:
            return error
        found[1].remove(item)
        return _json(found[0])

    # -- moderations -------------------------------------------------------------------
    async def moderations(self, request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read() or b"{}")
        given = doc.get("input")
        inputs = given if isinstance(given, list) else [given]
        result = {
            "flagged": False,
            "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0001),
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
        }
        return _json(
            {
                "id": new_id("modr-"),
                "model": doc.get("model") or "omni-moderation-latest",
                "results": [result for _ in inputs],
            }
        )

    # -- files -------------------------------------------------------------------------
    async def file_create(self, request: web.Request) -> web.Response:
        purpose, filename, size, content = None, "upload", 0, bytearray()
        try:
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "purpose":
                    purpose = (await part.read()).decode()
                elif part.name == "file":
                    filename = part.filename or filename
                    while chunk := await part.read_chunk(1 << 20):
                        size += len(chunk)
                        if len(content) < 1 << 20:  # the first MiB kept for /content: big test files are noise
                            content += chunk
        except Exception:  # not multipart, or broken: what OpenAI answers 400
            error = {"message": "The request body is not valid multipart/form-data.", "type": "invalid_request_error"}
            return _json({"error": {**error, "param": None, "code": None}}, 400)
        if purpose is None:
            error = {"message": "Missing required parameter: 'purpose'.", "type": "invalid_request_error"}
            return _json({"error": {**error, "param": "purpose", "code": None}}, 400)
        ident = new_id("file-")
        file = {
            "id": ident,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "expires_at": None,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files.put(ident, (file, bytes(content)))
        return _json(file)

    async def files_list(self, request: web.Request) -> web.Response:
        files = [f for f, _ in self.files.values()]
        if request.query.get("purpose"):
            files = [f for f in files if f["purpose"] == request.query["purpose"]]
        return _json(_page(files, request))

    async def file_get(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["id"])
        return _json(found[0]) if found else _not_found("file", request.match_info["id"])

    async def file_delete(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if self.files.pop(ident, None) is None:
            return _not_found("file", ident)
        return _json({"id": ident, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["id"])
        if found is None:
            return _not_found("file", request.match_info["id"])
        return web.Response(body=found[1], content_type="application/octet-stream")
