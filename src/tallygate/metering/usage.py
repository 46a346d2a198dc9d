"""Token usage from upstream responses: usage objects and non-streamed JSON bodies.

OpenAI semantics: `prompt_tokens` includes `cached_tokens`, `completion_tokens`
includes `reasoning_tokens`. The Responses API names them input/output tokens.
The SSE side is metering/sse.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

# Bodies above this size are not parsed whole: usage and model are found in the
# tail and head (embedding responses can be megabytes of floats).
WHOLE_PARSE_LIMIT = 64 * 1024


@dataclass(slots=True)
class Usage:
    """One request's billable usage, normalised to OpenAI's semantics whatever the wire format.

    `prompt_tokens` counts every input token: cache reads (`cached_tokens`), cache writes
    (`cache_write_tokens`, of which `cache_write_1h_tokens` were written for an hour) and
    audio/image input are parts of it, not additions. `completion_tokens` includes
    reasoning and audio output. An Anthropic usage object (whose `input_tokens` excludes
    cache reads and writes) is converted into this shape by its wire format.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    web_search_calls: int = 0
    file_search_calls: int = 0
    service_tier: str | None = None  # as the provider reported it (default, flex, priority, batch, ...)
    # a Responses answer's id (its tenant owns it: tenants/owners.py); not part of the usage's value
    response_id: str | None = field(default=None, compare=False)


# what a record copies from the usage it was given, as ledger columns (the response id is
# the record's object_id, not a column)
USAGE_FIELDS = Usage.__slots__[: Usage.__slots__.index("response_id")]
# the parts of usage priced apart (plus the 1-hour share of cache writes)
PRICED_PARTS = USAGE_FIELDS[USAGE_FIELDS.index("cache_write_tokens") : USAGE_FIELDS.index("service_tier")]


def has_priced_parts(usage) -> bool:
    """Whether usage (a Usage or a UsageRecord) has parts beyond input, cache reads, output
    and reasoning: most requests have none, and skip what those parts need."""
    return bool(
        usage.cache_write_tokens
        or usage.audio_input_tokens
        or usage.audio_output_tokens
        or usage.image_input_tokens
        or usage.image_output_tokens
        or usage.web_search_calls
        or usage.file_search_calls
    )


# the ledger's token columns are 32-bit: no real count comes near, a broken upstream might
TOKENS_MAX = 2**31 - 1


def _int(value: object) -> int:
    # bool is an int subclass: never count True as a token
    if type(value) is int and value >= 0:
        return value if value <= TOKENS_MAX else TOKENS_MAX
    if type(value) is float and value >= 0 and value.is_integer():
        return min(int(value), TOKENS_MAX)
    return 0


def model_name(value: object) -> str | None:
    """An upstream's model name as the ledger can hold it (no NUL, at most 256 chars)."""
    if not isinstance(value, str):
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value[:256]


def _detail(details: object, key: str) -> int:
    return _int(details.get(key)) if isinstance(details, dict) else 0


def _anthropic_usage(usage: dict) -> Usage:
    """Anthropic's usage object: `input_tokens` excludes cache reads and writes."""
    fresh = _int(usage.get("input_tokens"))
    reads = _int(usage.get("cache_read_input_tokens"))
    writes = _int(usage.get("cache_creation_input_tokens"))
    creation = usage.get("cache_creation")
    one_hour = min(_detail(creation, "ephemeral_1h_input_tokens"), writes)
    prompt = min(fresh + reads + writes, TOKENS_MAX)
    completion = _int(usage.get("output_tokens"))
    tier = usage.get("service_tier")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=min(prompt + completion, TOKENS_MAX),
        cached_tokens=reads,
        cache_write_tokens=writes,
        cache_write_1h_tokens=one_hour,
        web_search_calls=_detail(usage.get("server_tool_use"), "web_search_requests"),
        service_tier=tier[:32] if isinstance(tier, str) else None,
    )


def usage_from_object(usage: object) -> Usage | None:
    """Normalise a usage object of any OpenAI endpoint (or an Anthropic-shaped one an
    OpenAI-compatible upstream passes on); None when absent or not an object."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    if prompt is not None:  # chat and completions (the common case)
        completion = usage.get("completion_tokens")
        in_details = usage.get("prompt_tokens_details")
        out_details = usage.get("completion_tokens_details")
    elif "input_tokens" in usage or "output_tokens" in usage:  # Responses API (or Anthropic)
        if "cache_creation_input_tokens" in usage or "cache_read_input_tokens" in usage:
            return _anthropic_usage(usage)
        prompt = usage.get("input_tokens")
        completion = usage.get("output_tokens")
        in_details = usage.get("input_tokens_details")
        out_details = usage.get("output_tokens_details")
    else:
        completion = usage.get("completion_tokens")
        in_details = out_details = None
    # _int's common case inline (a plain count in range): a call each costs more than the test
    if not (type(prompt) is int and 0 <= prompt <= TOKENS_MAX):
        prompt = _int(prompt)
    if not (type(completion) is int and 0 <= completion <= TOKENS_MAX):
        completion = _int(completion)
    total = usage.get("total_tokens")
    if not (type(total) is int and 0 <= total <= TOKENS_MAX):
        total = _int(total)
    total = total or min(prompt + completion, TOKENS_MAX)
    cached = _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    result = Usage(
        prompt,
        completion,
        total,
        cached if cached <= prompt else prompt,
        reasoning if reasoning <= completion else completion,
    )
    # token details that give a part priced apart (OpenAI sends zeros for most), each
    # name tested in turn: a generator over the names cost more than the rest of the parse
    if (
        isinstance(in_details, dict)
        and (in_details.get("audio_tokens") or in_details.get("cache_write_tokens") or in_details.get("image_tokens"))
    ) or (isinstance(out_details, dict) and (out_details.get("audio_tokens") or out_details.get("image_tokens"))):
        # parts of the input can only be as large as the input, parts of the output likewise
        result.cache_write_tokens = min(_detail(in_details, "cache_write_tokens"), prompt)
        result.audio_input_tokens = min(_detail(in_details, "audio_tokens"), prompt)
        result.image_input_tokens = min(_detail(in_details, "image_tokens"), prompt)
        result.audio_output_tokens = min(_detail(out_details, "audio_tokens"), completion)
        result.image_output_tokens = min(_detail(out_details, "image_tokens"), completion)
    return result


# Responses output items that carry a per-call fee, and the Usage count each adds to
TOOL_CALL_FIELDS = {"web_search_call": "web_search_calls", "file_search_call": "file_search_calls"}


def add_response_facts(usage: Usage, doc: dict) -> Usage:
    """What the response object says beside its usage: the service tier it ran at, the
    fee-carrying tool calls in its output and its id (Responses API)."""
    tier = doc.get("service_tier")
    if isinstance(tier, str) and usage.service_tier is None:
        usage.service_tier = tier[:32]
    output = doc.get("output")
    if isinstance(output, list):  # a Responses object (chat answers have none): its id too
        rid = doc.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= 256:
            usage.response_id = rid
        for item in output:
            kind = item.get("type") if isinstance(item, dict) else None
            field = TOOL_CALL_FIELDS.get(kind) if isinstance(kind, str) else None
            if field is not None:
                setattr(usage, field, getattr(usage, field) + 1)
    return usage


def _balanced_object(data: bytes, start: int) -> bytes | None:
    """The JSON object starting at data[start] ('{'), by brace counting outside strings."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(data)):
        c = data[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return data[start : i + 1]
    return None


# what decides how deep a position is: JSON strings (escapes included) and brackets
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_COLON = re.compile(rb"\s*:\s*")
# "usage" keys looked at from the end before giving up (nested ones an echo put there)
_TAIL_CANDIDATES = 32


def _is_top_level_key(body: bytes, pos: int, key_len: int) -> bool:
    """Whether the key at `pos` (its opening quote) is a key of the outermost object: the
    rest of the body closes exactly one container (strings skipped, so brackets inside them
    do not count)."""
    if pos and body[pos - 1] == 0x5C:  # an escaped quote inside a string
        return False
    if not _COLON.match(body, pos + key_len):
        return False  # a value, not a key
    depth = 0
    for m in _STRUCTURE.finditer(body, pos + key_len):
        c = m.group()[0]
        if c == 0x7B or c == 0x5B:  # { [
            depth += 1
        elif c == 0x7D or c == 0x5D:  # } ]
            depth -= 1
    return depth == -1


def _tail_value(body: bytes, key: bytes, start: int = 0) -> int:
    """Where the value of the outermost object's `key` (quoted) begins, found from the end
    and not before `start`; -1 when absent."""
    pos = len(body)
    for _ in range(_TAIL_CANDIDATES):
        pos = body.rfind(key, start, pos)
        if pos < 0:
            return -1
        if _is_top_level_key(body, pos, len(key)):
            colon = _COLON.match(body, pos + len(key))
            return colon.end() if colon else -1
    return -1


def _tail_usage(body: bytes) -> Usage | None:
    """The top-level usage object of a big body, found from the end: a client's `metadata`
    echoed after it may hold a key named usage too (the Responses API echoes it last)."""
    brace = _tail_value(body, b'"usage"')
    if brace < 0 or body[brace : brace + 1] != b"{":
        return None  # "usage": null, or not an object
    obj = _balanced_object(body, brace)
    if obj is None:
        return None
    try:
        usage = usage_from_object(orjson.loads(obj))
    except orjson.JSONDecodeError:
        return None
    if usage is not None and usage.service_tier is None:
        usage.service_tier = _tail_tier(body)
    return usage


# Chat completions name the tier after usage; other objects near their end too: a big
# body's tier is looked for in its last 64 KiB only (embeddings have none to find)
TIER_WINDOW = 64 * 1024
_TIER_VALUE = re.compile(rb'"([^"\\]{1,32})"')


def _tail_tier(body: bytes) -> str | None:
    at = _tail_value(body, b'"service_tier"', max(0, len(body) - TIER_WINDOW))
    m = _TIER_VALUE.match(body, at) if at >= 0 else None
    return m.group(1).decode("ascii", "replace") if m else None


# A Responses object is parsed whole at any size: its output items carry tool fees
_RESPONSE_OBJECT = re.compile(rb'"object"\s*:\s*"response"')


def _head_model(body: bytes) -> str | None:
    head = body[:4096]
    pos = head.find(b'"model"')
    if pos < 0:
        return None
    start = head.find(b'"', head.find(b":", pos) + 1)
    end = head.find(b'"', start + 1)
    if start < 0 or end < 0:
        return None
    return model_name(head[start + 1 : end].decode("utf-8", "replace"))


def from_json_body(body: bytes) -> tuple[Usage | None, str | None]:
    """(usage, upstream model) of a non-streamed response body."""
    if len(body) > WHOLE_PARSE_LIMIT and not _RESPONSE_OBJECT.search(body, 0, 4096):
        return _tail_usage(body), _head_model(body)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    usage = usage_from_object(doc.get("usage"))
    if usage is not None:
        add_response_facts(usage, doc)
    return usage, model_name(doc.get("model"))
