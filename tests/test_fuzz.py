"""The running gateway fuzzed by schemathesis, driven by its own /openapi.json."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")


def _fuzz_gateway(gateway, fake_upstream):
    # the Messages API's upstream is the fake's too (it serves /v1/messages)
    return gateway(TALLYGATE_DEFAULT_TENANT="fuzz", TALLYGATE_MAX_BODY_BYTES="65536",
                   ANTHROPIC_BASE_URL=fake_upstream.base_url.removesuffix("/v1"))


def _checks(positive: bool) -> list:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    if positive:
        return [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    return [not_a_server_error, content_type_conformance]


def _fuzz(gw, max_examples: int) -> list[tuple[str, str, int]]:
    """Every operation of /openapi.json, valid and invalid data, `max_examples` cases of
    each: (method, path, status) of every call; a failed schemathesis check raises."""
    from hypothesis import Phase
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(gw.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {gw.master_key}"}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 14
    calls = []
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = _checks(mode is GenerationMode.POSITIVE)

            @given(case=op.as_strategy(mode))
            @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case):  # called within this iteration only, so op and checks are this iteration's
                response = case.call(base_url=gw.url, headers=auth, timeout=10)
                calls.append((op.method, op.path, response.status_code))  # noqa: B023
                chosen = checks  # noqa: B023
                if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
                    # the spec declares a stream as text; schemathesis reads it as event objects
                    chosen = [c for c in checks if c.__name__ != "response_schema_conformance"]  # noqa: B023
                case.validate_response(response, checks=chosen)

            try:
                run()
            except Unsatisfiable:
                pass  # nothing invalid to generate for this operation
    return calls


def test_api_conforms_to_its_openapi(gateway, fake_upstream):
    """Every operation of /openapi.json, valid and invalid data: never a 5xx, only declared
    statuses, bodies as declared. (The schemathesis pytest loader does not run under this
    pytest version, so the strategies are driven by hypothesis directly.)"""
    calls = _fuzz(_fuzz_gateway(gateway, fake_upstream), 8)
    assert len(calls) > 100
    assert not [c for c in calls if c[2] >= 500]


def test_fuzzed_gateway_stayed_healthy(gateway, fake_upstream):
    """After a fuzz run of its own, the gateway still runs and printed no traceback."""
    gw = _fuzz_gateway(gateway, fake_upstream)
    assert _fuzz(gw, 3)
    out = gw.output()
    assert gw.proc.poll() is None
    assert "Traceback" not in out and "Exception in ASGI" not in out
