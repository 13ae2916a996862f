"""What a tool call answers: the JSON every other surface sends, and its images as images.

A finished request's JSON (file URLs, timings, ...) goes back as text and as structured
content. Each image in it comes back a second time as MCP image content, so the
assistant sees it: a file this server stored (a ``/files/{id}/{name}`` URL) is read from
the file store, and an inline ``data:image/...;base64,`` URI (``sync_mode``, or an app
that returns raw bytes) is moved out of the JSON, where a short note takes its place, so
no base64 reaches the text. At most :data:`MAX_IMAGES` images of up to
:data:`MAX_IMAGE_BYTES` each; larger or further images stay as URLs (inline ones are
replaced by a note saying how to get a URL).

Errors are tool errors (``isError``): one readable line naming each failing field as
text, the fal-shaped error body (``detail``, ``error_type``) as structured content.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mcp import types
from pydantic import ValidationError

from framewire.gateway.realtime.protocol import validation_detail
from framewire.gateway.storage.store import FileStore, valid_key

MAX_IMAGES = 8
#: The largest image sent as image content (common model APIs take up to 5 MB per image).
MAX_IMAGE_BYTES = 5 * 1024 * 1024

_DATA_IMAGE = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)(?:;[^,;]*)*;base64,", re.IGNORECASE)
_FILE_PATH = re.compile(r"^/files/([^/]+)/([^/]+)$")


@dataclass
class _Image:
    """An image found in an output: inline (base64 kept as is) or a file of this server."""

    mime_type: str
    data_b64: str | None = None
    file: tuple[str, str] | None = None


def _inline_size(payload: str) -> int:
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def _own_file(value: str) -> tuple[str, str] | None:
    if not value[:8].lower().startswith(("http://", "https://")):
        return None
    match = _FILE_PATH.match(urlsplit(value).path)
    if match is None or not valid_key(match[1], match[2]):
        return None
    return match[1], match[2]


def collect_images(body: Any) -> tuple[Any, list[_Image]]:
    """``body`` with inline images replaced by notes, and the images in it, in order (pure).

    Stored files are found by their URL, whatever the host (a job may have been
    submitted on another address of this server); each counts once."""
    images: list[_Image] = []
    seen: set[tuple[str, str]] = set()

    def visit(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: visit(v) for k, v in value.items()}
        if isinstance(value, list):
            return [visit(v) for v in value]
        if not isinstance(value, str):
            return value
        match = _DATA_IMAGE.match(value)
        if match is not None:
            mime, payload = match[1].lower(), value[match.end() :]
            size = _inline_size(payload)
            if size > MAX_IMAGE_BYTES:
                why = f"larger than the {MAX_IMAGE_BYTES} bytes an image returned here may have"
            elif len(images) >= MAX_IMAGES:
                why = f"past the {MAX_IMAGES} images a result returns"
            else:
                images.append(_Image(mime, data_b64=payload))
                return f"({mime}, {size} bytes: returned as image {len(images)} of this result)"
            return f"({mime}, {size} bytes, not returned: {why}; run with sync_mode false for file URLs)"
        own = _own_file(value)
        if own is not None and own not in seen and len(images) < MAX_IMAGES:
            seen.add(own)
            images.append(_Image("", file=own))
        return value

    return visit(body), images


def _read_images(files: FileStore, images: list[_Image]) -> list[types.ImageContent]:
    """Image content for each image; stored files that are gone, too large or not images are skipped.

    Blocking: run in a thread."""
    out: list[types.ImageContent] = []
    for image in images:
        if image.data_b64 is not None:
            out.append(types.ImageContent(data=image.data_b64, mime_type=image.mime_type))
            continue
        assert image.file is not None
        stored = files.get(*image.file)
        if stored is None or not stored.content_type.startswith("image/") or stored.size > MAX_IMAGE_BYTES:
            continue
        data = stored.path.read_bytes()
        out.append(types.ImageContent(data=base64.b64encode(data).decode(), mime_type=stored.content_type))
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def output_result(body: Any, files: FileStore, *, note: str | None = None) -> types.CallToolResult:
    """The tool result of a finished request's output ``body`` (see the module docstring)."""
    clean, images = collect_images(body)
    content: list[types.ContentBlock] = []
    if note:
        content.append(types.TextContent(text=note))
    content.append(types.TextContent(text=_dumps(clean)))
    if images:
        content.extend(await asyncio.to_thread(_read_images, files, images))
    structured = clean if isinstance(clean, dict) else {"result": clean}
    return types.CallToolResult(content=content, structured_content=structured)


def json_result(body: dict[str, Any], note: str | None = None) -> types.CallToolResult:
    """A tool result that is JSON only (status, submit and upload answers)."""
    content: list[types.ContentBlock] = [types.TextContent(text=_dumps(body))]
    if note:
        content.insert(0, types.TextContent(text=note))
    return types.CallToolResult(content=content, structured_content=body)


def reason(detail: Any) -> str:
    """One readable line from a fal ``detail`` (a string, or ``[{loc, msg, type}]`` naming fields)."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(p) for p in item.get("loc", ()) if p != "body"]
            parts.append(f"{'.'.join(loc) or 'input'}: {item.get('msg', '')}")
        return "; ".join(parts)
    return str(detail)


def error_result(body: dict[str, Any], prefix: str = "") -> types.CallToolResult:
    """A tool error for a fal error ``body`` (``detail``, ``error_type``)."""
    kind = body.get("error_type")
    text = reason(body.get("detail", ""))
    text = f"{prefix}{text}" + (f" ({kind})" if kind else "")
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=body, is_error=True)


def error(detail: Any, error_type: str, prefix: str = "") -> types.CallToolResult:
    """:func:`error_result` for a ``detail`` and an ``error_type``."""
    return error_result({"detail": detail, "error_type": error_type}, prefix)


def invalid(exc: ValidationError, tool: str) -> types.CallToolResult:
    """The tool error for arguments of ``tool`` that failed validation, naming each field."""
    return error(validation_detail(exc), "validation_error", f"Invalid input for {tool}: ")
