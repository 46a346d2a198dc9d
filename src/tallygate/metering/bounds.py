"""What a request can plausibly use: the bounds a budget reserves and a record is held to.

Output: the request's own cap (`max_completion_tokens`, `max_tokens` or
`max_output_tokens`), else the model's context window from the price data, else
TALLYGATE_DEFAULT_MAX_OUTPUT_TOKENS; times the choices generated (`n`, and `best_of`
for completions). Input: the larger of the body size in bytes (a byte-level tokenizer
never makes more tokens than bytes of text) and the model's context window (images and
files can cost more tokens than their bytes), else TALLYGATE_DEFAULT_CONTEXT_TOKENS.

Usage an upstream reports beyond these bounds is billed at the bound, and the record is
flagged (`usage_source: "clamped"`, `usage_flag: "implausible"`, a WARNING line).
See docs/reliability.md, "Budget bounds and usage plausibility".
"""

from __future__ import annotations

import logging

log = logging.getLogger("tallygate.metering")

_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
EMBEDDINGS = "/v1/embeddings"


def request_caps(doc: dict) -> tuple[int, int]:
    """(output cap per choice the request names, 0 if none; choices generated)."""
    cap = 0
    for name in _CAPS:  # more than one: the largest (providers differ in which one they honour)
        value = doc.get(name)
        if type(value) is int and value > cap:
            cap = value
    choices = 1
    n = doc.get("n")
    if type(n) is int and n > 1:
        choices = n
    best_of = doc.get("best_of")  # completions: best_of candidates are generated (and billed)
    if type(best_of) is int and best_of > choices:
        choices = best_of
    return cap, choices


def output_bound(endpoint: str, cap: int, choices: int, context_window: int | None, default_out: int) -> int:
    if endpoint == EMBEDDINGS:
        return 0
    return (cap or context_window or default_out) * choices


def input_bound(body_len: int, context_window: int | None, default_context: int) -> int:
    return max(body_len, context_window or default_context)


def hold_to_bounds(rec, context_window: int | None, default_out: int, default_context: int) -> bool:
    """Clamp a record's usage to what its request can use; True if it had to. Usage the
    provider reported is then flagged; an estimate of ours is only held to the bound."""
    out_max = output_bound(rec.endpoint, rec.out_cap, rec.choices, context_window, default_out)
    in_max = input_bound(rec.body_len, context_window, default_context)
    prompt, completion = rec.prompt_tokens, rec.completion_tokens
    if prompt <= in_max and completion <= out_max:
        return False
    rec.prompt_tokens = min(prompt, in_max)
    rec.completion_tokens = min(completion, out_max)
    rec.total_tokens = rec.prompt_tokens + rec.completion_tokens
    rec.cached_tokens = min(rec.cached_tokens, rec.prompt_tokens)
    rec.reasoning_tokens = min(rec.reasoning_tokens, rec.completion_tokens)
    if rec.usage_source != "provider":
        return True  # our own estimate (content events, answer bytes) held to the bound: no alarm
    rec.usage_source = "clamped"
    rec.usage_flag = "implausible"
    log.warning(
        "implausible usage from the upstream: billed at the request's bounds",
        extra={
            "fields": {
                "request_id": rec.request_id,
                "tenant_id": rec.tenant_id,
                "model": rec.model,
                "upstream_model": rec.upstream_model,
                "reported_prompt_tokens": prompt,
                "reported_completion_tokens": completion,
                "prompt_bound": in_max,
                "completion_bound": out_max,
            }
        },
    )
    return True
