"""The floor: the smallest honest OpenAI passthrough (uvicorn + aiohttp client).

It does what any gateway must do and nothing more: check the bearer token, forward the
body to the upstream with the upstream key, stream the bytes back untouched, and find the
usage object in the tail of the response (parsed, then dropped). The full gateway should
stay close to this.

    OPENAI_BASE_URL=http://127.0.0.1:18101/v1 OPENAI_API_KEY=x PROXY_GATEWAY_TOKEN=t \
        python bench/floor_proxy.py --port 18201 [--workers N]
"""

from __future__ import annotations

import argparse
import hmac
import os

import orjson

TAIL = 4096
_HEALTH = b'{"status":"ok"}'
_UNAUTH = b'{"error":{"message":"invalid bearer token","type":"invalid_request_error","code":"invalid_api_key"}}'
_BADGW = b'{"error":{"message":"upstream unreachable","type":"upstream_error","code":"bad_gateway"}}'


def find_usage(tail: bytes) -> dict | None:
    """Return the last usage object in a JSON body or an SSE tail, or None."""
    i = tail.rfind(b'"usage"')
    if i < 0:
        return None
    if tail.lstrip()[:1] == b"{" and b"data:" not in tail[:16]:
        try:
            return orjson.loads(tail).get("usage")
        except orjson.JSONDecodeError:
            pass
    start = tail.rfind(b"data:", 0, i)
    if start < 0:
        return None
    end = tail.find(b"\n", i)
    line = tail[start + 5 : end if end >= 0 else len(tail)].strip()
    try:
        return orjson.loads(line).get("usage")
    except orjson.JSONDecodeError:
        return None


class Floor:
    def __init__(self) -> None:
        self.base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
        self.token = os.environ.get("PROXY_GATEWAY_TOKEN", "").encode()
        self.up_headers = {
            "Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", ""),
            "Content-Type": "application/json",
        }
        self.session = None
        self.usage_seen = 0

    async def _session(self):
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await self._session()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path = scope["path"]
        if path == "/health":
            return await _reply(send, 200, _HEALTH)
        auth = b""
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
                break
        if not (auth[:7] == b"Bearer " and hmac.compare_digest(auth[7:], self.token)):
            return await _reply(send, 401, _UNAUTH)
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        url = self.base + path[3:] if path.startswith("/v1/") else self.base + path
        try:
            resp = await self.session.post(url, data=body, headers=self.up_headers)
        except Exception:
            return await _reply(send, 502, _BADGW)
        async with resp:
            ctype = resp.headers.get("Content-Type", "application/json").encode()
            if not ctype.startswith(b"text/event-stream"):
                data = await resp.read()
                await send(
                    {
                        "type": "http.response.start",
                        "status": resp.status,
                        "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(data))],
                    }
                )
                await send({"type": "http.response.body", "body": data})
                if find_usage(data[-TAIL:]) is not None:
                    self.usage_seen += 1
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(b"content-type", ctype)],
                }
            )
            tail = b""
            async for chunk in resp.content.iter_any():
                tail = (tail + chunk)[-TAIL:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        if find_usage(tail) is not None:
            self.usage_seen += 1


async def _reply(send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = Floor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    import uvicorn

    uvicorn.run(
        "floor_proxy:app" if a.workers > 1 else app,
        host=a.host,
        port=a.port,
        workers=a.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
    )


if __name__ == "__main__":
    main()
