"""The fake upstream's images and audio, in the API reference's shapes.

- POST /v1/images/generations (JSON) and /v1/images/edits (multipart): {created, data, usage};
  dall-e-* answer without usage; gpt-image-* with {input_tokens, input_tokens_details:
  {text_tokens, image_tokens}, output_tokens, output_tokens_details: {image_tokens, text_tokens},
  total_tokens}, output tokens per image from OpenAI's table by quality and size.
  `stream: true`: `image_generation.partial_image` events (`partial_images`), then one
  `image_generation.completed` (`image_edit.*` for edits) per image, the last with the usage.
- POST /v1/audio/transcriptions, /translations (multipart): the duration is the WAV upload's
  (else 1 s per 16,000 bytes); json, verbose_json (duration, segments), text, srt, vtt;
  whisper-1 answers {"type": "duration", "seconds"} usage (json and verbose_json transcriptions),
  gpt-4o-*-transcribe token usage (10 audio tokens a second); `stream: true` (not whisper-1):
  transcript.text.delta events and transcript.text.done with the usage.
- POST /v1/audio/speech: the audio bytes (100 per character, Content-Type by format), or with
  `stream_format: "sse"` speech.audio.delta events and speech.audio.done with the usage.

A request's model may carry `fake`-style steering in a form field or JSON key "fake" too.
"""

from __future__ import annotations

import base64
import math

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from .answers import CREATED

# output tokens of one image: quality -> size (OpenAI's image generation guide, gpt-image-1)
IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
INPUT_IMAGE_TOKENS = 323  # each input image of an edit
AUDIO_TOKENS_PER_SECOND = 10
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()
AUDIO_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}  # fmt: skip


def _wav_seconds(data: bytes) -> float:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) >= 44:
        rate = int.from_bytes(data[28:32], "little")
        size = int.from_bytes(data[40:44], "little")
        if rate:
            return size / rate
    return len(data) / 16000


def _sse(events: list[dict]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


class BadForm(Exception):
    pass


async def _stream(request: web.Request, events: list[dict]) -> web.StreamResponse:
    """An SSE answer, an event a write."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for e in events:
        await resp.write(_sse([e]))
    await resp.write_eof()
    return resp


async def _form(request: web.Request) -> tuple[dict, list[bytes]]:
    """(text fields, file contents) of a multipart request; BadForm when it is not one."""
    fields: dict = {}
    files: list[bytes] = []
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.filename is not None:
                files.append(bytes(await part.read()))
            else:
                fields.setdefault(part.name, (await part.text()))
    except (ValueError, LookupError, AssertionError, HttpProcessingError) as exc:
        raise BadForm(str(exc)[:200]) from None
    return fields, files


class FakeMedia:
    def __init__(self, upstream) -> None:
        self.upstream = upstream  # the FakeUpstream: its request log

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self.generations)
        app.router.add_post("/v1/images/edits", self.edits)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/translations", self.translations)
        app.router.add_post("/v1/audio/speech", self.speech)

    def _log(self, request: web.Request, fields: dict, size: int) -> None:
        self.upstream.calls += 1
        self.upstream.requests.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "cookie": None,
                "headers": {},
                "body": orjson.dumps({**fields, "bytes": size}).decode(),
            }  # fmt: skip
        )
        del self.upstream.requests[:-200]

    # -- images ----------------------------------------------------------------------------
    async def _json(self, request: web.Request, secret: str) -> dict:
        """The JSON body (logged without its `secret` text field); {} when it is not an object."""
        raw = await request.read()
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        self._log(request, {k: v for k, v in doc.items() if k != secret}, len(raw))
        return doc

    async def generations(self, request: web.Request) -> web.StreamResponse:
        doc = await self._json(request, "prompt")
        return await self._images(request, doc, [], "image_generation")

    async def edits(self, request: web.Request) -> web.StreamResponse:
        try:
            fields, files = await _form(request)
        except BadForm as exc:
            return _error(400, f"Invalid multipart form: {exc}")
        self._log(request, {k: v for k, v in fields.items() if k != "prompt"}, sum(map(len, files)))
        if not files:
            return _error(400, "image is required")
        return await self._images(request, fields, files, "image_edit")

    async def _images(self, request, doc: dict, files: list[bytes], prefix: str) -> web.StreamResponse:
        model = str(doc.get("model") or "dall-e-2")
        n = int(doc.get("n") or 1)
        size = str(doc.get("size") or "1024x1024")
        token_priced = model.startswith("gpt-image") or model.startswith("chatgpt-image")
        if not token_priced:
            quality = str(doc.get("quality") or "standard")
            item = {"b64_json": PIXEL} if doc.get("response_format") == "b64_json" else {
                "url": "https://images.example/fake.png"}  # fmt: skip
            if model == "dall-e-3":
                item["revised_prompt"] = "a fake image"
            return web.json_response({"created": CREATED, "data": [dict(item) for _ in range(n)]})
        quality = str(doc.get("quality") or "auto")
        per_image = IMAGE_TOKENS.get(quality if quality != "auto" else "medium", IMAGE_TOKENS["medium"])
        out_each = per_image.get(size if size != "auto" else "1024x1024", per_image["1024x1024"])
        text_in = max(1, len(str(doc.get("prompt") or "")) // 4)
        image_in = INPUT_IMAGE_TOKENS * len(files)
        partials = int(doc.get("partial_images") or 0)
        stream = doc.get("stream") in (True, "true", "True")
        out = out_each * n + (partials * 100 * n if stream else 0)
        usage = {
            "input_tokens": text_in + image_in,
            "input_tokens_details": {"text_tokens": text_in, "image_tokens": image_in},
            "output_tokens": out,
            "output_tokens_details": {"image_tokens": out, "text_tokens": 0},
            "total_tokens": text_in + image_in + out,
        }
        shown = {"size": size, "quality": quality if quality != "auto" else "medium", "background": "opaque",
                 "output_format": "png"}  # fmt: skip
        if not stream:
            return web.json_response(
                {"created": CREATED, "data": [{"b64_json": PIXEL} for _ in range(n)], **shown, "usage": usage}
            )
        events: list[dict] = []
        for i in range(n):
            for p in range(partials):
                events.append({"type": f"{prefix}.partial_image", "b64_json": PIXEL, "created_at": CREATED,
                               "partial_image_index": p, **shown})  # fmt: skip
            done = {"type": f"{prefix}.completed", "b64_json": PIXEL, "created_at": CREATED, **shown}
            if i == n - 1:
                done["usage"] = usage
            events.append(done)
        return await _stream(request, events)

    # -- audio -------------------------------------------------------------------------------
    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._audio(request, "transcribe")

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._audio(request, "translate")

    async def _audio(self, request: web.Request, task: str) -> web.StreamResponse:
        try:
            fields, files = await _form(request)
        except BadForm as exc:
            return _error(400, f"Invalid multipart form: {exc}")
        self._log(request, fields, sum(map(len, files)))
        if not files:
            return _error(400, "file is required")
        model = fields.get("model") or ""
        seconds = _wav_seconds(files[0])
        text = "Hello from the fake upstream."
        fmt = fields.get("response_format") or "json"
        whisper = model == "whisper-1"
        audio_tokens = max(1, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND))
        out_tokens = max(1, len(text) // 4)
        token_usage = {"type": "tokens", "input_tokens": audio_tokens,
                       "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                       "output_tokens": out_tokens, "total_tokens": audio_tokens + out_tokens}  # fmt: skip
        duration_usage = {"type": "duration", "seconds": math.ceil(seconds)}
        if fields.get("stream") == "true" and not whisper and task == "transcribe":
            words = text.split(" ")
            events: list[dict] = [
                {"type": "transcript.text.delta", "delta": w if i == 0 else " " + w} for i, w in enumerate(words)
            ]
            events.append({"type": "transcript.text.done", "text": text, "usage": token_usage})
            return await _stream(request, events)
        end = _timestamp(seconds)
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt == "srt":
            return web.Response(text=f"1\n00:00:00,000 --> {end}\n{text}\n\n", content_type="text/plain")
        if fmt == "vtt":
            return web.Response(text=f"WEBVTT\n\n00:00:00.000 --> {end.replace(',', '.')}\n{text}\n\n",
                                content_type="text/plain")  # fmt: skip
        doc: dict = {"text": text}
        if fmt == "verbose_json":
            doc = {"task": task, "language": "english", "duration": round(seconds, 2), "text": text,
                   "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 2), "text": text,
                                 "tokens": [1, 2, 3], "temperature": 0.0, "avg_logprob": -0.2,
                                 "compression_ratio": 1.0, "no_speech_prob": 0.01}]}  # fmt: skip
        if task == "transcribe":  # translations answer no usage
            doc["usage"] = duration_usage if whisper else token_usage
        return web.json_response(doc)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        doc = await self._json(request, "input")
        text = str(doc.get("input") or "")
        if not text:
            return _error(400, "input is required")
        audio = speech_bytes(text)
        if doc.get("stream_format") == "sse":
            if str(doc.get("model", "")).startswith("tts-1"):
                return _error(400, "stream_format sse is not supported for tts-1")
            in_tokens = max(1, len(text) // 4)
            out_tokens = max(1, len(audio) // 200)
            pieces = [audio[i : i + 4096] for i in range(0, len(audio), 4096)]
            events: list[dict] = [{"type": "speech.audio.delta", "audio": base64.b64encode(b).decode()} for b in pieces]
            events.append({"type": "speech.audio.done", "usage": {"input_tokens": in_tokens,
                           "output_tokens": out_tokens, "total_tokens": in_tokens + out_tokens}})  # fmt: skip
            return web.Response(body=_sse(events), headers={"Content-Type": "text/event-stream"})
        ctype = AUDIO_TYPES.get(str(doc.get("response_format") or "mp3"), "audio/mpeg")
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        await resp.prepare(request)
        for i in range(0, len(audio), 8192):
            await resp.write(audio[i : i + 8192])
        await resp.write_eof()
        return resp


def _timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}, status=status
    )


def speech_bytes(text: str) -> bytes:
    """The audio the fake answers for `text` (tests compare what arrives with it)."""
    return bytes((i * 7 + len(text)) % 256 for i in range(100 * len(text)))
