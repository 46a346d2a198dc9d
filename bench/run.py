"""Side-by-side benchmark: tallygate vs the LiteLLM proxy vs a bare passthrough floor.

    make bench                      # full run, writes docs/benchmarks.md
    .venv/bin/python bench/run.py --quick [--no-litellm]

Layout (2 cores): the system under test is pinned to core 0 (`taskset -c 0`); the fake
upstream (nginx, one worker) and the load generator (wrk, one thread) share core 1.
Everything it installs or writes lives under bench/.work/ (gitignored); raw results go
to bench/results/ (gitignored). Every loop here is bounded; every socket is loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
VENV_PY = ROOT / ".venv" / "bin" / "python"
LITELLM_VENV = WORK / "litellm-venv"
LITELLM_REQ = BENCH / "litellm-requirements.txt"
LUA = BENCH / "post.lua"

HOST = "127.0.0.1"
NGINX_JSON, NGINX_SSE, NGINX_STATUS = 18101, 18102, 18103
FLOOR_PORT, TG_PORT, LITELLM_PORT = 18201, 18301, 18401

GATEWAY_TOKEN = "bench-gateway-token"
MASTER_KEY = "sk-bench-master-key"
# The Postgres ledger goes to a database of its own, created empty at the start of every run:
# runs are comparable (inserts into a table of millions of rows cost Postgres more), and
# the benchmark's rows never pile up in a database anything else uses.
BENCH_DB = "tallygate_bench"
PG_ENV = {"PGHOST": HOST, "PGUSER": "postgres", "PGDATABASE": BENCH_DB, "PGSSL": "disable", "PGPORT": "5432"}
LEDGER_TABLE = "litellm_usage"

MODEL = "gpt-4o-mini"
UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"

# --------------------------------------------------------------------------- fake upstream

CHAT_JSON = json.dumps(
    {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": 1764244800,
        "model": UPSTREAM_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the benchmark upstream.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 14,
            "completion_tokens": 7,
            "total_tokens": 21,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    },
    separators=(",", ":"),
)


def _chunk(delta: dict | None, finish=None, usage=None) -> str:
    obj = {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion.chunk",
        "created": 1764244800,
        "model": UPSTREAM_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


SSE_BODY = (
    _chunk({"role": "assistant", "content": "", "refusal": None})
    + "".join(_chunk({"content": t}) for t in ["Hello", " from", " the", " benchmark", " upstream", "."])
    + _chunk({}, finish="stop")
    + _chunk(
        None,
        usage={
            "prompt_tokens": 14,
            "completion_tokens": 7,
            "total_tokens": 21,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    )
    + "data: [DONE]\n\n"
)


def _nginx_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(d: Path) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server_tokens off;
    server {{
        listen {HOST}:{NGINX_JSON} reuseport backlog=4096;
        location / {{ default_type application/json; return 200 {_nginx_str(CHAT_JSON)}; }}
    }}
    server {{
        listen {HOST}:{NGINX_SSE} reuseport backlog=4096;
        location / {{ default_type text/event-stream; add_header Cache-Control no-cache; return 200 {_nginx_str(SSE_BODY)}; }}
    }}
    server {{
        listen {HOST}:{NGINX_STATUS};
        location / {{ stub_status; }}
    }}
}}
"""


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) != 0


def http_get(port: int, path: str, timeout: float = 2.0, headers: dict | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def http_post(port: int, path: str, body: dict, headers: dict, timeout: float = 30.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def proc_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(children.get(q, []))
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of pid and all its descendants, in MiB (reported as MB)."""
    total_kb = 0
    for q in proc_tree(pid):
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            pass
    return round(total_kb / 1024, 1)


_STATUS_CALLS = [0]


def stub_requests() -> int:
    """nginx's request counter; it includes this status request and every earlier one of ours
    (`_STATUS_CALLS` counts them so they can be subtracted)."""
    _STATUS_CALLS[0] += 1
    _, body = http_get(NGINX_STATUS, "/")
    m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)", body)
    return int(m.group(3)) if m else -1


def upstream_quiet(max_wait: float = 15.0) -> int:
    """Wait until the upstream request counter stops moving; return its value."""
    deadline = time.monotonic() + max_wait
    last = stub_requests()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = stub_requests()
        if now == last + 1:  # only our own status request
            return now
        last = now
    return last


# The machine is shared (tests of other work may run on it): measure the CPU that processes
# outside this benchmark's own process tree use during each row, and wait for quiet before one.
CLK = os.sysconf("SC_CLK_TCK")
OTHER_CPU_LIMIT = 0.10  # cores; rows above it are flagged


def cpu_sample() -> tuple[float, int, int, int]:
    """(time, busy jiffies of the machine (user+nice+system), steal jiffies, jiffies of our tree)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ours = 0
    for q in proc_tree(os.getpid()):
        try:
            st = Path(f"/proc/{q}/stat").read_text()
        except OSError:
            continue
        f = st[st.rfind(")") + 2 :].split()
        ours += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return time.monotonic(), v[0] + v[1] + v[2], v[7] if len(v) > 7 else 0, ours


def other_cpu(a, b) -> tuple[float, float]:
    """Cores used by processes outside our tree, and steal, between two samples."""
    dt = max(b[0] - a[0], 1e-6)
    return round(max(0, (b[1] - a[1]) - (b[3] - a[3])) / CLK / dt, 3), round((b[2] - a[2]) / CLK / dt, 3)


def wait_quiet(max_wait: float) -> float:
    """Wait (bounded) until other processes use under OTHER_CPU_LIMIT cores over 1 s; return seconds waited."""
    t0 = time.monotonic()
    while True:
        a = cpu_sample()
        time.sleep(1.0)
        other, _ = other_cpu(a, cpu_sample())
        waited = time.monotonic() - t0
        if other < OTHER_CPU_LIMIT or waited >= max_wait:
            if waited > 1.5:
                log(f"waited {waited:.0f} s for other load to settle (now {other:.2f} cores)")
            return round(waited, 1)


# --------------------------------------------------------------------------- setup


def ensure_tools() -> None:
    missing = [t for t in ("wrk", "nginx", "taskset") if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {missing}: run as root or `apt-get install wrk nginx-light`")
    log(f"installing {missing} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    pkgs = ["wrk", "nginx-light"]
    if subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], env=env).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nginx"], check=True, env=env)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_litellm() -> bool:
    """Install the pinned LiteLLM proxy into its own venv (idempotent, keyed on the requirements)."""
    want = hashlib.sha256(LITELLM_REQ.read_bytes()).hexdigest()
    marker = LITELLM_VENV / ".bench-installed"
    if marker.exists() and marker.read_text().strip() == want and (LITELLM_VENV / "bin" / "litellm").exists():
        return True
    base_py = getattr(sys, "_base_executable", None) or shutil.which("python3")
    log(f"installing LiteLLM into {LITELLM_VENV} (a few minutes, log in {WORK}/litellm-install.log)")
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([base_py, "-m", "venv", str(LITELLM_VENV)], check=True)
    with open(WORK / "litellm-install.log", "a") as f:
        r = subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "-r", str(LITELLM_REQ)],
            stdout=f, stderr=subprocess.STDOUT, timeout=1800,
        )
    if r.returncode != 0 or not (LITELLM_VENV / "bin" / "litellm").exists():
        log("LiteLLM install failed; see litellm-install.log")
        return False
    marker.write_text(want)
    return True


def litellm_info() -> dict:
    py = str(LITELLM_VENV / "bin" / "python")
    code = r"""
import importlib.metadata as md, json, os
def v(n):
    try: return md.version(n)
    except Exception: return None
info = {"litellm": v("litellm"), "uvicorn": v("uvicorn"), "fastapi": v("fastapi"), "pydantic": v("pydantic"),
        "httpx": v("httpx"), "aiohttp": v("aiohttp"), "uvloop": v("uvloop"), "litellm-proxy-extras": v("litellm-proxy-extras"),
        "litellm-enterprise": v("litellm-enterprise")}
try:
    from litellm.rust_bridge import _native  # noqa: F401
    info["rust_extension"] = True
except Exception as e:
    info["rust_extension"] = False
try:
    from litellm.rust_bridge.configuration import rust_enabled
    info["rust_enabled"] = rust_enabled()
except Exception as e:
    info["rust_enabled"] = None
try:
    from litellm.rust_bridge.catalog import RULES
    info["chat_rules"] = sorted({r.rollout.name for r in RULES if r.route.name == "CHAT_COMPLETIONS"})
except Exception as e:
    info["chat_rules"] = None
print(json.dumps(info))
"""
    env = {**base_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    r = sh([py, "-c", code], timeout=180, env=env)
    try:
        info = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception:
        info = {"error": r.stderr[-500:]}
    # Scan the installed source for a Rust switch (an env flag read by the proxy).
    site = next((LITELLM_VENV / "lib").glob("python3*/site-packages"), None)
    flags = set()
    if site and (site / "litellm").exists():
        r = sh(["grep", "-rhoE", r"(os\.getenv|os\.environ\.get|get_secret[a-z_]*)\(\s*['\"][A-Z0-9_]*RUST[A-Z0-9_]*['\"]",
                str(site / "litellm")], timeout=60)
        for m in re.findall(r"['\"]([A-Z0-9_]*RUST[A-Z0-9_]*)['\"]", r.stdout):
            if re.search(r"(^|_)RUST(_|$)", m):
                flags.add(m)
    info["rust_env_flags"] = sorted(flags)
    info["rust_env_set"] = {k: os.environ.get(k) for k in sorted(flags) if os.environ.get(k) is not None}
    return info


def versions() -> dict:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    code = r"""
import importlib.metadata as md, json, sys
out = {"python": sys.version.split()[0]}
for n in ("tallygate", "uvicorn", "aiohttp", "uvloop", "httptools", "orjson", "psycopg", "genai-prices"):
    try: out[n] = md.version(n)
    except Exception: out[n] = None
print(json.dumps(out))
"""
    proj = json.loads(sh([str(VENV_PY), "-c", code]).stdout)
    pg = sh(["psql", "-h", HOST, "-U", "postgres", "-d", "postgres", "-Atc", "show server_version"]).stdout.strip()
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": (re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()) or [None, "?"])[1],
        "project": proj,
        "nginx": sh([nginx_bin(), "-v"]).stderr.strip().split("/")[-1],
        "wrk": (sh(["wrk", "-v"]).stdout + sh(["wrk", "-v"]).stderr).split()[1] if shutil.which("wrk") else None,
        "postgres": pg,
    }


def git_state() -> str:
    head = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"]).stdout.strip()
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


# --------------------------------------------------------------------------- processes


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
                    return healthy if not self.name.startswith("tallygate") or self._wait_ready(port, deadline) else None
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
        self.dir = WORK / "nginx"
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


# --------------------------------------------------------------------------- load


def run_wrk(port: int, c: int, seconds: float, tenant: str, stream: bool, token: str, tag: str) -> dict:
    out = WORK / "wrk" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_TOKEN": token,
        "BENCH_TENANT": tenant,
        "BENCH_MODEL": MODEL,
        "BENCH_STREAM": "1" if stream else "0",
        "BENCH_OUT": str(out),
    }
    cmd = (["nice", "-n", str(NICE[0])] if NICE[0] else []) + [
        "taskset", "-c", "1", "wrk", "-t1", f"-c{c}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-s", str(LUA), f"http://{HOST}:{port}/v1/chat/completions",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    if not out.exists():
        raise RuntimeError(f"wrk failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- ledger


def fresh_bench_db() -> None:
    """Drop and create the benchmark's ledger database (tallygate migrates it on start)."""
    for sql in (f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)", f"CREATE DATABASE {BENCH_DB}"):
        r = sh(["psql", "-h", HOST, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql])
        if r.returncode != 0:
            raise RuntimeError(f"{sql}: {r.stderr.strip()}")


def empty_pg_ledger() -> None:
    """Empty the ledger table once its rows are counted: Postgres shares core 1 with the fake
    upstream and wrk here, and an insert into a table of millions of rows costs it about half
    as much again as one into a small table, so every system's rows start from the same state."""
    sh(["psql", "-h", HOST, "-U", "postgres", "-d", BENCH_DB, "-qc", f"TRUNCATE {LEDGER_TABLE}"])


def fresh_ledgers(systems) -> None:
    """Every run starts with empty ledgers."""
    if any(s.startswith("tallygate-pg") for s in systems):
        fresh_bench_db()
    if any(s.startswith("tallygate-sqlite") for s in systems):
        for suffix in ("", "-wal", "-shm"):
            (WORK / f"tallygate-bench.db{suffix}").unlink(missing_ok=True)


def count_pg(tenants: list[str]) -> dict[str, int] | str:
    sql = f"SELECT tenant_id, count(*) FROM {LEDGER_TABLE} WHERE tenant_id = ANY(%s) GROUP BY tenant_id"
    code = (
        "import json,sys,psycopg\n"
        "t=json.loads(sys.argv[1])\n"
        f"c=psycopg.connect(host='{HOST}',user='postgres',dbname='{BENCH_DB}',sslmode='disable')\n"
        f"print(json.dumps(dict(c.execute({sql!r},(t,)).fetchall())))\n"
    )
    r = sh([str(VENV_PY), "-c", code, json.dumps(tenants)], timeout=60)
    if r.returncode != 0:
        return "error: " + r.stderr.strip().splitlines()[-1][:200] if r.stderr.strip() else "error"
    return json.loads(r.stdout)


def count_sqlite(path: Path, tenants: list[str]) -> dict[str, int] | str:
    import sqlite3

    if not path.exists():
        return f"error: {path} missing"
    try:
        con = sqlite3.connect(str(path), timeout=10)
        q = f"SELECT tenant_id, count(*) FROM {LEDGER_TABLE} WHERE tenant_id IN ({','.join('?' * len(tenants))}) GROUP BY tenant_id"
        res = dict(con.execute(q, tenants).fetchall())
        con.close()
        return res
    except sqlite3.Error as e:
        return f"error: {e}"


def count_log_lines(logfile: Path, tenants: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(tenants, 0)
    try:
        with open(logfile, "rb") as f:
            for line in f:
                if b'"litellm_request"' not in line:
                    continue
                m = re.search(rb'"tenant_id":\s*"([^"]+)"', line)
                if m:
                    t = m.group(1).decode()
                    if t in counts:
                        counts[t] += 1
    except OSError:
        pass
    return counts


# --------------------------------------------------------------------------- systems


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TALLYGATE_", "OPENAI_", "PROXY_", "LITELLM_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env["PYTHONUNBUFFERED"] = "0"
    return env


def upstream_url(stream: bool) -> str:
    return f"http://{HOST}:{NGINX_SSE if stream else NGINX_JSON}/v1"


def tallygate_available() -> tuple[bool, str]:
    if not (ROOT / "src" / "tallygate" / "app.py").exists():
        return False, "src/tallygate/app.py does not exist yet"
    if not (ROOT / ".venv" / "bin" / "tallygate").exists():
        return False, ".venv/bin/tallygate missing (pip install -e . in the project venv)"
    return True, ""


def tallygate_supports_workers() -> bool:
    r = sh([str(ROOT / ".venv" / "bin" / "tallygate"), "serve", "--help"], timeout=30)
    return "--workers" in r.stdout + r.stderr


def make_system(name: str, stream: bool, workers: int, run_id: str) -> dict:
    """Return {proc, port, health, token, ledger, cores} for one system in one mode."""
    cores = "0" if workers == 1 else "0,1"
    mode = "stream" if stream else "json"
    logf = WORK / "logs" / run_id / f"{name}-w{workers}-{mode}.log"
    env = base_env()
    if name == "floor":
        env.update(OPENAI_BASE_URL=upstream_url(stream), OPENAI_API_KEY="x", PROXY_GATEWAY_TOKEN=GATEWAY_TOKEN)
        cmd = ["taskset", "-c", cores, str(VENV_PY), str(BENCH / "floor_proxy.py"), "--port", str(FLOOR_PORT), "--workers", str(workers)]
        return dict(proc=Proc(name, cmd, env, logf), port=FLOOR_PORT, health="/health", token=GATEWAY_TOKEN, ledger=None)
    if name in ("tallygate-pg", "tallygate-sqlite"):
        env.update(
            OPENAI_BASE_URL=upstream_url(stream), OPENAI_API_KEY="x",
            PROXY_GATEWAY_TOKEN=GATEWAY_TOKEN, PROXY_MASTER_KEY=MASTER_KEY,
        )
        if name == "tallygate-pg":
            env.update(PG_ENV)
            ledger = ("pg", None)
        else:
            db = WORK / "tallygate-bench.db"
            env["TALLYGATE_SQLITE_PATH"] = str(db)
            ledger = ("sqlite", db)
        cmd = ["taskset", "-c", cores, str(ROOT / ".venv" / "bin" / "tallygate"), "serve", "--host", HOST, "--port", str(TG_PORT)]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        return dict(proc=Proc(name, cmd, env, logf), port=TG_PORT, health="/health", token=GATEWAY_TOKEN, ledger=ledger)
    if name == "litellm":
        cfg = WORK / f"litellm-{mode}.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {upstream_url(stream)}\n"
            "      api_key: x\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  set_verbose: false\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION",
                   LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="True")
        cmd = ["taskset", "-c", cores, str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg),
               "--host", HOST, "--port", str(LITELLM_PORT), "--num_workers", str(workers), "--telemetry", "False"]
        return dict(proc=Proc(name, cmd, env, logf), port=LITELLM_PORT, health="/health/liveliness", token=MASTER_KEY, ledger=None)
    raise ValueError(name)


def smoke(port: int, token: str, stream: bool) -> str | None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    try:
        st, out = http_post(port, "/v1/chat/completions", body,
                            {"Authorization": f"Bearer {token}", "X-Tenant-ID": "bench-smoke"})
    except OSError as e:
        return f"smoke request failed: {e}"
    if st != 200:
        return f"smoke request got {st}: {out[:300]!r}"
    if stream and b"[DONE]" not in out:
        return f"smoke stream without [DONE]: {out[:300]!r}"
    return None


def bench_system(name: str, stream: bool, concs: list[int], a, run_id: str, workers: int = 1,
                 repeat_c: int | None = None) -> dict:
    mode = "stream" if stream else "json"
    label = name if workers == 1 else f"{name} x{workers}"
    res: dict = {"system": name, "label": label, "mode": mode, "workers": workers, "rows": []}
    sysd = None
    if name != "direct":
        sysd = make_system(name, stream, workers, run_id)
        proc: Proc = sysd["proc"]
        for p in (sysd["port"],):
            if not port_free(p):
                res["error"] = f"port {p} busy"
                return res
        log(f"{label} {mode}: starting")
        RUNNING.append(proc)
        proc.start()
        res["start_s"] = proc.wait_healthy(sysd["port"], sysd["health"], timeout=a.start_timeout)
        if res["start_s"] is None:
            res["error"] = "never became healthy: " + proc.log_tail(1500)
            res.update(proc.stop(10))
            log(f"{label} {mode}: FAILED to start")
            return res
        time.sleep(0.5)
        res["rss_idle_mb"] = rss_mb(proc.p.pid)
        err = smoke(sysd["port"], sysd["token"], stream)
        if err:
            res["error"] = err + "\n" + proc.log_tail(1500)
            res.update(proc.stop(10))
            log(f"{label} {mode}: smoke failed: {err}")
            return res
        port, token = sysd["port"], sysd["token"]
        log(f"{label} {mode}: healthy in {res['start_s']} s, RSS idle {res['rss_idle_mb']} MB")
    else:
        port = NGINX_SSE if stream else NGINX_JSON
        token = GATEWAY_TOKEN
    tenants = []
    plan = [(c, "") for c in concs] + ([(repeat_c, "-repeat")] if repeat_c else [])
    for c, suffix in plan:
        base = f"bench-{run_id}-{name}-w{workers}-{mode}-c{c}{suffix}"
        warm_t, meas_t = base + "-warm", base
        tenants += [warm_t, meas_t]
        run_wrk(port, c, a.warmup, warm_t, stream, token, warm_t)
        h0 = upstream_quiet()
        waited = wait_quiet(a.quiet_wait) if a.quiet_wait > 0 else 0.0
        s0 = _STATUS_CALLS[0]
        cpu0 = cpu_sample()
        r = run_wrk(port, c, a.duration, meas_t, stream, token, meas_t)
        other, steal = other_cpu(cpu0, cpu_sample())
        h1 = upstream_quiet()
        hits = h1 - h0 - (_STATUS_CALLS[0] - s0)
        row = {"c": c, "repeat": bool(suffix), "tenant": meas_t, **r, "upstream_hits": hits,
               "other_cpu_cores": other, "steal_cores": steal, "waited_for_quiet_s": waited}
        if sysd:
            row["rss_after_mb"] = rss_mb(sysd["proc"].p.pid)
        res["rows"].append(row)
        lat = r["latency_us"]
        log(f"{label} {mode} c={c}{suffix}: {r['rps']:.0f} req/s p50 {lat['p50']/1000:.2f} ms "
            f"p99 {lat['p99']/1000:.2f} ms errors {sum(r['errors'].values())} rss {row.get('rss_after_mb', '-')} "
            f"other-cpu {other:.2f} steal {steal:.2f}")
    if sysd:
        proc = sysd["proc"]
        res["rss_after_mb"] = rss_mb(proc.p.pid)
        res.update(proc.stop(a.stop_timeout))
        if sysd["ledger"]:
            kind, path = sysd["ledger"]
            counts = count_pg(tenants) if kind == "pg" else count_sqlite(path, tenants)
            if kind == "pg" and isinstance(counts, dict):
                empty_pg_ledger()
            logs = count_log_lines(proc.logfile, tenants)
            if isinstance(counts, str):
                res["ledger_error"] = counts
            for row in res["rows"]:
                t = row["tenant"]
                row["ledger_rows"] = counts.get(t, 0) if isinstance(counts, dict) else None
                row["log_lines"] = logs.get(t, 0)
            res["ledger_all"] = counts
            res["log_lines_all"] = logs
    return res


def paired_pass(stream: bool, rounds: int, a, run_id: str) -> dict:
    """floor and tallygate-pg started side by side (both on core 0; the idle one costs
    nothing) and measured alternately at c=15, `rounds` times each. This VM has slow and
    fast phases that move a whole 20 s row by up to a third; the ratio of two adjacent
    rows cancels them, and the median of the rounds is the throughput ratio reported
    against the floor target."""
    mode = "stream" if stream else "json"
    out: dict = {"mode": mode, "rounds": []}
    sysds = {"floor": make_system("floor", stream, 1, run_id + "-paired"),
             "tallygate-pg": make_system("tallygate-pg", stream, 1, run_id + "-paired")}
    for name, sysd in sysds.items():
        if not port_free(sysd["port"]):
            out["error"] = f"port {sysd['port']} busy"
            return out
        RUNNING.append(sysd["proc"])
        sysd["proc"].start()
        if sysd["proc"].wait_healthy(sysd["port"], sysd["health"], timeout=a.start_timeout) is None:
            out["error"] = f"{name} never became healthy: " + sysd["proc"].log_tail(1500)
            for s2 in sysds.values():
                s2["proc"].stop(10)
            return out
        err = smoke(sysd["port"], sysd["token"], stream)
        if err:
            out["error"] = f"{name}: {err}"
            for s2 in sysds.values():
                s2["proc"].stop(10)
            return out
    log(f"paired {mode}: floor and tallygate-pg side by side, {rounds} rounds of {a.paired_seconds:g} s each")
    tenants = []
    for name, sysd in sysds.items():
        warm = f"bench-{run_id}-paired-{name}-{mode}-warm"
        tenants.append(warm)
        run_wrk(sysd["port"], 15, a.warmup, warm, stream, sysd["token"], warm)
    for i in range(rounds):
        pair = {}
        order = ("floor", "tallygate-pg") if i % 2 == 0 else ("tallygate-pg", "floor")
        for name in order:
            sysd = sysds[name]
            tenant = f"bench-{run_id}-paired-{name}-{mode}-r{i}"
            tenants.append(tenant)
            h0 = upstream_quiet()
            if a.quiet_wait > 0:
                wait_quiet(min(a.quiet_wait, 10))
            s0 = _STATUS_CALLS[0]
            cpu0 = cpu_sample()
            r = run_wrk(sysd["port"], 15, a.paired_seconds, tenant, stream, sysd["token"], tenant)
            other, _ = other_cpu(cpu0, cpu_sample())
            hits = upstream_quiet() - h0 - (_STATUS_CALLS[0] - s0)
            pair[name] = {"tenant": tenant, **r, "upstream_hits": hits, "other_cpu_cores": other}
        pair["ratio"] = pair["tallygate-pg"]["rps"] / pair["floor"]["rps"] if pair["floor"]["rps"] else 0.0
        out["rounds"].append(pair)
        log(f"paired {mode} round {i + 1}: floor {pair['floor']['rps']:.0f}, tallygate {pair['tallygate-pg']['rps']:.0f} "
            f"req/s: {100 * pair['ratio']:.0f}%")
    tg = sysds["tallygate-pg"]["proc"]
    out["rss_after_mb"] = rss_mb(tg.p.pid)
    for sysd in sysds.values():
        sysd["proc"].stop(a.stop_timeout)
    counts = count_pg(tenants)
    if isinstance(counts, dict):
        empty_pg_ledger()
    logs = count_log_lines(tg.logfile, tenants)
    for pair in out["rounds"]:
        row = pair["tallygate-pg"]
        row["ledger_rows"] = counts.get(row["tenant"], 0) if isinstance(counts, dict) else None
        row["log_lines"] = logs.get(row["tenant"], 0)
    ratios = sorted(p["ratio"] for p in out["rounds"])
    out["median_ratio"] = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
    return out


# --------------------------------------------------------------------------- report


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def find_row(results: list[dict], system: str, mode: str, c: int, workers: int = 1) -> dict | None:
    for r in results:
        if r["system"] == system and r["mode"] == mode and r["workers"] == workers and not r.get("error"):
            for row in r["rows"]:
                if row["c"] == c and not row["repeat"]:
                    return row
    return None


def find_res(results, system, mode, workers=1):
    for r in results:
        if r["system"] == system and r["mode"] == mode and r["workers"] == workers:
            return r
    return None


def ratio(a, b) -> str:
    if a is None or b is None or not b.get("rps"):
        return "n/a"
    return f"{a['rps'] / b['rps']:.2f}x" if a["rps"] / b["rps"] < 10 else f"{a['rps'] / b['rps']:.0f}x"


def _noise(*rows) -> str:
    worst = max((r.get("other_cpu_cores", 0) for r in rows if r), default=0)
    return f"; other load {worst:.2f} cores during a row used" if worst > OTHER_CPU_LIMIT else ""


def evaluate(results: list[dict], quick: bool, paired: list | None = None) -> list[tuple[str, str, str]]:
    """Targets from issue 4, checked on tallygate-pg (one core). Returns (target, verdict, detail).
    The floor ratio is taken from the paired rounds when they ran (see paired_pass)."""
    out = []
    paired_by_mode = {p["mode"]: p for p in (paired or []) if not p.get("error") and p.get("rounds")}
    tg = "tallygate-pg"
    cref = 15
    for mode in ("json", "stream"):
        t, l, f = find_row(results, tg, mode, cref), find_row(results, "litellm", mode, cref), find_row(results, "floor", mode, cref)
        if t and l:
            x = t["rps"] / l["rps"]
            out.append((f"{mode} c=15 throughput >= 50x LiteLLM", "PASS" if x >= 50 else "FAIL", f"{x:.0f}x ({t['rps']:.0f} vs {l['rps']:.1f} req/s){_noise(t, l)}"))
        else:
            out.append((f"{mode} c=15 throughput >= 50x LiteLLM", "N/A", "row missing"))
        single = f"{100 * t['rps'] / f['rps']:.0f}% ({t['rps']:.0f} vs {f['rps']:.0f} req/s){_noise(t, f)}" if t and f else None
        pm = paired_by_mode.get(mode)
        if pm:
            x = pm["median_ratio"]
            rounds = ", ".join(f"{100 * r['ratio']:.0f}%" for r in pm["rounds"])
            out.append((f"{mode} c=15 throughput >= 70% of floor", "PASS" if x >= 0.7 else "FAIL",
                        f"median {100 * x:.0f}% over {len(pm['rounds'])} interleaved rounds ({rounds})"
                        + (f"; the single rows above: {single}" if single else "")))
        elif t and f:
            x = t["rps"] / f["rps"]
            out.append((f"{mode} c=15 throughput >= 70% of floor", "PASS" if x >= 0.7 else "FAIL", single))
        else:
            out.append((f"{mode} c=15 throughput >= 70% of floor", "N/A", "row missing"))
    for mode in ("json", "stream"):
        t, d = find_row(results, tg, mode, 1), find_row(results, "direct", mode, 1)
        if t and d:
            p50 = (t["latency_us"]["p50"] - d["latency_us"]["p50"]) / 1000
            p99 = (t["latency_us"]["p99"] - d["latency_us"]["p99"]) / 1000
            out.append((f"{mode} added latency at c=1: p50 <= 0.5 ms", "PASS" if p50 <= 0.5 else "FAIL", f"{p50:.3f} ms{_noise(t, d)}"))
            out.append((f"{mode} added latency at c=1: p99 <= 2 ms", "PASS" if p99 <= 2 else "FAIL", f"{p99:.3f} ms{_noise(t, d)}"))
        else:
            out.append((f"{mode} added latency at c=1", "N/A", "c=1 rows not run" if quick else "row missing"))
    starts = [r["start_s"] for r in results if r["system"] == tg and r["workers"] == 1 and r.get("start_s")]
    if starts:
        out.append(("start-up to healthy <= 0.5 s", "PASS" if max(starts) <= 0.5 else "FAIL", "max of " + ", ".join(f"{s:.3f} s" for s in starts)))
    else:
        out.append(("start-up to healthy <= 0.5 s", "N/A", "tallygate not run"))
    tgres = [r for r in results if r["system"] == tg and r["workers"] == 1 and not r.get("error")]
    if tgres:
        idle = max(r["rss_idle_mb"] for r in tgres)
        after = max(r["rss_after_mb"] for r in tgres)
        out.append(("RSS idle <= 60 MB", "PASS" if idle <= 60 else "FAIL", f"{idle} MB"))
        out.append(("RSS after the run <= 80 MB", "PASS" if after <= 80 else "FAIL", f"{after} MB"))
        flat = []
        for r in tgres:
            reps = [row for row in r["rows"] if row["repeat"]]
            if reps:
                before = [row for row in r["rows"] if not row["repeat"]][-1]["rss_after_mb"]
                flat.append((r["mode"], before, reps[-1]["rss_after_mb"]))
        if flat:
            ok = all(b2 - b1 <= 2.0 for _, b1, b2 in flat)
            out.append(("RSS flat across a repeated pass (growth <= 2 MB)", "PASS" if ok else "FAIL",
                        "; ".join(f"{m}: {b1} -> {b2} MB" for m, b1, b2 in flat)))
        else:
            out.append(("RSS flat across a repeated pass", "N/A", "no repeat pass in --quick"))
    else:
        out.append(("memory", "N/A", "tallygate not run"))
    missing_total, checked = 0, 0
    detail = []
    for r in results:
        if r["system"].startswith("tallygate") and not r.get("error"):
            for row in r["rows"]:
                if row.get("ledger_rows") is None:
                    detail.append(f"{r['label']} {r['mode']} c={row['c']}: not counted ({r.get('ledger_error', '?')})")
                    missing_total += 1
                    continue
                checked += 1
                miss = row["upstream_hits"] - row["ledger_rows"]
                if miss != 0:
                    missing_total += 1
                    detail.append(f"{r['label']} {r['mode']} c={row['c']}: {row['ledger_rows']} rows for {row['upstream_hits']} upstream calls")
                if row.get("log_lines") != row["ledger_rows"]:
                    detail.append(f"{r['label']} {r['mode']} c={row['c']}: {row.get('log_lines')} log lines vs {row['ledger_rows']} rows")
                    missing_total += 1
    for pm in paired_by_mode.values():
        for i, pair in enumerate(pm["rounds"]):
            row = pair["tallygate-pg"]
            checked += 1
            if row.get("ledger_rows") != row["upstream_hits"] or row.get("log_lines") != row.get("ledger_rows"):
                missing_total += 1
                detail.append(f"paired {pm['mode']} round {i + 1}: {row.get('ledger_rows')} rows, "
                              f"{row['upstream_hits']} upstream calls, {row.get('log_lines')} log lines")
    if checked or detail:
        out.append(("ledger: zero rows missing (rows == upstream calls == log lines, every row)", "PASS" if missing_total == 0 else "FAIL",
                    "; ".join(detail) if detail else f"{checked} rows checked, all equal"))
    else:
        out.append(("ledger: zero rows missing", "N/A", "tallygate not run"))
    return out


def render(results: list[dict], meta: dict, a) -> str:
    L = []
    L.append("| system | mode | c | req/s | p50 ms | p90 ms | p99 ms | errors | added p50/p99 @c=1 ms | RSS after MB | ledger rows / upstream calls / sent | other CPU |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.get("error"):
            L.append(f"| {r['label']} | {r['mode']} | - | error | | | | | | | {r['error'].splitlines()[0][:120]} | |")
            continue
        for row in r["rows"]:
            lat = row["latency_us"]
            errs = sum(row["errors"].values())
            added = ""
            if row["c"] == 1 and r["system"] != "direct":
                d = find_row(results, "direct", r["mode"], 1)
                if d:
                    added = f"{(lat['p50'] - d['latency_us']['p50']) / 1000:+.2f} / {(lat['p99'] - d['latency_us']['p99']) / 1000:+.2f}"
            led = ""
            if "ledger_rows" in row:
                led = f"{row['ledger_rows']} / {row['upstream_hits']} / {row['sent']}"
            c = f"{row['c']}" + (" (repeat)" if row["repeat"] else "")
            L.append(
                f"| {r['label']} | {r['mode']} | {c} | {fmt_rate(row['rps'])} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | "
                f"{errs} | {added} | {row.get('rss_after_mb', '')} | {led} | "
                f"{row.get('other_cpu_cores', 0):.2f}{' (noisy)' if row.get('other_cpu_cores', 0) > OTHER_CPU_LIMIT else ''} |"
            )
    L.append("")
    L.append("| system | mode | start to healthy s | RSS idle MB | RSS after MB | exit on SIGTERM |")
    L.append("|---|---|---|---|---|---|")
    for r in results:
        if r["system"] == "direct":
            continue
        L.append(f"| {r['label']} | {r['mode']} | {r.get('start_s', '-')} | {r.get('rss_idle_mb', '-')} | {r.get('rss_after_mb', '-')} | "
                 f"{r.get('exit_code', '-')} ({r.get('stop_s', '-')} s) |")
    L.append("")
    L.append("Ratios (requests/s at the same concurrency, same run):")
    L.append("")
    L.append("| mode | c | tallygate/LiteLLM | tallygate/floor | tallygate-sqlite/floor | floor/LiteLLM | direct/floor |")
    L.append("|---|---|---|---|---|---|---|")
    for mode in ("json", "stream"):
        for c in sorted({row["c"] for r in results for row in r["rows"]}):
            t = find_row(results, "tallygate-pg", mode, c)
            L.append(
                f"| {mode} | {c} | {ratio(t, find_row(results, 'litellm', mode, c))} | {ratio(t, find_row(results, 'floor', mode, c))} | "
                f"{ratio(find_row(results, 'tallygate-sqlite', mode, c), find_row(results, 'floor', mode, c))} | "
                f"{ratio(find_row(results, 'floor', mode, c), find_row(results, 'litellm', mode, c))} | "
                f"{ratio(find_row(results, 'direct', mode, c), find_row(results, 'floor', mode, c))} |"
            )
    for pm in meta.get("paired") or []:
        L.append("")
        if pm.get("error"):
            L.append(f"Paired rounds, {pm['mode']}: error: {pm['error'].splitlines()[0][:200]}")
            continue
        L.append(f"Paired rounds, {pm['mode']} c=15: floor and tallygate-pg running side by side, measured alternately "
                 f"({len(pm['rounds'])} x {pm['rounds'][0]['floor']['duration_us'] / 1e6:.0f} s each); "
                 f"median tallygate/floor **{100 * pm['median_ratio']:.0f}%**:")
        L.append("")
        L.append("| round | floor req/s | tallygate req/s | tallygate/floor | tallygate p50 / p99 ms | ledger rows / upstream calls / sent |")
        L.append("|---|---|---|---|---|---|")
        for i, pair in enumerate(pm["rounds"]):
            t = pair["tallygate-pg"]
            L.append(f"| {i + 1} | {fmt_rate(pair['floor']['rps'])} | {fmt_rate(t['rps'])} | {100 * pair['ratio']:.0f}% | "
                     f"{ms(t['latency_us']['p50'])} / {ms(t['latency_us']['p99'])} | "
                     f"{t.get('ledger_rows')} / {t['upstream_hits']} / {t['sent']} |")
    w2 = [r for r in results if r["workers"] > 1 and not r.get("error")]
    if w2:
        L.append("")
        L.append("Scaling, 2 workers on both cores (wrk and nginx still on core 1) vs 1 worker on core 0:")
        L.append("")
        L.append("| system | mode | c | 1 worker req/s | 2 workers req/s | scale |")
        L.append("|---|---|---|---|---|---|")
        for r in w2:
            for row in r["rows"]:
                one = find_row(results, r["system"], r["mode"], row["c"])
                L.append(f"| {r['system']} | {r['mode']} | {row['c']} | {fmt_rate(one['rps']) if one else 'n/a'} | {fmt_rate(row['rps'])} | "
                         f"{(row['rps'] / one['rps']):.2f}x |" if one else f"| {r['system']} | {r['mode']} | {row['c']} | n/a | {fmt_rate(row['rps'])} | n/a |")
    return "\n".join(L)


def render_doc(table: str, targets, meta: dict, a, results) -> str:
    v = meta["versions"]
    li = meta.get("litellm") or {}
    rust_flags = li.get("rust_env_flags") or []
    rust_line = (
        f"Rust mode: **{'on' if li.get('rust_enabled') else 'off'}** (`rust_bridge.configuration.rust_enabled()` = "
        f"{li.get('rust_enabled')}; switch {', '.join(rust_flags) or 'LITELLM_RUST'} "
        f"{'set to ' + str(li.get('rust_env_set')) if li.get('rust_env_set') else 'unset, and it is opt-in'}; "
        f"native extension shipped: {li.get('rust_extension')}). Its rollout catalog routes chat completions "
        f"as {'/'.join(li.get('chat_rules') or ['?'])}, so the chat path measured here runs in Python either way."
        if li else "LiteLLM not run."
    )
    d = meta["direct_check"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run.py` on {meta['date']} ({'quick' if a.quick else 'full'} run, {meta['elapsed_s']:.0f} s). "
        "Absolute numbers move between runs on shared machines (a row varied by up to 35% between passes "
        "in earlier measurements): compare the ratios inside one run.",
        "",
        "## Machine and versions",
        "",
        f"- {v['nproc']} cores, `{v['cpu']}`, {v['mem_gb']} GB RAM, {v['os']}, kernel {v['kernel']}",
        f"- Python {v['project']['python']}; tallygate {v['project'].get('tallygate')}, uvicorn {v['project'].get('uvicorn')}, "
        f"aiohttp {v['project'].get('aiohttp')}, uvloop {v['project'].get('uvloop')}, httptools {v['project'].get('httptools')}, "
        f"orjson {v['project'].get('orjson')}, psycopg {v['project'].get('psycopg')}",
        f"- PostgreSQL {v['postgres']} (local, 127.0.0.1:5432), nginx {v['nginx']}, wrk {v['wrk']}",
        f"- tallygate source: commit {meta.get('git', '?')}",
        f"- LiteLLM proxy {li.get('litellm', 'not run')} (own venv `bench/.work/litellm-venv`, from `bench/litellm-requirements.txt`), "
        f"uvicorn {li.get('uvicorn')}, fastapi {li.get('fastapi')}, httpx {li.get('httpx')}, aiohttp {li.get('aiohttp')}, 1 worker, no DB, "
        f"master key set, `LITELLM_LOCAL_MODEL_COST_MAP=True`, `LITELLM_LOG=ERROR`. {rust_line}",
        "",
        "## Setup",
        "",
        "- System under test pinned to core 0 (`taskset -c 0`); nginx (1 worker) and wrk (`-t1`, Lua script "
        "`bench/post.lua`) on core 1. Rows run one after another.",
        f"- Fake upstream: nginx returning a fixed `chat.completion` JSON (with usage) on :{NGINX_JSON}, and a fixed SSE body "
        f"(8 chunks, a usage chunk, `data: [DONE]`) on :{NGINX_SSE}; each system is started once per mode with its upstream base URL "
        "pointing at the matching port. Start-up, RSS idle and the ledger are measured per start.",
        f"- Per row: {a.warmup:g} s warm-up then {a.duration:g} s measured at the same concurrency; latency is wrk's "
        "(p50/p90/p99 of its histogram); errors = socket errors + HTTP status > 399.",
        "- Paired rounds (the floor target): this VM has slow and fast phases that move a whole row by up to a third, so "
        "a floor row and a tallygate row measured a minute apart can differ for reasons neither caused. After the rows, "
        "floor and tallygate-pg are started side by side (both on core 0; the idle one costs nothing) and measured "
        f"alternately at c=15 ({getattr(a, 'paired', 0)} rounds of {getattr(a, 'paired_seconds', 10):g} s each, the order "
        "swapped every round); the median of the per-round ratios is what the 70%-of-floor target is checked against. "
        "The single rows stay in the tables and in the verdict's detail.",
        "- Clients send `Authorization: Bearer <token>` and `X-Tenant-ID: bench-<run>-<system>-<mode>-c<N>` (unique per row). "
        "`floor` is `bench/floor_proxy.py` (uvicorn + httptools + uvloop, aiohttp client, bearer check, usage found in the tail).",
        "- tallygate-pg: auth, metering, JSON log line (stdout to a file), Postgres ledger in async mode "
        f"(`PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE={BENCH_DB} PGSSL=disable`; the database is dropped and created "
        "empty at the start of the run). tallygate-sqlite: the SQLite default "
        "(`TALLYGATE_SQLITE_PATH=bench/.work/tallygate-bench.db`).",
        "- Start to healthy: spawn to the first 200 from `/health` (LiteLLM: `/health/liveliness`), polled every 2 ms. "
        "RSS: VmRSS of the process and all its children from /proc.",
        "- Ledger: after the last row the gateway gets SIGTERM and is waited for; then rows per tenant are counted in "
        f"`{LEDGER_TABLE}` and compared with the upstream calls counted by nginx (`stub_status`) during that row "
        "and with the requests wrk wrote (`sent`, which includes the few in flight when wrk stops).",
        f"- Upstream check: direct nginx served {d}",
        "- The machine is shared: `other CPU` is the CPU (in cores) used during the row by processes outside the "
        "benchmark's own process tree (from /proc/stat minus our processes' utime+stime); before each row the "
        f"script waits (up to {a.quiet_wait:g} s) for it to drop under {OTHER_CPU_LIMIT} cores. Rows above that are marked `(noisy)`. "
        f"Everything the benchmark started ran at nice {NICE[0]}.",
        "",
        "## Commands",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "wrk, per row (env `BENCH_TOKEN`, `BENCH_TENANT`, `BENCH_STREAM`, `BENCH_OUT` feed the Lua script):",
        "",
        "```",
        f"taskset -c 1 wrk -t1 -c<C> -d{a.duration:g}s --timeout 30s -s bench/post.lua http://127.0.0.1:<port>/v1/chat/completions",
        f"taskset -c 1 nginx -p bench/.work/nginx -c bench/.work/nginx/nginx.conf",
        f"taskset -c 0 .venv/bin/python bench/floor_proxy.py --port {FLOOR_PORT}",
        f"taskset -c 0 .venv/bin/tallygate serve --host 127.0.0.1 --port {TG_PORT}",
        f"taskset -c 0 bench/.work/litellm-venv/bin/litellm --config bench/.work/litellm-<mode>.yaml --host 127.0.0.1 --port {LITELLM_PORT} --num_workers 1 --telemetry False",
        "```",
        "",
        "## Results",
        "",
        table,
        "",
        "## Targets (issue 4; tallygate-pg, one core)",
        "",
        "| target | verdict | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | **{v_}** | {d_} |" for t, v_, d_ in targets]
    lt = meta.get("ledger_throughput")
    if lt:
        lines += ["", "## Ledger write throughput", "",
                  "`bench/ledger_throughput.py`: one process, the gateway's `LedgerWriter` over its Postgres store, "
                  "records added in bursts of 15, then flushed and counted back.", "",
                  "| store | batch size | rows | rows in DB | seconds | rows/s |", "|---|---|---|---|---|---|"]
        for r in lt:
            lines.append(f"| {r['store']} | {r['batch_size']} | {r['rows']:,} | {r['rows_in_db']:,} | {r['seconds']} | {r['rows_per_s']:,.0f} |")
    lines += [
        "", "## How to read this", "",
        "- `sent` is wrk's count of requests written; it is one more than the upstream calls in every row "
        "(wrk prepares one request it never sends), so the ledger is checked against nginx's count of upstream calls.",
        "- `exit on SIGTERM` -15 is uvicorn's behaviour with one process (it re-raises the signal after a graceful "
        "shutdown); the floor and LiteLLM show it, tallygate exits 0.",
        "- LiteLLM's `/health` calls the models, so its start-up is timed on `/health/liveliness`.",
        "- The verdicts use the single rows of this run; a row varies by tens of percent between runs here, more "
        "when `other CPU` is high. Re-run `make bench` on a quiet machine before trusting a borderline verdict.",
    ]
    errs = [r for r in results if r.get("error")]
    if errs:
        lines += ["", "## Errors", ""]
        for r in errs:
            lines += [f"- {r['label']} {r['mode']}:", "", "```", r["error"][-1500:], "```"]
    notes = meta.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def render_saved(a) -> int:
    data = json.loads(Path(a.render).read_text())
    meta, results = data["meta"], data["results"]
    saved = meta.get("args") or {}
    quick = saved.get("quick", "-quick" in Path(a.render).name)
    a.quick = quick
    a.duration = saved.get("duration") or (3.0 if quick else 20.0)
    a.warmup = saved.get("warmup") or (1.0 if quick else 5.0)
    a.quiet_wait = saved.get("quiet_wait", a.quiet_wait if a.quiet_wait is not None else 0)
    NICE[0] = saved.get("nice", 0)
    table = render(results, meta, a)
    targets = evaluate(results, quick, meta.get("paired"))
    print(table)
    print()
    for t, v, d in targets:
        print(f"{v:4}  {t}: {d}")
    if a.docs:
        Path(a.docs).write_text(render_doc(table, targets, meta, a, results))
        log(f"wrote {a.docs}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: 1 s warm-up + 3 s, c=15 only")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM rows (and its install)")
    ap.add_argument("--no-tallygate", action="store_true", help="skip the tallygate rows")
    ap.add_argument("--no-workers", action="store_true", help="skip the 2-worker scaling rows")
    ap.add_argument("--systems", default="direct,floor,tallygate-pg,tallygate-sqlite,litellm",
                    help="comma-separated subset, in order")
    ap.add_argument("--modes", default="json,stream")
    ap.add_argument("--concurrency", default=None, help="comma list (default 1,15,64; quick: 15)")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per row (default 20; quick 3)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per row (default 5; quick 1)")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--stop-timeout", type=float, default=30.0)
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each row, wait up to this many seconds for other processes to go quiet "
                         "(default 120; quick 10; 0 disables)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the systems, nginx and wrk at this nice level (e.g. -10 on a shared machine; needs root)")
    ap.add_argument("--paired", type=int, default=None,
                    help="interleaved floor/tallygate rounds at c=15 per mode (default 5; quick 0; 0 disables)")
    ap.add_argument("--paired-seconds", type=float, default=10.0, help="seconds per paired row (default 10)")
    ap.add_argument("--no-ledger-throughput", action="store_true",
                    help="skip bench/ledger_throughput.py at the end of a full run")
    ap.add_argument("--render", metavar="RESULTS_JSON", default=None,
                    help="re-render the tables and docs from a saved bench/results/<run>.json, without running")
    ap.add_argument("--docs", default=None, help="markdown output (default docs/benchmarks.md on a full run, none on --quick)")
    a = ap.parse_args()
    if a.render:
        return render_saved(a)
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 20.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 5.0)
    NICE[0] = a.nice
    a.quiet_wait = a.quiet_wait if a.quiet_wait is not None else (10.0 if a.quick else 120.0)
    a.paired = a.paired if a.paired is not None else (0 if a.quick else 5)
    concs = [int(x) for x in (a.concurrency or ("15" if a.quick else "1,15,64")).split(",")]
    systems = [s for s in a.systems.split(",") if s]
    if a.no_litellm:
        systems = [s for s in systems if s != "litellm"]
    notes: list[str] = []
    if a.no_tallygate:
        systems = [s for s in systems if not s.startswith("tallygate")]
    else:
        ok, why = tallygate_available()
        if not ok:
            notes.append(f"tallygate rows skipped: {why}")
            systems = [s for s in systems if not s.startswith("tallygate")]
    modes = [m == "stream" for m in a.modes.split(",")]
    if (os.cpu_count() or 1) < 2:
        notes.append("fewer than 2 cores: pinning is not meaningful")

    t_start = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    fresh_ledgers(systems)
    li_info = None
    if "litellm" in systems:
        if ensure_litellm():
            li_info = litellm_info()
        else:
            notes.append("LiteLLM rows skipped: install failed (bench/.work/litellm-install.log)")
            systems.remove("litellm")
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%m%d%H%M%S")
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "versions": versions(),
        "litellm": li_info,
        "run_id": run_id,
        "notes": notes,
        "git": git_state(),
        "args": {k: v for k, v in vars(a).items()},
    }
    log(f"run {run_id}: systems {systems}, modes {a.modes}, c={concs}, {a.warmup:g}+{a.duration:g} s per row")
    nginx = Nginx()
    results: list[dict] = []
    interrupted = False

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        nginx.start()
        for name in systems:
            for stream in modes:
                repeat = 15 if (name == "tallygate-pg" and not a.quick and 15 in concs) else None
                results.append(bench_system(name, stream, concs, a, run_id, repeat_c=repeat))
        if not a.no_workers:
            for name in ("floor", "tallygate-pg"):
                if name not in systems:
                    continue
                if name == "tallygate-pg" and not tallygate_supports_workers():
                    notes.append("tallygate serve has no --workers option: 2-worker rows skipped")
                    continue
                wc = [c for c in concs if c >= 15] or concs
                for stream in modes:
                    results.append(bench_system(name, stream, wc, a, run_id, workers=2))
        if a.paired > 0 and {"floor", "tallygate-pg"} <= set(systems):
            meta["paired"] = [paired_pass(stream, a.paired, a, run_id) for stream in modes]
        if not a.quick and not a.no_ledger_throughput and "tallygate-pg" in systems:
            log("ledger throughput (bench/ledger_throughput.py)")
            env = {**base_env(), **PG_ENV}
            r = subprocess.run([str(VENV_PY), str(BENCH / "ledger_throughput.py"), "--rows", "50000", "--json"],
                               env=env, capture_output=True, text=True, timeout=600)
            try:
                meta["ledger_throughput"] = json.loads(r.stdout)
            except ValueError:
                notes.append("ledger_throughput.py failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200])
    except KeyboardInterrupt:
        notes.append("interrupted: partial results")
        log("interrupted")
        interrupted = True
    finally:
        for p in RUNNING:
            if p.p is not None:
                p.stop(10)
        nginx.stop()

    # Is the upstream a bottleneck? Compare direct with the fastest proxied row, same mode and c.
    checks = []
    for r in results:
        if r["system"] == "direct":
            for row in r["rows"]:
                best = max((x for s in results if s["system"] != "direct" and s["mode"] == r["mode"] and not s.get("error")
                            for x in s["rows"] if x["c"] == row["c"]), key=lambda x: x["rps"], default=None)
                if best:
                    checks.append(f"{r['mode']} c={row['c']}: {row['rps']:,.0f} req/s, {row['rps'] / best['rps']:.1f}x the fastest proxy")
    meta["direct_check"] = ("; ".join(checks) + " (with wrk on the same core; the upstream has headroom when this is well above 1x).") if checks else "n/a"
    meta["elapsed_s"] = time.time() - t_start

    table = render(results, meta, a)
    targets = evaluate(results, a.quick, meta.get("paired"))
    (RESULTS / f"{run_id}{'-quick' if a.quick else ''}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print()
    print(table)
    print()
    for t, v, d in targets:
        print(f"{v:4}  {t}: {d}")
    doc = render_doc(table, targets, meta, a, results)
    docs = a.docs if a.docs is not None else (None if a.quick or interrupted else str(ROOT / "docs" / "benchmarks.md"))
    if docs:
        Path(docs).write_text(doc)
        log(f"wrote {docs}")
    (RESULTS / f"{run_id}{'-quick' if a.quick else ''}.md").write_text(doc)
    log(f"raw results in {RESULTS}/{run_id}*.json; done in {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
