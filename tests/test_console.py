"""The web console (/ui) in headless Chromium, driven through Selenium, against a real
gateway process on Postgres with usage seeded through the openai SDK.

Screenshots of every page go to tests/.artifacts/console/ (not committed)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openai
import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from support import MASTER, ROOT, TOKEN, GatewayProcess, base_env, request, wait_until
from support.fake_usage_api import FakeUsageApi
from support.http import admin_call
from support.ledger import MESSAGES, conninfo, pg_rows, send_mixed
from support.tenants import new_key, unique

ARTIFACTS = ROOT / "tests" / ".artifacts" / "console"
XSS_MODEL = "<img src=x onerror=alert(1)>"
SEEDED = 24  # send_mixed requests, plus one with XSS_MODEL
# generous: every wait polls its condition, so a fast machine does not wait this long; a loaded
# one (a cold Chromium, a 30-day overview or the ledger's writes on a busy Postgres) may
PAGE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def console_gw(fake_upstream, postgres_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    env = base_env(fake_upstream.base_url, tmp, TALLYGATE_KEYS_REFRESH="0.5",
                   TALLYGATE_RECONCILE_DIR=str(tmp / "reconcile"), **postgres_env)
    gw = GatewayProcess(env, tmp / "gateway.log")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def seeded(console_gw, postgres_env):
    """Three tenants' mixed usage and one request whose model name is markup."""
    tenants = (unique("con-a"), unique("con-b"), unique("con-c"))
    send_mixed(console_gw, SEEDED, tenants)
    client = openai.OpenAI(base_url=console_gw.base_url, api_key=TOKEN, max_retries=0,
                           default_headers={"X-Tenant-ID": tenants[0]})
    client.chat.completions.create(model=XSS_MODEL, messages=MESSAGES)
    wait_until(lambda: len(pg_rows(postgres_env, "tenant_id = ANY(%s)", (list(tenants),))) == SEEDED + 1,
               timeout=PAGE_TIMEOUT, message="the seeded rows in the ledger")
    return tenants


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {ARTIFACTS}")
    yield driver
    driver.quit()


def wait_for(driver, css: str, timeout: float = PAGE_TIMEOUT):
    return WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))[0]


def shot(driver, name: str) -> None:
    """A screenshot of the whole page, below the window's bottom too (DevTools' capture)."""
    import base64

    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(png["data"]))


def sign_in(driver, gw, key: str) -> None:
    driver.get(gw.url + "/ui")
    driver.delete_all_cookies()
    driver.get(gw.url + "/ui")
    field = wait_for(driver, "#key")
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
    wait_for(driver, "#signed-in-as")


def open_page(driver, gw, path: str, ready_css: str):
    driver.get(gw.url + path)
    return wait_for(driver, ready_css)


def money(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def count(text: str) -> int:
    return int(text.replace(",", ""))


def shown_since(driver) -> str:
    """The start of the period the overview on screen covers (its query's own, to the microsecond)."""
    return wait_for(driver, "#range-span").get_attribute("data-start")


def cli_usage(gw, postgres_env, *args: str) -> list[list[str]]:
    """`tallygate usage` run on the gateway's ledger: the table's lines, split into cells."""
    env = {**base_env("http://127.0.0.1:9/v1", ROOT), **postgres_env}
    out = subprocess.run([sys.executable, "-m", "tallygate", "usage", *args], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [line.split() for line in out.splitlines()[2:] if line.strip() and not line.startswith("-")]


def row_cells(driver, css: str) -> dict[str, str]:
    return {td.get_attribute("data-col"): td.text for td in driver.find_elements(By.CSS_SELECTOR, css + " td")}


def csp_violations(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]


def api_call(gw, method: str, path: str, body=None, headers: dict | None = None):
    """(status, headers, JSON) of a console API call from outside a browser."""
    status, h, data = request(method, gw.url + path, body, headers)
    return status, h, json.loads(data or b"null")


def api_session(gw, key: str = MASTER, extra: dict | None = None) -> tuple[dict, dict]:
    """Sign in over HTTP: (headers carrying the session cookie, the session document)."""
    status, h, doc = api_call(gw, "POST", "/ui/api/session", {"key": key}, extra)
    assert status == 200, doc
    cookie = h["set-cookie"].split(";", 1)[0]
    return {"Cookie": cookie}, doc


# -- the overview -----------------------------------------------------------------------

def test_overview_chart_and_table_show_the_totals_tallygate_usage_prints(console_gw, seeded, browser,
                                                                         postgres_env):
    sign_in(browser, console_gw, MASTER)
    open_page(browser, console_gw, "/ui?range=24h", "#chart-requests canvas")
    wait_for(browser, "#by-tenant tfoot")
    # the CLI over the very period the page shows: "24h" read a few seconds apart are two periods
    cli = cli_usage(console_gw, postgres_env, "--since", shown_since(browser), "--by", "tenant")
    header, total = cli[0], cli[-1]
    assert total[0] == "TOTAL"
    cli_total = dict(zip(header, total, strict=True))
    page_total = row_cells(browser, "#by-tenant tfoot")
    assert count(page_total["requests"]) == int(cli_total["requests"]) >= SEEDED + 1
    for column in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert count(page_total[column]) == int(cli_total[column]), column
    assert money(page_total["cost_usd"]) == Decimal(cli_total["cost_usd"]) > 0
    # each seeded tenant's row as the CLI prints it
    cli_rows = {cells[0]: dict(zip(header, cells, strict=True)) for cells in cli[1:-1]}
    for tenant in seeded:
        link = browser.find_element(By.XPATH, f"//table[@id='by-tenant']//a[text()='{tenant}']")
        cells = row_cells(browser, f"#by-tenant tbody tr:nth-child({_row_index(browser, 'by-tenant', link)})")
        assert count(cells["requests"]) == int(cli_rows[tenant]["requests"])
        assert money(cells["cost_usd"]) == Decimal(cli_rows[tenant]["cost_usd"])
    # the figures and the charts: the same totals, the series really drawn
    assert money(browser.find_element(By.CSS_SELECTOR, "#total-cost .figure-value").text) == Decimal(
        cli_total["cost_usd"])
    assert count(browser.find_element(By.CSS_SELECTOR, "#total-requests .figure-value").text) == int(
        cli_total["requests"])
    chart = browser.find_element(By.ID, "chart-requests")
    assert int(chart.get_attribute("data-sum")) == int(cli_total["requests"])
    assert int(chart.get_attribute("data-points")) >= 24  # every hour of the day, zeros included
    assert _stroke_pixels(browser, "chart-requests", (5, 150, 105)) > 20  # the series' line in its colour
    assert _stroke_pixels(browser, "chart-cost", (37, 99, 235)) > 20
    assert browser.find_element(By.CSS_SELECTOR, "#chart-cost .u-title").text == "Cost (USD)"
    shot(browser, "overview")
    # a phone's screen (a headless window cannot be narrower than 500 px: emulated): the page
    # is as wide as the screen, only the tables scroll sideways, inside their frames
    with phone_screen(browser):
        browser.refresh()
        wait_for(browser, "#chart-requests canvas")
        assert_fits_the_phone(browser)
        shot(browser, "overview-phone")
    # the range picker: 30 days by day, the totals the CLI prints for those 30 days
    browser.find_element(By.LINK_TEXT, "30d").click()
    wait_for(browser, "a.range.current[href='/ui?range=30d']")
    wait_for(browser, "#chart-requests canvas")
    month = cli_usage(console_gw, postgres_env, "--since", shown_since(browser), "--by", "tenant")
    month_total = dict(zip(month[0], month[-1], strict=True))
    page_month = row_cells(browser, "#by-tenant tfoot")
    assert count(page_month["requests"]) == int(month_total["requests"]) >= int(cli_total["requests"])
    assert money(page_month["cost_usd"]) == Decimal(month_total["cost_usd"])
    assert csp_violations(browser) == []


PHONE_WIDTH = 390


@contextlib.contextmanager
def phone_screen(driver):
    """A phone's screen, 390 x 844 CSS pixels (a headless window cannot be narrower than 500
    px: emulated through DevTools)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        yield
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _layout(driver) -> list:
    return driver.execute_script(
        "const w = document.documentElement.clientWidth;"
        "return [w, document.documentElement.scrollWidth, [...document.querySelectorAll('main *')]"
        ".filter(e => !e.closest('.table-wrap') && e.getBoundingClientRect().right > w + 1).map(e => e.tagName)]")


def assert_fits_the_phone(driver) -> None:
    """The page is as wide as the screen; only tables scroll sideways, inside their frames.
    Polled: the charts take the width of their boxes once drawn."""
    expected = [PHONE_WIDTH, PHONE_WIDTH, []]
    try:
        WebDriverWait(driver, 10, poll_frequency=0.2).until(lambda d: _layout(d) == expected)
    except TimeoutException:
        pass
    assert _layout(driver) == expected


def _row_index(driver, table_id: str, inner) -> int:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    for i, row in enumerate(rows, 1):
        if inner.text in row.text.split():
            return i
    raise AssertionError(f"{inner.text} not in #{table_id}")


def _stroke_pixels(driver, chart_id: str, rgb: tuple[int, int, int]) -> int:
    """How many of the chart canvas' pixels are the series' stroke colour."""
    return driver.execute_script(
        """
        const [id, r, g, b] = arguments;
        const canvas = document.querySelector('#' + id + ' canvas');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4)
          if (data[i + 3] > 200 && Math.abs(data[i] - r) < 12 && Math.abs(data[i + 1] - g) < 12 && Math.abs(data[i + 2] - b) < 12) n++;
        return n;
        """, chart_id, *rgb)


# -- keys ----------------------------------------------------------------------------------

def test_a_key_created_in_the_page_is_shown_once_works_and_stops_working_when_revoked(console_gw, browser):
    tenant = unique("con-key")
    sign_in(browser, console_gw, MASTER)
    open_page(browser, console_gw, "/ui/keys", "#create-key")
    browser.find_element(By.CSS_SELECTOR, "#create-key input[name=tenant_id]").send_keys(tenant)
    browser.find_element(By.CSS_SELECTOR, "#create-key input[name=name]").send_keys("<b>ci</b> key")
    browser.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
    secret = wait_for(browser, "#new-key-secret").text
    assert secret.startswith("tg-")
    shot(browser, "keys-created")
    # copy: the key lands on the clipboard (the page asks for writing only; reading it back here
    # is the test's own permission)
    browser.execute_cdp_cmd("Browser.grantPermissions", {"origin": console_gw.url,
                                                         "permissions": ["clipboardReadWrite",
                                                                         "clipboardSanitizedWrite"]})
    browser.find_element(By.ID, "copy-key").click()
    WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: d.find_element(By.ID, "copy-key").text != "Copy")
    assert browser.find_element(By.ID, "copy-key").text == "Copied"
    assert browser.execute_async_script("navigator.clipboard.readText().then(arguments[0], e => arguments[0]("
                                        "'error: ' + e))") == secret
    client = openai.OpenAI(base_url=console_gw.base_url, api_key=secret, max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.usage.total_tokens > 0
    # shown once: a fresh load lists the key by its prefix only, its name as text
    open_page(browser, console_gw, "/ui/keys", "#keys tbody tr")
    assert secret not in browser.page_source
    row = browser.find_element(By.XPATH, f"//table[@id='keys']//tr[td/a[text()='{tenant}']]")
    assert "<b>ci</b> key" in row.text
    assert browser.find_elements(By.CSS_SELECTOR, "#keys b") == []
    button = row.find_element(By.CSS_SELECTOR, "button.danger")
    button.click()
    assert button.text == "Confirm revoke"  # one click arms it, the second revokes
    button.click()
    # the list is drawn again after the change: read it in one step, not element by element
    wait_until(lambda: "revoked" in browser.execute_script(
        "const row = [...document.querySelectorAll('#keys tbody tr')].find(r => r.textContent.includes(arguments[0]));"
        "return row ? row.querySelector('td[data-col=state]').textContent : '';", tenant),
        timeout=PAGE_TIMEOUT, message="the key shown revoked")
    shot(browser, "keys-revoked")
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 401


# -- a tenant's session ------------------------------------------------------------------------

def test_a_tenant_session_sees_only_its_own_tenant(console_gw, seeded, browser, postgres_env):
    mine, other = seeded[0], seeded[1]
    key = new_key(console_gw, mine)["key"]
    sign_in(browser, console_gw, key)
    assert browser.find_element(By.ID, "signed-in-as").text == f"tenant {mine}"
    assert browser.find_elements(By.LINK_TEXT, "Tenants") == []
    open_page(browser, console_gw, "/ui?range=24h", "#by-tenant tbody tr")
    tenants = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#by-tenant tbody a")]
    assert tenants == [mine]
    shot(browser, "tenant-overview")
    open_page(browser, console_gw, "/ui/requests?since=24h", "#requests tbody tr")
    shown = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#requests td[data-col=tenant_id]")}
    assert shown == {mine}
    shot(browser, "tenant-requests")
    status, _, _ = api_call(console_gw, "POST", f"/admin/tenants/{mine}/credits",
                            {"amount_usd": "25.5", "reference": "inv-console-1"},
                            {"Authorization": f"Bearer {MASTER}"})
    assert status == 201
    open_page(browser, console_gw, "/ui/tenants/" + mine, "#tenant-keys")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Tenant {mine}"
    credit = browser.find_element(By.ID, "tenant-credit").text
    assert credit.startswith("prepaid since") and "of $25.50 credited" in credit, credit
    assert browser.find_elements(By.CSS_SELECTOR, "#create-key, button.danger") == []  # read-only
    assert "null" not in browser.find_element(By.TAG_NAME, "main").text.split()
    shot(browser, "tenant-page")
    # the billing page: the exports (its own events, tested below), no reconciliation runs
    browser.find_element(By.LINK_TEXT, "Billing").click()
    wait_for(browser, "#billing")
    assert browser.find_elements(By.ID, "reconciliation") == []
    assert "your tenant's usage" in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, "tenant-billing")
    # another tenant's id in a URL: refused by the server
    error = open_page(browser, console_gw, "/ui/tenants/" + other, "#page-error")
    assert error.get_attribute("data-status") == "403"
    theirs = pg_rows(postgres_env, "tenant_id = %s", (other,))[0]["request_id"]
    error = open_page(browser, console_gw, "/ui/requests/" + theirs, "#page-error")
    assert error.get_attribute("data-status") == "404"
    statuses = browser.execute_script(
        """
        const paths = arguments[0];
        return Promise.all(paths.map(p => fetch(p).then(r => r.status)));
        """,
        ["/ui/api/tenants", f"/ui/api/tenants/{other}", f"/ui/api/requests?tenant_id={other}",
         f"/ui/api/overview?tenant_id={other}", f"/ui/api/keys?tenant_id={other}", f"/ui/api/requests/{theirs}",
         "/ui/api/reconciliation", f"/ui/api/tenants/{mine}"])
    assert statuses == [403, 403, 403, 403, 403, 404, 403, 200]
    # a tenant session changes nothing, even with its CSRF token
    headers, doc = api_session(console_gw, key)
    status, _, body = api_call(console_gw, "POST", "/ui/api/keys", {"tenant_id": mine},
                               {**headers, "X-CSRF-Token": doc["csrf_token"]})
    assert status == 403 and body["error"]["code"] == "admin_only"


# -- hostile data ------------------------------------------------------------------------------

# no client can send this tenant id (X-Tenant-ID is checked), but log lines replayed into the
# ledger (tallygate ledger replay) are taken as they are
XSS_TENANT = '"><svg onload=alert(2)>'
XSS_KEY = "<img src=x onerror=alert(3)>"


def _hostile_row(gw, postgres_env, tmp_path) -> str:
    """A request whose tenant id is markup, put in the ledger by `tallygate ledger replay` (log
    lines are read back as they are); its request id."""
    line = next(r for r in gw.records() if r["model"] == XSS_MODEL)
    new_id = "req-xss-" + unique("row")
    start = (datetime.now(UTC) - timedelta(hours=4)).isoformat().replace("+00:00", "Z")
    (tmp_path / "hostile.log").write_text(json.dumps({**line, "request_id": new_id, "tenant_id": XSS_TENANT,
                                                      "start_time": start}) + "\n")
    env = {**base_env("http://127.0.0.1:9/v1", tmp_path), **postgres_env}
    subprocess.run([sys.executable, "-m", "tallygate", "ledger", "replay", str(tmp_path / "hostile.log")], env=env,
                   capture_output=True, text=True, timeout=60, check=True)
    assert len(pg_rows(postgres_env, "request_id = %s", (new_id,))) == 1
    return new_id


def assert_no_markup_ran(driver) -> None:
    assert driver.execute_script("return document.querySelectorAll('img, svg, script:not([src])').length") == 0
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 (reading it is the check)


def test_markup_in_tenant_ids_key_names_and_model_names_stays_text_on_every_page(console_gw, seeded, browser,
                                                                                  postgres_env, tmp_path):
    mine = seeded[0]
    hostile = _hostile_row(console_gw, postgres_env, tmp_path)
    status, _, made = admin_call(console_gw.url + "/admin/keys", "POST", {"tenant_id": mine, "name": XSS_KEY})
    assert status == 201, made
    sign_in(browser, console_gw, MASTER)
    quoted = urllib.parse.quote(XSS_TENANT, safe="")
    pages = [  # (path, ready, what must show as text)
        ("/ui?range=24h", "#by-model tbody tr", (XSS_TENANT, XSS_MODEL)),
        ("/ui/tenants", "#tenants tbody tr", (XSS_TENANT,)),
        (f"/ui/tenants/{mine}", "#tenant-keys tbody tr", (XSS_MODEL, XSS_KEY)),
        ("/ui/keys", "#keys tbody tr", (XSS_KEY,)),
        (f"/ui/requests?since=24h&tenant_id={quoted}", "#requests tbody tr", (XSS_TENANT, XSS_MODEL)),
        (f"/ui/requests/{hostile}", "#request-record", (XSS_TENANT, XSS_MODEL)),
        (f"/ui/tenants/{quoted}", "#page-error", (XSS_TENANT,)),  # not a tenant id: a 404 naming it
        ("/ui/billing", "#billing", ()),
    ]
    for path, ready, texts in pages:
        open_page(browser, console_gw, path, ready)
        text = browser.find_element(By.TAG_NAME, "main").text
        for expected in texts:
            assert expected in text, (path, expected)
        assert_no_markup_ran(browser)
    # the model's cell and the record's field hold the name itself
    open_page(browser, console_gw, f"/ui/requests?since=24h&tenant_id={mine}", "#requests tbody tr")
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#requests td[data-col=model]")]
    assert XSS_MODEL in cells
    browser.find_elements(By.XPATH, "//table[@id='requests']//tr[td[@data-col='model'][text()="
                                    f"'{XSS_MODEL}']]//a")[0].click()
    assert wait_for(browser, "#request-record dd[data-field=model]").text == XSS_MODEL
    shot(browser, "request-record")
    open_page(browser, console_gw, "/ui/tenants", "#tenants tbody tr")
    shot(browser, "tenants")
    assert csp_violations(browser) == []
    # a tenant id with markup is refused where clients give one: the console, the proxy
    headers, doc = api_session(console_gw)
    status, _, body = api_call(console_gw, "POST", "/ui/api/keys", {"tenant_id": XSS_TENANT},
                               {**headers, "X-CSRF-Token": doc["csrf_token"]})
    assert status == 400, body
    client = openai.OpenAI(base_url=console_gw.base_url, api_key=TOKEN, max_retries=0,
                           default_headers={"X-Tenant-ID": XSS_TENANT})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


# -- sessions, cookies, CSRF ------------------------------------------------------------------

def test_the_session_cookie_is_http_only_strict_and_secure_behind_https(console_gw, browser):
    sign_in(browser, console_gw, MASTER)
    cookie = browser.get_cookie("tallygate_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False
    assert cookie["path"] == "/ui"
    assert 8 * 3600 - 120 < cookie["expiry"] - time.time() <= 8 * 3600
    # neither the key nor the cookie is readable by the page's script or kept in storage
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return localStorage.length + sessionStorage.length") == 0
    assert MASTER not in browser.page_source
    # behind an HTTPS proxy (Cloud Run): Secure
    status, headers, _ = request("POST", console_gw.url + "/ui/api/session", {"key": MASTER},
                                 {"X-Forwarded-Proto": "https"})
    assert status == 200
    flags = [f.strip() for f in headers["set-cookie"].split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Secure", "Path=/ui", "Max-Age=28800"} <= set(flags)
    # a changed cookie, or none, is no session
    good, _ = api_session(console_gw)
    assert api_call(console_gw, "GET", "/ui/api/overview", headers=good)[0] == 200
    value = good["Cookie"]
    forged = {"Cookie": value[:30] + ("A" if value[30] != "A" else "B") + value[31:]}
    assert api_call(console_gw, "GET", "/ui/api/overview", headers=forged)[0] == 401
    assert api_call(console_gw, "GET", "/ui/api/overview")[0] == 401


def test_console_changes_need_the_csrf_token_and_this_origin(console_gw):
    headers, doc = api_session(console_gw)
    token = {"X-CSRF-Token": doc["csrf_token"]}
    own = {"Origin": console_gw.url}
    body = {"tenant_id": unique("con-csrf")}

    def post_key(extra: dict) -> tuple[int, str | None]:
        status, _, answer = api_call(console_gw, "POST", "/ui/api/keys", body, {**headers, **extra})
        return status, (answer.get("error") or {}).get("code")

    assert post_key(own) == (403, "csrf_token")
    assert post_key({**own, "X-CSRF-Token": "x" * 43}) == (403, "csrf_token")
    assert post_key({**token, "Origin": "http://evil.example"}) == (403, "cross_site_request")
    assert post_key({**token, **own, "Sec-Fetch-Site": "cross-site"}) == (403, "cross_site_request")
    assert post_key({**token, **own, "Sec-Fetch-Site": "same-site"}) == (403, "cross_site_request")
    # another session's token is not this session's
    other_headers, other = api_session(console_gw)
    assert post_key({"X-CSRF-Token": other["csrf_token"], **own}) == (403, "csrf_token")
    status, _, created = api_call(console_gw, "POST", "/ui/api/keys", body, {**headers, **token, **own,
                                                                             "Sec-Fetch-Site": "same-origin"})
    assert status == 201 and created["key"].startswith("tg-")
    # reads from another site are refused too, and so are revocations without the token
    status, _, _ = api_call(console_gw, "GET", "/ui/api/overview", headers={**headers, "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, _ = api_call(console_gw, "DELETE", f"/ui/api/keys/{created['key_id']}", headers={**headers, **own})
    assert status == 403
    # every change the API has: refused without the token, and from another site with it
    changes = [("POST", "/ui/api/keys", body), ("DELETE", f"/ui/api/keys/{created['key_id']}", None),
               ("DELETE", "/ui/api/session", None)]
    for method, path, payload in changes:
        status, _, answer = api_call(console_gw, method, path, payload, {**headers, **own})
        assert (status, answer["error"]["code"]) == (403, "csrf_token"), (method, path)
        for site in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            status, _, answer = api_call(console_gw, method, path, payload, {**headers, **token, **site})
            assert (status, answer["error"]["code"]) == (403, "cross_site_request"), (method, path, site)
    assert api_call(console_gw, "GET", "/ui/api/session", headers=headers)[0] == 200  # still signed in
    status, _, keys = api_call(console_gw, "GET", f"/ui/api/keys?tenant_id={body['tenant_id']}", headers=headers)
    assert [k["revoked"] for k in keys["data"]] == [False]  # and the key not revoked
    # signing in: JSON only, from this origin only, with a console key only
    status, _, _ = request("POST", console_gw.url + "/ui/api/session", f"key={MASTER}".encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    assert api_call(console_gw, "POST", "/ui/api/session", {"key": MASTER}, {"Origin": "http://evil.example"})[0] == 403
    assert api_call(console_gw, "POST", "/ui/api/session", {"key": TOKEN})[0] == 403  # the shared gateway token
    assert api_call(console_gw, "POST", "/ui/api/session", {"key": "tg-not-a-key"})[0] == 401
    # signing out needs the token as well
    assert api_call(console_gw, "DELETE", "/ui/api/session", headers=other_headers)[0] == 403
    assert api_call(console_gw, "DELETE", "/ui/api/session",
                    headers={**other_headers, "X-CSRF-Token": other["csrf_token"]})[0] == 200


def test_pages_carry_a_policy_without_unsafe_inline_and_only_packaged_files_are_served(console_gw):
    for path in ("/ui", "/ui/keys", "/ui/tenants/x", "/ui/static/console.js",
                 "/ui/static/vendor/uplot/uPlot.iife.min.js"):
        status, headers, _ = request("GET", console_gw.url + path)
        assert status == 200, path
        csp = headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
    for path in ("/ui/static/../sessions.py", "/ui/static/%2e%2e/handler.py", "/ui/elsewhere", "/uix"):
        assert request("GET", console_gw.url + path)[0] == 404, path
    # bad input to the API: a clear 4xx, never a 500
    headers, _ = api_session(console_gw)
    for path, status in (("/ui/api/overview?range=1y", 400), ("/ui/api/requests?since=999999999d", 400),
                         ("/ui/api/requests?status=teapot", 400), ("/ui/api/requests?limit=x", 400),
                         ("/ui/api/tenants/a%2Fb", 404), ("/ui/api/nothing", 404), ("/ui/api/requests/nope", 404)):
        assert api_call(console_gw, "GET", path, headers=headers)[0] == status, path


def test_the_console_is_not_imported_by_the_gateway_until_ui_is_used():
    code = (
        "import sys; from tallygate.app import create_app; from tallygate import settings; "
        "create_app(settings.load({'PROXY_MASTER_KEY': 'k' * 20})); "
        "print(sorted(m for m in sys.modules if m.startswith('tallygate.console')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_revoked_tenant_key_ends_its_console_session(console_gw, seeded):
    made = new_key(console_gw, seeded[2])
    headers, _ = api_session(console_gw, made["key"])
    assert api_call(console_gw, "GET", "/ui/api/overview", headers=headers)[0] == 200
    status, _, _ = api_call(console_gw, "DELETE", f"/admin/keys/{made['key_id']}",
                            headers={"Authorization": f"Bearer {MASTER}"})
    assert status == 200
    assert api_call(console_gw, "GET", "/ui/api/overview", headers=headers)[0] == 401
    assert api_call(console_gw, "GET", "/ui/api/session", headers=headers)[0] == 401



# -- the SQLite ledger, sessions across instances, expiry --------------------------------------

def test_the_console_api_on_the_sqlite_ledger_agrees_with_tallygate_usage(gateway, tmp_path):
    gw = gateway()  # the SQLite ledger (base_env)
    tenants = (unique("con-sq-a"), unique("con-sq-b"))
    send_mixed(gw, 9, tenants)
    gw.wait_records(9, timeout=PAGE_TIMEOUT)
    headers, _ = api_session(gw)

    def overview():
        return api_call(gw, "GET", "/ui/api/overview?range=7d", headers=headers)[2]

    doc = wait_until(lambda: (d := overview())["totals"]["requests"] == 9 and d, timeout=PAGE_TIMEOUT,
                     message="the rows written")
    env = {**base_env("http://127.0.0.1:9/v1", tmp_path), "TALLYGATE_SQLITE_PATH": gw.env["TALLYGATE_SQLITE_PATH"]}
    out = subprocess.run([sys.executable, "-m", "tallygate", "usage", "--since", "7d", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    cli = json.loads(out)
    assert Decimal(doc["totals"]["cost_usd"]) == sum((Decimal(r["cost_usd"]) for r in cli), Decimal(0)) > 0
    assert {r["tenant_id"]: r for r in doc["by_tenant"]} == {r["tenant_id"]: r for r in cli}
    assert doc["bucket"] == "hour" and len(doc["series"]) >= 7 * 24
    assert sum(p["requests"] for p in doc["series"]) == 9
    assert sum(Decimal(p["cost_usd"]) for p in doc["series"]) == Decimal(doc["totals"]["cost_usd"])
    assert doc["health"]["requests"] == 9 and doc["health"]["p95_latency_ms"] > 0
    rows = api_call(gw, "GET", f"/ui/api/requests?tenant_id={tenants[1]}", headers=headers)[2]["data"]
    assert len(rows) == 4 and {r["tenant_id"] for r in rows} == {tenants[1]}
    record = api_call(gw, "GET", f"/ui/api/requests/{rows[0]['request_id']}", headers=headers)[2]
    assert record["request_id"] == rows[0]["request_id"] and "price_source" in record
    # no TALLYGATE_RECONCILE_DIR: no runs kept, and the page can say so; the exports on SQLite
    assert api_call(gw, "GET", "/ui/api/reconciliation", headers=headers)[2] == {
        "object": "list", "configured": False, "directory": None, "data": []}
    assert api_call(gw, "GET", "/ui/api/billing", headers=headers)[2]["data"] == []


def test_sessions_carry_between_instances_with_the_same_master_key_and_expire(gateway):
    first, second = gateway(), gateway()
    headers, _ = api_session(first)
    assert api_call(second, "GET", "/ui/api/session", headers=headers)[0] == 200  # the key derived alike
    other = gateway(PROXY_MASTER_KEY="tg-another-master-key-0123456789")
    assert api_call(other, "GET", "/ui/api/session", headers=headers)[0] == 401  # a new master key ends them
    short = gateway(TALLYGATE_CONSOLE_SESSION_TTL="1", TALLYGATE_CONSOLE_SECRET="s" * 32)
    status, h, _ = api_call(short, "POST", "/ui/api/session", {"key": MASTER})
    assert status == 200 and "Max-Age=1;" in h["set-cookie"]
    brief = {"Cookie": h["set-cookie"].split(";", 1)[0]}
    assert api_call(short, "GET", "/ui/api/session", headers=brief)[0] == 200
    wait_until(lambda: api_call(short, "GET", "/ui/api/session", headers=brief)[0] == 401, timeout=15,
               interval=0.2, message="the one-second session ended")


def test_tenants_nearest_their_budget_come_first(console_gw, seeded, browser):
    master = {"Authorization": f"Bearer {MASTER}"}
    spent = {r["tenant_id"]: Decimal(r["cost_usd"]) for r in
             api_call(console_gw, "GET", "/admin/usage?since=1d", headers=master)[2]["data"]}
    near = seeded[1]  # the gpt-4o tenant: the most spent
    budget = (spent[near] * 5 / 4).quantize(Decimal("0.000001"))  # 80% used
    for tenant, amount in ((near, str(budget)), (seeded[2], "1000")):
        assert api_call(console_gw, "PUT", f"/admin/tenants/{tenant}", {"budget_usd": amount, "budget_period": "day"},
                        master)[0] == 200
    headers, _ = api_session(console_gw)
    listed = api_call(console_gw, "GET", "/ui/api/tenants", headers=headers)[2]["data"]
    assert listed[0]["tenant_id"] == near
    first = listed[0]["budget"]
    assert Decimal(first["spent_usd"]) == spent[near] and Decimal(first["budget_usd"]) == budget
    assert Decimal(first["used_percent"]) == (spent[near] * 100 / budget).quantize(Decimal("0.1"))
    assert first["exceeded"] is False
    sign_in(browser, console_gw, MASTER)
    open_page(browser, console_gw, "/ui/tenants", "#tenants tbody tr")
    row = browser.find_element(By.CSS_SELECTOR, "#tenants tbody tr")
    assert near in row.text and f"({first['used_percent']}%)" in row.text
    shot(browser, "tenants")


def _outbox_numbers(status: str) -> list[int]:
    """sent, unsent, held, refused from `tallygate billing status`'s outbox line:
    "  outbox: 0 sent, 3 unsent (3 held: no Stripe customer, 0 refused by Stripe)"."""
    outbox = next(line for line in status.splitlines() if line.strip().startswith("outbox:"))
    return [int(word) for word in outbox.replace(",", " ").replace("(", " ").split() if word.isdigit()]


def test_the_billing_page_shows_what_tallygate_billing_status_prints(console_gw, seeded, browser, postgres_env):
    from support.fake_billing import FakeStripe

    stripe = FakeStripe()
    env = {**base_env("http://127.0.0.1:9/v1", ROOT), **postgres_env,
           "STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.url}

    def export_and_status() -> str:
        run = subprocess.run([sys.executable, "-m", "tallygate", "billing", "export", "stripe", "--since", "3h",
                              "--window", "5s", "--settle", "1s"], env=env, capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stdout + run.stderr
        return subprocess.run([sys.executable, "-m", "tallygate", "billing", "status"], env=env,
                              capture_output=True, text=True, timeout=60, check=True).stdout

    try:
        sign_in(browser, console_gw, MASTER)
        open_page(browser, console_gw, "/ui/billing", "#billing")
        before = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#billing td")}
        # no Stripe customer here: the two priced tenants' events wait, held (the third's usage
        # is unpriced, nothing to charge); exported once their 5-second windows have closed
        status = wait_until(lambda: (out := export_and_status()) and "outbox:" in out
                            and _outbox_numbers(out)[2] >= 2 and out, timeout=60, interval=1,
                            message="the seeded windows closed and exported")
    finally:
        stripe.stop()
    numbers = _outbox_numbers(status)
    open_page(browser, console_gw, "/ui/billing", "#billing tbody tr td[data-col=sent]")
    row = row_cells(browser, "#billing tbody tr")
    assert row["name"] == status.split(":", 1)[0].strip()
    assert [count(row[c]) for c in ("sent", "unsent", "held", "refused")] == numbers
    assert count(row["sent"]) == 0
    assert "No billing export has run yet." in before
    shot(browser, "billing")
    # a tenant's session: the exports, its own tenant's events only
    mine = seeded[0]
    with psycopg.connect(conninfo(postgres_env)) as conn:
        held = conn.execute("SELECT count(*) FROM billing_export_outbox WHERE tenant_id = %s AND sent_at IS NULL "
                            "AND customer_id IS NULL", (mine,)).fetchone()[0]
    assert 0 < held < numbers[2]
    headers, _ = api_session(console_gw, new_key(console_gw, mine)["key"])
    status_code, _, doc = api_call(console_gw, "GET", f"/ui/api/billing?tenant_id={seeded[1]}", headers=headers)
    assert status_code == 200 and doc["tenant_id"] == mine
    assert doc["data"][0]["outbox"] == {"sent": 0, "unsent": held, "held": held, "refused": 0}
    assert api_call(console_gw, "GET", "/ui/api/reconciliation", headers=headers)[0] == 403


def test_the_billing_page_shows_the_last_reconciliation_runs(console_gw, seeded, browser, postgres_env, tmp_path):
    """`tallygate reconcile` with TALLYGATE_RECONCILE_DIR keeps each run where the console
    reads it; the page shows what the run's --json document says, names from the ledger as text."""
    sign_in(browser, console_gw, MASTER)
    open_page(browser, console_gw, "/ui/billing", "#reconciliation")
    assert "No reconciliation has run yet." in browser.find_element(By.ID, "reconciliation").text
    fake = FakeUsageApi("sk-admin-console-0123456789", rate_limit_once=False)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    # the provider saw fewer gpt-4o-mini requests than the ledger holds, and none of the others
    fake.openai_completions = [{"model": "gpt-4o-mini", "project_id": "proj_a", "api_key_id": "key_a",
                                "num_model_requests": 1, "input_tokens": 100, "input_cached_tokens": 0,
                                "output_tokens": 10}]
    fake.openai_costs = [{"project_id": "proj_a", "amount": {"value": Decimal("0.0001"), "currency": "usd"}}]
    env = {**base_env("http://127.0.0.1:9/v1", tmp_path), **postgres_env, "OPENAI_ADMIN_KEY": fake.admin_key,
           "TALLYGATE_RECONCILE_DIR": console_gw.env["TALLYGATE_RECONCILE_DIR"]}
    try:
        for _ in range(2):  # a second run of the day replaces the first
            run = subprocess.run([sys.executable, "-m", "tallygate", "reconcile", "openai", "--day", day,
                                  "--base-url", fake.openai_base_url, "--json", str(tmp_path / "run.json")],
                                 env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode == 3, run.stdout + run.stderr
    finally:
        fake.stop()
    doc = json.loads((tmp_path / "run.json").read_text())
    kept = json.loads((Path(console_gw.env["TALLYGATE_RECONCILE_DIR"]) / f"openai-{day}.json").read_text())
    assert {k: v for k, v in kept.items() if k not in ("ran_at", "exit_status")} == doc
    assert kept["exit_status"] == 3
    over = [r for r in doc["rows"] if r["over_tolerance"]]
    assert any(r["model"] == XSS_MODEL for r in over)
    open_page(browser, console_gw, "/ui/billing", "#reconciliation tbody td[data-col=ran_at]")
    rows = browser.find_elements(By.CSS_SELECTOR, "#reconciliation tbody tr")
    assert len(rows) == 1
    cells = row_cells(browser, "#reconciliation tbody tr")
    assert (cells["day"], cells["provider"]) == (day, "openai")
    assert cells["result"] == f"{len(over)} of {len(doc['rows'])} over {doc['tolerance_percent']}%"
    assert XSS_MODEL in cells["over"]
    ledger, provider = cells["cost_usd"].split(" (")[0].split(" / ")
    assert money(ledger) == Decimal(doc["totals"]["cost_usd"]["ledger"])
    assert money(provider) == Decimal(doc["totals"]["cost_usd"]["provider"]) == Decimal("0.0001")
    assert count(cells["requests"].split(" / ")[0]) == doc["totals"]["requests"]["ledger"]
    assert browser.find_elements(By.TAG_NAME, "img") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    shot(browser, "billing-reconciliation")
    assert csp_violations(browser) == []
    # a file that cannot be read is listed with the reason, after the newer days
    (Path(console_gw.env["TALLYGATE_RECONCILE_DIR"]) / "anthropic-2020-01-01.json").write_text("{not json")
    headers, _ = api_session(console_gw)
    runs = api_call(console_gw, "GET", "/ui/api/reconciliation", headers=headers)[2]["data"]
    assert [(r["provider"], r["day"]) for r in runs] == [("openai", day), ("anthropic", "2020-01-01")]
    assert runs[1]["error"].startswith("cannot read anthropic-2020-01-01.json")
    # a directory that cannot be written: a clear error, exit status 1
    blocked = {**env, "TALLYGATE_RECONCILE_DIR": str(tmp_path / "run.json")}  # a file, not a directory
    fake = FakeUsageApi(fake.admin_key, rate_limit_once=False)
    try:
        run = subprocess.run([sys.executable, "-m", "tallygate", "reconcile", "openai", "--day", day,
                              "--base-url", fake.openai_base_url], env=blocked, capture_output=True, text=True,
                             timeout=120)
    finally:
        fake.stop()
    assert run.returncode == 1 and "TALLYGATE_RECONCILE_DIR: cannot write" in run.stderr, run.stderr


# -- sign-in throttling ---------------------------------------------------------------------------

def test_failed_sign_ins_are_bounded_per_address_and_in_total(gateway):
    gw = gateway(TALLYGATE_CONSOLE_SIGN_IN_FAILURES_PER_IP="3", TALLYGATE_CONSOLE_SIGN_IN_FAILURES_TOTAL="5")

    def sign_in_from(address: str, key: str) -> tuple[int, dict, dict]:
        return api_call(gw, "POST", "/ui/api/session", {"key": key}, {"X-Forwarded-For": f"10.9.9.9, {address}"})

    for _ in range(3):
        assert sign_in_from("203.0.113.7", "tg-guess-0000")[0] == 401
    status, headers, doc = sign_in_from("203.0.113.7", MASTER)  # even the right key: checking it would tell
    assert status == 429 and doc["error"]["code"] == "sign_in_throttled"
    assert 1 <= int(headers["retry-after"]) <= 60
    status, headers, _ = sign_in_from("198.51.100.1", MASTER)  # another address signs in
    assert status == 200
    session = {"Cookie": headers["set-cookie"].split(";", 1)[0]}
    assert sign_in_from("198.51.100.1", TOKEN)[0] == 403  # the gateway token is no console key: a failure
    assert sign_in_from("198.51.100.2", "tg-guess-0001")[0] == 401  # the fifth failure of all
    status, headers, _ = sign_in_from("198.51.100.3", MASTER)  # a fresh address, past the total
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
    # a session signed in before goes on; the form is no oracle while throttled
    assert api_call(gw, "GET", "/ui/api/session", headers=session)[0] == 200
    assert sign_in_from("198.51.100.3", "tg-guess-0002")[0] == 429


def test_the_sign_in_throttle_forgets_failures_older_than_a_minute():
    from tallygate.console.throttle import SignInThrottle

    now = [1000.0]
    throttle = SignInThrottle(per_address=2, total=3, clock=lambda: now[0])
    throttle.failed("a")
    now[0] += 20
    throttle.failed("a")
    assert throttle.retry_after("a") == 40  # the first failure leaves the minute in 40 s
    assert throttle.retry_after("b") is None
    throttle.failed("b")
    assert throttle.retry_after("b") == 40  # three in all: the first of them leaves in 40 s
    now[0] += 40
    assert throttle.retry_after("a") is None and throttle.retry_after("b") is None
    now[0] += 0.5
    throttle.failed("a")
    assert throttle.retry_after("a") == 20  # the second failure (at 1020) leaves at 1080


# -- the request path does not load the console ---------------------------------------------------

def test_a_running_gateway_imports_the_console_only_when_ui_is_asked_for(gateway):
    gw = gateway(PYTHONPROFILEIMPORTTIME="1")  # every import on stderr (the log), as it happens
    client = openai.OpenAI(base_url=gw.base_url, api_key=TOKEN, max_retries=0,
                           default_headers={"X-Tenant-ID": unique("con-imp")})
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage.total_tokens > 0
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert api_call(gw, "GET", "/admin/usage?since=1h", headers={"Authorization": f"Bearer {MASTER}"})[0] == 200
    gw.wait_records(2, timeout=PAGE_TIMEOUT)
    assert "import time:" in gw.output() and "tallygate.console" not in gw.output()
    assert request("GET", gw.url + "/ui")[0] == 200
    wait_until(lambda: "tallygate.console.handler" in gw.output(), timeout=PAGE_TIMEOUT,
               message="the console imported")


def test_every_page_fits_a_phone_screen(console_gw, seeded, browser, postgres_env):
    """Each page at 390 px wide (and a screenshot of it, as on a laptop): nothing sticks out
    of the screen; wide tables scroll inside their frames."""
    request_id = pg_rows(postgres_env, "tenant_id = %s", (seeded[1],))[0]["request_id"]
    pages = [("overview", "/ui?range=7d", "#chart-requests canvas"), ("tenants", "/ui/tenants", "#tenants"),
             ("tenant", f"/ui/tenants/{seeded[1]}", "#tenant-keys"), ("keys", "/ui/keys", "#keys"),
             ("requests", "/ui/requests?since=24h", "#requests tbody tr"),
             ("request", f"/ui/requests/{request_id}", "#request-record"), ("billing", "/ui/billing", "#billing")]
    browser.get(console_gw.url + "/ui")
    browser.delete_all_cookies()
    browser.get(console_gw.url + "/ui")
    wait_for(browser, "#key")
    shot(browser, "sign-in")
    with phone_screen(browser):
        browser.refresh()
        wait_for(browser, "#key")
        assert_fits_the_phone(browser)
        shot(browser, "sign-in-phone")
    sign_in(browser, console_gw, MASTER)
    for name, path, ready in pages:
        open_page(browser, console_gw, path, ready)
        shot(browser, f"page-{name}")
        with phone_screen(browser):
            browser.refresh()
            wait_for(browser, ready)
            assert_fits_the_phone(browser)
            shot(browser, f"page-{name}-phone")
    assert csp_violations(browser) == []
