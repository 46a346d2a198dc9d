"""The OpenAPI document served at /openapi.json."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from . import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    return {
        str(c): {"description": "OpenAI-style error", "content": {"application/json": {"schema": _ERROR}}}
        for c in codes
    }


def _proxy_op(summary: str, streams: bool) -> dict:
    body: dict[str, Any] = {
        "type": "object",
        "required": ["model"],
        "additionalProperties": True,
        "properties": {"model": {"type": "string", "minLength": 1, "maxLength": 256}},
    }
    if streams:
        body["properties"]["stream"] = {"type": "boolean"}
    ok: dict[str, Any] = {
        "description": "The upstream's response, relayed",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    if streams:
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": [{"$ref": "#/components/parameters/Tenant"}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": ok, **_errors(400, 401, 403, 413, 429, 502, 503, 504)},
        }
    }


_LIMITS = {
    "rpm_limit": {"type": ["integer", "null"], "minimum": 1},
    "tpm_limit": {"type": ["integer", "null"], "minimum": 1},
    "budget_usd": {"type": ["number", "string", "null"]},
    "budget_period": {"type": "string", "enum": ["day", "month", "total"]},
    "models": {"type": ["array", "null"], "items": {"type": "string"}},
}


@lru_cache(maxsize=1)
def spec() -> dict:
    usage_params = [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
        for n in ("start", "end", "tenant_id", "api_key_id", "group_by")
    ]
    admin: dict[str, Any] = {"security": [{"bearer": []}]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tallygate",
            "version": __version__,
            "description": "OpenAI-compatible gateway that meters every request per tenant.",
        },
        "paths": {
            "/v1/chat/completions": _proxy_op("Chat completions (streaming or not)", True),
            "/v1/completions": _proxy_op("Completions (legacy)", True),
            "/v1/embeddings": _proxy_op("Embeddings", False),
            "/v1/responses": _proxy_op("Responses API (streaming or not)", True),
            "/v1/models": {
                "get": {
                    "summary": "Models of the upstream",
                    "security": [{"bearer": []}],
                    "parameters": [{"$ref": "#/components/parameters/Tenant"}],
                    "responses": {
                        "200": {
                            "description": "model list",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(400, 401, 502),
                    },
                }
            },
            "/v1/usage": {
                "get": {
                    "summary": "The caller's own usage",
                    "security": [{"bearer": []}],
                    "parameters": usage_params[:2] + usage_params[4:],
                    "responses": {
                        "200": {
                            "description": "usage rows",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness with version; never calls the upstream",
                    "responses": {
                        "200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
                    },
                }
            },
            "/live": {
                "get": {
                    "summary": "Liveness probe",
                    "responses": {
                        "200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
                    },
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: the ledger is reachable",
                    "responses": {
                        "200": {
                            "description": "ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "starting",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (master key unless TALLYGATE_METRICS=public)",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "Prometheus text",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 403, 404),
                    },
                }
            },
            "/admin/usage": {
                "get": {
                    "summary": "Usage aggregates (master key)",
                    **admin,
                    "parameters": usage_params,
                    "responses": {
                        "200": {
                            "description": "usage rows",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(400, 401, 403, 503),
                    },
                }
            },
            "/admin/keys": {
                "get": {
                    "summary": "List tenant keys (no secrets)",
                    **admin,
                    "responses": {
                        "200": {"description": "keys", "content": {"application/json": {"schema": {"type": "object"}}}},
                        **_errors(401, 403, 503),
                    },
                },
                "post": {
                    "summary": "Create a tenant key (shown once)",
                    **admin,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["tenant_id"],
                                    "properties": {
                                        "tenant_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                                        "name": {"type": ["string", "null"]},
                                        "expires_at": {"type": ["string", "null"]},
                                        **_LIMITS,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "the new key",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(400, 401, 403, 503),
                    },
                },
            },
            "/admin/keys/{key_id}": {
                "delete": {
                    "summary": "Revoke a tenant key",
                    **admin,
                    "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "revoked",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/admin/tenants": {
                "get": {
                    "summary": "Tenants with limits",
                    **admin,
                    "responses": {
                        "200": {
                            "description": "tenants",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(401, 403, 503),
                    },
                }
            },
            "/admin/tenants/{tenant_id}": {
                "put": {
                    "summary": "Set a tenant's limits and/or its Stripe customer",
                    "description": (
                        "Limits are replaced as a whole when the body names any limit field (or is empty). "
                        "A body with only stripe_customer_id sets the tenant's Stripe customer (billing exports) "
                        "and leaves its limits as they are; a body without it keeps the customer. "
                        "null clears it (the tenant's usage is then held, not exported)."
                    ),
                    **admin,
                    "parameters": [{"name": "tenant_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        **_LIMITS,
                                        "stripe_customer_id": {
                                            "type": ["string", "null"],
                                            "pattern": "^cus_[A-Za-z0-9]+$",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the tenant",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(400, 401, 403, 503),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "Tenant": {
                    "name": "X-Tenant-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                }
            },
        },
    }
