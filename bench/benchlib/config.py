"""Paths, ports, tokens and the ledger database the benchmark uses."""

from __future__ import annotations

import os
from pathlib import Path

from devtools import litellm_venv

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
VENV_PY = ROOT / ".venv" / "bin" / "python"
LITELLM_VENV = litellm_venv.venv_path()  # outside the repository, shared with the tests
LITELLM_REQ = litellm_venv.REQUIREMENTS
PORTKEY_PKG = BENCH / "portkey"  # package.json + package-lock.json: the pinned Portkey gateway
PORTKEY_DIR = WORK / "portkey"
LUA = BENCH / "post.lua"

HOST = "127.0.0.1"
# BENCH_PORT_OFFSET moves every port (two benchmarks on one machine, e.g. 50); under 90,
# since each kind of port below is 100 from the next and cpu.py adds one a system
PORT_OFFSET = _OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
if not 0 <= _OFFSET < 90:
    raise SystemExit(f"BENCH_PORT_OFFSET={_OFFSET}: use 0-89")
NGINX_JSON, NGINX_SSE, NGINX_STATUS = 18101 + _OFFSET, 18102 + _OFFSET, 18103 + _OFFSET
FLOOR_PORT, TG_PORT, LITELLM_PORT, PORTKEY_PORT = (p + _OFFSET for p in (18201, 18301, 18401, 18501))

GATEWAY_TOKEN = "bench-gateway-token"
MASTER_KEY = "sk-bench-master-key"
# The Postgres ledger goes to a database of its own, created empty at the start of every run:
# runs are comparable (inserts into a table of millions of rows cost Postgres more), and
# the benchmark's rows never pile up in a database anything else uses.
BENCH_DB = os.environ.get("BENCH_DB", "tallygate_bench")  # another name: a second benchmark beside this one
PG_ENV = {"PGHOST": HOST, "PGUSER": "postgres", "PGDATABASE": BENCH_DB, "PGSSL": "disable", "PGPORT": "5432"}
LEDGER_TABLE = "litellm_usage"

MODEL = "gpt-4o-mini"
UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"
