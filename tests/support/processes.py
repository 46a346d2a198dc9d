"""Real processes for the tests: gateways (`tallygate serve`) and fake upstreams
(`tallygate fake-upstream`), each on a free loopback port, and the environment they get."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .waiting import wait_http

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
TOKEN = "tg-test-gateway-token-0123456789"
MASTER = "tg-test-master-key-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-abcdef"  # base_env's OPENAI_API_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def routes_file(path: Path, *routes: dict) -> Path:
    """A TALLYGATE_CONFIG file with one [[routes]] table per dict (strings, lists of strings)."""
    path.write_text("".join("[[routes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in r.items()) + "\n"
                            for r in routes))
    return path


def json_lines(text: str) -> list[dict]:
    """The JSON objects among a process's output lines (the log lines), in order."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def base_env(upstream_url: str, tmp_path: Path, **overrides) -> dict:
    """This process's environment without any gateway setting, plus the test token, master
    key, upstream and a SQLite ledger in `tmp_path`; an override of None removes a variable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "PROXY_", "TALLYGATE_", "OPENAI_", "DATABASE_URL", "REDIS_URL"))}
    env.update({
        "OPENAI_BASE_URL": upstream_url, "OPENAI_API_KEY": UPSTREAM_KEY,
        "PROXY_GATEWAY_TOKEN": TOKEN, "PROXY_MASTER_KEY": MASTER,
        "TALLYGATE_SQLITE_PATH": str(tmp_path / "ledger.db"), "PYTHONUNBUFFERED": "1",
    })
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


class FakeUpstream:
    """`tallygate fake-upstream` (src/tallygate/fake_upstream/): an OpenAI-shaped upstream
    that fails, stalls and cuts off as each request's "fake" object asks."""

    def __init__(self, fail_rate: float = 0.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        args = [sys.executable, "-m", "tallygate", "fake-upstream", "--port", str(self.port)]
        if fail_rate:
            args += ["--fail-rate", str(fail_rate)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.base_url + "/models", proc=self.proc)

    def requests(self) -> list[dict]:
        """The requests received (the last 200), each listed as it arrives."""
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_fake/requests").read())

    def stats(self) -> dict:
        """Calls, calls per fake "key", and the streams whose reader hung up."""
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_fake/stats").read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_fake/reset", method="POST")).read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class GatewayProcess:
    """`tallygate serve` on a free port, its output in `log_path`; started when constructed
    (and ready, unless ready=False: the ledger connects in the background)."""

    def __init__(self, env: dict, log_path: Path, args: list[str] | None = None, ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.env = env
        self.token = env.get("PROXY_GATEWAY_TOKEN")
        self.master_key = env.get("PROXY_MASTER_KEY")
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tallygate", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             *(args or [])],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(self.url + "/health", proc=self.proc)
            if ready:  # the ledger connects in the background; most tests want it there
                wait_http(self.url + "/ready", proc=self.proc)
                self._wait_every_worker_ready(args or [])
        except Exception:
            self._log.close()
            raise RuntimeError(f"gateway did not start:\n{self.output()}") from None

    def _wait_every_worker_ready(self, args: list[str], timeout: float = 30.0) -> None:
        """/ready answers from whichever worker accepts the connection: with --workers N,
        wait until each of them has logged "ledger ready"."""
        workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        deadline = time.monotonic() + timeout
        while sum(l.get("message") == "ledger ready" for l in self.lines()) < workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"not every one of {workers} workers got ready")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict]:
        """The JSON log lines printed so far."""
        return json_lines(self.output())

    def records(self) -> list[dict]:
        """The usage log lines (one per metered request) printed so far."""
        return [l for l in self.lines() if l.get("message") == "litellm_request"]

    def wait_records(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = self.records()
            if len(recs) >= n:
                return recs
            time.sleep(0.02)
        raise AssertionError(f"expected {n} log records, got {len(self.records())}:\n{self.output()[-3000:]}")

    def headers(self, tenant: str | None = "acme", token: str | None = None) -> dict:
        h = {"Authorization": f"Bearer {token or self.token}"}
        if tenant is not None:
            h["X-Tenant-ID"] = tenant
        return h

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
