"""The systems under test: direct, floor, tallygate (Postgres, SQLite, no ledger), LiteLLM,
the Portkey gateway."""

from __future__ import annotations

import os
import shutil

from devtools import litellm_venv

from .config import (
    BENCH,
    FLOOR_PORT,
    GATEWAY_TOKEN,
    HOST,
    LITELLM_PORT,
    LITELLM_VENV,
    MASTER_KEY,
    MODEL,
    NGINX_JSON,
    NGINX_SSE,
    PG_ENV,
    PORTKEY_DIR,
    PORTKEY_PORT,
    ROOT,
    TG_PORT,
    VENV_PY,
    WORK,
)
from .host import http_post, sh
from .processes import Proc


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
    if name in ("tallygate-pg", "tallygate-sqlite", "tallygate-noledger"):
        env.update(
            OPENAI_BASE_URL=upstream_url(stream), OPENAI_API_KEY="x",
            PROXY_GATEWAY_TOKEN=GATEWAY_TOKEN, PROXY_MASTER_KEY=MASTER_KEY,
        )
        ledger: tuple | None
        if name == "tallygate-pg":
            env.update(PG_ENV)
            ledger = ("pg", None)
        elif name == "tallygate-noledger":  # the like-for-like row against peers that keep none
            env["TALLYGATE_LEDGER"] = "off"
            env["TALLYGATE_SQLITE_PATH"] = str(WORK / "tallygate-noledger.db")
            ledger = None
        else:
            db = WORK / "tallygate-bench.db"
            env["TALLYGATE_SQLITE_PATH"] = str(db)
            ledger = ("sqlite", db)
        cmd = ["taskset", "-c", cores, str(ROOT / ".venv" / "bin" / "tallygate"), "serve", "--host", HOST, "--port", str(TG_PORT)]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        return dict(proc=Proc(name, cmd, env, logf), port=TG_PORT, health="/health", token=GATEWAY_TOKEN, ledger=ledger)
    if name in ("litellm", "litellm-tallygate"):
        # litellm-tallygate: the same proxy with tallygate's callbacks (deploy/litellm/callbacks)
        # metering into the benchmark's Postgres ledger; the pair gives the callbacks' overhead
        metered = name == "litellm-tallygate"
        cfg_dir = WORK / name
        if metered:
            shutil.rmtree(cfg_dir / "callbacks", ignore_errors=True)
            shutil.copytree(ROOT / "deploy" / "litellm" / "callbacks", cfg_dir / "callbacks")
        cfg_dir.mkdir(parents=True, exist_ok=True)
        cfg = cfg_dir / f"litellm-{mode}.yaml"
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
            + ('  callbacks: ["callbacks.logging.proxy_handler_instance"]\n' if metered else "")
            + "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION",
                   LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="True")
        if metered:
            env.update(PG_ENV, PYTHONPATH=litellm_venv.pythonpath())
        cmd = ["taskset", "-c", cores, str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg),
               "--host", HOST, "--port", str(LITELLM_PORT), "--num_workers", str(workers), "--telemetry", "False"]
        return dict(proc=Proc(name, cmd, env, logf), port=LITELLM_PORT, health="/health/liveliness", token=MASTER_KEY,
                    ledger=("pg", None) if metered else None)
    if name == "portkey":
        # Portkey keeps no ledger and no per-tenant state: it proxies to the upstream named
        # by its headers (provider openai, custom host)
        cmd = ["taskset", "-c", cores, "node", str(PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" /
               "start-server.js"), f"--port={PORTKEY_PORT}"]
        headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream_url(stream)}
        return dict(proc=Proc(name, cmd, env, logf), port=PORTKEY_PORT, health="/", token="x", ledger=None,
                    headers=headers)
    raise ValueError(name)


def smoke(port: int, token: str, stream: bool, headers: dict | None = None) -> str | None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    try:
        st, out = http_post(port, "/v1/chat/completions", body,
                            {"Authorization": f"Bearer {token}", "X-Tenant-ID": "bench-smoke", **(headers or {})})
    except OSError as e:
        return f"smoke request failed: {e}"
    if st != 200:
        return f"smoke request got {st}: {out[:300]!r}"
    if stream and b"[DONE]" not in out:
        return f"smoke stream without [DONE]: {out[:300]!r}"
    return None
