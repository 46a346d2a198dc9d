"""Runs the ASGI app under uvicorn (uvloop + httptools), one process or N workers."""

from __future__ import annotations

import os
import secrets
import sys
import time
from typing import Any

from . import logs
from . import settings as settings_module
from .settings import Settings, SettingsError


def resolve_token(settings: Settings, dev: bool) -> Settings:
    """Never serve unauthenticated by accident: no token and no --dev is an error;
    a token in the environment always wins over --dev."""
    if settings.gateway_token:
        return settings
    if not dev:
        raise SettingsError(
            "PROXY_GATEWAY_TOKEN is not set, and the gateway refuses to serve without "
            "authentication. Set PROXY_GATEWAY_TOKEN (and optionally PROXY_MASTER_KEY), or run "
            "`tallygate serve --dev` to generate a token for local use."
        )
    token = "dev-" + secrets.token_urlsafe(24)
    os.environ["PROXY_GATEWAY_TOKEN"] = token  # workers read it from the environment
    sys.stderr.write(
        "\n  tallygate --dev: no PROXY_GATEWAY_TOKEN was set, so one was generated for this run:\n"
        f"\n      export TALLYGATE_TOKEN={token}\n\n"
        "  Clients send it as 'Authorization: Bearer <token>' with an 'X-Tenant-ID' header.\n\n"
    )
    sys.stderr.flush()
    return settings_module.load()


def warn_missing_upstream_key(settings: Settings) -> None:
    """The default route is OpenAI itself: without a key every request would fail upstream."""
    if settings.openai_api_key or settings.openai_base_url != settings_module.DEFAULT_OPENAI_BASE_URL:
        return
    sys.stderr.write(
        "\n  tallygate: OPENAI_API_KEY is not set, so requests routed to OpenAI "
        f"({settings.openai_base_url}) will be refused there (401).\n"
        "  Set OPENAI_API_KEY, point OPENAI_BASE_URL at another upstream, or run `make run DEMO=1`\n"
        "  to try the gateway against its built-in fake upstream.\n\n"
    )
    sys.stderr.flush()


def app_factory():
    """Import string for uvicorn workers (each worker builds its own app)."""
    from . import protocol
    from .app import create_app

    settings = settings_module.load()
    logs.setup(settings.secrets)
    protocol.configure(settings)
    return create_app(settings)


def start_demo_upstream():
    """--demo: the built-in fake upstream on a free loopback port, as OPENAI_BASE_URL."""
    import atexit
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tallygate", "fake-upstream", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(proc.terminate)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/models", timeout=0.5).read()
            break
        except OSError:
            time.sleep(0.05)
    os.environ["OPENAI_BASE_URL"] = url
    os.environ.setdefault("OPENAI_API_KEY", "sk-demo")
    os.environ["ANTHROPIC_BASE_URL"] = url.removesuffix("/v1")  # it serves /v1/messages too
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-demo")
    sys.stderr.write(f"  tallygate --demo: requests go to the built-in fake upstream at {url}\n")
    return proc


def serve(host: str, port: int | None, workers: int, dev: bool, demo: bool = False) -> int:
    import uvicorn

    if demo:
        start_demo_upstream()
    try:
        settings = resolve_token(settings_module.load(), dev)
    except SettingsError as exc:
        sys.stderr.write(f"tallygate: {exc}\n")
        return 2
    logs.setup(settings.secrets)
    warn_missing_upstream_key(settings)
    from . import protocol

    protocol.configure(settings)
    port = port or settings.port
    # httptools, answering unparseable requests with OpenAI-style JSON (protocol.py)
    common: dict[str, Any] = dict(
        host=host,
        port=port,
        loop="uvloop",
        http="tallygate.protocol:HttpToolsProtocol",
        lifespan="on",
        access_log=False,
        log_config=logs.uvicorn_log_config(),
        server_header=False,
        timeout_graceful_shutdown=int(round(settings.shutdown_grace)),
        timeout_keep_alive=settings.keep_alive_timeout,
        proxy_headers=False,
    )
    if workers > 1:
        uvicorn.run("tallygate.server:app_factory", factory=True, workers=workers, **common)
        return 0
    from .app import App

    try:
        app = App(settings)
    except (SettingsError, ValueError) as exc:
        sys.stderr.write(f"tallygate: {exc}\n")
        return 2
    config = uvicorn.Config(app, **common)
    server = _server(config, app)
    # uvicorn re-raises the signal after its graceful shutdown; a no-op handler makes a
    # finished SIGTERM shutdown exit 0, as Cloud Run and process supervisors expect
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0 if server.started else 1


def _server(config, app):
    """A uvicorn.Server that notes when SIGTERM arrived, so the ledger flush knows its deadline."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if app.g.shutdown_started is None:
                app.g.shutdown_started = time.monotonic()
            super().handle_exit(sig, frame)

    return Server(config)
