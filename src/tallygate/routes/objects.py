"""The stateful and free OpenAI endpoints, passed through with tenancy and limits:

    GET/DELETE /v1/responses/{id}, POST /v1/responses/{id}/cancel,
    GET /v1/responses/{id}/input_items, POST /v1/responses/input_tokens,
    POST /v1/conversations, GET/POST/DELETE /v1/conversations/{id},
    GET/POST /v1/conversations/{id}/items, GET/DELETE /v1/conversations/{id}/items/{item_id},
    POST /v1/moderations,
    POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content,
    POST/GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel

Every call is authenticated, counted against the caller's requests-per-minute limits (no
tokens, no budget: they cost nothing) and recorded as a $0 ledger row with its endpoint
(the path with `{id}` in place of ids, so reports group them). An id belongs to the tenant
that created it through the gateway (tenants/owners.py): anyone else, and any id the gateway
never saw created, gets OpenAI's 404, so a guessed id reveals nothing. File uploads stream to
the upstream as they arrive (never held whole; TALLYGATE_MAX_FILE_BYTES), downloads stream back.
The objects live on the default route (OPENAI_BASE_URL). A batch's own calls are free; its
lines are billed once it has finished (batches/).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson

from ..auth import Authenticator, Principal
from ..batches.settle import BatchBilling
from ..errors import GatewayError, bad_request, not_found, unavailable
from ..http import ClientGone, json_object, read_body
from ..metering.record import UsageRecord, utcnow
from ..proxy.ids import elapsed_ms, new_request_id
from ..store.errors import StoreUnavailable
from ..tenants.owners import Owners
from ..upstream import FORWARD_HEADERS, PASS_HEADERS, Router, scrub
from .multipart import check_upload
from .multipart import too_large as file_too_large

log = logging.getLogger("tallygate.objects")

PREFIXES = (b"/v1/responses/", b"/v1/conversations", b"/v1/moderations", b"/v1/files", b"/v1/batches")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")
FILES_PAGE = 10_000  # the most files OpenAI lists a page
BATCHES_PAGE = 100  # the most batches OpenAI lists a page (20 when no limit is given)
OWNED_PAGES = 10  # upstream pages read for one page of the caller's files or batches
# listed kind -> (the largest upstream page, the caller's page when no limit is given)
LIST_PAGES = {"file": (FILES_PAGE, FILES_PAGE), "batch": (BATCHES_PAGE, 20)}
# answer headers passed on beside PASS_HEADERS (a download's name and size)
_DOWNLOAD_HEADERS = frozenset({b"content-disposition", b"content-length"})


@dataclass(slots=True)
class Op:
    """One call: its endpoint (for the record), the id it must own (kind, id), what it creates."""

    endpoint: str
    upstream_path: str
    owned: tuple[str, str] | None = None
    creates: str | None = None  # the kind of id its answer creates
    body: str = "none"  # none | json | upload
    download: bool = False
    lists: str | None = None  # a listing cut to the caller's ids of this kind
    answers_batch: bool = False  # the answer is a batch object (a finished one is billed)


def _match(method: str, parts: list[str]) -> Op | None | list[str]:
    """The Op for (method, path parts after /v1/), a list of the allowed methods when the
    path exists but not with this method, None when the path is unknown."""
    n = len(parts)
    head = parts[0]
    ident = parts[1] if n > 1 else ""
    if n > 1 and not _ID.fullmatch(ident):
        return None
    if head == "responses":
        if n == 2 and ident == "input_tokens":
            allowed = {"POST": Op("/v1/responses/input_tokens", "/responses/input_tokens", body="json")}
        elif n == 2:
            allowed = {
                "GET": Op("/v1/responses/{id}", f"/responses/{ident}", ("response", ident)),
                "DELETE": Op("/v1/responses/{id}", f"/responses/{ident}", ("response", ident)),
            }
        elif n == 3 and parts[2] == "cancel":
            allowed = {"POST": Op("/v1/responses/{id}/cancel", f"/responses/{ident}/cancel", ("response", ident))}
        elif n == 3 and parts[2] == "input_items":
            allowed = {
                "GET": Op("/v1/responses/{id}/input_items", f"/responses/{ident}/input_items", ("response", ident))
            }
        else:
            return None
    elif head == "conversations":
        owned = ("conversation", ident)
        if n == 1:
            allowed = {"POST": Op("/v1/conversations", "/conversations", creates="conversation", body="json")}
        elif n == 2:
            path = f"/conversations/{ident}"
            allowed = {
                "GET": Op("/v1/conversations/{id}", path, owned),
                "POST": Op("/v1/conversations/{id}", path, owned, body="json"),
                "DELETE": Op("/v1/conversations/{id}", path, owned),
            }
        elif n == 3 and parts[2] == "items":
            path = f"/conversations/{ident}/items"
            allowed = {
                "GET": Op("/v1/conversations/{id}/items", path, owned),
                "POST": Op("/v1/conversations/{id}/items", path, owned, body="json"),
            }
        elif n == 4 and parts[2] == "items" and _ID.fullmatch(parts[3]):
            path = f"/conversations/{ident}/items/{parts[3]}"
            allowed = {
                "GET": Op("/v1/conversations/{id}/items/{item_id}", path, owned),
                "DELETE": Op("/v1/conversations/{id}/items/{item_id}", path, owned),
            }
        else:
            return None
    elif head == "moderations" and n == 1:
        allowed = {"POST": Op("/v1/moderations", "/moderations", body="json")}
    elif head == "files":
        owned = ("file", ident)
        if n == 1:
            allowed = {
                "POST": Op("/v1/files", "/files", creates="file", body="upload"),
                "GET": Op("/v1/files", "/files", lists="file"),
            }
        elif n == 2:
            allowed = {
                "GET": Op("/v1/files/{id}", f"/files/{ident}", owned),
                "DELETE": Op("/v1/files/{id}", f"/files/{ident}", owned),
            }
        elif n == 3 and parts[2] == "content":
            allowed = {"GET": Op("/v1/files/{id}/content", f"/files/{ident}/content", owned, download=True)}
        else:
            return None
    elif head == "batches":
        owned = ("batch", ident)
        if n == 1:
            allowed = {
                "POST": Op("/v1/batches", "/batches", creates="batch", body="json"),
                "GET": Op("/v1/batches", "/batches", lists="batch"),
            }
        elif n == 2:
            allowed = {"GET": Op("/v1/batches/{id}", f"/batches/{ident}", owned, answers_batch=True)}
        elif n == 3 and parts[2] == "cancel":
            cancel = Op("/v1/batches/{id}/cancel", f"/batches/{ident}/cancel", owned, answers_batch=True)
            allowed = {"POST": cancel}
        else:
            return None
    else:
        return None
    op = allowed.get(method)
    return op if op is not None else sorted(allowed)


class UploadTooLarge(Exception):
    pass


MAX_QUOTED_FILES = 100  # file ids a prompt may quote (each is one ownership check)


def quoted_file_ids(doc: dict) -> list[str]:
    """The file ids a request's prompt quotes: Responses `input_file` parts (`input`) and chat
    `file` parts (`messages[].content[].file.file_id`), each content part looked at once."""
    found: list[str] = []
    items = doc.get("input") if "input" in doc else doc.get("messages")
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in (item, *content) if isinstance(content, list) else (item,):
            if not isinstance(part, dict):
                continue
            inner = part.get("file")
            file_id = inner.get("file_id") if isinstance(inner, dict) else part.get("file_id")
            if isinstance(file_id, str) and file_id not in found:
                found.append(file_id)
    if len(found) > MAX_QUOTED_FILES:
        raise bad_request(f"A request may quote at most {MAX_QUOTED_FILES} files.", "too_many_files")
    return found


def _json_doc(data: bytes) -> dict:
    """An upstream answer's JSON object ({} when it is not one)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


class Objects:
    def __init__(
        self,
        *,
        auth: Authenticator,
        router: Router,
        client: Callable[[], Awaitable],
        guard,
        pipeline,
        owners: Owners,
        secrets: tuple[bytes, ...],
        trace_for: Callable[[dict], str | None],
        max_body_bytes: int,
        max_file_bytes: int,
        batches: BatchBilling | None = None,
    ) -> None:
        self.auth = auth
        self.router = router
        self.client = client  # the upstream client session, once it is open
        self.guard = guard
        self.pipeline = pipeline
        self.owners = owners
        self.secrets = secrets
        self.trace_for = trace_for
        self.max_body_bytes = max_body_bytes
        self.max_file_bytes = max_file_bytes
        self.batches = batches  # records a finished batch's lines (batches/settle.py)

    async def handle(self, scope, receive, send, method: bytes, path: bytes) -> None:
        try:
            text = path.decode("ascii")
        except UnicodeDecodeError:
            raise not_found(f"Unknown path {scope['path'][:200]!r}.") from None
        parts = text[4:].rstrip("/").split("/") if text.startswith("/v1/") else []
        found = _match(method.decode(), parts) if parts else None
        if found is None:
            raise not_found(f"Unknown path {scope['path'][:200]!r}.")
        if isinstance(found, list):
            raise GatewayError(
                405,
                f"Method {method.decode()} not allowed on {text[:200]}.",
                "invalid_request_error",
                "method_not_allowed",
                [(b"allow", ", ".join(found).encode())],
            )
        op = found
        headers = dict(scope["headers"])
        principal = self.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
        started = time.perf_counter()
        created = utcnow()
        if self.guard is not None:
            await self.guard.admit_request(principal)
        if op.owned is not None:
            await self._require_owner(principal, *op.owned)
        body: bytes | None = None
        model = ""
        if op.body == "json":
            body = await read_body(receive, self.max_body_bytes, headers)
            doc = json_object(body)
            given = doc.get("model")
            model = given[:256] if isinstance(given, str) else ""
            await self.require_references(principal, doc)
        record = UsageRecord(
            request_id=new_request_id(),
            created_at=created,
            tenant_id=principal.tenant_id,
            model=model,
            endpoint=op.endpoint,
            stream=False,
            api_key_id=principal.key_id,
            provider=self.router.default.provider,
            trace=self.trace_for(headers),
            price_source="free",
            body_len=len(body) if body is not None else 0,
        )
        await self._forward(scope, receive, send, method.decode(), op, headers, body, principal, record, started)

    # -- ownership ---------------------------------------------------------------------
    async def _owner(self, kind: str, object_id: str) -> str | None:
        try:
            owner = await self.owners.owner(object_id)
        except StoreUnavailable:
            raise unavailable(
                "The owner of this id cannot be checked: the database is not reachable. Retry shortly.",
                "ledger_unavailable",
            ) from None
        if owner is None and kind == "response":
            # a response answered a moment ago: its record (which names its id) may still wait
            # for the pipeline's next pass; between awaits it is either queued or cached
            owner = self.owners.cached(object_id)
            if owner is None:
                owner = next((r.tenant_id for r in self.pipeline.queued() if r.object_id == object_id), None)
        return owner

    async def _require_owner(self, principal: Principal, kind: str, object_id: str) -> None:
        if await self._owner(kind, object_id) != principal.tenant_id:
            # 404, not 403: another tenant's id and an unknown one look the same
            raise GatewayError(404, f"No {kind} found with id '{object_id}'.", "invalid_request_error", "not_found")

    async def require_references(self, principal: Principal, doc: dict) -> None:
        """A body naming a stored response or conversation (POST /v1/responses continues it,
        input_tokens counts its context) must name the caller's own."""
        previous = doc.get("previous_response_id")
        if isinstance(previous, str) and previous:
            await self._require_owner(principal, "response", previous)
        conversation = doc.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if isinstance(conversation, str) and conversation:
            await self._require_owner(principal, "conversation", conversation)
        input_file = doc.get("input_file_id")  # POST /v1/batches: its requests are the caller's file
        if isinstance(input_file, str):
            await self._require_owner(principal, "file", input_file)
        for file_id in quoted_file_ids(doc):  # files a prompt quotes (input_file, chat's file parts)
            await self._require_owner(principal, "file", file_id)

    # -- the upstream call ---------------------------------------------------------------
    async def _forward(
        self, scope, receive, send, method: str, op: Op, headers: dict, body, principal, record, started
    ) -> None:
        import aiohttp
        from yarl import URL

        route = self.router.default
        url = route.url(op.upstream_path)
        query = scope.get("query_string", b"")
        if query:
            if len(query) > 4096:
                raise bad_request("Query string too long.", "invalid_request")
            url += ("&" if "?" in url else "?") + query.decode("latin-1")
        out_headers = dict(route.headers)
        for name, value in headers.items():
            if name in FORWARD_HEADERS:
                out_headers[name.decode()] = value.decode("latin-1")
        data = body
        too_large = False
        if op.body == "upload":
            data, out_headers = self._upload(receive, headers, out_headers)
        session = await self.client()
        try:
            if op.lists is not None:
                await self._list_owned(
                    send, session, op.lists, route.url(op.upstream_path), query, out_headers, principal, record, started
                )
                return
            async with session.request(method, URL(url, encoded=True), headers=out_headers, data=data) as resp:
                record.status_code = resp.status
                if op.download and resp.status < 400:
                    await self._stream_back(send, resp, record, started)
                    return
                answer = await resp.read()
                await self._answer(send, resp, answer, op, principal, record, started)
        except UploadTooLarge:
            too_large = True
        except (TimeoutError, aiohttp.ClientError, ClientGone) as exc:
            if isinstance(data, _Upload) and data.too_large:
                too_large = True
            elif isinstance(exc, ClientGone) or (isinstance(data, _Upload) and data.gone):
                self._submit(record, started, 499, "client_disconnected")
                return
            else:
                self._submit(record, started, 502, "upstream_error")
                raise GatewayError(
                    502,
                    f"Could not reach the upstream: {type(exc).__name__}.",
                    "upstream_error",
                    "upstream_unreachable",
                ) from None
        if too_large:
            raise file_too_large(self.max_file_bytes)

    def _upload(self, receive, headers: dict, out: dict) -> tuple[_Upload, dict]:
        """The request body as a stream to the upstream, with the client's multipart type."""
        size, content_type = check_upload(headers, self.max_file_bytes, "fields 'file' and 'purpose'")
        if size is not None:
            out["Content-Length"] = str(size)
        out["Content-Type"] = content_type.decode("latin-1")
        return _Upload(receive, self.max_file_bytes), out

    async def _answer(self, send, resp, data: bytes, op: Op, principal, record, started) -> None:
        status = resp.status
        if status >= 400:
            data = scrub(data, self.secrets)
        elif op.creates is not None:
            await self._remember_created(data, op.creates, principal)
        elif op.answers_batch and self.batches is not None:
            self.batches.seen(_json_doc(data))
        committed = self._submit(record, started, status, "ok" if status < 400 else "upstream_error", wait=True)
        if committed is not None:  # sync-ledger mode: the row first, then the answer
            await committed
        out = self._headers(resp, record)
        out.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def _remember_created(self, data: bytes, kind: str, principal) -> None:
        doc = _json_doc(data)
        object_id = doc.get("id")
        if not isinstance(object_id, str) or not _ID.fullmatch(object_id):
            log.warning("an upstream answer created an object without a usable id", extra={"fields": {"kind": kind}})
            return
        try:
            await self.owners.remember(object_id, kind, principal.tenant_id)
            if kind == "batch" and self.batches is not None:  # whom its lines are billed to
                await self.batches.created(doc, principal)
        except StoreUnavailable:
            # kept in this instance's memory; another instance (or a restart) will not know it
            log.error(
                "owner of a new object not stored: the database is not reachable",
                extra={"fields": {"kind": kind, "object_id": object_id}},
            )

    async def _list_owned(
        self, send, session, kind: str, url: str, query: bytes, headers: dict, principal, record, started
    ):
        """GET /v1/files or /v1/batches cut to the caller's own. The upstream lists the whole
        account's, so its pages (fetched at the largest size) are filtered until the caller's
        page is full or the listing ends: `after` cursors and `has_more` stay right for the
        SDKs' paging."""
        from urllib.parse import parse_qsl, urlencode

        largest, default = LIST_PAGES[kind]
        params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        try:
            limit = min(max(int(params.get("limit") or default), 1), largest)
        except ValueError:
            raise bad_request("limit must be an integer.", "invalid_parameter", "limit") from None
        after = params.get("after")
        kept: list[dict] = []
        more = False
        for _ in range(OWNED_PAGES):
            wanted = {**params, "limit": str(largest), **({"after": after} if after else {})}
            target = url + ("&" if "?" in url else "?") + urlencode(wanted)
            async with session.get(target, headers=headers) as resp:
                data = await resp.read()
            if resp.status >= 400:
                record.status_code = resp.status
                await self._answer(send, resp, data, Op(record.endpoint, ""), principal, record, started)
                return
            try:
                doc = orjson.loads(data)
                items = [f for f in doc["data"] if isinstance(f, dict) and isinstance(f.get("id"), str)]
                more = doc.get("has_more") is True
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                items, more = [], False
            try:
                mine = await self.owners.owned(principal.tenant_id, [f["id"] for f in items])
            except StoreUnavailable:
                raise unavailable(
                    f"The {kind}s cannot be listed: the database is not reachable. Retry shortly.",
                    "ledger_unavailable",
                ) from None
            kept.extend(f for f in items if f["id"] in mine)
            if len(kept) > limit or not more or not items:
                break
            after = items[-1]["id"]
        page = kept[:limit]
        if kind == "batch" and self.batches is not None:
            for batch in page:
                self.batches.seen(batch)
        body = orjson.dumps(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(kept) > limit or more,
            }
        )
        record.status_code = 200
        await self._answer(send, resp, body, Op(record.endpoint, ""), principal, record, started)

    async def _stream_back(self, send, resp, record, started) -> None:
        """A file's content, relayed as it arrives."""
        out = self._headers(resp, record, _DOWNLOAD_HEADERS)
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        import aiohttp

        status = "ok"
        try:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (TimeoutError, aiohttp.ClientError):
            status = "upstream_error"  # cut short: the client sees the body end early
        finally:
            self._submit(record, started, resp.status, status)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _headers(resp, record, extra: frozenset = frozenset()) -> list:
        out = [(b"x-tallygate-request-id", record.request_id.encode())]
        for name, value in resp.raw_headers:
            lname = name.lower()
            if (lname in PASS_HEADERS or lname in extra or lname.startswith(b"x-ratelimit-")) and b"\n" not in value:
                out.append((lname, value))
        return out

    def _submit(self, record: UsageRecord, started: float, status_code: int, status: str, wait: bool = False):
        record.latency_ms = elapsed_ms(started)
        record.status_code = status_code
        record.status = status
        return self.pipeline.submit(record, wait=wait)


class _Upload:
    """The client's request body, read as the upstream takes it: at most `limit` bytes."""

    def __init__(self, receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.size = 0
        self.too_large = False
        self.gone = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                self.size += len(chunk)
                if self.size > self.limit:
                    self.too_large = True
                    raise UploadTooLarge()
                yield chunk
            if not message.get("more_body", False):
                return
