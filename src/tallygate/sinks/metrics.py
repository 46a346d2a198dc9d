"""Prometheus counters and histograms, derived from the same UsageRecords as the
log line and the ledger row.

Label cardinality is bounded: the first `tenant_cap` tenants get their own label
value, later ones are counted under `other` (models likewise).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..metering.record import UsageRecord

ZERO = Decimal(0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class BoundedLabel:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.cap:
            self.seen.add(value)
            return value
        return "other"


class _LedgerCollector:
    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def collect(self):
        s = self.stats()
        if not s:
            return
        g = GaugeMetricFamily("tallygate_ledger_buffer_depth", "Records waiting to be written to the ledger")
        g.add_metric([], s["depth"])
        yield g
        for name, key, doc in (
            ("tallygate_ledger_rows_written", "rows_written", "Rows inserted into the ledger"),
            ("tallygate_ledger_rows_duplicate", "rows_duplicate", "Rows already present (idempotent retries)"),
            ("tallygate_ledger_records_not_written", "records_dropped", "Records that could not be written (buffer overflow or shutdown deadline)"),
            ("tallygate_ledger_write_failures", "write_failures", "Failed ledger write attempts (retried)"),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], s[key])
            yield c


class MetricsSink:
    def __init__(self, tenant_cap: int = 100, model_cap: int = 200,
                 ledger_stats: Callable[[], dict] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[int, dict[tuple, object]] = {}
        self.tenant = BoundedLabel(tenant_cap)
        self.model = BoundedLabel(model_cap)
        r = self.registry
        self.requests = Counter("tallygate_requests", "Requests metered", ["tenant_id", "model", "status"], registry=r)
        self.tokens = Counter("tallygate_tokens", "Tokens metered", ["tenant_id", "model", "kind"], registry=r)
        self.cost = Counter("tallygate_cost_usd", "Cost in USD", ["tenant_id", "model"], registry=r)
        self.latency = Histogram("tallygate_request_latency_seconds", "Request latency (whole stream for streams)",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tallygate_ttft_seconds", "Time to first token (streams)",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("tallygate_upstream_errors", "Upstream failures",
                                       ["model", "status"], registry=r)
        self.rejected = Counter("tallygate_rejected_requests", "Requests refused before the upstream",
                                ["reason"], registry=r)
        if ledger_stats is not None:
            r.register(_LedgerCollector(ledger_stats))

    def write(self, records: Iterable[UsageRecord]) -> None:
        # sums per label set first, then one increment each: label lookups and the
        # client's locks cost more than the arithmetic
        requests: dict[tuple, int] = {}
        tokens: dict[tuple, int] = {}
        cost: dict[tuple, Decimal] = {}
        errors: dict[tuple, int] = {}
        for rec in records:
            tenant = self.tenant(rec.tenant_id)
            model = self.model(rec.model)
            key = (tenant, model, rec.status)
            requests[key] = requests.get(key, 0) + 1
            if rec.prompt_tokens:
                key = (tenant, model, "prompt")
                tokens[key] = tokens.get(key, 0) + rec.prompt_tokens
            if rec.completion_tokens:
                key = (tenant, model, "completion")
                tokens[key] = tokens.get(key, 0) + rec.completion_tokens
            if rec.cost_usd:
                key = (tenant, model)
                cost[key] = cost.get(key, ZERO) + rec.cost_usd
            self._child(self.latency, (model,)).observe(rec.latency_ms / 1000.0)
            if rec.ttft_ms is not None:
                self._child(self.ttft, (model,)).observe(rec.ttft_ms / 1000.0)
            if rec.status not in ("ok", "client_disconnected"):
                key = (model, rec.status)
                errors[key] = errors.get(key, 0) + 1
        for metric, sums in ((self.requests, requests), (self.tokens, tokens), (self.cost, cost),
                             (self.upstream_errors, errors)):
            for key, value in sums.items():
                self._child(metric, key).inc(float(value))

    def _child(self, metric, labels: tuple):
        cache = self._children.setdefault(id(metric), {})
        child = cache.get(labels)
        if child is None:
            child = cache[labels] = metric.labels(*labels)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)
