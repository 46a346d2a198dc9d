"""The image and audio endpoints, metered in the units they are billed in:

    POST /v1/images/generations (JSON; `stream: true` is SSE), POST /v1/images/edits (multipart),
    POST /v1/audio/transcriptions, /v1/audio/translations (multipart; transcriptions stream),
    POST /v1/audio/speech (JSON; the audio bytes, or SSE with `stream_format: "sse"`)

A request is authenticated and admitted like a proxy request (rpm and tpm limits, the budget's
worst case priced by its units: metering/media.py `worst_cost`), routed by its model and
forwarded; the answer goes back as it came (audio and streams relayed as they arrive), and its
record carries the billed units (`record.media`) for the pipeline to price. Multipart uploads are
never held whole: the form's fields before the first file are read to learn the model
(forms/multipart.py), then the body streams to the upstream under TALLYGATE_MAX_FILE_BYTES.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from ..auth import Authenticator
from ..errors import GatewayError, bad_request, not_found
from ..http import ClientGone, json_object, read_body
from ..metering.media import (
    IMAGE_OUTPUT_TOKENS,
    PARTIAL_IMAGE_TOKENS,
    SPEECH_TOKENS_BASE,
    SPEECH_TOKENS_PER_CHAR,
    MediaUsage,
    billed_seconds,
    image_usage,
    seconds_value,
    speech_usage,
    subtitle_seconds,
    transcription_usage,
    worst_cost,
)
from ..metering.record import UsageRecord, utcnow
from ..metering.usage import USAGE_FIELDS, Usage, _balanced_object, model_name
from ..proxy.ids import elapsed_ms, new_request_id
from ..upstream import FORWARD_HEADERS, Router, scrub
from .multipart import FormUpload, UploadTooLarge, too_large
from .objects import Objects

log = logging.getLogger("tallygate.media")

PREFIXES = (b"/v1/images/", b"/v1/audio/")
TAIL = 64 * 1024  # the end of a stream kept to find its last usage object
# what marks a finished image in a stream: image_generation.completed, image_edit.completed
_IMAGE_DONE = b'.completed"'


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str  # images | transcription | speech
    upstream_path: str
    multipart: bool
    default_model: str | None = None  # the API's default when the request names none


ENDPOINTS = {
    b"/v1/images/generations": Endpoint("images", "/images/generations", False, "dall-e-2"),
    b"/v1/images/edits": Endpoint("images", "/images/edits", True, "dall-e-2"),
    b"/v1/audio/transcriptions": Endpoint("transcription", "/audio/transcriptions", True),
    b"/v1/audio/translations": Endpoint("transcription", "/audio/translations", True),
    b"/v1/audio/speech": Endpoint("speech", "/audio/speech", False),
}


def _positive_int(value: object, name: str, default: int, most: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else -1
    except ValueError:
        n = -1
    if n < 1 or n > most:
        raise bad_request(f"'{name}' must be an integer from 1 to {most}.", "invalid_parameter", name)
    return n


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _text(value: object) -> str | None:
    return value[:64] if isinstance(value, str) and value else None


class Media:
    def __init__(
        self,
        *,
        auth: Authenticator,
        router: Router,
        client: Callable[[], Awaitable],
        guard,
        pipeline,
        prices,
        secrets: tuple[bytes, ...],
        trace_for: Callable[[dict], str | None],
        max_body_bytes: int,
        max_file_bytes: int,
    ) -> None:
        self.auth = auth
        self.router = router
        self.client = client
        self.guard = guard
        self.pipeline = pipeline
        self.prices = prices
        self.secrets = secrets
        self.trace_for = trace_for
        self.max_body_bytes = max_body_bytes
        self.max_file_bytes = max_file_bytes

    async def handle(self, scope, receive, send, method: bytes, path: bytes) -> None:
        ep = ENDPOINTS.get(path.rstrip(b"/"))
        if ep is None:
            raise not_found(f"Unknown path {scope['path'][:200]!r}.")
        if method != b"POST":
            raise GatewayError(
                405,
                f"Method {method.decode()} not allowed on {path.decode()}.",
                "invalid_request_error",
                "method_not_allowed",
                [(b"allow", b"POST")],
            )
        headers = dict(scope["headers"])
        principal = self.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
        started = time.perf_counter()
        created = utcnow()
        upload: FormUpload | None = None
        body = b""
        if ep.multipart:
            upload = FormUpload(receive, headers, self.max_file_bytes)
            await upload.read_head()
            fields: dict = upload.fields
            body_len = upload.declared or 0
        else:
            body = await read_body(receive, self.max_body_bytes, headers)
            fields = json_object(body)
            body_len = len(body)
        model = fields.get("model") or ep.default_model
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required and must be a non-empty string.", "invalid_model", "model")
        model = model[:256]
        stream = _flag(fields.get("stream")) or (ep.kind == "speech" and fields.get("stream_format") == "sse")
        media, out_cap, choices = self._units(ep, fields)
        route = self.router.resolve(model)
        record = UsageRecord(
            request_id=new_request_id(),
            created_at=created,
            tenant_id=principal.tenant_id,
            model=model,
            endpoint=path.rstrip(b"/").decode(),
            stream=stream,
            api_key_id=principal.key_id,
            provider=route.provider,
            trace=self.trace_for(headers),
            out_cap=out_cap,
            choices=choices,
            body_len=body_len,
            media=media,
        )
        reservation = None
        guard = self.guard
        if guard is not None and guard.applies(principal):
            await self.prices.ensure_warm()
            price = self.prices.price(route.provider, model, route.upstream_model)
            reservation = await guard.admit(
                principal,
                model,
                {},
                body,
                route.provider,
                route.upstream_model,
                endpoint=ep.upstream_path,
                caps=(out_cap, choices),
                worst_usd=worst_cost(price, media, body_len, out_cap, choices),
            )
            if reservation is not None:
                guard.settle_later(reservation, record)
        if route.upstream_model and route.upstream_model != model:
            if upload is not None:
                upload.replace_field("model", route.upstream_model)
            else:
                fields["model"] = route.upstream_model
                body = orjson.dumps(fields)
        try:
            await self._forward(send, route, ep, headers, body, upload, record, started)
        finally:
            if reservation is not None and not record.submitted:
                guard.cancel(reservation, record)

    @staticmethod
    def _units(ep: Endpoint, fields: dict) -> tuple[MediaUsage, int, int]:
        """(the units the request asks for, output tokens per choice, choices): what the budget
        reserves and the record's usage is held to."""
        if ep.kind == "images":
            n = _positive_int(fields.get("n"), "n", 1, 10)
            partials = (
                _positive_int(fields.get("partial_images"), "partial_images", 1, 3)
                if fields.get("partial_images") not in (None, "", 0, "0")
                else 0
            )
            media = MediaUsage("images", images=n, size=_text(fields.get("size")), quality=_text(fields.get("quality")))
            return media, IMAGE_OUTPUT_TOKENS + partials * PARTIAL_IMAGE_TOKENS, n
        if ep.kind == "speech":
            text = fields.get("input")
            if not isinstance(text, str) or not text:
                raise bad_request("'input' is required: the text to speak.", "invalid_parameter", "input")
            chars = len(text)  # Unicode characters, as the provider counts them
            return MediaUsage("speech", characters=chars), SPEECH_TOKENS_BASE + SPEECH_TOKENS_PER_CHAR * chars, 1
        return MediaUsage("transcription"), 0, 1

    # -- the upstream call -------------------------------------------------------------------
    async def _forward(self, send, route, ep: Endpoint, headers: dict, body: bytes, upload, record, started) -> None:
        import aiohttp

        out_headers = dict(route.headers)
        for name, value in headers.items():
            if name in FORWARD_HEADERS:
                out_headers[name.decode()] = value.decode("latin-1")
        data: object = body
        if upload is not None:
            out_headers["Content-Type"] = upload.content_type
            out_headers.pop("Content-Length", None)
            if upload.declared is not None:
                out_headers["Content-Length"] = str(upload.length)
            data = upload
        session = await self.client()
        try:
            async with session.post(route.target(ep.upstream_path), headers=out_headers, data=data) as resp:
                record.status_code = resp.status
                ctype = resp.headers.get("Content-Type", "")
                if upload is not None and upload.file_head:
                    self._wav_hint(record, upload)
                if resp.status < 400 and ctype.startswith("text/event-stream"):
                    await self._relay_stream(send, resp, ep, record, started)
                elif resp.status < 400 and ep.kind == "speech":
                    await self._relay_audio(send, resp, record, started)
                else:
                    answer = await resp.read()
                    await self._answer(send, resp, answer, ep, record, started)
        except (UploadTooLarge, TimeoutError, aiohttp.ClientError, ClientGone) as exc:
            if record.submitted:
                return
            # the client library may hand the upload's own error back as it is, or wrapped
            if isinstance(exc, UploadTooLarge) or (upload is not None and upload.too_large):
                self._submit(record, started, 413, "upstream_error")
                raise too_large(self.max_file_bytes) from None
            if isinstance(exc, ClientGone) or (upload is not None and upload.gone):
                self._submit(record, started, 499, "client_disconnected")
                return
            self._submit(record, started, 502, "upstream_error")
            raise GatewayError(
                502, f"Could not reach the upstream: {type(exc).__name__}.", "upstream_error", "upstream_unreachable"
            ) from None

    @staticmethod
    def _wav_hint(record, upload) -> None:
        """The duration a WAV upload's header states: used when the answer gives none."""
        from ..metering.media import wav_seconds

        record.media.upload_seconds = wav_seconds(upload.file_head)

    async def _answer(self, send, resp, data: bytes, ep: Endpoint, record, started) -> None:
        status = resp.status
        if status >= 400:
            data = scrub(data, self.secrets)
        else:
            self._meter_body(data, resp.headers.get("Content-Type", ""), ep, record)
        committed = self._submit(record, started, status, "ok" if status < 400 else "upstream_error", wait=True)
        if committed is not None:  # sync-ledger mode: the row first, then the answer
            await committed
        out = self._headers(resp, record)
        out.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def _relay_stream(self, send, resp, ep: Endpoint, record, started) -> None:
        """An SSE answer, passed on as it comes; its last usage object is found in the tail."""
        tail = b""
        done_images = 0

        def watch(chunk: bytes) -> None:
            nonlocal tail, done_images
            # a marker split across two chunks is found in the overlap
            done_images += (tail[-(len(_IMAGE_DONE) - 1) :] + chunk).count(_IMAGE_DONE)
            tail = (tail + chunk)[-TAIL:]

        status = await self._relay(send, resp, record, started, watch, resp.content.iter_any())
        self._meter_stream_tail(tail, ep, record, done_images)
        self._submit(record, started, resp.status, status)
        if status != "client_disconnected":
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay_audio(self, send, resp, record, started) -> None:
        """Speech: the audio bytes relayed as they come (priced by the input's characters)."""
        status = await self._relay(send, resp, record, started, None, resp.content.iter_chunked(256 * 1024))
        record.usage_source = "provider"  # the characters the provider bills are the request's
        self._submit(record, started, resp.status, status)
        if status != "client_disconnected":
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay(self, send, resp, record, started, watch, chunks) -> str:
        """The answer's head, then its body as it arrives; the record's status."""
        import aiohttp

        await send({"type": "http.response.start", "status": resp.status, "headers": self._headers(resp, record)})
        first = True
        try:
            async for chunk in chunks:
                if first:
                    record.ttft_ms = elapsed_ms(started)
                    first = False
                if watch is not None:
                    watch(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (TimeoutError, aiohttp.ClientError):
            return "upstream_error"  # cut short: the client sees the body end early
        except OSError:
            return "client_disconnected"
        return "ok"

    # -- metering -----------------------------------------------------------------------------
    def _meter_body(self, data: bytes, ctype: str, ep: Endpoint, record) -> None:
        media: MediaUsage = record.media
        if ep.kind == "speech":
            record.usage_source = "provider"
            return
        doc = None
        if ctype.startswith("application/json") or data[:1] == b"{":
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                doc = None
        if not isinstance(doc, dict):  # text, srt, vtt
            if ep.kind == "transcription":
                cue_end = subtitle_seconds(data)
                self._set_seconds(record, billed_seconds(cue_end) if cue_end is not None else None)
            return
        model = model_name(doc.get("model"))
        if model:
            record.upstream_model = model
        if ep.kind == "images":
            images = doc.get("data")
            if isinstance(images, list):
                media.images = len(images)
            media.size = _text(doc.get("size")) or media.size
            media.quality = _text(doc.get("quality")) or media.quality
            usage = image_usage(doc.get("usage"))
            if usage is not None:
                self._set_tokens(record, usage)
            else:
                record.usage_source = "provider" if isinstance(images, list) else "none"
            return
        usage, seconds = transcription_usage(doc.get("usage"))
        if usage is not None:
            self._set_tokens(record, usage)
            return
        if seconds is None:
            duration = seconds_value(doc.get("duration"))  # verbose_json
            seconds = billed_seconds(duration) if duration is not None else None
        self._set_seconds(record, seconds)

    def _meter_stream_tail(self, tail: bytes, ep: Endpoint, record, done_images: int) -> None:
        media: MediaUsage = record.media
        if ep.kind == "images":
            media.images = done_images
        pos = tail.rfind(b'"usage"')
        obj = None
        if pos >= 0:
            brace = tail.find(b"{", pos)
            raw = _balanced_object(tail, brace) if brace >= 0 else None
            try:
                obj = orjson.loads(raw) if raw is not None else None
            except orjson.JSONDecodeError:
                obj = None
        if ep.kind == "images":
            usage = image_usage(obj)
        elif ep.kind == "speech":
            usage = speech_usage(obj)
        else:
            usage, seconds = transcription_usage(obj)
            if usage is None:
                self._set_seconds(record, seconds)
                return
        if usage is not None:
            self._set_tokens(record, usage)
        elif ep.kind == "images":
            record.usage_source = "provider" if done_images else "none"
        else:
            record.usage_source = "provider"  # speech: its characters

    @staticmethod
    def _set_tokens(record, usage: Usage) -> None:
        for name in USAGE_FIELDS:
            value = getattr(usage, name)
            if value:
                setattr(record, name, value)
        record.media.tokens = True
        record.usage_source = "provider"

    @staticmethod
    def _set_seconds(record, seconds) -> None:
        media: MediaUsage = record.media
        if seconds is not None:
            media.seconds = seconds
            record.usage_source = "provider"
            return
        hint = media.upload_seconds
        if hint is not None:  # the upload's own header: an estimate of ours
            media.seconds = billed_seconds(hint)
            record.usage_source = "estimated"
        else:
            record.usage_flag = "missing"

    _headers = staticmethod(Objects._headers)  # the request id and the upstream's headers that matter

    def _submit(self, record: UsageRecord, started: float, status_code: int, status: str, wait: bool = False):
        if status_code >= 400:  # refused, failed or never answered: nothing was made, nothing is billed
            record.media = None
        record.latency_ms = elapsed_ms(started)
        record.status_code = status_code
        record.status = status
        return self.pipeline.submit(record, wait=wait)
