"""Tool calls and structured answers of the fake upstream, as the API reference shapes them.

What the fake "model" does with a request:
- it offers function tools and the conversation does not end with a tool's result, and
  `tool_choice` is not "none": it calls one (the one `tool_choice` names, else the first) with
  arguments that are an instance of the tool's JSON schema (chat: `tool_calls` and
  finish_reason "tool_calls"; Responses: a `function_call` output item);
- it is asked for JSON (chat `response_format` json_schema / json_object, Responses
  `text.format`): its text is an instance of the schema (json_object: {"answer": ...});
- otherwise it answers its usual words.
So the SDKs' helpers (`chat.completions.parse` with a pydantic model, `responses.parse`,
tool loops, `responses.stream`) work against it.
"""

from __future__ import annotations

import orjson

SAMPLE_TEXT = "fake"


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def schema_instance(schema: object, root: dict | None = None, depth: int = 0) -> object:
    """A value that validates against a JSON schema (the subset structured outputs use:
    objects, arrays, scalars, enum, const, anyOf, $ref to $defs)."""
    if not isinstance(schema, dict) or depth > 20:
        return None
    root = root if root is not None else schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: object = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return schema_instance(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if not (isinstance(o, dict) and o.get("type") == "null")), options[0])
            return schema_instance(chosen, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = _dict(schema.get("properties"))
        return {name: schema_instance(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        least = schema.get("minItems")
        count = least if isinstance(least, int) and least > 1 else 1
        return [schema_instance(schema.get("items"), root, depth + 1) for _ in range(count)]
    if kind == "string":
        return SAMPLE_TEXT
    if kind == "integer":
        return max(1, schema.get("minimum", 1)) if isinstance(schema.get("minimum", 1), int) else 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return None


def _function(tool: object) -> tuple[str, object] | None:
    """(name, parameters) of a function tool, chat shape or Responses shape."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return None
    fn = _dict(tool.get("function")) or tool
    name = fn.get("name")
    return (name, fn.get("parameters") or {"type": "object", "properties": {}}) if isinstance(name, str) else None


def tool_call(doc: dict, finished: bool) -> tuple[str, str] | None:
    """(name, JSON arguments) of the call the fake makes, or None: it answers in text."""
    choice = doc.get("tool_choice")
    if finished or choice == "none":
        return None
    tools = [t for t in map(_function, doc.get("tools") or []) if t is not None]
    if not tools:
        return None
    wanted = None
    if isinstance(choice, dict):  # {"type": "function", "function": {"name"}} or {"type": "function", "name"}
        inner = _dict(choice.get("function")) or choice
        wanted = inner.get("name")
    name, params = next((t for t in tools if t[0] == wanted), tools[0])
    return name, orjson.dumps(schema_instance(params)).decode()


def chat_finished(doc: dict) -> bool:
    """The conversation ends with a tool's result: the model answers it in text."""
    messages = doc.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    return isinstance(last, dict) and last.get("role") == "tool"


def responses_finished(doc: dict) -> bool:
    items = doc.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    return isinstance(last, dict) and last.get("type") == "function_call_output"


def json_text(fmt: object) -> str | None:
    """The text of a JSON-mode answer for a response format (chat `response_format`, or the
    Responses API's `text.format`), None when it asks for plain text."""
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return orjson.dumps({"answer": SAMPLE_TEXT}).decode()
    if kind == "json_schema":
        spec = _dict(fmt.get("json_schema")) or fmt  # chat | Responses
        return orjson.dumps(schema_instance(spec.get("schema"))).decode()
    return None


def pieces(text: str, n: int) -> list[str]:
    """`text` in at most n pieces (stream deltas), joined back exactly."""
    n = max(1, min(n, len(text) or 1))
    step = -(-len(text) // n) or 1
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]
