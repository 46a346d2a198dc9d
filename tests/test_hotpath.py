"""Helpers of the request path that were made cheaper keep their contracts."""

from __future__ import annotations

import re
import time

from tallygate.proxy.ids import elapsed_ms, new_request_id


def test_request_ids_are_unique_and_keep_their_format_across_refills():
    ids = [new_request_id() for _ in range(5000)]  # ~10 refills of the random buffer
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)


def test_elapsed_ms_is_milliseconds_to_the_microsecond():
    started = time.perf_counter() - 0.0123456
    ms = elapsed_ms(started)
    assert 12.3 < ms < 100
    assert ms == round(ms, 3)
