"""`/ui`: the console's pages, its static files and its JSON API (`/ui/api/...`).

Imported the first time a /ui path is asked for (app.py): the proxy never loads it.

The pages are one static shell (static/index.html) whose script fetches the API and
renders everything with textContent, never markup built from data. Every response
carries a Content-Security-Policy without 'unsafe-inline' (uPlot styles its elements
through element.style, which a policy does not block). The API refuses cross-site
requests (Sec-Fetch-Site, Origin), and every change needs the session's CSRF token in
the X-CSRF-Token header. A tenant's session reads its own tenant only: an id of another
tenant in a URL is a 403 (a tenant page) or a 404 (a request, which for it does not exist).
Failed sign-ins are bounded per client address and in total (throttle.py): then a 429.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ..auth import Authenticator
from ..errors import GatewayError, bad_request, forbidden, not_found, unauthorized
from ..http import json_object, query_params, read_body, send_bytes, send_json
from ..routes.admin import ADMIN_BODY_LIMIT, Admin, ledger_unavailable
from ..settings import TENANT_RE
from ..store import StoreUnavailable
from ..tenants.cache import KeyCache
from ..tenants.store import KeyStore
from .sessions import CSRF_HEADER, ROLE_ADMIN, ROLE_TENANT, Session, Sessions, cookie_value, signing_key
from .status import Status
from .throttle import SignInThrottle, client_address
from .views import Views

log = logging.getLogger("tallygate.console")

STATIC = Path(__file__).parent / "static"
CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors 'none'"
)
COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
PAGE_HEADERS = [(b"content-security-policy", CSP), (b"cache-control", b"no-cache"), *COMMON]
API_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
    *COMMON,
]
TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
# the pages (all the same shell; the script renders the one the path names)
PAGES = re.compile(r"/ui(/|/tenants(/[^/]+)?|/keys|/requests(/[^/]+)?|/billing)?")
SIGN_IN_LIMIT = 4096


def load_static() -> dict[str, tuple[bytes, bytes]]:
    """Every file under static/, by its path there: (content type, bytes). Only these are served."""
    files = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            files[path.relative_to(STATIC).as_posix()] = (
                TYPES.get(path.suffix, b"text/plain; charset=utf-8"),
                path.read_bytes(),
            )
    return files


def _header(headers: dict, name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1").strip()


class Console:
    def __init__(
        self,
        *,
        settings,
        auth: Authenticator,
        keystore: KeyStore,
        keys: KeyCache,
        store,
        admin: Admin,
        ledger_ready: Callable[[], bool],
    ) -> None:
        if not settings.console_secret and not settings.master_key:
            log.warning(
                "console sessions are signed with a key of this process only: set TALLYGATE_CONSOLE_SECRET "
                "(or PROXY_MASTER_KEY) so that they survive restarts and work on every instance"
            )
        self.sessions = Sessions(
            signing_key(settings.console_secret, settings.master_key),
            settings.console_session_ttl,
            settings.master_key,
        )
        self.auth = auth
        self.keystore = keystore
        self.keys = keys
        self.admin = admin
        self.ledger_ready = ledger_ready
        credits = getattr(admin, "credits", None)
        self.views = Views(store, keystore, credits.balance_doc if credits is not None else None)
        self.status = Status(settings)
        self.throttle = SignInThrottle(
            settings.console_sign_in_failures_per_ip, settings.console_sign_in_failures_total
        )
        self.static = load_static()
        self.shell = self.static["index.html"][1]

    async def handle(self, scope, receive, send, method: bytes, path: bytes) -> None:
        try:
            if path.startswith(b"/ui/api/"):
                await self._api(scope, receive, send, method, scope["path"])
            else:
                await self._page(scope, send, method, scope["path"])
        except StoreUnavailable:
            err = ledger_unavailable()
            await send_json(send, err.status, err.body(), [*err.headers, *API_HEADERS])
        except GatewayError as err:
            await send_json(send, err.status, err.body(), [*err.headers, *API_HEADERS])

    # -- pages and files -------------------------------------------------------
    async def _page(self, scope, send, method: bytes, path: str) -> None:
        if method not in (b"GET", b"HEAD"):
            raise GatewayError(
                405, "Method not allowed.", "invalid_request_error", "method_not_allowed", [(b"allow", b"GET")]
            )
        if path.startswith("/ui/static/"):
            found = self.static.get(path[len("/ui/static/") :])
            if found is None:
                raise not_found("No such file.")
            content_type, body = found
        elif PAGES.fullmatch(path):
            content_type, body = TYPES[".html"], self.shell
        else:
            raise not_found(f"No console page {path[:200]!r}.")
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *PAGE_HEADERS]
        await send_bytes(send, 200, headers, b"" if method == b"HEAD" else body)

    # -- the API -----------------------------------------------------------------
    def _secure(self, scope, headers: dict) -> bool:
        proto = _header(headers, b"x-forwarded-proto")
        return scope.get("scheme") == "https" or (proto or "").split(",")[0].strip().lower() == "https"

    def _refuse_cross_site(self, scope, headers: dict, method: bytes) -> None:
        """A browser says where a request comes from (Sec-Fetch-Site, Origin): only this
        site's own pages may call the API; a change must name this origin when it has one."""
        site = _header(headers, b"sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise forbidden("The console API answers this site's own pages only.", "cross_site_request")
        if method in (b"GET", b"HEAD"):
            return
        if site == "none":  # typed into the address bar, or a bookmark: never a change
            raise forbidden("The console API answers this site's own pages only.", "cross_site_request")
        origin = _header(headers, b"origin")
        if origin is not None:
            host = _header(headers, b"host") or ""
            expected = f"{'https' if self._secure(scope, headers) else 'http'}://{host}".lower()
            if origin.lower() != expected:
                raise forbidden("The console API answers this site's own pages only.", "cross_site_request")

    def _session(self, headers: dict) -> Session:
        session = self.sessions.read(cookie_value(headers.get(b"cookie")))
        if session is None:
            raise unauthorized("Not signed in to the console, or the session has expired: sign in again.")
        return session

    async def _check_key(self, session: Session) -> None:
        """A tenant session lasts only as long as the key it was signed in with."""
        if session.role != ROLE_TENANT:
            return
        now = datetime.now(UTC)
        for key in await self.keystore.keys(session.tenant_id):
            if key.key_id == session.key_id:
                if key.revoked_at is None and (key.expires_at is None or key.expires_at > now):
                    return
                break
        raise unauthorized("The key this session was signed in with is no longer valid: sign in again.")

    def _session_doc(self, session: Session) -> dict:
        return {
            "role": session.role,
            "tenant_id": session.tenant_id,
            "key_id": session.key_id,
            "expires_at": datetime.fromtimestamp(session.expires, UTC).isoformat().replace("+00:00", "Z"),
            "csrf_token": self.sessions.csrf_token(session),
        }

    async def _json(self, send, status: int, doc, extra=()) -> None:
        await send_json(send, status, doc, [*API_HEADERS, *extra])

    async def _api(self, scope, receive, send, method: bytes, path: str) -> None:
        headers = dict(scope["headers"])
        self._refuse_cross_site(scope, headers, method)
        if path == "/ui/api/session":
            await self._session_api(scope, receive, send, method, headers)
            return
        session = self._session(headers)
        if method not in (b"GET", b"HEAD") and not self.sessions.csrf_ok(session, headers.get(CSRF_HEADER)):
            raise forbidden("Missing or wrong X-CSRF-Token header: reload the console.", "csrf_token")
        if not self.ledger_ready():
            raise ledger_unavailable()
        await self._check_key(session)
        own = None if session.is_admin else session.tenant_id
        params = query_params(scope)
        parts = path[len("/ui/api/") :].split("/")
        name, ident = parts[0], ("/".join(parts[1:]) or None)
        if name == "overview" and ident is None and method == b"GET":
            asked = params.get("tenant_id") or None
            if own is not None and asked not in (None, own):
                raise forbidden("This session can read its own tenant only.", "other_tenant")
            await self._json(send, 200, await self.views.overview(params, own or asked))
        elif name == "tenants" and method == b"GET":
            if ident is None:
                if own is not None:
                    raise forbidden("This session can read its own tenant only.", "other_tenant")
                await self._json(send, 200, await self.views.tenants())
            else:
                if own is not None and ident != own:
                    raise forbidden("This session can read its own tenant only.", "other_tenant")
                if not TENANT_RE.fullmatch(ident):
                    raise not_found(f"No tenant {ident[:100]!r}.")
                await self._json(send, 200, await self.views.tenant(ident))
        elif name == "keys" and ident is None and method == b"GET":
            asked = params.get("tenant_id") or None
            if own is not None and asked not in (None, own):
                raise forbidden("This session can read its own tenant only.", "other_tenant")
            await self._json(send, 200, await self.views.keys(own or asked))
        elif name == "keys" and ident is None and method == b"POST":
            self._require_admin(session)
            doc = json_object(await read_body(receive, ADMIN_BODY_LIMIT, headers))
            await self._json(send, 201, await self.admin.create_key(doc))
        elif name == "keys" and ident is not None and method == b"DELETE":
            self._require_admin(session)
            await self._json(send, 200, await self.admin.revoke_key(ident))
        elif name == "billing" and ident is None and method == b"GET":
            await self._json(send, 200, await self.status.billing(own))
        elif name == "reconciliation" and ident is None and method == b"GET":
            self._require_admin(session, "Reconciliation runs are shown to the master key's session.")
            await self._json(send, 200, await self.status.reconciliation())
        elif name == "requests" and method == b"GET":
            if ident is None:
                asked = params.get("tenant_id") or None
                if own is not None and asked not in (None, own):
                    raise forbidden("This session can read its own tenant only.", "other_tenant")
                await self._json(send, 200, await self.views.requests(params, own or asked))
            else:
                row = await self.views.request(ident, own)
                if row is None:
                    raise not_found(f"No request {ident[:100]!r}.")
                await self._json(send, 200, row)
        else:
            raise not_found(f"No console API {method.decode()} {path[:200]!r}.")

    @staticmethod
    def _require_admin(
        session: Session, message: str = "Keys are created and revoked with the master key's session."
    ) -> None:
        if not session.is_admin:
            raise forbidden(message, "admin_only")

    async def _session_api(self, scope, receive, send, method: bytes, headers: dict) -> None:
        secure = self._secure(scope, headers)
        if method == b"GET":
            session = self._session(headers)
            await self._check_key(session)
            await self._json(send, 200, self._session_doc(session))
            return
        if method == b"DELETE":
            session = self._session(headers)
            if not self.sessions.csrf_ok(session, headers.get(CSRF_HEADER)):
                raise forbidden("Missing or wrong X-CSRF-Token header: reload the console.", "csrf_token")
            await self._json(send, 200, {"signed_out": True}, [(b"set-cookie", self.sessions.cleared(secure))])
            return
        if method != b"POST":
            raise GatewayError(
                405,
                "Method not allowed.",
                "invalid_request_error",
                "method_not_allowed",
                [(b"allow", b"GET, POST, DELETE")],
            )
        # a JSON body: a form on another site cannot send one without a CORS preflight
        if not (headers.get(b"content-type") or b"").lower().startswith(b"application/json"):
            raise GatewayError(
                415, 'Send the key as JSON: {"key": "..."}.', "invalid_request_error", "unsupported_media_type"
            )
        address = client_address(scope, headers)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            log.warning("console sign-in throttled", extra={"fields": {"client_address": address}})
            raise GatewayError(
                429,
                f"Too many failed sign-ins: try again in {wait} s.",
                "rate_limit_error",
                "sign_in_throttled",
                [(b"retry-after", str(wait).encode())],
            )
        doc = json_object(await read_body(receive, SIGN_IN_LIMIT, headers))
        key = doc.get("key")
        if not isinstance(key, str) or not key.strip():
            raise bad_request('Send the master key or a tenant key as "key".', "invalid_parameter", "key")
        key = key.strip()
        bearer = b"Bearer " + key.encode("utf-8", "replace")
        if self.auth.is_master(bearer):
            cookie, session = self.sessions.issue(ROLE_ADMIN, None, None)
        else:
            tenant_key = self.keys.lookup(key) if key.startswith("tg-") else None
            if tenant_key is None:
                self.throttle.failed(address)
                if self.auth.is_known(bearer):
                    raise forbidden("Sign in with the master key or a tenant key.", "not_a_console_key")
                raise unauthorized("Invalid key.")
            cookie, session = self.sessions.issue(ROLE_TENANT, tenant_key.tenant_id, tenant_key.key_id)
        await self._json(send, 200, self._session_doc(session), [(b"set-cookie", self.sessions.cookie(cookie, secure))])
