"""Usage from JSON bodies (metering/usage.py), fuzzed: never a negative or inconsistent count,
never an exception, and the tail scan of big bodies equal to a whole parse."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallygate.metering.usage import from_json_body, usage_from_object

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
counts = st.integers(min_value=0, max_value=10**7)


# -- the usage extractor --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
usage_keys = st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "input_tokens",
                              "output_tokens", "prompt_tokens_details", "completion_tokens_details",
                              "input_tokens_details", "output_tokens_details", "cached_tokens",
                              "reasoning_tokens"])


@FAST
@given(st.dictionaries(usage_keys, json_values | st.dictionaries(usage_keys, json_values, max_size=3), max_size=8))
def test_usage_is_never_negative_and_consistent(usage):
    got = usage_from_object(usage)
    assert got is not None
    for value in (got.prompt_tokens, got.completion_tokens, got.total_tokens, got.cached_tokens,
                  got.reasoning_tokens):
        assert type(value) is int and value >= 0
    assert got.cached_tokens <= got.prompt_tokens and got.reasoning_tokens <= got.completion_tokens


@FAST
@given(json_values)
def test_extractor_never_raises(doc):
    body = orjson.dumps(doc)
    usage, model = from_json_body(body)
    assert model is None or isinstance(model, str)
    from_json_body(body[: len(body) // 2])  # cut bodies too


@FAST
@given(counts, counts, st.integers(0, 3000), st.sampled_from(["gpt-4o", "embed-1"]))
def test_big_bodies_tail_scan_matches_whole_parse(prompt, completion, items, model):
    doc = {"object": "list", "model": model, "data": [{"embedding": [0.125] * 8, "index": i} for i in range(items)],
           "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}}
    body = orjson.dumps(doc)
    usage, got_model = from_json_body(body)  # whole parse under 64 KiB, a tail scan above
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (prompt, completion, prompt + completion)
    assert got_model == model


metadata = st.dictionaries(
    st.sampled_from(["usage", "note", "u", "x"]),
    st.text(alphabet=list('ab{}[]":,\\ usage'), max_size=40)
    | st.fixed_dictionaries({"usage": st.fixed_dictionaries({"input_tokens": counts, "output_tokens": counts})}),
    max_size=6,
)


@FAST
@given(counts, counts, metadata, st.booleans())
def test_big_bodies_take_the_top_level_usage_not_an_echoed_one(prompt, completion, meta, usage_first):
    """A Responses body over the whole-parse limit echoes the client's metadata after its
    usage; a key named usage there (or text that looks like one) never replaces the real one."""
    doc = {"id": "resp_1", "object": "response", "model": "gpt-4o",
           "output": [{"type": "message", "content": [{"type": "output_text", "text": "x" * 70_000}]}]}
    usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
    if usage_first:
        doc["usage"], doc["metadata"] = usage, meta
    else:  # the echo can come first too: the top-level key is still the one read
        doc["metadata"], doc["usage"] = meta, usage
    body = orjson.dumps(doc)
    assert len(body) > 65_536
    got, model = from_json_body(body)
    assert got == usage_from_object(usage) and model == "gpt-4o"


def test_big_body_with_null_usage_has_none():
    body = orjson.dumps({"object": "response", "output": ["x" * 70_000], "usage": None,
                         "metadata": {"usage": {"input_tokens": 10**9, "output_tokens": 1}}})
    assert from_json_body(body)[0] is None
