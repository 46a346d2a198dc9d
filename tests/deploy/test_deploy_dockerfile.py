"""The Dockerfile: what can be checked without Docker, plus (opt-in) its install and start
steps replayed in a clean virtualenv with the same commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from deploy_support import ROOT, sdk_root

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# FROM [--platform=...] IMAGE[:TAG]@sha256:<64 hex> [AS name]
_PINNED_FROM = re.compile(r"(?:--platform=\S+\s+)?(?P<image>[^\s@:]+(?:/[^\s@:]+)*)(?::(?P<tag>[\w][\w.-]*))?"
                          r"@sha256:(?P<digest>[0-9a-f]{64})(?:\s+AS\s+\S+)?", re.I)


def test_every_base_image_is_pinned_by_digest():
    """A tag can be re-pushed; a digest names one image. Every FROM of the Dockerfile names its
    base by digest (stage names from an earlier FROM ... AS excepted), and the tag beside it says
    which Python it is."""
    stages: set[str] = set()
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert froms
    for rest in froms:
        words = rest.split()
        if words[0] in stages:
            continue
        m = _PINNED_FROM.fullmatch(rest)
        assert m, f"FROM {rest}: not pinned by digest (IMAGE:TAG@sha256:...)"
        if len(words) >= 3 and words[-2].upper() == "AS":
            stages.add(words[-1])
    (first,) = froms[:1]
    m = _PINNED_FROM.fullmatch(first)
    assert m and m.group("image") == "python" and m.group("tag").startswith("3.11.")
    assert m.group("tag").endswith("-slim-trixie")


def test_the_bump_procedure_names_the_pinned_digest():
    """docs/deployment.md says how to bump the base image and shows the digest in use."""
    (first,) = [rest for word, rest in instructions() if word == "FROM"][:1]
    doc = (ROOT / "docs" / "deployment.md").read_text()
    section = doc[doc.index("### Reproducible images"):]
    assert first.split("@")[1] in section and "repo-info" in section
    assert "imagetools inspect" in section


def test_base_user_cmd_and_env():
    ins = instructions()
    assert ins[0][0] == "FROM" and ins[0][1].startswith("python:3.11.")
    (cmd,) = [rest for word, rest in ins if word == "CMD"]
    assert json.loads(cmd) == ["tallygate", "serve", "--host", "0.0.0.0"]  # exec form: PID 1 gets SIGTERM
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert not re.search(r"\bPORT=", env)  # Cloud Run injects PORT; the gateway reads it
    # no secret baked in: no secret variable, no ARG that could carry one
    text = DOCKERFILE.read_text()
    for name in ("OPENAI_API_KEY", "PROXY_GATEWAY_TOKEN", "PROXY_MASTER_KEY", "PGPASSWORD", "DATABASE_URL"):
        assert not re.search(rf"^\s*(ENV|ARG)\b.*\b{name}\b", text, re.M)
    assert not [w for w, _ in ins if w == "ARG"]


def test_installs_from_the_lock_file_then_the_package_without_deps():
    runs = [rest for word, rest in instructions() if word == "RUN"]
    joined = " ".join(runs)
    assert "-r /tmp/requirements.lock" in joined
    assert re.search(r"pip install [^&]*--require-hashes -r /tmp/requirements\.lock", joined)
    assert re.search(r"pip install [^&]*--no-deps \.", joined)
    assert joined.index("requirements.lock") < joined.index("--no-deps")


def _lock_pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a pip-compile lock file; fails on anything else."""
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)(?:\s*;[^-]*)?((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert m, f"{path.name}: not a pinned, hashed requirement: {line[:120]}"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        pins[name] = (m.group(2), re.findall(r"[0-9a-f]{64}", m.group(3)))
    return pins


def test_lock_files_pin_every_package_with_hashes():
    """pip --require-hashes accepts only exact pins with hashes, and cannot follow -r/-e: the
    dev lock holds the runtime pins too, at the same versions and with the same hashes."""
    runtime = _lock_pins(ROOT / "requirements.lock")
    dev = _lock_pins(ROOT / "requirements-dev.lock")
    assert {"aiohttp", "uvicorn", "psycopg"} <= runtime.keys()
    assert {"pytest", "ruff", "mypy"} <= dev.keys() and not {"pytest", "ruff", "mypy"} & runtime.keys()
    for name, pin in runtime.items():
        assert dev.get(name) == pin, name


def test_copied_files_exist_and_are_not_ignored():
    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    for word, rest in instructions():
        if word != "COPY":
            continue
        sources = rest.split()[:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing from the build context"
            assert f"/{src}" not in ignored and src not in ignored


@pytest.mark.skipif(sdk_root() is None, reason="Cloud SDK not installed")
def test_dockerignore_as_gcloud_upload_filter():
    """`gcloud builds submit --ignore-file=.dockerignore` reads it with gitignore rules: the
    build needs its inputs, and secrets and local state must not be uploaded."""
    root = sdk_root()
    for extra in (root / "lib", root / "lib" / "third_party"):
        if str(extra) not in sys.path:
            sys.path.append(str(extra))
    from googlecloudsdk.command_lib.util import gcloudignore  # type: ignore

    chooser = gcloudignore.FileChooser.FromFile(str(ROOT / ".dockerignore"))
    for kept in ("Dockerfile", ".dockerignore", "requirements.lock", "pyproject.toml", "README.md",
                 "src/tallygate/__init__.py", "src/tallygate/migrations/postgres/0001_usage.sql"):
        assert chooser.IsIncluded(kept), kept
    for dropped in (".git/config", ".venv/bin/python", ".env", "src/.env.local", "tallygate.db",
                    "ledger.db-wal", "tests/test_proxy.py", "deploy/monitoring/dashboard.json",
                    "src/tallygate/__pycache__/app.cpython-311.pyc", "key.pem", "sa/credentials.json"):
        assert not chooser.IsIncluded(dropped), dropped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dockerfile_steps_in_a_clean_virtualenv(tmp_path):
    """Replay COPY and RUN with the image paths mapped into tmp_path, then start the CMD."""
    image = tmp_path / "image"
    venv = image / "opt" / "venv"
    mapping = {"/opt/venv": str(venv), "/tmp/": str(image / "tmp") + "/", "/src": str(image / "src"),
               "/data": str(image / "data")}

    pattern = re.compile(r"(?<![\w/])(" + "|".join(re.escape(a) for a in mapping) + ")")

    def mapped(text: str) -> str:  # one pass, so a mapped path is never mapped again
        return pattern.sub(lambda m: mapping[m.group(1)], text)

    (image / "tmp").mkdir(parents=True)
    workdir = image
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PROXY_", "TALLYGATE_", "OPENAI_", "VIRTUAL_ENV"))}
    for word, rest in instructions():
        if word == "WORKDIR":
            workdir = Path(mapped(rest))
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, dest = rest.split()
            dest_path = Path(mapped(dest)) if dest.startswith("/") else workdir / dest
            for src in sources:
                target = dest_path if not dest.endswith("/") else dest_path / Path(src).name
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / src, target)
        elif word == "ENV":
            for assignment in shlex.split(rest):
                key, _, value = assignment.partition("=")
                env[key] = mapped(value.replace("$PATH", env.get("PATH", "")))
        elif word == "RUN":
            command = mapped(rest)
            if re.match(r"groupadd|useradd", command) or "chown" in command:
                command = re.sub(r"&& chown \S+ \S+", "", command)
                if command.startswith(("groupadd", "useradd")):
                    continue
            subprocess.run(["sh", "-ec", command], cwd=workdir, env=env, check=True, timeout=900)
    (cmd,) = [json.loads(rest) for word, rest in instructions() if word == "CMD"]
    port = _free_port()
    run_env = {**env, "PORT": str(port), "PROXY_GATEWAY_TOKEN": "t" * 32, "TALLYGATE_SQLITE_PATH": str(tmp_path / "l.db")}
    exe = venv / "bin" / cmd[0]
    proc = subprocess.Popen([str(exe), *cmd[1:]], env=run_env, cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=1) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the gateway did not answer /live on $PORT"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # SIGTERM reaches the server and it exits cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
