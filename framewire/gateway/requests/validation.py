"""How a request's JSON body or query string becomes an app's input, and the JSON Schema of each.

The rules here are the ones the documents publish (:mod:`framewire.gateway.platform.openapi`),
so that an input valid by the published schema is one the server accepts, and one it
refuses is invalid by it:

- **JSON bodies** (:func:`from_json`) are checked by pydantic's JSON mode, strictly: JSON
  types only (``"4"`` is not a number, ``true`` is not ``1``), as JSON Schema reads them
  (a number with an integral value, ``4.0``, is an integer). A ``bytes`` field takes any
  string (its UTF-8 bytes; JSON has no bytes) unless its type says otherwise, as
  :data:`framewire.engine.api.FileInput` does. The input handed on is then built as
  pydantic builds it from Python values, so a ``bytes | str`` field keeps text as text.
  :class:`JsonInputSchema` writes these rules as JSON Schema.
- **Query strings** (GET runs, :func:`query_values`) carry text only: a field is read from
  its text as pydantic's lax mode does (``"4"`` is 4, ``"true"`` is true).
  :func:`query_fields` names the fields a query can carry and their schemas; an endpoint
  with a required field a query cannot carry (an object, a list) has no GET run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import InitErrorDetails, core_schema

#: JSON Schema types a query string's text can stand for.
_SCALARS = frozenset({"string", "integer", "number", "boolean"})
#: Bytes of a GET run's query string its text fields may take together: well under the
#: listener's limit on a request's head, which also holds the path, the other fields and headers.
QUERY_BUDGET_BYTES = 12 * 1024
#: The most bytes a character of a query value takes, UTF-8 (4) and percent-encoded (x3).
_ENCODED_CHAR_BYTES = 12


def from_json(model: type[BaseModel], data: Any) -> BaseModel:
    """The input ``data`` (a decoded JSON body) stands for; raises ``ValidationError``.

    ``data`` is changed in place where a number has an integral value (``4.0`` becomes ``4``).
    """
    model.model_validate_json(json.dumps(_integral_numbers(data), ensure_ascii=False), strict=True)
    return model.model_validate(data)


def query_values(model: type[BaseModel], params: Mapping[str, str]) -> dict[str, str]:
    """A GET run's input fields in its query string (others, such as ``fal_jwt_token``, are not input).

    pydantic's lax mode reads the input from them (``model.model_validate``). Raises
    ``ValidationError`` for a value longer than its field's query limit (:func:`query_fields`).
    """
    fields = query_fields(model) or {}
    values = {name: value for name, value in params.items() if name in fields}
    errors: list[InitErrorDetails] = [
        {"type": "string_too_long", "loc": (name,), "input": value, "ctx": {"max_length": limit}}
        for name, value in values.items()
        if (limit := fields[name].get("maxLength")) is not None and len(value) > limit
    ]
    if errors:
        raise ValidationError.from_exception_data(model.__name__, errors)
    return values


def _integral_numbers(value: Any) -> Any:
    """``value`` with every float that has an integral value made an int (JSON Schema's integers)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    stack = [value]
    while stack:  # a loop, not recursion: bodies may nest deeply
        node = stack.pop()
        keys = node.keys() if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()
        for key in keys:
            item = node[key]
            if isinstance(item, float) and item.is_integer():
                node[key] = int(item)
            elif isinstance(item, dict | list):
                stack.append(item)
    return value


class JsonInputSchema(GenerateJsonSchema):
    """The JSON Schema of what :func:`from_json` accepts (use with ``mode="validation"``).

    It differs from pydantic's own in one place: a ``bytes`` value is any string, which is
    what pydantic's JSON mode takes for one.
    """

    def bytes_schema(self, schema: core_schema.BytesSchema) -> JsonSchemaValue:
        out = super().bytes_schema(schema)
        out.pop("format", None)
        out["description"] = "Text, taken as its UTF-8 bytes."
        return out


@functools.lru_cache(maxsize=256)
def query_fields(model: type[BaseModel]) -> dict[str, dict[str, Any]] | None:
    """The fields a GET run's query string can carry, with the schema of their text; None: no GET run.

    A field can be carried when its schema has a scalar branch (string, number, integer,
    boolean, or an enum of them); ``null`` and object or list branches are left out, as text
    cannot stand for them. An endpoint with a required field that cannot be carried has no
    GET run at all. Free text fields share :data:`QUERY_BUDGET_BYTES` as a ``maxLength``
    each, so that a query string within every limit fits the listener's head limit.
    ``$ref`` s point into ``#/components/schemas``.
    """
    document = model.model_json_schema(
        mode="validation", schema_generator=JsonInputSchema, ref_template="#/components/schemas/{model}"
    )
    defs = document.get("$defs", {})
    required = set(document.get("required", ()))
    fields: dict[str, dict[str, Any]] = {}
    for name, prop in document.get("properties", {}).items():
        scalar = _scalar_branches(prop, defs)
        if scalar is None:
            if name in required:
                return None
            continue
        fields[name] = scalar
    texts = [schema for schema in fields.values() if _is_free_text(schema)]
    if texts:
        limit = max(16, QUERY_BUDGET_BYTES // (_ENCODED_CHAR_BYTES * len(texts)))
        for schema in texts:
            schema["maxLength"] = min(schema.get("maxLength", limit), limit)
    return fields


def _is_free_text(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" and "enum" not in schema


def _scalar_branches(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """``schema`` without its null, object and list branches, or None when nothing is left."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1])
        return None if target is None else _scalar_branches(target, defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            kept = [b for b in (_scalar_branches(s, defs) for s in schema[key]) if b is not None]
            if not kept:
                return None
            annotations = {k: v for k, v in schema.items() if k in ("description", "title", "default")}
            if annotations.get("default") is None:
                annotations.pop("default", None)
            return {**annotations, **kept[0]} if len(kept) == 1 else {**annotations, key: kept}
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        scalars = [v for v in values if isinstance(v, str | int | float | bool)]
        return {**{k: v for k, v in schema.items() if k not in ("enum", "const")}, "enum": scalars} if scalars else None
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _SCALARS:
        return dict(schema)
    return None
