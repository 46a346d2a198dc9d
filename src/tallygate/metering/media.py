"""What image and audio requests are billed for, and its price.

Three kinds, each billed in the unit the provider bills it in:

- images (`/v1/images/generations`, `/edits`): per image by quality and size (dall-e-2,
  dall-e-3: the price file's `images` table), or, for the token-priced image models
  (gpt-image-*), the answer's usage object (text and image input tokens, image output tokens).
- transcription (`/v1/audio/transcriptions`, `/translations`): per second of audio
  (whisper-1: `input_audio_hours`), or the answer's token usage (gpt-4o-transcribe ...).
- speech (`/v1/audio/speech`): per character of input (tts-1: `input_mchars`), or the token
  usage of an SSE answer (gpt-4o-mini-tts with `stream_format: "sse"`).

The units travel with the record (`UsageRecord.media`, not a ledger column: the cost is).
Rounding and the duration rules are in docs/DESIGN.md, "Images and audio".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .usage import Usage, _detail, usage_from_object

MILLION = Decimal(1_000_000)
HOUR = Decimal(3600)
ZERO = Decimal(0)

# the most output tokens one image can take (gpt-image-1 high quality 1024x1536 is 6,240;
# larger sizes of later models stay under this), plus a streamed partial image's 100 each
IMAGE_OUTPUT_TOKENS = 16_384
PARTIAL_IMAGE_TOKENS = 100
# speech: audio output tokens a character of input can make (~1.4 at speed 1; speed 0.25 is 4x)
SPEECH_TOKENS_PER_CHAR = 8
SPEECH_TOKENS_BASE = 1024
# transcription: the least bytes a second of uploaded audio takes (6 kbit/s, Opus' lowest
# speech rate): the duration a budget reserves for an upload is its size over this
AUDIO_MIN_BYTES_PER_SECOND = 750
# per-image prices when the request names no quality or size (the API's defaults)
DEFAULT_QUALITY = "standard"
DEFAULT_SIZE = "1024x1024"


@dataclass(slots=True)
class MediaUsage:
    kind: str  # images | transcription | speech
    images: int = 0
    size: str | None = None
    quality: str | None = None
    seconds: Decimal | None = None  # audio duration billed (None: the answer did not say)
    upload_seconds: Decimal | None = None  # what a WAV upload's header states (used when the answer says nothing)
    characters: int = 0
    tokens: bool = False  # the answer gave a token usage object: token rates apply


def _rate(price: Any, key: str) -> Decimal | None:
    lib = price.library_price
    value = getattr(lib, key, None) if lib is not None else None
    return value if isinstance(value, Decimal) else None


def image_price(price: Any, quality: str | None, size: str | None) -> Decimal | None:
    """USD per image at a quality and size: the price file's `images` table."""
    table = price.image_prices
    if not table:
        return None
    quality = quality if quality and quality != "auto" else DEFAULT_QUALITY
    size = size if size and size != "auto" else DEFAULT_SIZE
    by_size = table.get(quality) or table.get(DEFAULT_QUALITY) or {}
    return by_size.get(size)


def dearest_image(price: Any) -> Decimal | None:
    table = price.image_prices
    if not table:
        return None
    return max((v for sizes in table.values() for v in sizes.values()), default=None)


def _token_usage(rec: Any, price: Any) -> Usage:
    """The record's tokens as priced: an endpoint whose only output is images (or audio) bills
    it at the plain output rate when the price has no image (audio) output rate of its own
    (genai-prices lists gpt-image-1's image output, gpt-4o-mini-tts' audio output, as output)."""
    usage = Usage(
        rec.prompt_tokens,
        rec.completion_tokens,
        rec.total_tokens,
        rec.cached_tokens,
        0,
        audio_input_tokens=rec.audio_input_tokens,
        image_input_tokens=rec.image_input_tokens,
        audio_output_tokens=rec.audio_output_tokens,
        image_output_tokens=rec.image_output_tokens,
    )
    if usage.image_output_tokens and _rate(price, "output_image_mtok") is None:
        usage.image_output_tokens = 0
    if usage.audio_output_tokens and _rate(price, "output_audio_mtok") is None:
        usage.audio_output_tokens = 0
    return usage


def media_cost(price: Any, rec: Any) -> tuple[Decimal, str]:
    """(cost, price_source) of a media record. The source is the price's own (the same
    object) when every part had a rate, `source:partial` when one had none (that part costs
    0), "unknown" without a price."""
    m = rec.media
    if price.source == "unknown":
        return ZERO, price.source
    if m.tokens:
        usage = _token_usage(rec, price)
        return price.cost(usage), price.source_for(usage)
    partial = price.source + ":partial"
    if m.kind == "images":
        each = image_price(price, m.quality, m.size)
        return (each * m.images, price.source) if each is not None else (ZERO, partial)
    if m.kind == "transcription":
        rate = _rate(price, "input_audio_hours") or _rate(price, "audio_hours")
        if rate is None or m.seconds is None:
            return ZERO, partial
        return m.seconds * rate / HOUR, price.source
    rate = _rate(price, "input_mchars")  # speech
    if rate is None:
        return ZERO, partial
    return m.characters * rate / MILLION, price.source


def worst_cost(price: Any, m: MediaUsage, body_len: int, out_cap: int, choices: int) -> Decimal | None:
    """The most a media request can cost at this price (None: no price, the caller's rule for
    unpriced models applies). Every rate the answer could be billed at is taken at its dearest."""
    if price.source == "unknown":
        return None
    candidates = [ZERO]
    if m.kind == "images":
        each = dearest_image(price)
        if each is not None:
            candidates.append(each * choices)
    elif m.kind == "transcription":
        rate = _rate(price, "input_audio_hours") or _rate(price, "audio_hours")
        if rate is not None:
            candidates.append(Decimal(math.ceil(body_len / AUDIO_MIN_BYTES_PER_SECOND)) * rate / HOUR)
    else:
        rate = _rate(price, "input_mchars")
        if rate is not None:
            candidates.append(m.characters * rate / MILLION)
    # token rates: input within the body (or the model's window), output within its cap
    window = price.context_window
    prompt = min(body_len, window) if window and m.kind == "transcription" else body_len
    out = (out_cap or window or 0) * choices
    ins = [r for r in (price.input_mtok, _rate(price, "input_image_mtok"), _rate(price, "input_audio_mtok")) if r]
    outs = [r for r in (price.output_mtok, _rate(price, "output_image_mtok"), _rate(price, "output_audio_mtok")) if r]
    candidates.append((prompt * max(ins, default=ZERO) + out * max(outs, default=ZERO)) / MILLION)
    return max(candidates)


# -- the answers' usage ---------------------------------------------------------------


def image_usage(obj: object) -> Usage | None:
    """An images answer's usage (gpt-image-*): input text and image tokens, output image
    tokens (all of the output when the answer gives no output details)."""
    usage = usage_from_object(obj)
    if usage is None or not isinstance(obj, dict):
        return usage
    details = obj.get("output_tokens_details")
    if isinstance(details, dict):
        usage.image_output_tokens = min(_detail(details, "image_tokens"), usage.completion_tokens)
    else:
        usage.image_output_tokens = usage.completion_tokens
    usage.image_input_tokens = min(_detail(obj.get("input_tokens_details"), "image_tokens"), usage.prompt_tokens)
    return usage


def transcription_usage(obj: object) -> tuple[Usage | None, Decimal | None]:
    """(token usage, seconds) of a transcription's `usage`: {"type": "tokens", input_tokens,
    input_token_details: {text_tokens, audio_tokens}, output_tokens} or {"type": "duration",
    "seconds"}."""
    if not isinstance(obj, dict):
        return None, None
    if obj.get("type") == "duration":
        return None, seconds_value(obj.get("seconds"))
    usage = usage_from_object(obj)
    if usage is None:
        return None, None
    details = obj.get("input_token_details") or obj.get("input_tokens_details")
    usage.audio_input_tokens = min(_detail(details, "audio_tokens"), usage.prompt_tokens)
    return usage, None


def speech_usage(obj: object) -> Usage | None:
    """A speech stream's usage (speech.audio.done): its output is audio."""
    usage = usage_from_object(obj)
    if usage is not None:
        usage.audio_output_tokens = usage.completion_tokens
    return usage


SECONDS_MAX = Decimal(10**7)  # no upload lasts 115 days: a broken answer is held here


def seconds_value(value: object) -> Decimal | None:
    """A duration in seconds as the answer gave it, exactly (a float's shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        return None
    return min(Decimal(repr(value)) if isinstance(value, float) else Decimal(value), SECONDS_MAX)


def billed_seconds(duration: Decimal) -> Decimal:
    """A duration as billed: whole seconds, rounded up (a started second counts)."""
    return Decimal(math.ceil(duration))


_CUE_END = re.compile(rb"--> *(\d+):(\d\d):(\d\d)[,.](\d{3})")


def subtitle_seconds(body: bytes) -> Decimal | None:
    """The end of the last cue of an SRT or WebVTT answer (HH:MM:SS,mmm), in seconds."""
    cues = _CUE_END.findall(body)
    if not cues:
        return None
    h, m, s, ms = (int(g) for g in cues[-1])
    return Decimal(h * 3600 + m * 60 + s) + Decimal(ms) / 1000


def wav_seconds(head: bytes) -> Decimal | None:
    """The duration a WAV file's header states (data bytes / byte rate), from its first bytes."""
    if len(head) < 44 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    rate = 0
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk == b"fmt " and pos + 20 <= len(head):
            rate = int.from_bytes(head[pos + 16 : pos + 20], "little")  # bytes per second
        elif chunk == b"data":
            return Decimal(size) / rate if rate else None
        pos += 8 + size + (size & 1)
    return None


__all__ = [
    "MediaUsage",
    "billed_seconds",
    "image_usage",
    "media_cost",
    "seconds_value",
    "speech_usage",
    "subtitle_seconds",
    "transcription_usage",
    "wav_seconds",
    "worst_cost",
]
