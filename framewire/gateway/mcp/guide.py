"""An app's guide: a short Markdown page an assistant's user can add to the conversation.

Offered as one MCP resource per app (``framewire://apps/{app id}``). It says in prose what
``describe_app`` says in JSON: what the app does, the tools that run each endpoint, every
input field with its type, default, limits and description, and the HTTP and WebSocket
paths other clients use. Built from the app's declarations and its OpenAPI document only.
"""

from __future__ import annotations

import json
from typing import Any

from framewire.engine.api import App, EngineClient
from framewire.gateway.platform.catalog import describe, endpoint_schemas

URI_PREFIX = "framewire://apps/"
_LIMITS = (
    ("minLength", "min length"),
    ("maxLength", "max length"),
    ("minimum", "≥"),
    ("exclusiveMinimum", ">"),
    ("maximum", "≤"),
    ("exclusiveMaximum", "<"),
    ("maxItems", "max items"),
)


def uri_of(app: App) -> str:
    return URI_PREFIX + app.app_id


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(schema.get('items', {}))}"
    if schema.get("format") == "binary":
        return "bytes"
    return str(kind)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _field_rows(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", ()))
    rows = ["| field | type | default | limits | description |", "| --- | --- | --- | --- | --- |"]
    for name, prop in schema.get("properties", {}).items():
        default = "(required)" if name in required else f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        limits = ", ".join(f"{label} {prop[key]}" for key, label in _LIMITS if key in prop)
        cells = (f"`{name}`", _type_of(prop), default, limits, prop.get("description", ""))
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def guide(app: App, engine: EngineClient, document: dict[str, Any], tool_names: dict[str, dict[str, str]]) -> str:
    """The guide of ``app``; ``tool_names`` maps each endpoint id to its ``run_tool`` and ``submit_tool``."""
    registry = engine.registry
    about = describe(app, engine)
    lines = [f"# {about['title']} (`{app.app_id}`)", ""]
    if app.description:
        lines += [app.description, ""]
    if about["aliases"]:
        lines += ["Also reachable as " + ", ".join(f"`{a}`" for a in about["aliases"]) + ".", ""]
    for endpoint, entry in zip(registry.endpoints_of(app).values(), about["endpoints"], strict=True):
        names = tool_names[endpoint.key]
        input_schema, _ = endpoint_schemas(document, app, endpoint)
        lines += [
            f"## `{endpoint.key}`",
            "",
            f"- Run and wait: tool `{names['run_tool']}`; queue: tool `{names['submit_tool']}` "
            "(then `get_status`, `get_result`, `cancel_request`).",
            f"- HTTP: `POST {entry['urls']['run']}` (run), the same path on the queue host (queue), "
            f"`POST {entry['urls']['stream']}` (server-sent events).",
        ]
        if "realtime" in entry["urls"]:
            lines.append(f"- Realtime WebSocket: `{entry['urls']['realtime']}` (msgpack frames).")
        lines += ["", "Input fields:", "", *_field_rows(input_schema), ""]
    lines.append("Fields ending in `_url` take an http(s) URL, a `data:` URI, or a URL from the `upload_file` tool.")
    return "\n".join(lines) + "\n"
