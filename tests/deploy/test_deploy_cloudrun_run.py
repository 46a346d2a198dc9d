"""`tallygate deploy cloudrun` without --dry-run, against a stateful fake gcloud, bq and curl
on PATH (fake_cloud.py): every step runs in order; secrets and the database password reach the
tools on stdin, never on a command line; the first failure stops the run; IAM bindings are
retried; and the whole deploy run twice creates nothing the second time. The printed script,
run by sh against the same fake, builds the same project."""

from __future__ import annotations

import importlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import PROJECT, ROOT, SQL_INSTANCE, cloudrun, parse_args

SECRET_ENVS = [e for e, _ in cloudrun.SECRET_ENVS if e != "PGPASSWORD"]
FAKE = Path(__file__).with_name("fake_cloud.py")
EMAIL = "oncall@acme.example"
execute_module = importlib.import_module("tallygate.deploy.cloudrun.execute")


class Cloud:
    def __init__(self, tmp_path: Path) -> None:
        self.bindir = tmp_path / "bin"
        self.log = tmp_path / "calls.jsonl"
        self.state_file = tmp_path / "state.json"

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def argvs(self) -> list[str]:
        return [" ".join(c["argv"]) for c in self.calls()]

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def forget_calls(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def cloud(tmp_path, monkeypatch) -> Cloud:
    fake = Cloud(tmp_path)
    fake.bindir.mkdir()
    for tool in ("gcloud", "bq", "curl"):
        path = fake.bindir / tool
        path.write_text(f"#!{sys.executable} -S\n" + FAKE.read_text())
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLOUD_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_CLOUD_STATE", str(fake.state_file))
    for env in SECRET_ENVS:
        monkeypatch.setenv(env, f"secret-value-of-{env.lower()}")
    monkeypatch.setattr(execute_module, "RETRY_DELAYS", (0.0,) * len(execute_module.RETRY_DELAYS))
    return fake


def argv_for(tmp_path: Path, *extra: str) -> list[str]:
    return ["--project", PROJECT, "--image-tag", "abc123", "--source", str(ROOT),
            "--cloudsql-instance", SQL_INSTANCE, "--render-dir", str(tmp_path / "rendered"),
            "--alert-email", EMAIL, *extra]


def run_for_real(tmp_path: Path, *extra: str) -> int:
    return cloudrun.run(parse_args(*argv_for(tmp_path, *extra)))


CREATING = (" create ", " versions add ", " mk ", "-X POST")


def creating_calls(argvs: list[str]) -> list[str]:
    return [a for a in argvs if any(word in f"{a} " for word in CREATING)]


def resources(state: dict) -> dict[str, list[str]]:
    return {kind: sorted(items) for kind, items in state["resources"].items()}


def check_the_project(state: dict) -> None:
    r = state["resources"]
    instance = SQL_INSTANCE.rsplit(":", 1)[1]
    assert r["sql_instance"][instance]["pitr"] and r["sql_instance"][instance]["backup_start_time"] == "03:00"
    assert list(r["sql_database"]) == [f"{instance}/litellm"]
    # the database user's password is the generated secret's pinned version
    (password,) = r["secret"]["litellm-proxy-pgpassword"]["versions"]
    assert len(password) == 32 and password.isalnum()
    assert r["sql_user"][f"{instance}/litellm"]["password"] == password
    # the schema job and the service run the image the build pushed, by digest
    (image,) = r["image"].values()
    assert r["job"]["litellm-proxy-db-init"]["image"].endswith("@" + image["digest"])
    assert r["service"]["litellm-proxy"]["image"] == r["job"]["litellm-proxy-db-init"]["image"]
    assert len(r["log_metric"]) == 10 and len(r["dashboard"]) == 1 and len(r["uptime_check"]) == 1
    (channel,) = r["channel"]
    assert r["channel"][channel]["labels"] == {"email_address": EMAIL}
    policies = r["alert_policy"].values()
    assert len(policies) == 14
    assert {p["userLabels"]["tallygate_policy"] for p in policies} == {
        p.stem for p in (ROOT / "deploy/monitoring/alerts").glob("*.json")} | {"uptime_live_failing"}
    assert all(p["notificationChannels"] == [channel] for p in policies)
    # the uptime check's policy watches that check, by the ID the API gave it
    (check,) = r["uptime_check"]
    (uptime,) = [p for p in policies if p["userLabels"]["tallygate_policy"] == "uptime_live_failing"]
    condition = uptime["conditions"][0]["conditionThreshold"]
    assert f'metric.label.check_id="{check.rsplit("/", 1)[1]}"' in condition["filter"]
    assert r["uptime_check"][check]["path"] == "/live"
    service = f"https://monitoring.googleapis.com/v3/projects/{PROJECT}/services/litellm-proxy"
    assert set(r["rest"]) == {service, f"{service}/serviceLevelObjectives/availability",
                              f"{service}/serviceLevelObjectives/ttft"}
    sink = r["sink"]["litellm-proxy-bq-sink"]
    assert sink["disabled"] is False
    assert "sink exporting before its writer identity may write" not in state["events"]
    runtime = f"serviceAccount:litellm-proxy-run@{PROJECT}.iam.gserviceaccount.com"
    bindings = state["bindings"]
    assert ["projects", "add-iam-policy-binding", PROJECT, runtime, "roles/cloudsql.client"] in bindings
    for secret in r["secret"]:
        assert ["secrets", secret, runtime, "roles/secretmanager.secretAccessor"] in bindings
    assert len(bindings) == len({json.dumps(b) for b in bindings})


def test_the_whole_deploy_twice_converges(tmp_path, cloud, capsys):
    assert run_for_real(tmp_path) == 0, capsys.readouterr().err
    first = cloud.state()
    check_the_project(first)
    first_calls = cloud.argvs()
    assert creating_calls(first_calls)
    cloud.forget_calls()

    assert run_for_real(tmp_path) == 0, capsys.readouterr().err
    second = cloud.state()
    check_the_project(second)
    # nothing new, nothing duplicated: the same resources, each updated in place
    assert resources(second) == resources(first)
    argvs = cloud.argvs()
    assert creating_calls(argvs) == []
    assert any("alpha monitoring policies update projects/" in a for a in argvs)
    assert any("monitoring dashboards update projects/" in a for a in argvs)
    assert any("logging metrics update" in a for a in argvs)
    assert any("sql instances patch" in a for a in argvs) and any("sql users set-password" in a for a in argvs)
    assert any("-X PATCH" in a for a in argvs)
    # the service and the schema job get a new revision; the job runs again (idempotent)
    assert second["resources"]["service"]["litellm-proxy"]["revisions"] == 2
    assert second["resources"]["job"]["litellm-proxy-db-init"]["executions"] == 2
    # the policies changed in place: a new threshold keeps the same policy
    cloud.forget_calls()
    assert run_for_real(tmp_path, "--alert-5xx-ratio", "0.07", "--skip-build") == 0
    third = cloud.state()
    assert resources(third) == resources(first)
    (ratio,) = [p for p in third["resources"]["alert_policy"].values()
                if p["userLabels"]["tallygate_policy"] == "error_ratio_5xx"]
    assert ratio["conditions"][0]["conditionThreshold"]["thresholdValue"] == 0.07


def test_the_printed_script_builds_the_same_project(tmp_path, cloud, capsys):
    """--dry-run prints what the real run executes: sh runs the script against an empty fake
    project, and the real run afterwards finds everything made, creating nothing."""
    assert cloudrun.run(parse_args(*argv_for(tmp_path), "--dry-run")) == 0
    script = capsys.readouterr().out
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=os.environ.copy(),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    by_script = cloud.state()
    check_the_project(by_script)
    script_calls = cloud.argvs()
    assert any(a.startswith("gcloud alpha monitoring policies create") for a in script_calls)
    cloud.forget_calls()
    assert run_for_real(tmp_path) == 0, capsys.readouterr().err
    assert resources(cloud.state()) == resources(by_script)
    assert creating_calls(cloud.argvs()) == []
    # on an empty project the real run makes exactly the calls the script made, in order
    cloud.forget_calls()
    cloud.state_file.unlink()
    assert run_for_real(tmp_path) == 0, capsys.readouterr().err
    assert cloud.argvs() == script_calls


def test_secrets_and_the_password_travel_on_stdin_only(tmp_path, cloud, capsys):
    assert run_for_real(tmp_path) == 0
    calls = cloud.calls()
    argvs = [" ".join(c["argv"]) for c in calls]
    password = cloud.state()["resources"]["secret"]["litellm-proxy-pgpassword"]["versions"][0]
    for value in [f"secret-value-of-{env.lower()}" for env in SECRET_ENVS] + [password, "ya29."]:
        assert not any(value in a for a in argvs)  # never on a command line
    for env in SECRET_ENVS:
        value = f"secret-value-of-{env.lower()}"
        assert [c for c in calls if c["stdin"] == value and "versions add" in " ".join(c["argv"])]
    users = [c for c in calls if c["argv"][1:4] == ["sql", "users", "create"]]
    assert users and users[0]["stdin"] == f'"--password": "{password}"\n'
    out = capsys.readouterr().out
    assert "secret-value-of" not in out and password not in out and out.rstrip().endswith("done")


def test_the_budget_is_made_once_and_updated_in_place(tmp_path, cloud, capsys):
    budget = ("--billing-account", "012345-6789AB-CDEF01", "--budget-amount", "1500",
              "--skip-build", "--skip-bigquery", "--only", "services,channels,budget")
    assert run_for_real(tmp_path, *budget) == 0, capsys.readouterr().err
    first = cloud.state()["resources"]
    (name,) = first["budget"]
    assert name.startswith("billingAccounts/012345-6789AB-CDEF01/budgets/")
    (channel,) = first["channel"]
    assert first["budget"][name]["amount"] == "1500.00" and first["budget"][name]["channels"] == channel
    assert first["budget"][name]["projects"] == f"projects/{PROJECT}"
    assert run_for_real(tmp_path, *budget[:3], "2500", *budget[4:]) == 0
    second = cloud.state()["resources"]
    assert list(second["budget"]) == [name] and second["budget"][name]["amount"] == "2500.00"


def test_iam_bindings_are_retried(tmp_path, cloud, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_IAM_FLAKY", "2")
    assert run_for_real(tmp_path, "--skip-monitoring", "--skip-bigquery") == 0
    grants = [a for a in cloud.argvs() if "roles/cloudsql.client" in a]
    assert len(grants) == 3  # two failures, then the binding
    assert capsys.readouterr().out.count("retrying in") == 2


def test_run_stops_at_the_first_failure(tmp_path, cloud, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL", "gcloud run deploy")
    status = run_for_real(tmp_path)
    assert status == 3
    argvs = cloud.argvs()
    assert argvs[-1].startswith("gcloud run deploy")
    assert not any("logging metrics" in a for a in argvs)
    err = capsys.readouterr().err
    assert "failed with exit status 3" in err and "gcloud run deploy litellm-proxy" in err


def test_run_refuses_a_missing_secret_value(tmp_path, cloud, monkeypatch, capsys):
    monkeypatch.delenv("PROXY_GATEWAY_TOKEN")
    assert run_for_real(tmp_path) == 2
    assert "$PROXY_GATEWAY_TOKEN is not set" in capsys.readouterr().err
    assert not any("run deploy" in a for a in cloud.argvs())


def test_no_notification_channel_is_a_loud_warning(tmp_path, cloud, capsys):
    argv = [a for a in argv_for(tmp_path) if a not in ("--alert-email", EMAIL)]
    assert cloudrun.run(parse_args(*argv, "--only", "alerts")) == 0
    assert "WARNING: no --alert-email or --notification-channel: the alert policies notify NOBODY" in (
        capsys.readouterr().err)


def test_run_reads_a_secret_from_a_file(tmp_path, cloud, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    secret = tmp_path / "openai.key"
    secret.write_text("sk-from-file")
    assert run_for_real(tmp_path, "--secret-file", f"OPENAI_API_KEY={secret}",
                        "--skip-monitoring", "--skip-bigquery") == 0
    adds = [c for c in cloud.calls() if "litellm-proxy-openai-api-key" in c["argv"] and "add" in c["argv"]]
    assert adds[0]["argv"][-2:] == [f"--data-file={secret}", f"--project={PROJECT}"]
    assert adds[0]["stdin"] == ""
