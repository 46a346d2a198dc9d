"""`tallygate deploy cloudrun` without --dry-run: every step runs, in order, against a fake
gcloud and bq on PATH; secrets reach them on stdin or from a file, the first failure stops
the run, and what exists already is skipped or updated."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from deploy_support import PROJECT, ROOT, SQL_INSTANCE, cloudrun, parse_args

SECRET_ENVS = [e for e, _ in cloudrun.SECRET_ENVS]

FAKE_GCLOUD = r"""#!PYTHON -S
import json, os, sys
log = os.environ["FAKE_CLOUD_LOG"]
argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
with open(log, "a") as f:
    f.write(json.dumps({"argv": argv, "stdin": stdin}) + "\n")
line = " ".join(argv)
exists = os.environ.get("FAKE_EXISTS", "")
if " describe " in f" {line} " or line.startswith("bq --project_id") and " show " in line:
    if "--format=value(writerIdentity)" in line:
        print("serviceAccount:service-123@gcp-sa-logging.iam.gserviceaccount.com")
        sys.exit(0)
    sys.exit(0 if any(e and e in line for e in exists.split(",")) else 1)
if " list " in f" {line} ":
    sys.exit(0)
fail = os.environ.get("FAKE_FAIL")
if fail and fail in line:
    print("ERROR: (gcloud) simulated failure", file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture
def fake_cloud(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("gcloud", "bq"):
        path = bindir / tool
        path.write_text(FAKE_GCLOUD.replace("PYTHON", sys.executable, 1))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLOUD_LOG", str(log))
    for env in SECRET_ENVS:
        monkeypatch.setenv(env, f"secret-value-of-{env.lower()}")

    def calls() -> list[dict]:
        return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []

    return calls


def run_for_real(tmp_path, *extra) -> int:
    argv = ["--project", PROJECT, "--image-tag", "abc123", "--source", str(ROOT),
            "--cloudsql-instance", SQL_INSTANCE, "--render-dir", str(tmp_path / "rendered"), *extra]
    return cloudrun.run(parse_args(*argv))


def test_run_executes_every_step_and_feeds_secrets_on_stdin(tmp_path, fake_cloud, capsys):
    assert run_for_real(tmp_path) == 0
    calls = fake_cloud()
    argvs = [" ".join(c["argv"]) for c in calls]
    for env in SECRET_ENVS:
        value = f"secret-value-of-{env.lower()}"
        assert not any(value in a for a in argvs)  # never on a command line
        assert [c for c in calls if c["stdin"] == value and "versions add" in " ".join(c["argv"])]
    grant = [a for a in argvs if "roles/bigquery.dataEditor" in a]
    assert grant and "--member=serviceAccount:service-123@gcp-sa-logging.iam.gserviceaccount.com" in grant[0]
    assert any(a.startswith("gcloud run deploy litellm-proxy") for a in argvs)
    out = capsys.readouterr().out
    assert "secret-value-of" not in out and out.rstrip().endswith("done")


def test_run_skips_what_exists_and_updates_metrics(tmp_path, fake_cloud, monkeypatch):
    monkeypatch.setenv("FAKE_EXISTS", "repositories describe,secrets describe,versions describe,metrics describe")
    assert run_for_real(tmp_path) == 0
    argvs = [" ".join(c["argv"]) for c in fake_cloud()]
    assert not any("repositories create" in a or "secrets create" in a or "versions add" in a for a in argvs)
    assert any("logging metrics update" in a for a in argvs)
    assert not any("logging metrics create" in a for a in argvs)


def test_run_stops_at_the_first_failure(tmp_path, fake_cloud, capsys):
    os.environ["FAKE_FAIL"] = "gcloud run deploy"
    try:
        status = run_for_real(tmp_path)
    finally:
        del os.environ["FAKE_FAIL"]
    assert status == 3
    argvs = [" ".join(c["argv"]) for c in fake_cloud()]
    assert argvs[-1].startswith("gcloud run deploy")
    assert not any("logging metrics" in a for a in argvs)
    err = capsys.readouterr().err
    assert "failed with exit status 3" in err and "gcloud run deploy litellm-proxy" in err


def test_run_refuses_a_missing_secret_value(tmp_path, fake_cloud, monkeypatch, capsys):
    monkeypatch.delenv("PROXY_MASTER_KEY")
    assert run_for_real(tmp_path) == 2
    assert "$PROXY_MASTER_KEY is not set" in capsys.readouterr().err
    assert not any("run deploy" in " ".join(c["argv"]) for c in fake_cloud())


def test_run_reads_a_secret_from_a_file(tmp_path, fake_cloud, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    secret = tmp_path / "openai.key"
    secret.write_text("sk-from-file")
    assert run_for_real(tmp_path, "--secret-file", f"OPENAI_API_KEY={secret}",
                        "--skip-monitoring", "--skip-bigquery", "--skip-build") == 0
    adds = [c for c in fake_cloud() if "litellm-proxy-openai-api-key" in c["argv"] and "add" in c["argv"]]
    assert adds[0]["argv"][-2:] == [f"--data-file={secret}", f"--project={PROJECT}"]
    assert adds[0]["stdin"] == ""
