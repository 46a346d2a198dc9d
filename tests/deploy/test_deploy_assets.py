"""Every file under deploy/ parses and has the shape its API expects."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    ALERTS_DIR,
    DEPLOY,
    MONITORING,
    PROJECT,
    alert_files,
    api_messages,
    cloudrun,
    default_values,
    ledger_metric_files,
    load_yaml,
    metric_files,
    promql_selectors,
    rendered_json,
    rendered_metric,
    unknown_fields,
)

CONTRACT_FIELDS = {  # docs/contracts.md: the log line's fields and their JSON types
    "request_id": str, "tenant_id": str, "api_key_id": (str, type(None)), "model": str,
    "upstream_model": str, "provider": str, "endpoint": str, "stream": bool,
    "status_code": int, "status": str, "prompt_tokens": int, "completion_tokens": int,
    "total_tokens": int, "cached_tokens": int, "reasoning_tokens": int, "cost_usd": float,
    "price_source": str, "usage_source": str, "latency_ms": float, "ttft_ms": float,
}
EXPECTED_METRICS = {
    "litellm_total_tokens": ("DISTRIBUTION", "total_tokens"),
    "litellm_prompt_tokens": ("DISTRIBUTION", "prompt_tokens"),
    "litellm_completion_tokens": ("DISTRIBUTION", "completion_tokens"),
    "litellm_cost_usd": ("DISTRIBUTION", "cost_usd"),
    "litellm_latency_ms": ("DISTRIBUTION", "latency_ms"),
    "litellm_ttft_ms": ("DISTRIBUTION", "ttft_ms"),
    "litellm_requests": ("INT64", None),
}
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
THRESHOLDS = {p for p, *_ in cloudrun.ALERT_THRESHOLDS}


def all_data_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".json", ".yaml", ".yml"))


def test_deploy_tree_has_the_expected_files():
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    for required in ("monitoring/dashboard.json", "monitoring/gmp-sidecar/service.yaml",
                     "monitoring/gmp-sidecar/run-monitoring.yaml", "bigquery/create.sh",
                     "bigquery/tokens_cost_per_tenant_day.sql", "bigquery/reconcile_ledger_vs_logs.sql",
                     "cloudrun/service.yaml"):
        assert required in names
    assert {p.stem for p in metric_files()} == set(EXPECTED_METRICS)
    assert {p.stem for p in ledger_metric_files()} == {
        "tallygate_ledger_write_failures", "tallygate_ledger_records_not_written", "tallygate_ledger_buffer_depth"}
    assert {p.name for p in alert_files()} == {
        "token_surge.json", "cost_surge.json", "error_ratio_5xx.json", "latency_p95.json", "ttft_p95.json",
        "ledger_unavailable.json", "ledger_records_not_written.json", "ledger_buffer_depth.json",
        "cloudsql_health.json", "instances_at_max.json", "sink_export_errors.json",
        "slo_availability_burn.json", "slo_ttft_burn.json"}
    assert {p.name for p in (MONITORING / "slo").glob("*.json")} == {"service.json", "availability.json",
                                                                      "ttft.json"}


@pytest.mark.parametrize("path", all_data_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_json_and_yaml_file_parses(path):
    text = path.read_text()
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    assert docs and all(isinstance(d, dict) for d in docs)
    # the only placeholders are the ones the deploy command or envsubst fill
    known = set(default_values()) | {"IMAGE", "SERVICE_ACCOUNT", "CLOUDSQL_INSTANCE", "UPTIME_CHECK_ID"}
    assert set(PLACEHOLDER.findall(text)) <= known
    assert "gcr.io" not in text


# ----------------------------------------------------------------------------- LogMetric

@pytest.mark.parametrize("path", metric_files(), ids=lambda p: p.stem)
def test_log_metric_shape(path):
    metric = rendered_metric(path)
    kind, field = EXPECTED_METRICS[path.stem]
    assert metric["name"] == path.stem  # gcloud takes the name from the command line; keep them equal
    assert metric["description"]
    flt = " ".join(metric["filter"].split())
    assert flt.startswith('resource.type="cloud_run_revision" AND resource.labels.service_name="litellm-proxy"'
                          ' AND jsonPayload.message="litellm_request"')
    assert "cost_usd>0" not in flt.replace(" ", "")  # zero-cost requests still count
    if path.stem == "litellm_ttft_ms":
        assert flt.endswith("AND jsonPayload.stream=true")
    descriptor = metric["metricDescriptor"]
    assert descriptor["metricKind"] == "DELTA"
    assert descriptor["valueType"] == kind
    labels = [label["key"] for label in descriptor["labels"]]
    assert len(labels) == len(set(labels)) <= 10  # Logging's limit per metric
    assert {"tenant_id", "model"} <= set(labels)
    assert not {"request_id", "api_key_id", "user"} & set(labels)  # unbounded cardinality
    assert all(label["valueType"] in ("STRING", "BOOL", "INT64") for label in descriptor["labels"])
    assert set(metric["labelExtractors"]) == set(labels)  # one extractor per label, no extra
    for _key, expression in metric["labelExtractors"].items():
        if _key in ("model", "stream"):  # bounded, string labels of the entry (docs/contracts.md)
            assert expression == f"EXTRACT(labels.{_key})", expression
            continue
        m = re.fullmatch(r"EXTRACT\(jsonPayload\.([a-z_]+)\)", expression)
        assert m and m.group(1) in CONTRACT_FIELDS, expression
    if kind == "DISTRIBUTION":
        assert metric["valueExtractor"] == f"EXTRACT(jsonPayload.{field})"
        assert CONTRACT_FIELDS[field] in (int, float)
        buckets = metric["bucketOptions"]["exponentialBuckets"]
        assert 1 <= buckets["numFiniteBuckets"] <= 200 and buckets["growthFactor"] > 1 and buckets["scale"] > 0
        top = buckets["scale"] * buckets["growthFactor"] ** buckets["numFiniteBuckets"]
        ceiling = {"total_tokens": 2e6, "prompt_tokens": 2e6, "completion_tokens": 2e6,
                   "cost_usd": 1000, "latency_ms": 3.6e6, "ttft_ms": 3.6e6}[field]
        assert top >= ceiling  # the largest plausible value still lands in a finite bucket
    else:
        assert "valueExtractor" not in metric and "bucketOptions" not in metric
        assert {"status", "status_code"} <= set(labels)


@pytest.mark.skipif(api_messages() is None, reason="Cloud SDK with generated API messages not installed")
@pytest.mark.parametrize("path", metric_files(), ids=lambda p: p.stem)
def test_log_metric_matches_the_api_message(path):
    assert unknown_fields(rendered_metric(path), "LogMetric") == []


# ----------------------------------------------------------------------------- dashboard

def dashboard_queries(doc: dict) -> list[dict]:
    out = []
    for tile in doc["mosaicLayout"]["tiles"]:
        for ds in tile["widget"]["xyChart"]["dataSets"]:
            out.append(ds["timeSeriesQuery"])
    return out


def test_dashboard_shape():
    doc = rendered_json(MONITORING / "dashboard.json")
    assert doc["displayName"] == "litellm-proxy LLM gateway"
    layout = doc["mosaicLayout"]
    columns = layout["columns"]
    assert 1 <= columns <= 48
    cells: set[tuple[int, int]] = set()
    for tile in layout["tiles"]:
        x, y, w, h = tile.get("xPos", 0), tile.get("yPos", 0), tile["width"], tile["height"]
        assert x + w <= columns and w > 0 and h > 0
        area = {(i, j) for i in range(x, x + w) for j in range(y, y + h)}
        assert not cells & area, f"tile {tile['widget']['title']!r} overlaps another"
        cells |= area
        widget = tile["widget"]
        assert widget["title"]
        assert [k for k in widget if k != "title"] == ["xyChart"]
        for ds in widget["xyChart"]["dataSets"]:
            query = ds["timeSeriesQuery"]
            kinds = [k for k in ("prometheusQuery", "timeSeriesFilter", "timeSeriesFilterRatio",
                                 "timeSeriesQueryLanguage") if k in query]
            assert len(kinds) == 1
    titles = " | ".join(t["widget"]["title"] for t in layout["tiles"]).lower()
    for needed in ("tokens per minute by tenant", "cost (usd) per minute, total",
                   "cost (usd) per minute by tenant", "p95 gateway latency", "p95 time to first token",
                   "5xx", "instances"):
        assert needed in titles


def test_dashboard_promql_uses_existing_log_metrics():
    import promql_parser

    metrics = {p.stem: rendered_metric(p) for p in metric_files()}
    seen = set()
    for query in dashboard_queries(rendered_json(MONITORING / "dashboard.json")):
        if "prometheusQuery" in query:
            ast = promql_parser.parse(query["prometheusQuery"])
            for name, matchers, rng in promql_selectors(ast):
                m = re.fullmatch(r"logging_googleapis_com:user_(\w+?)(_sum|_count|_bucket)?", name)
                assert m, name
                metric, suffix = m.group(1), m.group(2)
                assert metric in metrics
                distribution = metrics[metric]["metricDescriptor"]["valueType"] == "DISTRIBUTION"
                assert bool(suffix) == distribution  # _sum/_count/_bucket exist only on distributions
                assert matchers.get("monitored_resource") == "cloud_run_revision"
                assert matchers.get("service_name") == "litellm-proxy"
                labels = {l["key"] for l in metrics[metric]["metricDescriptor"]["labels"]}
                assert set(matchers) - {"monitored_resource", "service_name"} <= labels
                assert rng is not None and rng.total_seconds() == 300
                seen.add(metric)
        else:
            flt = query["timeSeriesFilter"]
            assert 'resource.type="cloud_run_revision"' in flt["filter"]
            assert 'resource.label.service_name="litellm-proxy"' in flt["filter"]
            assert re.search(r'metric\.type="run\.googleapis\.com/[a-z_/]+"', flt["filter"])
            assert flt["aggregation"]["perSeriesAligner"].startswith("ALIGN_")
    assert {"litellm_total_tokens", "litellm_cost_usd", "litellm_latency_ms", "litellm_ttft_ms"} <= seen


@pytest.mark.skipif(api_messages() is None, reason="Cloud SDK with generated API messages not installed")
def test_dashboard_matches_the_api_message():
    assert unknown_fields(rendered_json(MONITORING / "dashboard.json"), "Dashboard") == []


# ----------------------------------------------------------------------------- alerts

# alerts that fire on the first bad window: money (surges) and lost billing records; the
# others wait for 5 minutes of degradation. Alerts on "any error" have a fixed threshold of 0.
IMMEDIATE = {"token_surge", "cost_surge", "ledger_records_not_written", "slo_availability_burn", "slo_ttft_burn"}
FIXED_THRESHOLD = {"ledger_unavailable", "ledger_records_not_written", "sink_export_errors",
                   "slo_availability_burn", "slo_ttft_burn"}
CONTEXT = {"SERVICE", "PROJECT", "SLO_SERVICE", "SINK_NAME", "SQL_DATABASE_ID", "MAX_INSTANCES"}


@pytest.mark.parametrize("path", alert_files(), ids=lambda p: p.stem)
def test_alert_policy_shape(path):
    template = path.read_text()
    used = set(PLACEHOLDER.findall(template))
    assert used - CONTEXT <= THRESHOLDS
    if path.stem not in FIXED_THRESHOLD:
        assert used & (THRESHOLDS | {"MAX_INSTANCES"}), "thresholds are parameters"
    policy = rendered_json(path)
    assert "${" not in json.dumps(policy)
    assert policy["displayName"].startswith("litellm-proxy: ")
    # the display name is stable: no threshold in it (the policy is found by its label, but a
    # changed number in the name would still read as a different alert)
    assert not re.search(r"[0-9]", policy["displayName"].replace("5xx", "").replace("P95", "").replace(
        "5 min", ""))
    assert policy["combiner"] in ("OR", "AND", "AND_WITH_MATCHING_RESOURCE")
    assert policy["documentation"]["content"] and policy["documentation"]["mimeType"] == "text/markdown"
    assert policy["conditions"]
    for cond in policy["conditions"]:
        assert cond["displayName"]
        kinds = [k for k in cond if k.startswith("condition")]
        assert len(kinds) == 1
        body = cond[kinds[0]]
        assert re.fullmatch(r"[0-9]+s", body["duration"])
        # every condition looks at a 5-minute window ...
        if kinds[0] == "conditionThreshold":
            if body["filter"].startswith("select_slo_burn_rate("):  # the window is in the selector
                assert re.fullmatch(r'select_slo_burn_rate\("projects/acme-llm-prod/services/litellm-proxy/'
                                    r'serviceLevelObjectives/(availability|ttft)", "(3600|21600)s"\)', body["filter"])
                assert "aggregations" not in body
            else:
                periods = {a["alignmentPeriod"]
                           for a in body["aggregations"] + body.get("denominatorAggregations", [])}
                assert periods == {"300s"}
            assert isinstance(body["thresholdValue"], (int, float))
            assert body["comparison"] in ("COMPARISON_GT", "COMPARISON_GE")
        else:
            import promql_parser

            assert kinds[0] == "conditionPrometheusQueryLanguage"
            ast = promql_parser.parse(body["query"])
            ranges = {rng.total_seconds() for _, _, rng in promql_selectors(ast) if rng is not None}
            assert ranges == {300.0}
            assert body["evaluationInterval"] == "60s"
        # ... and degradations must last 5 minutes; surges (money) and lost records fire at once
        expected = "0s" if path.stem in IMMEDIATE else "300s"
        assert body["duration"] == expected


def test_the_new_alerts_watch_the_right_resources():
    sql = rendered_json(ALERTS_DIR / "cloudsql_health.json")
    metrics = {re.search(r'metric.type="([^"]+)"', c["conditionThreshold"]["filter"]).group(1)
               for c in sql["conditions"]}
    assert metrics == {"cloudsql.googleapis.com/database/postgresql/num_backends",
                       "cloudsql.googleapis.com/database/cpu/utilization",
                       "cloudsql.googleapis.com/database/disk/utilization"}
    for c in sql["conditions"]:
        assert f'resource.label.database_id="{PROJECT}:ledger"' in c["conditionThreshold"]["filter"]
    at_max = rendered_json(ALERTS_DIR / "instances_at_max.json")["conditions"][0]["conditionThreshold"]
    assert at_max["thresholdValue"] == 50 and at_max["comparison"] == "COMPARISON_GE"
    sink = rendered_json(ALERTS_DIR / "sink_export_errors.json")["conditions"][0]["conditionThreshold"]
    assert 'resource.label.name="litellm-proxy-bq-sink"' in sink["filter"]
    assert 'metric.type="logging.googleapis.com/exports/error_count"' in sink["filter"]
    ledger_metrics = {p.stem for p in ledger_metric_files()}
    for name in ("ledger_unavailable", "ledger_records_not_written", "ledger_buffer_depth"):
        flt = rendered_json(ALERTS_DIR / f"{name}.json")["conditions"][0]["conditionThreshold"]["filter"]
        m = re.search(r'metric.type="logging.googleapis.com/user/([a-z_]+)"', flt)
        assert m and m.group(1) in ledger_metrics


@pytest.mark.skipif(api_messages() is None, reason="Cloud SDK with generated API messages not installed")
@pytest.mark.parametrize("name, message", [("service", "Service"), ("availability", "ServiceLevelObjective"),
                                           ("ttft", "ServiceLevelObjective")])
def test_slo_files_match_the_api_messages(name, message):
    doc = rendered_json(MONITORING / "slo" / f"{name}.json")
    assert "${" not in json.dumps(doc)
    assert unknown_fields(doc, message) == []
    if message == "ServiceLevelObjective":
        assert 0 < doc["goal"] < 1 and doc["rollingPeriod"] == "2419200s"


@pytest.mark.skipif(api_messages() is None, reason="Cloud SDK with generated API messages not installed")
@pytest.mark.parametrize("path", ledger_metric_files(), ids=lambda p: p.stem)
def test_ledger_metric_matches_the_api_message(path):
    metric = rendered_metric(path)
    assert metric["name"] == path.stem and unknown_fields(metric, "LogMetric") == []


def test_alert_thresholds_are_filled_from_options():
    ratio = rendered_json(ALERTS_DIR / "error_ratio_5xx.json", ERROR_RATIO_5XX="0.05")
    assert ratio["conditions"][0]["conditionThreshold"]["thresholdValue"] == 0.05
    cost = rendered_json(ALERTS_DIR / "cost_surge.json", COST_SURGE_USD_PER_5M="12.5")
    assert cost["conditions"][0]["conditionPrometheusQueryLanguage"]["query"].endswith("> 12.5")


def test_5xx_ratio_uses_cloud_run_request_count():
    cond = rendered_json(ALERTS_DIR / "error_ratio_5xx.json")["conditions"][0]["conditionThreshold"]
    assert 'metric.type="run.googleapis.com/request_count"' in cond["filter"]
    assert 'metric.label.response_code_class="5xx"' in cond["filter"]
    assert "response_code_class" not in cond["denominatorFilter"]
    assert cond["aggregations"][0]["perSeriesAligner"] == "ALIGN_RATE"


@pytest.mark.parametrize("path", alert_files(), ids=lambda p: p.stem)
def test_alert_promql_references_existing_metrics(path):
    import promql_parser

    metrics = {p.stem for p in metric_files()}
    for cond in rendered_json(path)["conditions"]:
        body = cond.get("conditionPrometheusQueryLanguage")
        if not body:
            continue
        for name, matchers, _ in promql_selectors(promql_parser.parse(body["query"])):
            m = re.fullmatch(r"logging_googleapis_com:user_(\w+?)(_sum|_count|_bucket)", name)
            assert m and m.group(1) in metrics, name
            assert matchers["service_name"] == "litellm-proxy"


@pytest.mark.skipif(api_messages() is None, reason="Cloud SDK with generated API messages not installed")
@pytest.mark.parametrize("path", alert_files(), ids=lambda p: p.stem)
def test_alert_policy_matches_the_api_message(path):
    assert unknown_fields(rendered_json(path), "AlertPolicy") == []


UPTIME_POLICY = MONITORING / "uptime" / "live_failing.json"


@pytest.mark.skipif(api_messages() is None, reason="Cloud SDK with generated API messages not installed")
def test_uptime_policy_watches_its_check_and_matches_the_api_message():
    """The policy on the /live uptime check: the check's own metric, by the check's ID (filled in
    by the deploy once the check exists), firing when two or more regions fail."""
    doc = rendered_json(UPTIME_POLICY, UPTIME_CHECK_ID="litellm-proxy-live-abc123")
    assert unknown_fields(doc, "AlertPolicy") == []
    (condition,) = doc["conditions"]
    threshold = condition["conditionThreshold"]
    assert threshold["filter"] == ('metric.type="monitoring.googleapis.com/uptime_check/check_passed" '
                                   'AND metric.label.check_id="litellm-proxy-live-abc123"')
    (agg,) = threshold["aggregations"]
    assert (agg["perSeriesAligner"], agg["crossSeriesReducer"]) == ("ALIGN_NEXT_OLDER", "REDUCE_COUNT_FALSE")
    assert (threshold["comparison"], threshold["thresholdValue"]) == ("COMPARISON_GT", 1)
    assert doc["userLabels"] == {"service": "litellm-proxy", "app": "tallygate"}


# ----------------------------------------------------------------------------- Cloud Run YAML

def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("rel", ["cloudrun/service.yaml", "monitoring/gmp-sidecar/service.yaml"])
def test_knative_service_matches_the_deploy_command(rel):
    doc = load_yaml(DEPLOY / rel)
    assert doc["apiVersion"] == "serving.knative.dev/v1" and doc["kind"] == "Service"
    template = doc["spec"]["template"]
    notes = template["metadata"]["annotations"]
    assert notes["run.googleapis.com/cpu-throttling"] == "false"
    assert notes["autoscaling.knative.dev/minScale"] == "1" and notes["autoscaling.knative.dev/maxScale"] == "50"
    assert notes["run.googleapis.com/cloudsql-instances"] == "${CLOUDSQL_INSTANCE}"
    spec = template["spec"]
    assert spec["containerConcurrency"] == 15 and spec["timeoutSeconds"] == 3600
    gateway = spec["containers"][0]
    assert gateway["ports"] == [{"name": "http1", "containerPort": 8080}]
    env = _env(gateway)
    assert "PORT" not in env and "PGSSL" not in env
    assert env["PGSSLMODE"]["value"] == "disable"
    assert env["PGHOST"]["value"] == "/cloudsql/${CLOUDSQL_INSTANCE}"
    for name, suffix in cloudrun.SECRET_ENVS:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert "value" not in env[name]
        assert ref == {"name": "${SERVICE}-" + suffix, "key": "1"}  # pinned, never latest
    for key, probe, flag in (("startupProbe", "/ready", cloudrun.STARTUP_PROBE),
                             ("livenessProbe", "/live", cloudrun.LIVENESS_PROBE)):
        p = gateway[key]
        assert p["httpGet"] == {"path": probe, "port": 8080}
        for field in ("periodSeconds", "timeoutSeconds", "failureThreshold"):
            assert str(p[field]) == flag[field]


def test_gmp_sidecar_example():
    service = load_yaml(MONITORING / "gmp-sidecar" / "service.yaml")
    spec = service["spec"]["template"]["spec"]
    names = [c["name"] for c in spec["containers"]]
    assert names == ["gateway", "collector"]
    deps = json.loads(service["spec"]["template"]["metadata"]["annotations"]["run.googleapis.com/container-dependencies"])
    assert deps == {"collector": ["gateway"]}
    collector = spec["containers"][1]
    assert re.fullmatch(r"us-docker\.pkg\.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/"
                        r"cloud-run-gmp-sidecar:\d+\.\d+\.\d+", collector["image"])
    mount = collector["volumeMounts"][0]
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert mount["mountPath"] == "/etc/rungmp"
    assert volume["secret"]["items"] == [{"key": "1", "path": "config.yaml"}]
    assert "TALLYGATE_METRICS" not in _env(spec["containers"][0])  # the public port keeps its key
    metrics_port = _env(spec["containers"][0])["TALLYGATE_METRICS_PORT"]["value"]

    config = load_yaml(MONITORING / "gmp-sidecar" / "run-monitoring.yaml")
    assert config["apiVersion"] == "monitoring.googleapis.com/v1beta" and config["kind"] == "RunMonitoring"
    (endpoint,) = config["spec"]["endpoints"]
    assert str(endpoint["port"]) == metrics_port and endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "scheme", "path", "params", "proxyUrl", "interval", "timeout",
                             "metricRelabeling"}  # the sidecar parses this strictly
    assert set(config["spec"]["targetLabels"]["metadata"]) <= {"instance", "revision", "service", "configuration"}
    readme = (MONITORING / "gmp-sidecar" / "README.md").read_text()
    assert "TALLYGATE_METRICS_PORT=9464" in readme


# ----------------------------------------------------------------------------- BigQuery

def test_create_sh_uses_the_same_sink_filter_as_the_deploy_command():
    from deploy_support import parse_args

    script = (DEPLOY / "bigquery" / "create.sh").read_text()
    m = re.search(r'^FILTER="(.*)"$', script, re.M)
    assert m
    from_script = (m.group(1).replace('\\"', '"').replace("${SERVICE}", "litellm-proxy")
                   .replace("${PROJECT_ID}", PROJECT))
    config = cloudrun.build_config(parse_args("--project", PROJECT, "--image-tag", "x"))
    assert from_script == cloudrun.sink_filter(config)
    assert script.count("--use-partitioned-tables") == 2  # create and update
    assert "roles/bigquery.dataEditor" in script


def test_sql_files_dedupe_and_prune():
    daily = (DEPLOY / "bigquery" / "tokens_cost_per_tenant_day.sql").read_text()
    assert "QUALIFY ROW_NUMBER() OVER (PARTITION BY jsonPayload.request_id ORDER BY timestamp) = 1" in daily
    assert "FROM `${PROJECT}.${BQ_DATASET}.run_googleapis_com_stdout`" in daily
    assert re.search(r"WHERE timestamp >= ", daily)  # partition pruning on the partitioned table
    recon = (DEPLOY / "bigquery" / "reconcile_ledger_vs_logs.sql").read_text()
    assert "FULL OUTER JOIN" in recon and "QUALIFY ROW_NUMBER()" in recon
    for kind in ("missing_in_ledger", "missing_in_logs", "cost_mismatch", "tokens_mismatch"):
        assert f"'{kind}'" in recon
    assert "FROM litellm_usage" in recon
