"""Console sessions: a signed cookie instead of a key kept in the browser.

Signing in with the master key or a tenant key gives a cookie holding who signed in
(role, tenant, key id), when it expires and a random nonce, signed with HMAC-SHA256.
Nothing is stored on the server; the key itself is never in the cookie or the page.
The CSRF token is the HMAC of the nonce: the page reads it from the session document
and sends it in a header with every change, which another site cannot read or forge.

The signing key: TALLYGATE_CONSOLE_SECRET when set; otherwise derived from the master
key by HMAC (every instance of a service derives the same one, so a session works on
any Cloud Run instance, and changing the master key ends every session); without
either, a random key per process (sessions end with the process and do not carry
between instances: set TALLYGATE_CONSOLE_SECRET when running several).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

import orjson

COOKIE = "tallygate_console"
CSRF_HEADER = b"x-csrf-token"
ROLE_ADMIN = "admin"
ROLE_TENANT = "tenant"
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(console_secret: str | None, master_key: str | None) -> bytes:
    if console_secret:
        return hashlib.sha256(b"tallygate console sessions\0" + console_secret.encode()).digest()
    if master_key:
        return hmac.new(master_key.encode(), b"tallygate console sessions v1", hashlib.sha256).digest()
    return os.urandom(32)


@dataclass(frozen=True, slots=True)
class Session:
    role: str  # admin (every tenant) or tenant (its own only)
    tenant_id: str | None  # None for admin
    key_id: str | None  # the tenant key signed in with
    expires: int  # Unix seconds
    nonce: str

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN


class Sessions:
    def __init__(self, key: bytes, ttl: float, master_key: str | None) -> None:
        self._key = key
        self.ttl = int(ttl)
        # admin sessions name the master key they were signed in with (a fingerprint, not
        # the key): when TALLYGATE_CONSOLE_SECRET is set, a new master key still ends them
        self._master_mark = self._mac(b"master\0" + master_key.encode())[:16] if master_key else None

    def _mac(self, data: bytes) -> str:
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())

    def issue(
        self, role: str, tenant_id: str | None, key_id: str | None, now: float | None = None
    ) -> tuple[str, Session]:
        """(cookie value, session) for a new sign-in."""
        expires = int((now or time.time()) + self.ttl)
        nonce = secrets.token_urlsafe(16)
        doc = {"r": role, "t": tenant_id, "k": key_id, "x": expires, "n": nonce}
        if role == ROLE_ADMIN:
            doc["m"] = self._master_mark
        body = f"{_VERSION}.{_b64(orjson.dumps(doc))}"
        return f"{body}.{self._mac(body.encode())}", Session(role, tenant_id, key_id, expires, nonce)

    def read(self, value: str | None, now: float | None = None) -> Session | None:
        """The session a cookie value holds, or None (absent, forged, expired, stale)."""
        if not value or len(value) > 2048:
            return None
        body, _, mac = value.rpartition(".")
        if not body.startswith(_VERSION + ".") or not hmac.compare_digest(mac, self._mac(body.encode())):
            return None
        try:
            doc = orjson.loads(_unb64(body[len(_VERSION) + 1 :]))
            session = Session(doc["r"], doc["t"], doc["k"], int(doc["x"]), doc["n"])
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= (now or time.time()):
            return None
        if session.role == ROLE_ADMIN:
            if self._master_mark is None or not hmac.compare_digest(str(doc.get("m")), self._master_mark):
                return None
        elif session.role != ROLE_TENANT or not session.tenant_id or not session.key_id:
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._mac(b"csrf\0" + session.nonce.encode())

    def csrf_ok(self, session: Session, token: bytes | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(session).encode())

    def cookie(self, value: str, secure: bool) -> bytes:
        """The Set-Cookie value of a sign-in: script cannot read it, no other site sends it."""
        flags = f"; Path=/ui; Max-Age={self.ttl}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
        return f"{COOKIE}={value}{flags}".encode()

    @staticmethod
    def cleared(secure: bool) -> bytes:
        return f"{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict{'; Secure' if secure else ''}".encode()


def cookie_value(header: bytes | None) -> str | None:
    """The console cookie from a Cookie header (the last one, if repeated)."""
    if not header:
        return None
    found = None
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE:
            found = value
    return found
