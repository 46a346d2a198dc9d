"""What the tests share, by topic:

- processes.py  GatewayProcess (`tallygate serve`), FakeUpstream, base_env, routes_file,
                free_port, the test credentials TOKEN / MASTER / UPSTREAM_KEY, ROOT
- http.py       request / post / call / call_json / admin_call (urllib, JSON), metrics_text
                and metric, sdk_client (the openai SDK), raw sockets: request_bytes, raw_exchange, status_of, body_of,
                StreamReader (a stream the test can hang up on)
- waiting.py    wait_until(predicate, timeout, message): poll instead of sleeping; wait_http
- tenants.py    new_key, chat (with a tenant key), unique tenant ids     (import from the module)
- ledger.py     ledger rows (Postgres, SQLite), send_mixed, assert_rows_match_logs   (idem)
- fake_usage_api.py  FakeUsageApi: OpenAI's Usage/Costs and Anthropic's usage/cost reports (idem)
- fake_billing.py  FakeStripe (v1 meter events, the v2 meter event stream on a second host), FakeOpenMeter (CloudEvents ingest), in-process  (idem)

The fixtures (gateway, fake_upstream, postgres_env, private_postgres) are in tests/conftest.py.
"""

from .http import (
                   StreamReader,
                   admin_call,
                   body_of,
                   call,
                   call_json,
                   metric,
                   metrics_text,
                   post,
                   raw_exchange,
                   request,
                   request_bytes,
                   sdk_client,
                   status_of,
)
from .processes import MASTER, ROOT, TOKEN, UPSTREAM_KEY, FakeUpstream, GatewayProcess, base_env, free_port, routes_file
from .waiting import wait_http, wait_until

__all__ = ["MASTER", "ROOT", "TOKEN", "UPSTREAM_KEY", "FakeUpstream", "GatewayProcess", "StreamReader", "admin_call",
           "base_env", "body_of", "call", "call_json", "free_port", "metric", "metrics_text", "post", "raw_exchange",
           "request", "request_bytes", "routes_file", "sdk_client", "status_of", "wait_http", "wait_until"]
