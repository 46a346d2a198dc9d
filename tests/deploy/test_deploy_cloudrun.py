"""`tallygate deploy cloudrun`: the printed commands avoid every known mistake of the brief,
exist in the installed Cloud SDK, and come in a working order (test_deploy_cloudrun_run.py
runs them against a fake gcloud)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import (
    PROJECT,
    ROOT,
    SQL_INSTANCE,
    bq_tree,
    cloudrun,
    dry_run,
    find,
    flag_values,
    gcloud_tree,
    parse_args,
    script_commands,
)

SECRET_ENVS = [e for e, _ in cloudrun.SECRET_ENVS]


@pytest.fixture
def script(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("PROXY_MASTER_KEY", "mk-test")  # the admin API on: its secret is mapped
    status, out, err = dry_run(tmp_path / "rendered")
    assert status == 0, err
    return out


@pytest.fixture
def commands(script) -> list[list[str]]:
    return script_commands(script)


def the(commands, *prefix) -> list[str]:
    found = find(commands, *prefix)
    assert len(found) == 1, f"expected one {' '.join(prefix)}, got {len(found)}"
    return found[0]


# ----------------------------------------------------------------------------- the brief's mistakes

def test_no_known_mistake_anywhere(script, commands):
    assert "--allow-unauthenticated=false" not in script
    assert "gcr.io" not in script
    assert "--value-extractor" not in script and "--metric-type" not in script
    assert not re.search(r"projects/[a-z][a-z0-9-]+/secrets", script)  # a project ID in a secret path
    assert not re.search(r"\bPGSSL=", script)  # libpq reads PGSSLMODE
    assert ":latest" not in script
    for cmd in commands:
        for tok in cmd:
            assert not tok.startswith("--set-env-vars") or "PORT=" not in tok.split("=", 1)[1].replace("PGPORT", "")


def test_run_deploy_flags(commands):
    deploy = the(commands, "gcloud", "run", "deploy")
    assert deploy[3] == "litellm-proxy"
    assert "--port=8080" in deploy
    assert "--no-cpu-throttling" in deploy
    assert "--allow-unauthenticated" in deploy  # default --auth public
    for flag, value in (("--concurrency", "15"), ("--min-instances", "1"), ("--max-instances", "50"),
                        ("--cpu", "1"), ("--memory", "1Gi"), ("--timeout", "3600"),
                        ("--add-cloudsql-instances", SQL_INSTANCE)):
        assert flag_values(deploy, flag) == [value]
    (image,) = flag_values(deploy, "--image")
    # by digest: the tag the build pushed is resolved once, the service runs exactly that image
    assert image == f"us-central1-docker.pkg.dev/{PROJECT}/litellm/litellm-proxy@${{IMAGE_DIGEST}}"
    (describe,) = find(commands, "gcloud", "artifacts", "docker", "images", "describe")
    assert describe[5] == f"us-central1-docker.pkg.dev/{PROJECT}/litellm/litellm-proxy:abc123"
    (startup,) = flag_values(deploy, "--startup-probe")
    (liveness,) = flag_values(deploy, "--liveness-probe")
    assert dict(kv.split("=", 1) for kv in startup.split(","))["httpGet.path"] == "/ready"
    assert dict(kv.split("=", 1) for kv in liveness.split(","))["httpGet.path"] == "/live"
    for probe in (startup, liveness):  # gcloud's probe flag accepts these keys only
        assert {kv.split("=")[0] for kv in probe.split(",")} <= {
            "initialDelaySeconds", "timeoutSeconds", "periodSeconds", "failureThreshold",
            "httpGet.port", "httpGet.path"}
        path = dict(kv.split("=", 1) for kv in probe.split(","))["httpGet.path"]
        assert not path.endswith("z")  # Cloud Run reserves some paths ending in z


def test_env_vars_carry_no_secret_and_the_right_postgres_names(commands):
    deploy = the(commands, "gcloud", "run", "deploy")
    (raw,) = flag_values(deploy, "--set-env-vars")
    env = dict(kv.split("=", 1) for kv in raw.split(","))
    assert env == {"PGHOST": f"/cloudsql/{SQL_INSTANCE}", "PGUSER": "litellm", "PGDATABASE": "litellm",
                   "PGSSLMODE": "disable", "TALLYGATE_LEDGER_MODE": "async", "GOOGLE_CLOUD_PROJECT": PROJECT}
    assert not set(env) & {"PORT", "PGSSL", "DATABASE_URL", *SECRET_ENVS}


def test_secrets_only_through_set_secrets_pinned(commands, script):
    deploy = the(commands, "gcloud", "run", "deploy")
    (raw,) = flag_values(deploy, "--set-secrets")
    mapping = dict(kv.split("=", 1) for kv in raw.split(","))
    # PROXY_MASTER_KEY is optional: mapped only when $PROXY_MASTER_KEY is set (the fixture sets it)
    assert set(mapping) == set(SECRET_ENVS)
    for _env, ref in mapping.items():
        # gcloud's same-project form NAME:VERSION (a remote one needs a project NUMBER)
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,255}:[1-9][0-9]*", ref), ref
    assert mapping["OPENAI_API_KEY"] == "litellm-proxy-openai-api-key:1"
    # every secret is created, gets a version from stdin, and the runtime account may read it
    sa = f"serviceAccount:litellm-proxy-run@{PROJECT}.iam.gserviceaccount.com"
    for env, ref in mapping.items():
        name = ref.split(":")[0]
        assert [c for c in find(commands, "gcloud", "secrets", "create") if c[3] == name]
        (add,) = [c for c in find(commands, "gcloud", "secrets", "versions", "add") if c[4] == name]
        assert flag_values(add, "--data-file") == ["-"]
        line = next(l for l in script.splitlines() if f"versions add {name} " in l)
        if env == "PGPASSWORD":  # generated, never read from the environment
            assert "tr -dc A-Za-z0-9 </dev/urandom | head -c 32 | gcloud secrets versions add" in line
        else:
            assert f'printf \'%s\' "${env}" | gcloud secrets versions add' in line
        (grant,) = [c for c in find(commands, "gcloud", "secrets", "add-iam-policy-binding") if c[3] == name]
        assert flag_values(grant, "--member") == [sa]
        assert flag_values(grant, "--role") == ["roles/secretmanager.secretAccessor"]
    assert flag_values(deploy, "--service-account") == [sa.split(":", 1)[1]]


def test_secret_values_never_on_a_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-do-not-print-0123456789")
    status, out, _ = dry_run(tmp_path)
    assert status == 0 and "sk-live-do-not-print" not in out
    assert out.count("printf '%s' \"$OPENAI_API_KEY\" | gcloud secrets versions add") == 1


def test_sink_is_partitioned_narrow_and_granted(commands):
    (create,) = find(commands, "gcloud", "logging", "sinks", "create")
    assert create[4] == "litellm-proxy-bq-sink"
    assert create[5] == f"bigquery.googleapis.com/projects/{PROJECT}/datasets/litellm_logs"
    assert "--use-partitioned-tables" in create
    (flt,) = flag_values(create, "--log-filter")
    for part in ('resource.type="cloud_run_revision"', 'resource.labels.service_name="litellm-proxy"',
                 f'logName="projects/{PROJECT}/logs/run.googleapis.com%2Fstdout"',
                 'jsonPayload.message="litellm_request"'):
        assert part in flt
    assert "--disabled" in create  # exports nothing before its writer identity may write
    update, enable = find(commands, "gcloud", "logging", "sinks", "update")
    assert "--use-partitioned-tables" in update and "--disabled" not in update
    assert enable[4:] == ["litellm-proxy-bq-sink", "--no-disabled", f"--project={PROJECT}"]
    grants = [c for c in find(commands, "gcloud", "projects", "add-iam-policy-binding")
              if "--role=roles/bigquery.dataEditor" in c]
    assert grants and flag_values(grants[0], "--member") == ["${WRITER_IDENTITY}"]
    assert commands.index(grants[0]) < commands.index(enable)


def test_log_metrics_from_files_not_flags(commands, tmp_path):
    creates = find(commands, "gcloud", "logging", "metrics", "create")
    assert {c[4] for c in creates} == {p.stem for p in (ROOT / "deploy/monitoring/metrics").glob("*.yaml")}
    for c in creates:
        (path,) = flag_values(c, "--config-from-file")
        assert Path(path).name == f"{c[4]}.yaml" and Path(path).is_file()
        assert "${" not in Path(path).read_text()
        assert not {"--log-filter", "--description"} & {t.split("=")[0] for t in c}


def test_order_of_the_set_up(script):
    body = script.split("\n# --- services\n", 1)[1]  # after the header and the retry function
    lines = [l for l in body.splitlines() if l and not l.startswith("#")]

    def first(pattern: str) -> int:
        for i, line in enumerate(lines):
            if pattern in line:
                return i
        raise AssertionError(f"{pattern!r} not in the script")

    assert first("gcloud services enable") == 0
    assert first("artifacts repositories create") < first("gcloud builds submit") < first("gcloud run deploy")
    assert first("secretmanager.secretAccessor") < first("gcloud run deploy")  # checked at deploy time
    assert first("roles/cloudsql.client") < first("gcloud run deploy")
    assert first("gcloud logging metrics create") < first("monitoring policies create")
    assert first("bq --location=US") < first("gcloud logging sinks create") < first("roles/bigquery.dataEditor")
    assert first("roles/bigquery.dataEditor") < first("--no-disabled")
    # the database exists, with its user's password from Secret Manager, before the schema job and the service
    assert first("versions add litellm-proxy-pgpassword") < first("gcloud sql users create")
    assert first("gcloud sql instances create") < first("gcloud sql databases create") < first("gcloud sql users")
    assert first("gcloud sql users create") < first("gcloud run jobs deploy") < first("gcloud run deploy")
    assert first("gcloud builds submit") < first("artifacts docker images describe") < first("gcloud run jobs")
    assert first("roles/cloudbuild.builds.builder") < first("gcloud builds submit")


def test_script_is_valid_posix_shell(script, tmp_path):
    path = tmp_path / "deploy.sh"
    path.write_text(script)
    subprocess.run(["sh", "-n", str(path)], check=True)
    result = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2016", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# ----------------------------------------------------------------------------- against the SDK

def _gcloud_node(tree: dict, words: list[str]) -> tuple[dict, int]:
    node, used = tree, 0
    for word in words:
        if word in node.get("commands", {}):
            node, used = node["commands"][word], used + 1
        else:
            break
    return node, used


@pytest.mark.skipif(gcloud_tree() is None, reason="Cloud SDK not installed")
def test_every_gcloud_command_and_flag_exists_in_the_sdk(commands):
    check_against_the_sdk(commands)


def check_against_the_sdk(commands):
    tree = gcloud_tree()
    global_flags = set(tree["flags"])
    for cmd in find(commands, "gcloud"):
        if cmd[-1] == "--help":  # the probe choosing between GA and alpha
            continue
        words = [w for w in cmd[1:] if not w.startswith("-")]
        node, used = _gcloud_node(tree, words)
        if words[:2] == ["monitoring", "policies"] and used < 2:
            # GA since SDK 5xx; older SDKs ship it as alpha (the runner falls back to it)
            node, used = _gcloud_node(tree, ["alpha", *words])
            used -= 1
        assert not node.get("commands"), f"incomplete command: {' '.join(cmd[:6])}"
        assert used >= 2, f"unknown command: {' '.join(cmd[:6])}"
        flags = node.get("flags", {})
        for tok in cmd[1:]:
            if not tok.startswith("--"):
                continue
            name, has_value, value = tok.partition("=")
            if name in flags or name in global_flags:
                kind = flags.get(name, tree["flags"].get(name))
                if kind == "bool":
                    assert not has_value, f"{tok}: a boolean flag takes no value (use --no-...)"
                continue
            positive = "--" + name[len("--no-"):] if name.startswith("--no-") else None
            assert positive and flags.get(positive) == "bool" and not has_value, \
                f"gcloud {' '.join(words[:used])}: no flag {name}"


@pytest.mark.skipif(bq_tree() is None, reason="Cloud SDK not installed")
def test_every_bq_command_exists(commands):
    tree = bq_tree()
    for cmd in find(commands, "bq"):
        words = [w for w in cmd[1:] if not w.startswith("-")]
        assert words[0] in tree["commands"], cmd
        for tok in cmd[1:cmd.index(words[0]) + 1]:
            if tok.startswith("--"):
                assert tok.split("=")[0] in tree["flags"], tok  # global flags before the command


# ----------------------------------------------------------------------------- options

def test_iam_mode(tmp_path):
    status, out, _ = dry_run(tmp_path, "--auth", "iam", "--invoker",
                             f"serviceAccount:client@{PROJECT}.iam.gserviceaccount.com")
    assert status == 0
    commands = script_commands(out)
    deploy = the(commands, "gcloud", "run", "deploy")
    assert "--no-allow-unauthenticated" in deploy and "--allow-unauthenticated" not in deploy
    (grant,) = find(commands, "gcloud", "run", "services", "add-iam-policy-binding")
    assert flag_values(grant, "--role") == ["roles/run.invoker"]
    assert "X-Serverless-Authorization" in out


def test_pinned_versions_per_secret(tmp_path):
    status, out, _ = dry_run(tmp_path, "--secret-versions", "OPENAI_API_KEY=3,PGPASSWORD=2")
    assert status == 0
    deploy = the(script_commands(out), "gcloud", "run", "deploy")
    (raw,) = flag_values(deploy, "--set-secrets")
    assert "OPENAI_API_KEY=litellm-proxy-openai-api-key:3" in raw.split(",")
    assert "PGPASSWORD=litellm-proxy-pgpassword:2" in raw.split(",")
    assert "PROXY_GATEWAY_TOKEN=litellm-proxy-proxy-gateway-token:1" in raw.split(",")
    assert "gcloud secrets versions describe 3 --secret=litellm-proxy-openai-api-key" in out


@pytest.mark.parametrize("argv, message", [
    (["--secret-versions", "latest"], "--secret-versions"),
    (["--secret-versions", "OPENAI_API_KEY=latest"], "pinned"),
    (["--env", "PORT=8080"], "reserved"),
    (["--env", "PGPASSWORD=hunter2"], "Secret Manager"),
    (["--env", "OPENAI_API_KEY=sk-x"], "Secret Manager"),
    (["--env", "PGSSL=require"], "PGSSLMODE"),
    (["--cloudsql-instance", "just-a-name"], "PROJECT:REGION:INSTANCE"),
    (["--timeout", "7200"], "3600"),
    (["--invoker", "user:a@b.c"], "--auth iam"),
    (["--region", "us central"], "--region"),
    (["--only", "everything"], "unknown phase"),
])
def test_bad_options_are_refused_clearly(tmp_path, argv, message):
    status, out, err = dry_run(tmp_path, *argv, with_sql=False)
    assert status == 2 and out == ""
    assert message in err and err.startswith("error: ")


def test_env_value_with_a_comma_uses_gcloud_delimiter_syntax(tmp_path):
    status, out, _ = dry_run(tmp_path, "--env", "TALLYGATE_DEFAULT_TENANT=acme", "--env", "NOTE=a,b")
    assert status == 0
    (raw,) = flag_values(the(script_commands(out), "gcloud", "run", "deploy"), "--set-env-vars")
    assert raw.startswith("^@^")
    env = dict(kv.split("=", 1) for kv in raw[3:].split("@"))
    assert env["NOTE"] == "a,b" and env["TALLYGATE_DEFAULT_TENANT"] == "acme"


def test_sqlite_ledger_only_when_asked_for(tmp_path):
    status, out, _ = dry_run(tmp_path, "--sqlite-ledger", with_sql=False)
    assert status == 0
    deploy = the(script_commands(out), "gcloud", "run", "deploy")
    (raw,) = flag_values(deploy, "--set-env-vars")
    assert "PGHOST" not in raw and "--add-cloudsql-instances" not in " ".join(deploy)
    assert "PGPASSWORD" not in flag_values(deploy, "--set-secrets")[0]
    assert "WARNING: --sqlite-ledger: the ledger is SQLite inside each instance and is LOST" in out
    assert "sqladmin.googleapis.com" not in out and "cloudsql.client" not in out
    assert "gcloud sql " not in out and "run jobs" not in out and "cloudsql_health" not in out
    status, _, err = dry_run(tmp_path, "--sqlite-ledger")
    assert status == 2 and "exclude each other" in err


def test_without_an_instance_name_one_is_adopted_or_created(tmp_path):
    status, out, _ = dry_run(tmp_path, with_sql=False)
    assert status == 0
    commands = script_commands(out)
    instance = f"{PROJECT}:us-central1:litellm-proxy-ledger"
    deploy = the(commands, "gcloud", "run", "deploy")
    assert flag_values(deploy, "--add-cloudsql-instances") == [instance]
    (create,) = find(commands, "gcloud", "sql", "instances", "create")
    assert create[4] == "litellm-proxy-ledger"
    for flag in ("--enable-point-in-time-recovery", "--storage-auto-increase", "--deletion-protection"):
        assert flag in create
    assert flag_values(create, "--backup-start-time") == ["03:00"]
    assert flag_values(create, "--database-version") == ["POSTGRES_16"]
    (patch,) = find(commands, "gcloud", "sql", "instances", "patch")  # adopted: backups and PITR turned on
    assert "--enable-point-in-time-recovery" in patch and flag_values(patch, "--backup-start-time") == ["03:00"]
    (job,) = find(commands, "gcloud", "run", "jobs", "deploy")
    assert flag_values(job, "--set-cloudsql-instances") == [instance]
    assert flag_values(job, "--command") == ["tallygate"] and flag_values(job, "--args") == ["db,init"]
    assert "--execute-now" in job and "--wait" in job
    assert flag_values(job, "--set-secrets") == ["PGPASSWORD=litellm-proxy-pgpassword:1"]
    assert flag_values(job, "--image") == flag_values(deploy, "--image")
    (env,) = flag_values(job, "--set-env-vars")
    assert f"PGHOST=/cloudsql/{instance}" in env.split(",")


def test_the_database_password_never_on_a_command_line(script, commands):
    users = [l for l in script.splitlines() if "gcloud sql users" in l]
    assert len(users) == 1
    line = users[0]
    # the user is created, or its password set again, from the pinned secret version, via a
    # gcloud flags file on stdin
    access = "gcloud secrets versions access 1 --secret=litellm-proxy-pgpassword --project=acme-llm-prod"
    assert line.count(f'printf \'"--password": "%s"\\n\' "$({access})" | gcloud sql users') == 2
    for cmd in find(commands, "gcloud", "sql", "users"):
        assert not any(t.startswith("--password") for t in cmd)
    assert {c[3] for c in find(commands, "gcloud", "sql", "users")} == {"describe", "create", "set-password"}
    for c in find(commands, "gcloud", "sql", "users"):
        if c[3] != "describe":
            assert "--flags-file=-" in c


def test_master_key_is_optional(tmp_path, monkeypatch):
    monkeypatch.delenv("PROXY_MASTER_KEY", raising=False)
    status, out, _ = dry_run(tmp_path)
    assert status == 0
    (raw,) = flag_values(the(script_commands(out), "gcloud", "run", "deploy"), "--set-secrets")
    assert "PROXY_MASTER_KEY" not in raw and "proxy-master-key" not in out  # the admin API is off
    status, out, _ = dry_run(tmp_path, "--master-key")
    (raw,) = flag_values(the(script_commands(out), "gcloud", "run", "deploy"), "--set-secrets")
    assert "PROXY_MASTER_KEY=litellm-proxy-proxy-master-key:1" in raw.split(",")


def test_skips_and_only(tmp_path):
    status, out, _ = dry_run(tmp_path / "a", "--skip-monitoring", "--skip-bigquery", "--skip-build")
    assert status == 0
    assert "gcloud run deploy" in out
    for absent in ("logging metrics", "monitoring dashboards", "monitoring policies", "logging sinks",
                   "bq ", "builds submit", "bigquery.googleapis.com"):
        assert absent not in out
    status, out, _ = dry_run(tmp_path / "b", "--only", "metrics,alerts")
    assert status == 0
    commands = script_commands(out)
    assert {c[1] for c in commands} == {"logging", "monitoring"}
    assert not (tmp_path / "b" / "dashboard.json").exists()


def test_rendered_files_carry_the_options(tmp_path):
    status, out, _ = dry_run(tmp_path, "--service", "gw-staging", "--alert-5xx-ratio", "0.05",
                             "--notification-channel", f"projects/{PROJECT}/notificationChannels/42")
    assert status == 0
    ratio = json.loads((tmp_path / "alerts" / "error_ratio_5xx.json").read_text())
    assert ratio["conditions"][0]["conditionThreshold"]["thresholdValue"] == 0.05
    assert ratio["userLabels"]["tallygate_policy"] == "error_ratio_5xx"  # its stable identity
    assert ratio["displayName"] == "gw-staging: 5xx ratio (5 min)"  # no threshold in the name
    commands = script_commands(out)
    for create in find(commands, "gcloud", "monitoring", "policies", "create"):
        assert flag_values(create, "--notification-channels") == [f"projects/{PROJECT}/notificationChannels/42"]
    for update in find(commands, "gcloud", "monitoring", "policies", "update"):
        assert flag_values(update, "--set-notification-channels") == [
            f"projects/{PROJECT}/notificationChannels/42"]
    assert 'service_name="gw-staging"' in ratio["conditions"][0]["conditionThreshold"]["filter"]
    metric = (tmp_path / "metrics" / "litellm_total_tokens.yaml").read_text()
    assert 'resource.labels.service_name="gw-staging"' in metric
    assert "${" not in metric
    assert "gw-staging-openai-api-key:1" in out
    assert f"gw-staging-run@{PROJECT}.iam.gserviceaccount.com" in out


def test_cli_entry_point_prints_the_same_script(tmp_path):
    """`tallygate deploy cloudrun` (as wired in the CLI) runs this module."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSDK_")}
    result = subprocess.run(
        [sys.executable, "-m", "tallygate", "deploy", "cloudrun", "--project", PROJECT, "--image-tag", "abc123",
         "--render-dir", str(tmp_path), "--dry-run"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    if result.returncode == 2 and "invalid choice" in result.stderr:
        pytest.skip("the CLI does not wire `deploy cloudrun` yet")
    assert result.returncode == 0, result.stderr
    assert "gcloud run deploy litellm-proxy" in result.stdout


# ----------------------------------------------------------------------------- the guide

def test_deployment_guide_commands_are_clean_shell():
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        assert "--allow-unauthenticated=false" not in block and "gcr.io" not in block
        assert not re.search(r"\bPGSSL=|--value-extractor|--metric-type|:latest\b", block)
        assert not re.search(r"--set-env-vars[= ][^ ]*\bPORT=", block)
        subprocess.run(["bash", "-n"], input=block, text=True, check=True)
    # every correction of the brief is in the guide's table
    for fixed in ("--allow-unauthenticated=false", "PORT=8080", "gcr.io", "projects/$PROJECT_ID/secrets",
                  "PGSSL=require", "--value-extractor", "--use-partitioned-tables", "X-Serverless-Authorization"):
        assert fixed in text


@pytest.mark.skipif(gcloud_tree() is None, reason="Cloud SDK not installed")
def test_public_edge_and_vpc_egress(tmp_path):
    status, out, _ = dry_run(tmp_path, "--public-domain", "gw.acme.example", "--vpc-network", "default",
                             "--vpc-subnet", "run-egress", "--alert-email", "ops@acme.example")
    assert status == 0
    commands = script_commands(out)
    check_against_the_sdk(commands)
    deploy = the(commands, "gcloud", "run", "deploy")
    assert flag_values(deploy, "--ingress") == ["internal-and-cloud-load-balancing"]
    (job,) = find(commands, "gcloud", "run", "jobs", "deploy")
    for cmd in (deploy, job):
        assert flag_values(cmd, "--network") == ["default"] and flag_values(cmd, "--subnet") == ["run-egress"]
        assert flag_values(cmd, "--vpc-egress") == ["all-traffic"]
    (neg,) = find(commands, "gcloud", "compute", "network-endpoint-groups", "create")
    assert flag_values(neg, "--network-endpoint-type") == ["serverless"]
    assert flag_values(neg, "--cloud-run-service") == ["litellm-proxy"]
    rules = find(commands, "gcloud", "compute", "security-policies", "rules", "create")
    rate = next(r for r in rules if r[5] == "1000")
    assert flag_values(rate, "--enforce-on-key") == ["IP"] and flag_values(rate, "--exceed-action") == ["deny-429"]
    waf = next(r for r in rules if r[5] == "2000")
    assert "--preview" in waf and "evaluatePreconfiguredWaf('sqli-v33-stable'" in flag_values(waf, "--expression")[0]
    (attach,) = find(commands, "gcloud", "compute", "backend-services", "update")
    assert flag_values(attach, "--security-policy") == ["litellm-proxy-armor"]
    (cert,) = find(commands, "gcloud", "compute", "ssl-certificates", "create")
    assert flag_values(cert, "--domains") == ["gw.acme.example"]
    (rule,) = find(commands, "gcloud", "compute", "forwarding-rules", "create")
    assert flag_values(rule, "--ports") == ["443"]
    (uptime,) = find(commands, "gcloud", "monitoring", "uptime", "create")
    assert flag_values(uptime, "--resource-labels") == [f"host=gw.acme.example,project_id={PROJECT}"]
    # the add-backend runs once: skipped when the backend service already has a backend
    assert "[ -n \"$(gcloud compute backend-services describe litellm-proxy-backend --global" in out
    # without the option the service is open again and nothing of the edge is made
    status, out, _ = dry_run(tmp_path)
    assert "--ingress=all" in out and "gcloud compute" not in out


@pytest.mark.parametrize("argv, message", [
    (["--public-domain", "not a domain"], "--public-domain"),
    (["--vpc-subnet", "s"], "--vpc-network"),
    (["--vpc-connector", "c", "--vpc-network", "n"], "exclude each other"),
    (["--slo-availability", "1.5"], "between 0 and 1"),
    (["--alert-email", "nobody"], "--alert-email"),
])
def test_bad_network_and_alert_options(tmp_path, argv, message):
    status, out, err = dry_run(tmp_path, *argv)
    assert status == 2 and out == "" and message in err


def test_a_dirty_work_tree_is_refused_or_tagged(tmp_path):
    repo = tmp_path / "src"
    repo.mkdir()
    (repo / "Dockerfile").write_text("FROM scratch\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "Dockerfile"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)

    def head() -> str:
        return subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()

    def script(*extra) -> tuple[int, str, str]:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cloudrun.run(parse_args("--project", PROJECT, "--source", str(repo), "--render-dir",
                                             str(tmp_path / "r"), "--dry-run", *extra))
        return status, out.getvalue(), err.getvalue()

    status, out, _ = script()
    assert status == 0 and f"litellm-proxy:{head()} " in out  # a clean tree: the commit is the tag
    (repo / "Dockerfile").write_text("FROM scratch\nLABEL changed=1\n")
    status, _, err = script()
    assert status == 2 and "uncommitted changes" in err
    status, out, _ = script("--allow-dirty")
    assert status == 0 and f"litellm-proxy:{head()}-dirty " in out
    # committed again: clean; a new file the image would copy (src/) is dirty, one elsewhere is not
    subprocess.run([*git, "commit", "-qam", "y"], check=True)
    (repo / "notes.txt").write_text("not in the image\n")
    (repo / "src").mkdir()
    (repo / "src" / "stray.py").write_text("print('built in')\n")
    status, _, err = script()
    assert status == 2 and "new files the image would contain" in err
    status, out, _ = script("--allow-dirty")
    assert status == 0 and f"litellm-proxy:{head()}-dirty " in out
    (repo / "src" / "stray.py").unlink()
    status, out, _ = script()
    assert status == 0 and f"litellm-proxy:{head()} " in out


def test_the_uptime_check_and_its_alert_policy(tmp_path):
    """The dry run prints the uptime check on /live, then its alert policy: the policy JSON goes
    to gcloud on stdin (--policy-from-file=-) with the check's ID read from the check just made,
    found by its label and updated in place like the other policies."""
    status, out, _ = dry_run(tmp_path, "--alert-email", "oncall@acme.example")
    assert status == 0
    commands = script_commands(out, track="alpha")
    (create,) = find(commands, "gcloud", "monitoring", "uptime", "create")
    assert flag_values(create, "--path") == ["/live"] and flag_values(create, "--period") == ["1"]
    policy_lines = [l for l in out.splitlines() if "uptime_live_failing" in l and not l.startswith("#")]
    (line,) = policy_lines
    assert "--policy-from-file=-" in line and "name.basename()" in line
    assert "--notification-channels=" in line and "${ALERT_CHANNEL_1}" in line
    # after the check, in its own phase; the policy file left in the render dir names the placeholder
    assert out.index("monitoring uptime create") < out.index("uptime_live_failing")
    rendered = json.loads((tmp_path / "uptime_policy.json").read_text())
    assert "${UPTIME_CHECK_ID}" in rendered["conditions"][0]["conditionThreshold"]["filter"]
    assert rendered["userLabels"]["tallygate_policy"] == "uptime_live_failing"
    check_against_the_sdk(commands)
    # --only uptime chooses the policies' gcloud track itself
    status, out, _ = dry_run(tmp_path / "only", "--only", "uptime")
    assert status == 0 and "POLICIES_TRACK=" in out and "uptime_live_failing" in out


def test_a_billing_budget_when_the_account_is_given(tmp_path):
    status, out, _ = dry_run(tmp_path, "--alert-email", "oncall@acme.example",
                             "--billing-account", "012345-6789AB-CDEF01", "--budget-amount", "1500")
    assert status == 0
    commands = script_commands(out, track="alpha")
    (create,) = find(commands, "gcloud", "billing", "budgets", "create")
    assert flag_values(create, "--budget-amount") == ["1500.00"]
    assert flag_values(create, "--filter-projects") == [f"projects/{PROJECT}"]
    assert flag_values(create, "--threshold-rule") == ["percent=0.5", "percent=0.9", "percent=1.0",
                                                       "percent=1.0,basis=forecasted-spend"]
    assert flag_values(create, "--notifications-rule-monitoring-notification-channels") == ["${ALERT_CHANNEL_1}"]
    (update,) = find(commands, "gcloud", "billing", "budgets", "update")
    assert "--clear-threshold-rules" in update
    assert "billingbudgets.googleapis.com" in find(commands, "gcloud", "services", "enable")[0]
    check_against_the_sdk(commands)
    # without an account: no budget, and a wrong one is refused
    assert "billing budgets" not in dry_run(tmp_path / "none")[1]
    status, _, err = dry_run(tmp_path / "bad", "--billing-account", "my-account")
    assert status == 2 and "--billing-account" in err
    emails = [a for i in range(6) for a in ("--alert-email", f"oncall{i}@acme.example")]
    status, _, err = dry_run(tmp_path / "many", "--billing-account", "012345-6789AB-CDEF01", *emails)
    assert status == 2 and "at most 5 channels" in err
