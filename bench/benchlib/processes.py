"""The processes the benchmark starts (systems under test, nginx) and stops on any exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import MODEL, NGINX_JSON, NGINX_SSE, NGINX_STATUS, PORT_OFFSET, WORK
from .host import http_get, http_post, nginx_bin, port_free
from .upstream import nginx_conf

NICE = [0]  # --nice: priority of everything the benchmark starts (negative needs root)
RUNNING: list["Proc"] = []  # started systems, stopped in main()'s finally on any exit


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict, logfile: Path):
        self.name, self.cmd, self.env, self.logfile = name, cmd, env, logfile
        self.p: subprocess.Popen | None = None
        self.t0 = 0.0

    def start(self) -> None:
        if NICE[0]:
            self.cmd = ["nice", "-n", str(NICE[0]), *self.cmd]
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.logfile, "ab")
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(
            self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(WORK),
        )

    def wait_healthy(self, port: int, path: str, timeout: float) -> float | None:
        """Seconds from spawn to the first 200 on `path`, polled every 2 ms; None on failure."""
        deadline = self.t0 + timeout
        while time.perf_counter() < deadline:
            if self.p.poll() is not None:
                return None
            try:
                st, _ = http_get(port, path, timeout=1.0)
                if st == 200:
                    healthy = round(time.perf_counter() - self.t0, 3)
                    # tallygate refuses limited traffic (503) until its keys and limits are loaded:
                    # wait for /ready too (every worker: 20 in a row), outside the measured start time
                    ready = not self.name.startswith("tallygate") or self._wait_ready(port, deadline)
                    return healthy if ready else None
            except OSError:
                pass
            time.sleep(0.002)
        return None

    def _wait_ready(self, port: int, deadline: float) -> bool:
        in_a_row = 0
        while time.perf_counter() < deadline and self.p.poll() is None:
            try:
                in_a_row = in_a_row + 1 if http_get(port, "/ready", timeout=1.0)[0] == 200 else 0
            except OSError:
                in_a_row = 0
            if in_a_row >= 20:
                return True
            time.sleep(0.002)
        return False

    def stop(self, timeout: float = 30.0) -> dict:
        """SIGTERM, wait for exit (the gateway flushes its ledger), then clean up the group."""
        if self.p is None:
            return {}
        out = {"exit_code": None, "stop_s": None}
        if self.p.poll() is None:
            t = time.perf_counter()
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                out["exit_code"] = self.p.wait(timeout)
                out["stop_s"] = round(time.perf_counter() - t, 3)
            except subprocess.TimeoutExpired:
                out["exit_code"] = "timeout(SIGKILL)"
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        else:
            out["exit_code"] = self.p.returncode
        try:  # leftover children (workers) in our own process group
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        self.p = None
        return out

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.logfile.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


class Nginx:
    def __init__(self) -> None:
        self.dir = WORK / ("nginx" if not PORT_OFFSET else f"nginx-{PORT_OFFSET}")  # its own beside another run
        self.p: subprocess.Popen | None = None

    def start(self) -> None:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        pidfile = self.dir / "nginx.pid"
        if pidfile.exists():  # a leftover from an earlier, interrupted run of ours
            try:
                pid = int(pidfile.read_text().strip())
                if str(self.dir) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGTERM)
                    time.sleep(0.5)
            except (OSError, ValueError):
                pass
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir))
        for port in (NGINX_JSON, NGINX_SSE, NGINX_STATUS):
            if not port_free(port):
                sys.exit(f"port {port} is busy; stop whatever listens there")
        self.log = open(self.dir / "stdout.log", "ab")
        self.p = subprocess.Popen(
            (["nice", "-n", str(NICE[0])] if NICE[0] else []) + ["taskset", "-c", "1", nginx_bin(), "-p", str(self.dir), "-c", str(conf)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        for _ in range(200):
            try:
                if http_get(NGINX_STATUS, "/")[0] == 200:
                    break
            except OSError:
                time.sleep(0.02)
        else:
            sys.exit("nginx did not start: " + (self.dir / "error.log").read_text()[-1000:])
        st, body = http_post(NGINX_JSON, "/v1/chat/completions", {"model": MODEL}, {})
        assert st == 200 and json.loads(body)["usage"]["total_tokens"] == 21, body
        st, body = http_post(NGINX_SSE, "/v1/chat/completions", {"model": MODEL, "stream": True}, {})
        assert st == 200 and body.endswith(b"data: [DONE]\n\n") and b'"usage":{"prompt_tokens"' in body, body

    def stop(self) -> None:
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGQUIT)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
        self.p = None
