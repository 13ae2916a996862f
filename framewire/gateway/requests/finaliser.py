"""Turning app outputs into what each surface sends.

A *file object* is a mapping with a ``url`` key and bytes under ``content`` (apps return
images as ``{url: None, content: <bytes>, width, height, content_type}``). On the JSON
surfaces (sync run, queue result, SSE, webhooks) ``content`` is removed and ``url`` set:
to a ``data:`` URI when the input's ``sync_mode`` is true, else to a file stored by this
server. Any other bytes value becomes a base64 ``data:`` URI (content type sniffed from
the leading bytes), since JSON has no bytes; other non-JSON values (datetimes, UUIDs,
enums) are written the way pydantic writes them to JSON. On the realtime surface (msgpack) file
objects stay inline bytes unless the input says ``sync_mode: false``; then they are
stored and sent as URLs like on the JSON surfaces.

Encoding and disk writes run in a thread when there is real work (files to store or
more than :data:`INLINE_LIMIT` bytes to encode), never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import msgpack
from pydantic_core import to_jsonable_python

from framewire.engine.api import FRAME_TIMINGS_SCHEMA
from framewire.gateway.storage.store import FileStore

#: Bytes of base64 work done on the event loop before moving the work to a thread.
INLINE_LIMIT = 64 * 1024

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"RIFF", "image/webp"),  # checked further below
    (b"%PDF", "application/pdf"),
)


def sniff_content_type(data: bytes) -> str:
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            if content_type == "image/webp" and data[8:12] != b"WEBP":
                continue
            return content_type
    return "application/octet-stream"


def data_uri(data: bytes, content_type: str | None = None) -> str:
    return f"data:{content_type or sniff_content_type(data)};base64,{base64.b64encode(data).decode()}"


def is_file_object(value: Any) -> bool:
    return isinstance(value, dict) and "url" in value and isinstance(value.get("content"), bytes | bytearray)


def _walk(value: Any, leaf: Callable[[Any], Any], file: Callable[[dict[str, Any]], Any]) -> Any:
    if is_file_object(value):
        return file(value)
    if isinstance(value, dict):
        return {k: _walk(v, leaf, file) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, leaf, file) for v in value]
    return leaf(value)


_JSON_LEAVES = (str, int, float, bool, type(None))


def _scan(value: Any) -> tuple[int, int, int]:
    """(file objects, total bytes, non-JSON leaves: bytes, even empty, and others) anywhere in ``value``."""
    files = size = odd = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if is_file_object(item):
                files += 1
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, bytes | bytearray):
            size += len(item)
            odd += 1
        elif not isinstance(item, _JSON_LEAVES):
            odd += 1
    return files, size, odd


class OutputFinaliser:
    """Finalises outputs for the JSON surfaces and the realtime surface."""

    def __init__(self, files: FileStore) -> None:
        self.files = files

    def _store(self, obj: dict[str, Any], base_url: str) -> dict[str, Any]:
        content = bytes(obj["content"])
        content_type = obj.get("content_type") or sniff_content_type(content)
        stored = self.files.put_bytes(content, content_type, obj.get("file_name"))
        out = {k: v for k, v in obj.items() if k != "content"}
        out["url"] = base_url + stored.url_path
        out.setdefault("content_type", content_type)
        return out

    @staticmethod
    def _inline(obj: dict[str, Any]) -> dict[str, Any]:
        content = bytes(obj["content"])
        out = {k: v for k, v in obj.items() if k != "content"}
        out["url"] = data_uri(content, obj.get("content_type"))
        return out

    def to_json_blocking(self, output: Any, *, sync_mode: bool, base_url: str) -> Any:
        def leaf(value: Any) -> Any:
            if isinstance(value, bytes | bytearray):
                return data_uri(bytes(value))
            if isinstance(value, _JSON_LEAVES):
                return value
            return to_jsonable_python(value)  # datetimes, UUIDs, enums, decimals: as pydantic writes them

        def file(obj: dict[str, Any]) -> Any:
            return self._inline(obj) if sync_mode else self._store(obj, base_url)

        return _walk(output, leaf, file)

    async def to_json(self, output: Any, *, sync_mode: bool, base_url: str) -> Any:
        """``output`` made JSON-serialisable (see the module docstring)."""
        files, size, odd = _scan(output)
        if files == 0 and odd == 0:
            return output
        if (sync_mode or files == 0) and size <= INLINE_LIMIT:
            return self.to_json_blocking(output, sync_mode=sync_mode, base_url=base_url)
        return await asyncio.to_thread(self.to_json_blocking, output, sync_mode=sync_mode, base_url=base_url)

    def to_msgpack_blocking(self, output: Any, *, sync_mode: bool, base_url: str) -> Any:
        """``output`` for a msgpack answer: bytes stay bytes, a file object keeps its content
        inline with ``sync_mode`` and is stored (a ``url``) without; other values as in JSON."""

        def leaf(value: Any) -> Any:
            if isinstance(value, (bytes, bytearray, *_JSON_LEAVES)):
                return value
            return to_jsonable_python(value)

        def file(obj: dict[str, Any]) -> Any:
            return {**obj, "content": bytes(obj["content"])} if sync_mode else self._store(obj, base_url)

        return _walk(output, leaf, file)

    async def to_msgpack(self, output: Any, *, sync_mode: bool, base_url: str) -> bytes:
        """:meth:`to_msgpack_blocking`, encoded; in a thread when files are stored or the output is large."""
        files, size, _ = _scan(output)
        if (sync_mode or files == 0) and size <= INLINE_LIMIT:
            return _packb(self.to_msgpack_blocking(output, sync_mode=sync_mode, base_url=base_url))
        return await asyncio.to_thread(
            lambda: _packb(self.to_msgpack_blocking(output, sync_mode=sync_mode, base_url=base_url))
        )

    @staticmethod
    def realtime_needs_storage(output: Any, sync_mode: bool | None) -> bool:
        return sync_mode is False and _scan(output)[0] > 0

    def for_realtime_blocking(self, output: Any, base_url: str) -> Any:
        """Store the file objects of a realtime output; other bytes stay inline (msgpack)."""
        return _walk(output, lambda v: v, lambda obj: self._store(obj, base_url))


def _packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def merge_timings(output: dict[str, Any], result: Any) -> dict[str, Any]:
    """Add the engine's timings to an output's ``timings`` dict when the output has one."""
    if "timings" in output and isinstance(output["timings"], dict | None):
        output["timings"] = {**(output["timings"] or {}), **result.timings}
    return output


# -- what these rules make of an output's JSON Schema ------------------------------------------------

#: A ``data:`` URI as :func:`data_uri` writes one.
DATA_URI_SCHEMA = {"type": "string", "pattern": "^data:[^,]*;base64,[A-Za-z0-9+/]*={0,2}$"}


def json_output_schemas(defs: dict[str, Any], roots: set[str]) -> dict[str, Any]:
    """``defs`` (pydantic's serialization-mode schemas) as the JSON surfaces send them.

    File objects (a ``url`` and bytes ``content``) lose ``content`` and keep ``url`` (a
    stored file's URL or a data URI); other bytes are data URIs. The ``roots`` (an
    endpoint's output) gain the engine's ``timings`` (:func:`merge_timings`).
    """
    return {name: _output_view(schema, name in roots, inline=False) for name, schema in defs.items()}


def msgpack_output_schemas(defs: dict[str, Any], roots: set[str]) -> dict[str, Any]:
    """``defs`` as msgpack sends them: bytes stay bytes; a file object's ``content`` is there
    unless the file was stored (then ``url`` names it)."""
    return {name: _output_view(schema, name in roots, inline=True) for name, schema in defs.items()}


def _is_bytes(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "string" and schema.get("format") == "binary"


def _without_bytes(schema: dict[str, Any]) -> dict[str, Any] | None:
    """``schema`` with its bytes branch removed; None when nothing else is left."""
    if _is_bytes(schema):
        return None
    if "anyOf" in schema:
        rest = [branch for branch in schema["anyOf"] if not _is_bytes(branch)]
        if not rest:
            return None
        extra = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**extra, **rest[0]} if len(rest) == 1 else {**extra, "anyOf": rest}
    return schema


def _output_view(schema: dict[str, Any], root: bool, *, inline: bool) -> dict[str, Any]:
    out: dict[str, Any] = _map_bytes(schema, inline)
    props = out.get("properties")
    if (
        isinstance(props, dict)
        and "url" in props
        and "content" in props
        and _has_bytes(schema["properties"]["content"])
    ):
        # A file object: its content goes (JSON; msgpack when stored), its url is always there.
        out["required"] = sorted({*(n for n in out.get("required", []) if n != "content"), "url"})
        if not inline:
            props = dict(props)
            content = _without_bytes(schema["properties"]["content"])
            if content is None:
                props.pop("content")
            else:
                props["content"] = content  # what is left: null, when the model had no bytes to send
            out["properties"] = props
    if root and isinstance(props, dict) and "timings" in props:
        out["properties"] = {**out["properties"], "timings": _merged_timings(out["properties"]["timings"])}
    return out


def _has_bytes(schema: Any) -> bool:
    if _is_bytes(schema):
        return True
    return isinstance(schema, dict) and any(_is_bytes(branch) for branch in schema.get("anyOf", ()))


def _map_bytes(node: Any, inline: bool) -> Any:
    """Every bytes schema in ``node`` as sent: a data URI in JSON, itself in msgpack."""
    if _is_bytes(node):
        return dict(node) if inline else {**{k: v for k, v in node.items() if k != "format"}, **DATA_URI_SCHEMA}
    if isinstance(node, dict):
        return {k: _map_bytes(v, inline) for k, v in node.items()}
    if isinstance(node, list):
        return [_map_bytes(v, inline) for v in node]
    return node


_ENGINE_TIMINGS: dict[str, Any] = FRAME_TIMINGS_SCHEMA["properties"]


def _merged_timings(declared: dict[str, Any]) -> dict[str, Any]:
    """An output's ``timings`` after :func:`merge_timings`: its own entries and the engine's."""
    branches = declared.get("anyOf", [declared])
    objects = [b for b in branches if b.get("type") == "object"]
    base: dict[str, Any] = objects[0] if objects else {"type": "object"}
    merged: dict[str, Any] = {
        **{k: v for k, v in declared.items() if k in ("title", "description")},
        "type": "object",
        "properties": {**base.get("properties", {}), **_ENGINE_TIMINGS},
    }
    if base.get("required"):
        merged["required"] = base["required"]  # the engine's keys: not in partial outputs (event streams)
    if "additionalProperties" in base:
        merged["additionalProperties"] = base["additionalProperties"]
    return merged
