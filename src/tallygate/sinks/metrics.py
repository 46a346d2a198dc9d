"""Prometheus counters and histograms, derived from the same UsageRecords as the
log line and the ledger row.

The sink keeps plain sums in dicts (no locks: everything runs on the event loop) and
turns them into metric families only when /metrics is scraped; prometheus_client's
own Counter/Histogram objects cost a lock and a label lookup per update, more than
the rest of a record's metering. Costs are summed as exact decimals.

Label cardinality is bounded: the first `tenant_cap` tenants get their own label
value, later ones are counted under `other`. The model label is the name the price data or
the price file knows the model by (UsageRecord.model_label, set when the record is priced),
else `other`, never the client's text (a made-up name priced by a prefix match, e.g.
`claude-sonnet-4-5-anything`, counts under the priced model), and capped like the tenants.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..metering.record import UsageRecord

ZERO = Decimal(0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_BUCKET_LABELS = [str(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]


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


class _Histograms:
    """One latency histogram per label value: bucket counts (not cumulative) and a sum."""

    def __init__(self) -> None:
        self.series: dict[str, list] = {}  # label -> [counts per bucket (+Inf last), sum]

    def observe(self, label: str, seconds: float) -> None:
        s = self.series.get(label)
        if s is None:
            s = self.series[label] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
        s[0][bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bucket with le >= value
        s[1] += seconds

    def family(self, name: str, doc: str, label: str) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=[label])
        for value, (counts, total) in self.series.items():
            cumulative, buckets = 0, []
            for bound, count in zip(_BUCKET_LABELS, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            fam.add_metric([value], buckets, total)
        return fam


def _counter(name: str, doc: str, labels: list[str], sums: dict) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sums.items():
        fam.add_metric(list(key), float(value))
    return fam


class MetricsSink:
    def __init__(
        self, tenant_cap: int = 100, model_cap: int = 200, ledger_stats: Callable[[], dict] | None = None
    ) -> None:
        self.tenant = BoundedLabel(tenant_cap)
        self.model = BoundedLabel(model_cap)
        self.ledger_stats = ledger_stats
        self.requests: dict[tuple, int] = {}  # (tenant, model, status)
        self.tokens: dict[tuple, int] = {}  # (tenant, model, kind)
        self.cost: dict[tuple, Decimal] = {}  # (tenant, model)
        self.errors: dict[tuple, int] = {}  # (model, status)
        self.rejections: dict[tuple, int] = {}  # (reason,)
        self.flagged: dict[tuple, int] = {}  # (model, flag): usage missing or implausible
        self.unpriced: dict[tuple, int] = {}  # (model, price): "unknown" (no price) or "partial"
        self.limits_failed_open: dict[tuple, int] = {}  # (reason,)
        self.latency = _Histograms()
        self.ttft = _Histograms()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def write(self, records: Iterable[UsageRecord]) -> None:
        requests, tokens, cost, errors = self.requests, self.tokens, self.cost, self.errors
        for rec in records:
            tenant = self.tenant(rec.tenant_id)
            model = self.model(rec.model_label)
            outcome = (tenant, model, rec.status)
            requests[outcome] = requests.get(outcome, 0) + 1
            if rec.prompt_tokens:
                key = (tenant, model, "prompt")
                tokens[key] = tokens.get(key, 0) + rec.prompt_tokens
            if rec.completion_tokens:
                key = (tenant, model, "completion")
                tokens[key] = tokens.get(key, 0) + rec.completion_tokens
            if rec.cost_usd:
                pair = (tenant, model)
                cost[pair] = cost.get(pair, ZERO) + rec.cost_usd
            self.latency.observe(model, rec.latency_ms / 1000.0)
            if rec.ttft_ms is not None:
                self.ttft.observe(model, rec.ttft_ms / 1000.0)
            if rec.status != "ok" and rec.status != "client_disconnected":
                pair = (model, rec.status)
                errors[pair] = errors.get(pair, 0) + 1
            if rec.usage_flag is not None:
                pair = (model, rec.usage_flag)
                self.flagged[pair] = self.flagged.get(pair, 0) + 1
            source = rec.price_source
            if source == "unknown" or source.endswith(":partial"):
                pair = (model, "unknown" if source == "unknown" else "partial")
                self.unpriced[pair] = self.unpriced.get(pair, 0) + 1

    def rejected(self, reason: str) -> None:
        """A request refused before it reached an upstream (auth, limits, bad input)."""
        key = (reason,)
        self.rejections[key] = self.rejections.get(key, 0) + 1

    def failed_open(self, reason: str) -> None:
        """A request admitted without its limits checked (TALLYGATE_LIMITS_ON_*_DOWN=open)."""
        key = (reason,)
        self.limits_failed_open[key] = self.limits_failed_open.get(key, 0) + 1

    def collect(self):
        """Called by the registry on each scrape."""
        yield _counter("tallygate_requests", "Requests metered", ["tenant_id", "model", "status"], self.requests)
        yield _counter("tallygate_tokens", "Tokens metered", ["tenant_id", "model", "kind"], self.tokens)
        yield _counter("tallygate_cost_usd", "Cost in USD", ["tenant_id", "model"], self.cost)
        yield self.latency.family(
            "tallygate_request_latency_seconds", "Request latency (whole stream for streams)", "model"
        )
        yield self.ttft.family("tallygate_ttft_seconds", "Time to first token (streams)", "model")
        yield _counter("tallygate_upstream_errors", "Upstream failures", ["model", "status"], self.errors)
        yield _counter(
            "tallygate_rejected_requests", "Requests refused before the upstream", ["reason"], self.rejections
        )
        yield _counter(
            "tallygate_usage_flagged",
            "Answers whose usage was missing (estimated) or implausible (billed at the request's bounds)",
            ["model", "flag"],
            self.flagged,
        )
        yield _counter(
            "tallygate_unpriced_requests",
            "Requests whose model has no price (price=unknown, recorded at cost 0) or a part of whose "
            "usage has no rate (price=partial, that part recorded at 0)",
            ["model", "price"],
            self.unpriced,
        )
        yield _counter(
            "tallygate_limits_failed_open",
            "Requests admitted without their limits checked (Redis or the database down, fail-open settings)",
            ["reason"],
            self.limits_failed_open,
        )
        if self.ledger_stats is not None:
            yield from _ledger_families(self.ledger_stats())

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _ledger_families(s: dict):
    if not s:
        return
    g = GaugeMetricFamily("tallygate_ledger_buffer_depth", "Records waiting to be written to the ledger")
    g.add_metric([], s["depth"])
    yield g
    for name, key, doc in (
        ("tallygate_ledger_rows_written", "rows_written", "Rows inserted into the ledger"),
        ("tallygate_ledger_rows_duplicate", "rows_duplicate", "Rows already present (idempotent retries)"),
        (
            "tallygate_ledger_records_not_written",
            "records_dropped",
            "Records that could not be written (buffer overflow or shutdown deadline)",
        ),
        ("tallygate_ledger_write_failures", "write_failures", "Failed ledger write attempts (retried)"),
    ):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], s[key])
        yield c
