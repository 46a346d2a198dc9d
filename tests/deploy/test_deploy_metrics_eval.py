"""Each log-based metric's filter, value extractor and label extractors, evaluated against
LogEntries built the way Cloud Run builds them: from the contract's example line, and from
the lines a real gateway printed for one non-streaming and one streaming request."""

from __future__ import annotations

import json
import urllib.request

import pytest
from cloud_run_logs import cloud_run_entry, evaluate_metric
from deploy_support import PROJECT, cloudrun, contract_line, metric_files, parse_args, rendered_metric
from logfilter import compile_filter

METRICS = {p.stem: rendered_metric(p) for p in metric_files()}
SINK_FILTER = cloudrun.sink_filter(cloudrun.build_config(parse_args("--project", PROJECT, "--image-tag", "x")))


def points(name: str, entries: list[dict]) -> list[tuple[dict, float]]:
    return [(dict(p.labels), p.value) for p in evaluate_metric(METRICS[name], entries)]


def entry(line: dict | str, **kw) -> dict:
    return cloud_run_entry(line if isinstance(line, str) else json.dumps(line), project=PROJECT, **kw)


# ----------------------------------------------------------------------------- contract lines

def test_contract_line_feeds_every_metric():
    line = contract_line()
    non_stream = entry(line)
    labels = {**line["logging.googleapis.com/labels"], "stream": "true"}
    stream = entry({**line, "request_id": "req_stream", "stream": True, "ttft_ms": 4.2,
                    "logging.googleapis.com/labels": labels})
    entries = [non_stream, stream]
    assert points("litellm_total_tokens", entries) == [({"tenant_id": "acme", "model": "gpt-4o-mini"}, 1200.0)] * 2
    assert points("litellm_prompt_tokens", entries)[0][1] == 1000.0
    assert points("litellm_completion_tokens", entries)[0][1] == 200.0
    assert points("litellm_cost_usd", entries)[0][1] == pytest.approx(0.00027)
    assert [v for _, v in points("litellm_latency_ms", entries)] == [12.345, 12.345]
    assert [l["stream"] for l, _ in points("litellm_latency_ms", entries)] == ["false", "true"]
    assert points("litellm_ttft_ms", entries) == [({"tenant_id": "acme", "model": "gpt-4o-mini"}, 4.2)]
    assert points("litellm_requests", entries) == [
        ({"tenant_id": "acme", "model": "gpt-4o-mini", "status": "ok", "status_code": "200", "stream": s}, 1.0)
        for s in ("false", "true")]


def test_zero_cost_and_failed_requests_still_count():
    line = {**contract_line(), "cost_usd": 0.0, "status": "upstream_error", "status_code": 502,
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert points("litellm_cost_usd", [entry(line)]) == [({"tenant_id": "acme", "model": "gpt-4o-mini"}, 0.0)]
    ((labels, _),) = points("litellm_requests", [entry(line)])
    assert labels["status"] == "upstream_error" and labels["status_code"] == "502"


def test_lines_that_must_not_count():
    line = contract_line()
    others = [
        entry(line, service="another-service"),  # same project, other service
        entry({"severity": "INFO", "message": "gateway started", "port": 8080}),
        entry({"severity": "ERROR", "message": "ledger write failed", "records": 3}),
        entry("Traceback (most recent call last):"),
        {**entry(line), "resource": {"type": "gce_instance", "labels": {}}},
    ]
    for name in METRICS:
        assert points(name, others) == [], name
    # TTFT only for streams
    assert points("litellm_ttft_ms", [entry(line)]) == []


def test_sink_filter_takes_only_this_services_stdout_request_lines():
    line = contract_line()
    sink = compile_filter(SINK_FILTER)
    assert sink(entry(line))
    assert not sink(entry(line, stream="stderr"))
    assert not sink(entry(line, service="another-service"))
    assert not sink(entry({"severity": "INFO", "message": "gateway started", "port": 8080}))


# ----------------------------------------------------------------------------- real gateway

FAKE = {"prompt_tokens": 1000, "completion_tokens": 200}


def _post(gw, body: dict) -> bytes:
    req = urllib.request.Request(gw.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json", **gw.headers("acme")})
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200
        return resp.read()


def test_metrics_against_lines_the_gateway_really_printed(gateway):
    gw = gateway()
    messages = [{"role": "user", "content": "Say hello"}]
    _post(gw, {"model": "gpt-4o-mini", "messages": messages, "fake": FAKE})
    body = _post(gw, {"model": "gpt-4o-mini", "messages": messages, "stream": True, "fake": FAKE})
    assert body.rstrip().endswith(b"data: [DONE]")
    records = gw.wait_records(2)
    by_stream = {r["stream"]: r for r in records}
    assert set(by_stream) == {False, True}

    # every line the process wrote, as Cloud Run would ingest it (startup lines included)
    raw_lines = [l for l in gw.output().splitlines() if l.strip()]
    assert len(raw_lines) > len(records)
    entries = [entry(l) for l in raw_lines]

    labels = {"tenant_id": "acme", "model": "gpt-4o-mini"}
    for name, field in (("litellm_total_tokens", "total_tokens"), ("litellm_prompt_tokens", "prompt_tokens"),
                        ("litellm_completion_tokens", "completion_tokens"), ("litellm_cost_usd", "cost_usd")):
        got = points(name, entries)
        assert sorted(v for _, v in got) == sorted(float(r[field]) for r in records), name
        assert all(l == labels for l, _ in got), name
    assert sorted(v for _, v in points("litellm_total_tokens", entries)) == [1200.0, 1200.0]
    assert sum(v for _, v in points("litellm_cost_usd", entries)) == pytest.approx(
        sum(r["cost_usd"] for r in records))
    assert sum(v for _, v in points("litellm_cost_usd", entries)) > 0

    latency = points("litellm_latency_ms", entries)
    assert sorted((l["stream"], v) for l, v in latency) == sorted(
        (str(r["stream"]).lower(), r["latency_ms"]) for r in records)

    ((ttft_labels, ttft),) = points("litellm_ttft_ms", entries)
    assert ttft_labels == labels and ttft == by_stream[True]["ttft_ms"] and ttft > 0

    requests = points("litellm_requests", entries)
    assert sorted(l["stream"] for l, _ in requests) == ["false", "true"]
    assert all(l["status"] == "ok" and l["status_code"] == "200" for l, _ in requests)

    # the BigQuery sink exports exactly the request lines
    sink = compile_filter(SINK_FILTER)
    exported = [e for e in entries if sink(e)]
    assert sorted(e["jsonPayload"]["request_id"] for e in exported) == sorted(r["request_id"] for r in records)
    # and Cloud Run's special fields left the payload
    for e in exported:
        assert not {"severity", "time", "logging.googleapis.com/labels"} & set(e["jsonPayload"])
        assert e["labels"]["tenant_id"] == "acme"


# ----------------------------------------------------------------------------- the ledger's own lines

def test_ledger_metrics_count_the_lines_the_ledger_writer_prints():
    """The ledger alerts' metrics, fed the lines LedgerWriter prints when its database is down
    and its buffer overflows (formatted by the gateway's JSON formatter, as on stdout)."""
    import asyncio
    import logging
    from datetime import UTC, datetime

    from deploy_support import ledger_metric_files

    from tallygate.logs import JsonFormatter
    from tallygate.metering.record import UsageRecord
    from tallygate.sinks.ledger import LedgerWriter

    class DatabaseDown:  # what a store raises when Postgres refuses connections
        async def write(self, records):
            raise OSError("connection to server on socket \"/cloudsql/p:r:i/.s.PGSQL.5432\" failed")

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(JsonFormatter().format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("tallygate.ledger")
    logger.addHandler(handler)
    try:
        writer = LedgerWriter(DatabaseDown(), buffer_limit=2)
        records = [UsageRecord(f"req_{i}", datetime.now(UTC), "acme", "gpt-4o-mini", "/v1/chat/completions", False)
                   for i in range(3)]
        writer.add(records)  # one over the limit: an ERROR line, records_not_written=1
        assert asyncio.run(writer._write_batch()) is False  # the database is down: a WARNING line
    finally:
        logger.removeHandler(handler)
    entries = [entry(line) for line in lines] + [entry(contract_line())]
    metrics = {p.stem: rendered_metric(p) for p in ledger_metric_files()}
    failures = evaluate_metric(metrics["tallygate_ledger_write_failures"], entries)
    assert [p.value for p in failures] == [1.0]
    lost = evaluate_metric(metrics["tallygate_ledger_records_not_written"], entries)
    assert [p.value for p in lost] == [1.0]
    depth = evaluate_metric(metrics["tallygate_ledger_buffer_depth"], entries)
    assert [p.value for p in depth] == [2.0]


# ----------------------------------------------------------------------------- time and bounded labels

def test_the_line_is_stamped_when_the_request_ended_and_its_labels_are_bounded():
    from datetime import UTC, datetime, timedelta

    import orjson

    from tallygate.cli.ledger import record_from_log
    from tallygate.metering.record import UsageRecord
    from tallygate.sinks.jsonlog import log_entry

    start = datetime(2026, 11, 27, 12, 0, 59, 999_990, tzinfo=UTC)
    stream = UsageRecord("req_long", start, "acme", "gpt-4o-mini", "/v1/chat/completions", True,
                         price_source="genai-prices", latency_ms=20 * 60_000 + 0.02, ttft_ms=900.0,
                         total_tokens=50_000, model_label="gpt-4o-mini")
    made_up = UsageRecord("req_free", start, "acme", "my-model-" + "x" * 40, "/v1/chat/completions", False,
                          price_source="unknown", latency_ms=5.0, total_tokens=10)
    lines = [orjson.dumps(log_entry(r)).decode() for r in (stream, made_up)]
    first = json.loads(lines[0])
    # a 20-minute stream lands 20 minutes after it started: in the window its tokens were billed in
    assert first["time"] == "2026-11-27T12:21:00.000010Z" and first["start_time"] == "2026-11-27T12:00:59.999990Z"
    end = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert end - start == timedelta(minutes=20, microseconds=20)
    entries = [entry(line) for line in lines]
    assert entries[0]["timestamp"] == first["time"]  # Cloud Logging takes `time` as the timestamp
    # the metric labels: the priced model, "other" for a client's free text; stream as a string
    assert [l for l, _ in points("litellm_requests", entries)] == [
        {"tenant_id": "acme", "model": "gpt-4o-mini", "status": "ok", "status_code": "0", "stream": "true"},
        {"tenant_id": "acme", "model": "other", "status": "ok", "status_code": "0", "stream": "false"}]
    assert json.loads(lines[1])["model"] == made_up.model  # the line itself keeps the name
    # replay takes the start back as the ledger's created_at
    for line, record in zip(lines, (stream, made_up), strict=True):
        assert record_from_log(line.encode()).created_at == record.created_at
    # from a Cloud Logging entry too (there `time` became the timestamp)
    assert record_from_log(orjson.dumps(entries[0])).created_at == start
