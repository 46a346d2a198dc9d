"""The OpenAPI document served at /openapi.json."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from . import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}


def _errors(*codes: int) -> dict:
    return {
        str(c): {"description": "OpenAI-style error", "content": {"application/json": {"schema": _ERROR}}}
        for c in codes
    }


def _proxy_op(summary: str, streams: bool, *more_errors: int) -> dict:
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
            "responses": {"200": ok, **_errors(400, 401, 403, 413, 429, 502, 503, 504, *more_errors)},
        }
    }


def _messages_op(summary: str, streams: bool) -> dict:
    """An Anthropic Messages API operation: the credential as x-api-key or a bearer token,
    errors in Anthropic's shape."""
    op = _proxy_op(summary, streams)["post"]
    op["security"] = [{"bearer": []}, {"x-api-key": []}]
    op["parameters"] = [
        {"$ref": "#/components/parameters/Tenant"},
        {"name": "anthropic-version", "in": "header", "required": False, "schema": {"type": "string"}},
        {"name": "anthropic-beta", "in": "header", "required": False, "schema": {"type": "string"}},
    ]
    op["responses"] = {
        "200": op["responses"]["200"],
        **{
            str(c): {
                "description": "Anthropic-style error",
                "content": {"application/json": {"schema": _ANTHROPIC_ERROR}},
            }
            for c in (400, 401, 403, 404, 413, 429, 500, 502, 503, 504, 529)
        },
    }
    return {"post": op}


_OBJECT_ERRORS = (400, 401, 403, 404, 429, 502, 503)
_ID_PARAMS = {
    name: {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    for name in ("response_id", "conversation_id", "item_id", "file_id", "batch_id")
}
_JSON_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
}


def _object_op(summary: str, ids: tuple[str, ...] = (), body: bool = False, content: str = "application/json") -> dict:
    """A pass-through call of routes/objects.py: `ids` its path parameters."""
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [{"$ref": "#/components/parameters/Tenant"}, *(_ID_PARAMS[i] for i in ids)],
        "responses": {
            "200": {
                "description": "The upstream's answer, relayed",
                "content": {content: {"schema": _ANSWER[content]}},
            },
            **_errors(*_OBJECT_ERRORS, *((413,) if body else ())),
        },
    }
    if body:
        op["requestBody"] = _JSON_BODY
    return op


_ANSWER: dict[str, dict] = {"application/json": {"type": "object"}, "application/octet-stream": {"type": "string"}}
_UPLOAD = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}},
            }
        }
    },
}


def _form(required: tuple[str, ...], files: tuple[str, ...], fields: dict[str, Any]) -> dict:
    props: dict[str, Any] = {name: {"type": "string", "format": "binary"} for name in files}
    props.update(fields)
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": list(required), "properties": props}}
        },
    }


def _media_paths() -> dict:
    """Images and audio (routes/media.py): metered per image, second, character or token."""
    model: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 256}
    audio_fields: dict[str, Any] = {
        "model": model,
        "response_format": {"type": "string"},
        "stream": {"type": "boolean"},
    }
    image_fields: dict[str, Any] = {"model": model, "prompt": {"type": "string"}, "n": {"type": "integer", "minimum": 1, "maximum": 10},
                    "size": {"type": "string"}, "quality": {"type": "string"}}  # fmt: skip

    def op(summary: str, body: dict, answers: tuple[str, ...], uploads: bool) -> dict:
        content = {
            c: {"schema": {"type": "object"} if c == "application/json" else {"type": "string"}} for c in answers
        }
        return {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "parameters": [{"$ref": "#/components/parameters/Tenant"}],
                "requestBody": body,
                "responses": {
                    "200": {"description": "The upstream's answer, relayed", "content": content},
                    **_errors(400, 401, 403, 404, 413, 429, 502, 503, *((415,) if uploads else ())),
                },
            }
        }

    images_body = {"type": "object", "required": ["prompt"], "additionalProperties": True,
                   "properties": {**image_fields, "stream": {"type": "boolean"}}}  # fmt: skip
    speech_body = {"type": "object", "required": ["model", "input", "voice"], "additionalProperties": True,
                   "properties": {"model": model, "input": {"type": "string", "minLength": 1},
                                  "voice": {"type": "string"}, "stream_format": {"enum": ["audio", "sse"]}}}  # fmt: skip
    json_or_sse = ("application/json", "text/event-stream")
    return {
        "/v1/images/generations": op(
            "Generate images (per image by quality and size, or tokens)",
            {"required": True, "content": {"application/json": {"schema": images_body}}},
            json_or_sse,
            False,
        ),
        "/v1/images/edits": op(
            "Edit images (multipart, streamed; TALLYGATE_MAX_FILE_BYTES)",
            _form(("image", "prompt"), ("image", "mask"), image_fields),
            json_or_sse,
            True,
        ),
        "/v1/audio/transcriptions": op(
            "Transcribe audio (per second or token; multipart, streamed)",
            _form(("file", "model"), ("file",), audio_fields),
            (*json_or_sse, "text/plain"),
            True,
        ),
        "/v1/audio/translations": op(
            "Translate audio into English (per second; multipart, streamed)",
            _form(("file", "model"), ("file",), audio_fields),
            ("application/json", "text/plain"),
            True,
        ),
        "/v1/audio/speech": op(
            "Text to speech (per character or token; the audio relayed as it comes)",
            {"required": True, "content": {"application/json": {"schema": speech_body}}},
            ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm", "text/event-stream"),
            False,
        ),
    }


def _object_paths() -> dict:
    """Responses by id, conversations and items, moderations, files, batches (tenant-owned ids: a 404 for others)."""
    r, c, i, f = ("response_id",), ("conversation_id",), ("conversation_id", "item_id"), ("file_id",)
    b = ("batch_id",)
    upload = _object_op("Upload a file (streamed to the upstream; TALLYGATE_MAX_FILE_BYTES)")
    upload["requestBody"] = _UPLOAD
    upload["responses"].update(_errors(413, 415))
    return {
        "/v1/responses/{response_id}": {
            "get": _object_op("A stored response of the caller's", r),
            "delete": _object_op("Delete a stored response of the caller's", r),
        },
        "/v1/responses/{response_id}/cancel": {"post": _object_op("Cancel a background response", r)},
        "/v1/responses/{response_id}/input_items": {"get": _object_op("A response's input items", r)},
        "/v1/responses/input_tokens": {"post": _object_op("Count a request's input tokens ($0 row)", body=True)},
        "/v1/conversations": {"post": _object_op("Create a conversation", body=True)},
        "/v1/conversations/{conversation_id}": {
            "get": _object_op("A conversation of the caller's", c),
            "post": _object_op("Update a conversation's metadata", c, body=True),
            "delete": _object_op("Delete a conversation", c),
        },
        "/v1/conversations/{conversation_id}/items": {
            "get": _object_op("A conversation's items", c),
            "post": _object_op("Add items to a conversation", c, body=True),
        },
        "/v1/conversations/{conversation_id}/items/{item_id}": {
            "get": _object_op("One item of a conversation", i),
            "delete": _object_op("Delete an item of a conversation", i),
        },
        "/v1/moderations": {"post": _object_op("Moderation (free at OpenAI: a $0 row)", body=True)},
        "/v1/files": {"get": _object_op("The caller's files"), "post": upload},
        "/v1/files/{file_id}": {
            "get": _object_op("A file of the caller's", f),
            "delete": _object_op("Delete a file of the caller's", f),
        },
        "/v1/files/{file_id}/content": {
            "get": _object_op("A file's content, streamed", f, content="application/octet-stream")
        },
        "/v1/batches": {
            "get": _object_op("The caller's batches"),
            "post": _object_op(
                "Create a batch from a file of the caller's (its lines billed once it finished)", body=True
            ),
        },
        "/v1/batches/{batch_id}": {"get": _object_op("A batch of the caller's (a finished one is billed)", b)},
        "/v1/batches/{batch_id}/cancel": {"post": _object_op("Cancel a batch of the caller's", b)},
    }


_LIMITS = {
    "rpm_limit": {"type": ["integer", "null"], "minimum": 1},
    "tpm_limit": {"type": ["integer", "null"], "minimum": 1},
    "budget_usd": {"type": ["number", "string", "null"]},
    "budget_period": {"type": "string", "enum": ["day", "month", "total"]},
    "models": {"type": ["array", "null"], "items": {"type": "string"}},
}


_AMOUNT = {"type": ["string", "null"], "description": "USD as exact fixed-point text"}
_BALANCE = {
    "type": "object",
    "required": ["object", "tenant_id", "prepaid"],
    "properties": {
        "object": {"const": "balance"},
        "tenant_id": {"type": "string"},
        "prepaid": {"type": "boolean", "description": "false: postpaid (no top-up yet), the amounts are null"},
        "prepaid_since": {"type": ["string", "null"], "format": "date-time"},
        "credited_usd": _AMOUNT,
        "spent_usd": {**_AMOUNT, "description": "the usage ledger's cost since prepaid_since"},
        "balance_usd": {**_AMOUNT, "description": "credited_usd - spent_usd"},
        "reserved_usd": {**_AMOUNT, "description": "held by requests in flight (null: the counters are down)"},
        "available_usd": {**_AMOUNT, "description": "balance_usd - reserved_usd: what admission sees"},
    },
}
_CREDIT_ENTRY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "credit_entry"},
        "tenant_id": {"type": "string"},
        "kind": {"type": "string", "enum": ["topup", "adjustment"]},
        "amount_usd": {"type": "string"},
        "reference": {"type": "string"},
        "note": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
    },
}


def _credit_paths(admin: dict) -> dict:
    """GET /v1/balance and /admin/tenants/{tenant_id}/credits (routes/credits.py)."""
    json_of = lambda schema, description: {  # noqa: E731
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    tenant = [{"name": "tenant_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/v1/balance": {
            "get": {
                "summary": "The caller's tenant's prepaid balance",
                "security": [{"bearer": []}],
                "parameters": [{"$ref": "#/components/parameters/Tenant"}],
                "responses": {"200": json_of(_BALANCE, "the balance"), **_errors(401, 503)},
            }
        },
        "/admin/tenants/{tenant_id}/credits": {
            "get": {
                "summary": "A tenant's credit entries and balance",
                **admin,
                "parameters": tenant,
                "responses": {
                    "200": json_of(
                        {
                            "type": "object",
                            "properties": {
                                "object": {"const": "list"},
                                "tenant_id": {"type": "string"},
                                "data": {"type": "array", "items": _CREDIT_ENTRY},
                                "balance": _BALANCE,
                            },
                        },
                        "the entries, oldest first",
                    ),
                    **_errors(400, 401, 403, 503),
                },
            },
            "post": {
                "summary": "Top up (amount > 0; the first top-up makes the tenant prepaid) or adjust (amount < 0)",
                **admin,
                "parameters": tenant,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["amount_usd", "reference"],
                                "additionalProperties": False,
                                "properties": {
                                    "amount_usd": {
                                        "type": ["string", "number"],
                                        "description": "USD, at most 12 decimal places, not zero",
                                    },
                                    "reference": {
                                        "type": "string",
                                        "minLength": 1,
                                        "maxLength": 200,
                                        "description": "idempotency reference: the same again is the same entry",
                                    },
                                    "note": {"type": ["string", "null"], "maxLength": 1000},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": json_of(
                        {**_CREDIT_ENTRY, "properties": {**_CREDIT_ENTRY["properties"], "balance": _BALANCE}},
                        "the new entry",
                    ),
                    "200": json_of(_CREDIT_ENTRY, "the entry this reference already names: nothing added"),
                    **_errors(400, 401, 403, 409, 413, 503),
                },
            },
        },
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
            "/v1/responses": _proxy_op("Responses API (streaming or not)", True, 404),
            **_object_paths(),
            **_media_paths(),
            "/v1/messages": _messages_op("Anthropic Messages API (streaming or not)", True),
            "/v1/messages/count_tokens": _messages_op("Anthropic token counting (recorded at $0)", False),
            "/v1/models/{model}": {
                "get": {
                    "summary": "One model: a routes-file model from the gateway, others from the upstream",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"$ref": "#/components/parameters/Tenant"},
                        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "model object",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(401, 404, 502),
                    },
                }
            },
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
            **_credit_paths(admin),
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
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
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
                },
                "AnthropicError": {
                    "type": "object",
                    "required": ["type", "error"],
                    "properties": {
                        "type": {"const": "error"},
                        "error": {
                            "type": "object",
                            "required": ["type", "message"],
                            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }
