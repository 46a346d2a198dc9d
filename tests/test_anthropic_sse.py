"""The Messages stream meter (metering/anthropic_sse.py): every byte passed on as it comes,
usage merged from message_start and the cumulative message_delta, however the stream is cut
into reads, and an estimate for a stream cut before its final usage."""

from __future__ import annotations

import orjson
import pytest

from tallygate.fake_upstream.anthropic import stream_events
from tallygate.metering.anthropic_sse import AnthropicStreamMeter

FAKE = {"input_tokens": 100, "output_tokens": 25, "cache_read": 300, "cache_5m": 40, "cache_1h": 60,
        "web_search_requests": 2, "service_tier": "priority", "chunks": 6}


def stream(**fake) -> bytes:
    return b"".join(stream_events({"messages": []}, {**FAKE, **fake}, "claude-sonnet-4-5-20250929"))


def fed(data: bytes, pieces: list[int], max_event: int = 1 << 20) -> tuple[AnthropicStreamMeter, bytes]:
    meter = AnthropicStreamMeter(max_event)
    out, start = [], 0
    for end in [*pieces, len(data)]:
        out.append(meter.feed(data[start:end]))
        start = end
    out.append(meter.flush())
    return meter, b"".join(out)


@pytest.mark.parametrize("delta_usage", [None, "full"])
def test_usage_model_and_end_of_a_whole_stream(delta_usage):
    meter, out = fed(stream(delta_usage=delta_usage), [])
    assert out == stream(delta_usage=delta_usage) and meter.done
    usage = meter.usage
    assert usage is not None and meter.model == "claude-sonnet-4-5-20250929"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (500, 25, 300)
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (100, 60)
    assert (usage.web_search_calls, usage.service_tier) == (2, "priority")


def test_every_split_point_and_crlf_give_the_same_answer():
    data = stream()
    want = fed(data, [])[0].usage
    for cut in range(1, len(data)):
        meter, out = fed(data, [cut])
        assert out == data and meter.done and meter.usage == want, cut
    crlf = data.replace(b"\n", b"\r\n")
    for cut in range(1, len(crlf), 7):
        meter, out = fed(crlf, [cut, min(cut + 3, len(crlf))])
        assert out == crlf and meter.usage == want, cut
    one_byte = fed(data, list(range(1, len(data))))[0]
    assert one_byte.usage == want and one_byte.content_events == 6 + 2  # text deltas, the searches' input


def test_a_later_delta_replaces_counts_and_a_null_is_no_news():
    meter = AnthropicStreamMeter()
    start = {"type": "message_start", "message": {"model": "m", "usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 5}}}
    meter.feed(b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n")
    assert meter.usage is None and meter.partial().prompt_tokens == 15  # not final before message_delta
    for usage in ({"output_tokens": 7, "input_tokens": None}, {"output_tokens": 9, "cache_read_input_tokens": 6}):
        meter.feed(b"event: message_delta\ndata: " + orjson.dumps({"type": "message_delta", "usage": usage}) + b"\n\n")
    assert (meter.usage.prompt_tokens, meter.usage.completion_tokens, meter.usage.cached_tokens) == (16, 9, 6)
    assert not meter.done


def test_a_cut_stream_is_estimated_from_message_start_and_the_deltas():
    events = stream_events({"messages": []}, {**FAKE, "chunks": 30}, "m")
    meter, _ = fed(b"".join(events[:12]), [])  # message_start ... some text deltas, no message_delta
    assert meter.usage is None and not meter.done
    partial = meter.partial()
    assert (partial.prompt_tokens, partial.cached_tokens, partial.cache_write_1h_tokens) == (500, 300, 60)
    assert partial.completion_tokens == meter.content_events > 1  # more than message_start's first count
    assert AnthropicStreamMeter().partial() is None


def test_an_oversized_event_passes_unread_and_the_rest_is_read():
    data = stream()
    big = b"event: content_block_delta\ndata: " + b"x" * 5000 + b"\n\n"
    at = data.index(b"event: content_block_stop")
    whole = data[:at] + big + data[at:]
    meter, out = fed(whole, list(range(1000, len(whole), 1000)), max_event=2048)
    assert out == whole and meter.oversized == 1 and meter.done
    assert meter.usage == fed(data, [])[0].usage
