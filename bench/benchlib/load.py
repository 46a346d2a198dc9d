"""The load generator: one wrk row."""

from __future__ import annotations

import json
import os
import subprocess

from .config import HOST, LUA, MODEL, WORK
from .processes import NICE


def run_wrk(port: int, c: int, seconds: float, tenant: str, stream: bool, token: str, tag: str,
            headers: dict | None = None) -> dict:
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
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items()),
    }
    cmd = (["nice", "-n", str(NICE[0])] if NICE[0] else []) + [
        "taskset", "-c", "1", "wrk", "-t1", f"-c{c}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-s", str(LUA), f"http://{HOST}:{port}/v1/chat/completions",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    if not out.exists():
        raise RuntimeError(f"wrk failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    return json.loads(out.read_text())
