"""The fake upstream: the chat completion bodies nginx answers with, and its configuration."""

from __future__ import annotations

import json
from pathlib import Path

from .config import HOST, NGINX_JSON, NGINX_SSE, NGINX_STATUS, UPSTREAM_MODEL

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
