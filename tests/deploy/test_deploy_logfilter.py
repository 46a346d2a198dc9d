"""The small Logging-query evaluator (tests/deploy/logfilter.py) behaves like Cloud Logging."""

from __future__ import annotations

import json

import pytest
from cloud_run_logs import cloud_run_entry
from logfilter import MISSING, LogFilterError, compile_filter, extract, extract_label, extract_value, matches

ENTRY = {
    "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
    "resource": {"type": "cloud_run_revision", "labels": {"service_name": "litellm-proxy"}},
    "severity": "WARNING",
    "labels": {"instanceId": "abc", "logging.googleapis.com/x": "dotted"},
    "jsonPayload": {"message": "litellm_request", "total_tokens": 1200.0, "cost_usd": 0.00027,
                    "stream": True, "tenant_id": "Acme", "status_code": 200.0, "ttft_ms": None,
                    "nested": {"deep": "value"}},
}


@pytest.mark.parametrize("query, expected", [
    ('resource.type="cloud_run_revision"', True),
    ('resource.type = "cloud_run_revision"', True),
    ('resource.type="gce_instance"', False),
    ('resource.labels.service_name="litellm-proxy" AND jsonPayload.message="litellm_request"', True),
    ('jsonPayload.message="LITELLM_REQUEST"', True),  # string comparisons ignore case
    ('jsonPayload.tenant_id="acme"', True),
    ("jsonPayload.cost_usd>0", True),
    ("jsonPayload.cost_usd>0.001", False),
    ("jsonPayload.total_tokens>=1200 AND jsonPayload.total_tokens<=1200", True),
    ("jsonPayload.total_tokens=1200", True),
    ('jsonPayload.total_tokens="1200"', True),
    ("jsonPayload.stream=true", True),
    ("jsonPayload.stream=false", False),
    ("jsonPayload.missing=1", False),
    ("jsonPayload.missing>0", False),
    ("NOT jsonPayload.missing=1", True),  # NOT of a missing field matches
    ("-jsonPayload.missing=1", True),
    ("jsonPayload.ttft_ms>0", False),  # null is not a number
    ("jsonPayload.missing:*", False),
    ("jsonPayload.nested:*", True),
    ("jsonPayload.nested.deep=value", True),
    ('jsonPayload.tenant_id:"cm"', True),  # has: substring
    ('labels."logging.googleapis.com/x"="dotted"', True),
    ("severity>=WARNING", True),
    ("severity>WARNING", False),
    ("severity>=ERROR", False),
    ('resource.type=("gce_instance" OR "cloud_run_revision")', True),
    ('jsonPayload.tenant_id=~"^Ac"', True),
    ('jsonPayload.tenant_id!~"^Ac"', False),
    ('jsonPayload.tenant_id!="other"', True),
    ('jsonPayload.missing!="other"', False),
    # juxtaposition is AND
    ('resource.type="cloud_run_revision" jsonPayload.stream=false', False),
    # documented precedence: OR binds tighter than AND
    ('jsonPayload.stream=false AND jsonPayload.stream=false OR resource.type="cloud_run_revision"', False),
    ('jsonPayload.stream=true OR jsonPayload.x=1 AND jsonPayload.y=1 OR jsonPayload.stream=true', True),
    ('(jsonPayload.stream=false AND jsonPayload.stream=false) OR resource.type="cloud_run_revision"', True),
    ("NOT (jsonPayload.stream=true AND jsonPayload.cost_usd>0)", False),
    ("", True),
])
def test_filter_semantics(query, expected):
    assert matches(query, ENTRY) is expected


def test_or_binds_tighter_than_and_as_documented():
    # "a OR NOT b AND NOT c OR d" means (a OR (NOT b)) AND ((NOT c) OR d)
    def entry(a, b, c, d):
        return {"f": {"a": a, "b": b, "c": c, "d": d}}

    q = compile_filter("f.a=true OR NOT f.b=true AND NOT f.c=true OR f.d=true")
    for bits in range(16):
        a, b, c, d = (bool(bits & 1 << i) for i in range(4))
        assert q(entry(a, b, c, d)) == ((a or not b) and (not c or d))


@pytest.mark.parametrize("query", ['"just text"', "SEARCH(\"x\")", "jsonPayload.a=", "(a=1", 'a="x'])
def test_unsupported_or_malformed_filters_raise(query):
    with pytest.raises(LogFilterError):
        compile_filter(query)


def test_extractors():
    assert extract("EXTRACT(jsonPayload.total_tokens)", ENTRY) == 1200.0
    assert extract("EXTRACT(jsonPayload.absent)", ENTRY) is MISSING
    assert extract_value("EXTRACT(jsonPayload.cost_usd)", ENTRY) == 0.00027
    assert extract_value("EXTRACT(jsonPayload.tenant_id)", ENTRY) is None
    assert extract_value("EXTRACT(jsonPayload.ttft_ms)", ENTRY) is None
    assert extract_label("EXTRACT(jsonPayload.status_code)", ENTRY) == "200"
    assert extract_label("EXTRACT(jsonPayload.stream)", ENTRY) == "true"
    assert extract_label("EXTRACT(jsonPayload.absent)", ENTRY) == ""
    assert extract_label('REGEXP_EXTRACT(logName, "logs/([^/]+)$")', ENTRY) == "run.googleapis.com%2Fstdout"
    with pytest.raises(LogFilterError):
        extract("jsonPayload.total_tokens", ENTRY)


def test_cloud_run_entry_moves_the_special_fields():
    line = json.dumps({
        "severity": "INFO", "message": "litellm_request", "time": "2026-11-27T12:00:00.123456Z",
        "tenant_id": "acme", "total_tokens": 1200, "stream": False,
        "logging.googleapis.com/labels": {"tenant_id": "acme", "model": "gpt-4o-mini"},
        "logging.googleapis.com/trace": "projects/p/traces/abc",
    })
    entry = cloud_run_entry(line, project="p")
    assert entry["severity"] == "INFO"
    assert entry["timestamp"] == "2026-11-27T12:00:00.123456Z"
    assert entry["trace"] == "projects/p/traces/abc"
    assert entry["labels"] == {"instanceId": "0069c7a988", "tenant_id": "acme", "model": "gpt-4o-mini"}
    assert entry["jsonPayload"] == {"message": "litellm_request", "tenant_id": "acme",
                                    "total_tokens": 1200.0, "stream": False}
    assert isinstance(entry["jsonPayload"]["total_tokens"], float)  # Struct numbers are doubles
    assert entry["resource"]["labels"]["service_name"] == "litellm-proxy"
    assert entry["logName"] == "projects/p/logs/run.googleapis.com%2Fstdout"
    # a message alone becomes textPayload; a non-JSON line too
    assert cloud_run_entry('{"severity": "INFO", "message": "started"}')["textPayload"] == "started"
    assert cloud_run_entry("plain text")["textPayload"] == "plain text"
    assert "jsonPayload" not in cloud_run_entry("plain text")
