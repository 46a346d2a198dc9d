"""The `model` label of /metrics and of the log line's labels (which the log-based metrics
read) is the name the price data or the price file knows the model by, or `other`: never the
text a client sent. A thousand made-up names, some of them priced by the price data's prefix
match, leave a handful of series, and a real model keeps its own label."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from support import metric, metrics_text, sdk_client, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
BOGUS = 1000


def _models(text: str) -> set[str]:
    return set(re.findall(r'^tallygate_\w+\{[^}]*\bmodel="([^"]*)"', text, re.M))


def _series(text: str) -> int:
    return len([line for line in text.splitlines() if line.startswith("tallygate_") and 'model="' in line])


def test_a_thousand_made_up_model_names_leave_the_series_bounded(gateway):
    gw = gateway(TALLYGATE_METRICS="public")
    c = sdk_client(gw)
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    gw.wait_records(1)
    baseline = metrics_text(gw.url + "/metrics", token=None)
    # half priced by a prefix of a real model's name, half unknown to the price data
    names = [f"claude-sonnet-4-5-x{i}" if i % 2 else f"made-up-model-{i}" for i in range(BOGUS)]

    def send(name: str) -> None:
        c.chat.completions.create(model=name, messages=MESSAGES)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, names))
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    lines = gw.wait_records(BOGUS + 2)

    def counted():
        text = metrics_text(gw.url + "/metrics", token=None)
        return text if metric(text, "tallygate_requests_total") >= BOGUS + 2 else None

    text = wait_until(counted, message="every request counted in /metrics")
    assert _models(text) == {"gpt-4o-mini", "claude-sonnet-4-5", "other"}
    assert metric(text, "tallygate_requests_total", model="gpt-4o-mini") == 2
    assert metric(text, "tallygate_requests_total", model="claude-sonnet-4-5") == BOGUS // 2
    assert metric(text, "tallygate_requests_total", model="other") == BOGUS // 2
    # a bounded number of series: per family at most the three labels above
    assert _series(text) <= 3 * _series(baseline) + 40
    # the log line keeps the name the client sent; its metric label is bounded the same way
    assert {line["model"] for line in lines} >= set(names)
    assert {line["logging.googleapis.com/labels"]["model"] for line in lines} == {
        "gpt-4o-mini", "claude-sonnet-4-5", "other"}
