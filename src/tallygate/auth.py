"""Bearer tokens -> Principal(tenant_id, key_id, role).

On the Anthropic endpoints a request without an Authorization header may send its token
as `x-api-key` (the header Anthropic's SDKs and Claude Code use): it is then read as that
bearer token (WireFormat.api_key_header).

Three kinds of credential: the shared gateway token (tenant from `X-Tenant-ID`),
the master key (admin; tenant from the header too), and tenant keys (`tg-...`,
stored hashed; the key fixes its tenant). Secrets are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from .errors import bad_request, forbidden, unauthorized, unavailable
from .settings import TENANT_RE

ROLE_GATEWAY = "gateway"
ROLE_ADMIN = "admin"
ROLE_TENANT_KEY = "tenant_key"


@dataclass(slots=True)
class Principal:
    tenant_id: str
    role: str
    key_id: str | None = None
    key: object = field(default=None, repr=False)  # the TenantKey, for its limits


def api_key_credential(value: bytes | None) -> bytes | None:
    """An `x-api-key` header as the Authorization value it stands for (None: absent or empty)."""
    if not value or not value.strip():
        return None
    return b"Bearer " + value.strip()


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Authenticator:
    def __init__(
        self, gateway_token: str | None, master_key: str | None, default_tenant: str | None, keys=None
    ) -> None:
        self._gateway = gateway_token.encode() if gateway_token else None
        self._master = master_key.encode() if master_key else None
        self.default_tenant = default_tenant
        self.keys = keys  # KeyCache (tenant keys), or None
        self._tenants: dict[bytes | None, str] = {}  # X-Tenant-ID values already checked

    def credential(self, authorization: bytes | None) -> bytes:
        if not authorization:
            raise unauthorized("Missing credentials: send 'Authorization: Bearer <token>'.")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise unauthorized("Malformed Authorization header: expected 'Bearer <token>'.")
        return token

    def authenticate(self, authorization: bytes | None, tenant_header: bytes | None) -> Principal:
        token = self.credential(authorization)
        # compare against every configured secret so timing does not reveal which matched
        is_gateway = self._gateway is not None and hmac.compare_digest(token, self._gateway)
        is_master = self._master is not None and hmac.compare_digest(token, self._master)
        if is_gateway or is_master:
            role = ROLE_ADMIN if is_master else ROLE_GATEWAY
            return Principal(self._tenant(tenant_header), role)
        if self.keys is not None and token.startswith(b"tg-"):
            key = self.keys.lookup(token.decode("ascii", "replace"))
            if key is not None:
                tenant = key.tenant_id
                if tenant_header is not None:
                    asked = self._tenant(tenant_header)
                    if asked != tenant:
                        raise forbidden("This key belongs to another tenant than X-Tenant-ID names.", "tenant_mismatch")
                return Principal(tenant, ROLE_TENANT_KEY, key.key_id, key)
            if not self.keys.loaded:  # not "invalid": nobody here knows yet
                raise unavailable(
                    "Tenant keys are not loaded yet: the database has not been reachable "
                    "since this instance started. Retry shortly.",
                    "limits_unavailable",
                )
        raise unauthorized("Invalid credentials.")

    def _tenant(self, header: bytes | None) -> str:
        tenant = self._tenants.get(header)  # the same few tenants ask again and again
        if tenant is not None:
            return tenant
        tenant = self._check_tenant(header)
        if header is not None and len(self._tenants) < 10_000:
            self._tenants[header] = tenant
        return tenant

    def _check_tenant(self, header: bytes | None) -> str:
        if header is None:
            if self.default_tenant:
                return self.default_tenant
            raise bad_request("Missing X-Tenant-ID header: every request is attributed to a tenant.", "missing_tenant")
        try:
            tenant = header.decode("ascii")
        except UnicodeDecodeError:
            tenant = ""
        if not TENANT_RE.fullmatch(tenant):
            raise bad_request("Invalid X-Tenant-ID: use 1-128 characters of A-Z a-z 0-9 . _ : @ -", "invalid_tenant")
        return tenant

    def is_known(self, authorization: bytes | None) -> bool:
        """A valid credential of any kind (for telling 403 from 401)."""
        try:
            token = self.credential(authorization)
        except Exception:
            return False
        if self._gateway is not None and hmac.compare_digest(token, self._gateway):
            return True
        if self._master is not None and hmac.compare_digest(token, self._master):
            return True
        return (
            self.keys is not None
            and token.startswith(b"tg-")
            and self.keys.lookup(token.decode("ascii", "replace")) is not None
        )

    def is_master(self, authorization: bytes | None) -> bool:
        if not authorization or self._master is None:
            return False
        scheme, _, token = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._master)

    def require_master(self, authorization: bytes | None, what: str, hint: str = "") -> None:
        """The one master-key check (the admin API, /metrics): a 401 without a valid
        credential, a 403 with a valid one that is not the master key, or with none set."""
        if not authorization:
            raise unauthorized(f"Missing credentials: {what} needs the master key{hint}.")
        what = what[:1].upper() + what[1:]
        if self._master is None:
            raise forbidden(f"{what} is disabled without a master key: set PROXY_MASTER_KEY to enable it{hint}.")
        if not self.is_master(authorization):
            if not self.is_known(authorization):
                raise unauthorized("Invalid credentials.")
            raise forbidden(f"{what} needs the master key.")
