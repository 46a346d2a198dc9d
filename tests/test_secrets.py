"""Passwords and keys never reach logs or responses, whatever form they were given in:
DATABASE_URL in its odd forms (SQLAlchemy-style, `%ZZ`, unencoded `/` and `@`), PG*,
REDIS_URL, route keys; upstream error bodies that quote the key; the unauthenticated
/ready. Real gateway processes, real Postgres, a private password-protected Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import psycopg
import pytest

from support import MASTER, TOKEN, base_env, free_port, post, routes_file, wait_until

UPSTREAM_KEY = "sk-upstream-secret-abcdef"  # conftest.base_env's OPENAI_API_KEY
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


def _ready(gw) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(gw.url + "/ready", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _absent(text: str, pieces: list[str]) -> None:
    for piece in pieces:
        assert piece not in text, f"{piece!r} appeared in:\n{text[-3000:]}"


# password, the distinctive pieces of it that must not appear anywhere
PASSWORDS = {
    "sqlalchemy": ("sqla-Secret-7q8w9e", ["sqla-Secret-7q8w9e"]),
    "bad-percent": ("pct%ZZsecret-4d5e6f", ["pct%ZZsecret-4d5e6f", "ZZsecret-4d5e6f"]),
    "slash-at": ("pw1x/pw2y@pw3z-secret", ["pw1x", "pw2y", "pw3z-secret"]),
}


@pytest.fixture
def database(postgres_env):
    return postgres_env["PGDATABASE"]


@pytest.mark.parametrize("form", sorted(PASSWORDS))
def test_database_url_password_never_printed(gateway, database, form):
    password, pieces = PASSWORDS[form]
    scheme = "postgresql+psycopg" if form == "sqlalchemy" else "postgresql"
    # the machine's Postgres trusts loopback: the password is sent and not checked
    url = f"{scheme}://postgres:{password}@127.0.0.1:5432/{database}?sslmode=disable"
    gw = gateway(DATABASE_URL=url)  # waits for /ready: the URL was understood
    status, body = _ready(gw)
    assert status == 200 and json.loads(body) == {"status": "ready"}
    assert post(gw.base_url + "/chat/completions", CHAT, gw.headers())[0] == 200
    gw.wait_records(1)

    # the same URL to a port where nothing listens: errors logged, /ready 503, nothing leaks
    dead = free_port()
    # (limits fail open while the database is down, so the request below is served and its
    # record is buffered, logged, and never shows the password either)
    gw2 = gateway(DATABASE_URL=url.replace(":5432/", f":{dead}/"), ready=False, TALLYGATE_LIMITS_ON_DB_DOWN="open")
    wait_until(lambda: "ledger unavailable" in gw2.output())
    status, body = _ready(gw2)
    assert status == 503 and set(json.loads(body)) == {"status", "detail"}
    _absent(body.decode(), pieces + ["127.0.0.1", str(dead), database])  # no error text, no host
    assert post(gw2.base_url + "/chat/completions", CHAT, gw2.headers())[0] == 200
    wait_until(lambda: "ledger still unavailable" in gw2.output(), timeout=15)
    assert gw.stop() == 0 and gw2.stop() == 0
    for out in (gw.output(), gw2.output()):
        _absent(out, pieces)
        assert "[redacted]" not in out  # the code never printed it: the scrubber had nothing to do
    assert f"127.0.0.1:{dead}/{database}" in gw2.output()  # the host and database are named


@pytest.mark.parametrize("url", [
    "postgresql://postgres:{pw}@127.0.0.1:notaport/x",  # a bad port
    "mysql://postgres:{pw}@127.0.0.1/x",  # another database
    "postgres:{pw}@127.0.0.1/x",  # no scheme
    "postgresql://postgres:{pw}@[::1/x",  # an unclosed IPv6 bracket
])
def test_refused_database_url_is_not_echoed(tmp_path, url):
    password = "refused-Secret-1z2x3c"
    env = base_env("http://127.0.0.1:9/v1", tmp_path, DATABASE_URL=url.format(pw=password))
    proc = subprocess.run([sys.executable, "-m", "tallygate", "serve", "--port", str(free_port())],
                          env=env, capture_output=True, timeout=30)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 2 and "DATABASE_URL" in out, out
    _absent(out, [password])
    for command in (["db", "init"], ["usage"]):
        proc = subprocess.run([sys.executable, "-m", "tallygate", *command], env=env, capture_output=True,
                              timeout=30)
        _absent((proc.stdout + proc.stderr).decode(errors="replace"), [password])


def test_pg_password_from_pg_variables_not_in_ready_or_logs(gateway, postgres_env):
    password = "pgvar-Secret-5t6y7u"
    dead = free_port()
    gw = gateway(**{**postgres_env, "PGPORT": str(dead), "PGPASSWORD": password}, ready=False)
    wait_until(lambda: "ledger unavailable" in gw.output())
    status, body = _ready(gw)
    assert status == 503 and password.encode() not in body
    assert gw.stop() == 0
    _absent(gw.output(), [password])
    assert "[redacted]" not in gw.output()


@pytest.fixture
def redis_with_password(tmp_path):
    port = free_port()
    password = "redis-Secret-8i9o0p"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--requirepass", password, "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(up)
    yield port, password
    proc.terminate()
    proc.wait(10)


def test_scrubber_knows_every_secret_setting(gateway, database, redis_with_password, tmp_path, fake_upstream):
    """A hostile upstream whose redirect names every secret the gateway holds: the line
    that logs the redirect's location must carry none of them."""
    redis_port, redis_password = redis_with_password
    secrets = {
        "PGPASSWORD": "pgpass-Secret-a1s2d3",
        "DATABASE_URL": "dburl-Secret-f4g5h6",
        "REDIS_URL": redis_password,
        "route api_key": "routekey-Secret-j7k8l9",
        "route api_key_env": "routeenv-Secret-z0x9c8",
        "route header": "routehdr-Secret-v7b6n5",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "PROXY_GATEWAY_TOKEN": TOKEN,
        "PROXY_MASTER_KEY": MASTER,
    }
    fake_url = fake_upstream.base_url
    config = routes_file(tmp_path / "routes.toml",
                         {"model": "keyed", "base_url": fake_url, "api_key": secrets["route api_key"]},
                         {"model": "keyed-env", "base_url": fake_url, "api_key_env": "ROUTE_KEY"})
    with open(config, "a") as fh:
        fh.write('[[routes]]\nmodel = "with-header"\nbase_url = "{}"\nauth = "none"\n'
                 '[routes.headers]\nx-api-key = "{}"\n'.format(fake_url, secrets["route header"]))
    gw = gateway(DATABASE_URL=f"postgresql://postgres:{secrets['DATABASE_URL']}@127.0.0.1:5432/{database}"
                              "?sslmode=disable",
                 PGPASSWORD=secrets["PGPASSWORD"], REDIS_URL=f"redis://:{redis_password}@127.0.0.1:{redis_port}/0",
                 TALLYGATE_CONFIG=str(config), ROUTE_KEY=secrets["route api_key_env"])
    # the gateway works with all of them (Redis takes the password; the routes answer)
    for model in ("gpt-4o-mini", "keyed", "keyed-env", "with-header"):
        assert post(gw.base_url + "/chat/completions", {**CHAT, "model": model}, gw.headers())[0] == 200
    for name, secret in secrets.items():
        status, _, _ = post(gw.base_url + "/chat/completions",
                            {**CHAT, "fake": {"redirect": f"/v1/moved/{secret}"}}, gw.headers())
        assert status == 502, name
    gw.wait_records(4 + len(secrets))
    assert gw.stop() == 0
    out = gw.output()
    redirects = [l for l in gw.lines() if "redirect" in l.get("message", "")]
    assert len(redirects) == len(secrets)
    for name, secret in secrets.items():
        assert secret not in out, f"{name} appeared in the log"
    assert all(l["location"] == "/v1/moved/[redacted]" for l in redirects), redirects


def test_upstream_error_bodies_never_show_the_upstream_key(gateway, tmp_path, fake_upstream):
    azure_key = "azurekey-Secret-m3n4b5"
    config = routes_file(tmp_path / "routes.toml", {"model": "azure-x", "base_url": fake_upstream.base_url,
                                                    "auth": "api-key", "api_key": azure_key})
    gw = gateway(TALLYGATE_CONFIG=str(config), TALLYGATE_RETRY_BACKOFF="0.01")
    url = gw.base_url + "/chat/completions"
    for model, key in (("gpt-4o-mini", UPSTREAM_KEY), ("azure-x", azure_key)):
        for status in (401, 503):  # passed through at once; relayed after the retries
            got, headers, body = post(url, {**CHAT, "model": model, "fake": {"status": status, "quote_key": True}},
                                      gw.headers())
            assert got == status
            assert key.encode() not in body
            message = json.loads(body)["error"]["message"]
            assert message == "Incorrect API key provided: [redacted]"
            assert int(headers["content-length"]) == len(body)
    # a success that happens to contain the text is not touched (only error bodies are scrubbed)
    assert post(url, CHAT, gw.headers())[0] == 200
    gw.wait_records(5)


def test_postgres_error_text_is_scrubbed():
    """libpq can quote the connection string in an error; explain() never passes the password on."""
    from tallygate.settings import postgres_from_env
    from tallygate.store.postgres import explain

    pg = postgres_from_env({"DATABASE_URL": "postgresql://u:pw1x/pw2y@pw3z-secret@db.example.com/ledger"})
    exc = psycopg.OperationalError("invalid connection option in "
                                   "\"user=u password=pw1x/pw2y@pw3z-secret host=db.example.com\"")
    text = explain(exc, pg)
    assert "pw1x" not in text and "pw3z-secret" not in text and "db.example.com" in text
    assert pg.description == "db.example.com:5432/ledger"
    assert "pw1x" not in repr(pg)
