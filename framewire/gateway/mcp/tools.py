"""The tools FrameWire offers over MCP: their names, input schemas and descriptions.

Every endpoint of every app gets two tools, named from the endpoint's id, so an app
added with ``--app`` appears with no code here: ``run_<id>`` runs an input and waits for
the output, ``submit_<id>`` queues it. Their input schema is the endpoint's pydantic
input model, the model every other surface validates with. The tools of
:data:`GENERAL` work across apps: list and describe them, follow, fetch and cancel
queued requests, upload a file to pass as a ``*_url``.

Tool names keep to ``[A-Za-z0-9_-]`` and :data:`MAX_NAME` characters: the MCP spec also
allows dots and 128 characters, but model APIs that assistants hand tools to do not.
Which tools a caller sees depends on its key: only those of the apps it may use.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcp import types
from pydantic import BaseModel, ConfigDict, Field, PydanticUserError

from framewire.engine.api import AppRegistry, Endpoint
from framewire.gateway.platform.auth import Principal
from framewire.gateway.requests.validation import JsonInputSchema

log = logging.getLogger("framewire.mcp")

MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_HASH_CHARS = 8


class Action(enum.StrEnum):
    """What an app tool does with its input."""

    RUN = "run"
    SUBMIT = "submit"


@dataclass(frozen=True, eq=False)
class AppTool:
    """One app tool: ``action`` on ``endpoint``."""

    name: str
    action: Action
    endpoint: Endpoint


def _hashed(prefix: str, slug: str, key: str) -> str:
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:_HASH_CHARS]
    keep = MAX_NAME - len(prefix) - 1 - _HASH_CHARS
    return f"{prefix}{slug[:keep]}_{digest}"


def tool_names(action: Action, keys: Sequence[str]) -> list[str]:
    """The tool names of ``action`` for endpoint ids ``keys``, in order, each unique.

    ``framewire/sdxl-turbo`` → ``run_framewire_sdxl-turbo``. Ids that would give the same
    name, or one longer than :data:`MAX_NAME`, get a short hash of the id instead of
    their tail, so a name depends only on the ids served, never on their order."""
    prefix = f"{action}_"
    slugs = [_UNSAFE.sub("_", key).strip("_") or "app" for key in keys]
    plain = [prefix + slug for slug in slugs]
    counts: dict[str, int] = {}
    for name in plain:
        counts[name] = counts.get(name, 0) + 1
    return [
        name if len(name) <= MAX_NAME and counts[name] == 1 else _hashed(prefix, slug, key)
        for name, slug, key in zip(plain, slugs, keys, strict=True)
    ]


# -- the tools that work across apps -----------------------------------------------------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(_Args):
    pass


class AppArgs(_Args):
    app_id: str = Field(
        ..., min_length=1, max_length=256, description="An app id or alias as list_apps gives it, e.g. framewire/echo."
    )


class RequestArgs(_Args):
    request_id: str = Field(..., min_length=1, max_length=128, description="The request_id a submit_ tool returned.")


class StatusArgs(RequestArgs):
    logs: bool = Field(False, description="Include the log lines the app wrote for this request.")


class UploadArgs(_Args):
    data: str = Field(..., min_length=1, description="The file's bytes, base64-encoded (a data: URI also works).")
    content_type: str | None = Field(
        None, max_length=255, description="e.g. image/png. Default: the data URI's, else guessed from the bytes."
    )
    file_name: str | None = Field(None, max_length=1024, description="A name for the file (kept in its URL).")


@dataclass(frozen=True)
class GeneralTool:
    name: str
    title: str
    description: str
    args: type[_Args]
    annotations: types.ToolAnnotations

    def definition(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=self.args.model_json_schema(),
            annotations=self.annotations,
        )


_READ_ONLY = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)

GENERAL: tuple[GeneralTool, ...] = (
    GeneralTool(
        "list_apps",
        "List apps",
        "The apps this server runs (and this key may use): id, title, description, aliases, endpoints, "
        "and the names of the tools that run each endpoint.",
        NoArgs,
        _READ_ONLY,
    ),
    GeneralTool(
        "describe_app",
        "Describe an app",
        "One app in full: its endpoints with the JSON Schema of each one's input and output (from the "
        "app's OpenAPI document; $refs point into `components`), and the tools that run them.",
        AppArgs,
        _READ_ONLY,
    ),
    GeneralTool(
        "get_status",
        "Status of a queued request",
        "Where a request from a submit_ tool is: IN_QUEUE (with its queue_position), IN_PROGRESS or "
        "COMPLETED (with an error when it failed); optionally the app's log lines.",
        StatusArgs,
        _READ_ONLY,
    ),
    GeneralTool(
        "get_result",
        "Result of a queued request",
        "The output of a COMPLETED request from a submit_ tool, images included; an error while it is "
        "still queued or running (follow it with get_status).",
        RequestArgs,
        _READ_ONLY,
    ),
    GeneralTool(
        "cancel_request",
        "Cancel a queued request",
        "Cancel a request from a submit_ tool: a queued one never runs, a running one is told to stop.",
        RequestArgs,
        types.ToolAnnotations(destructive_hint=True, idempotent_hint=True, open_world_hint=False),
    ),
    GeneralTool(
        "upload_file",
        "Upload a file",
        "Store a file on this server and get its URL, to pass to any app input whose name ends in _url "
        "(e.g. image_url). Files are kept for a limited time.",
        UploadArgs,
        types.ToolAnnotations(destructive_hint=False, idempotent_hint=False, open_world_hint=False),
    ),
)
GENERAL_BY_NAME = {tool.name: tool for tool in GENERAL}


# -- the tools of each app endpoint --------------------------------------------------------------


def _run_description(endpoint: Endpoint, submit: str) -> str:
    app = endpoint.app
    about = f" {app.description}" if app.description else ""
    return (
        f"Run {endpoint.key} ({app.title or app.app_id}) and wait for its output.{about} "
        "Image outputs come back as images and as URLs. Inputs whose name ends in _url take an http(s) URL, "
        f"a data: URI or a URL from upload_file. For long work use {submit} instead."
    )


def _submit_description(endpoint: Endpoint) -> str:
    app = endpoint.app
    return (
        f"Queue an input for {endpoint.key} ({app.title or app.app_id}) and return its request_id at once. "
        "Follow it with get_status, fetch the output with get_result, stop it with cancel_request."
    )


class ToolBook:
    """The tools of a registry's apps as they are when it is built, named and described once."""

    def __init__(self, registry: AppRegistry) -> None:
        self.registry = registry
        self.size = len(registry)
        endpoints = [ep for app in registry for ep in registry.request_endpoints(app).values()]
        keys = [ep.key for ep in endpoints]
        runs, submits = tool_names(Action.RUN, keys), tool_names(Action.SUBMIT, keys)
        self._tools: dict[str, AppTool] = {}
        self._names: dict[int, tuple[str, str]] = {}
        for ep, run, submit in zip(endpoints, runs, submits, strict=True):
            self._tools[run] = AppTool(run, Action.RUN, ep)
            self._tools[submit] = AppTool(submit, Action.SUBMIT, ep)
            self._names[id(ep)] = (run, submit)
        self._definitions: dict[str, types.Tool | None] = {}
        self._general = [tool.definition() for tool in GENERAL]

    def get(self, name: str) -> AppTool | None:
        return self._tools.get(name)

    def names_of(self, endpoint: Endpoint) -> dict[str, str]:
        """``{"run_tool": ..., "submit_tool": ...}`` of an endpoint."""
        run, submit = self._names[id(endpoint)]
        return {"run_tool": run, "submit_tool": submit}

    def visible(self, tool: AppTool, principal: Principal) -> bool:
        return principal.may_use(self.registry.names_of(tool.endpoint.app))

    def definitions(self, principal: Principal) -> list[types.Tool]:
        """Every tool ``principal`` may call: the general ones, then two per endpoint of its apps."""
        found = list(self._general)
        for tool in self._tools.values():
            if self.visible(tool, principal):
                definition = self._definition(tool)
                if definition is not None:
                    found.append(definition)
        return found

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """The input schema of the tool called ``name``, whoever asks; None for no such tool."""
        general = GENERAL_BY_NAME.get(name)
        if general is not None:
            return next(t.input_schema for t in self._general if t.name == name)
        tool = self._tools.get(name)
        definition = None if tool is None else self._definition(tool)
        return None if definition is None else definition.input_schema

    def _definition(self, tool: AppTool) -> types.Tool | None:
        if tool.name in self._definitions:
            return self._definitions[tool.name]
        endpoint = tool.endpoint
        definition: types.Tool | None
        try:
            schema: dict[str, Any] = endpoint.input_model.model_json_schema(schema_generator=JsonInputSchema)
        except (PydanticUserError, TypeError, ValueError):
            log.exception("cannot describe the input of %s as JSON Schema: its tools are not offered", endpoint.key)
            definition = None
        else:
            title = endpoint.app.title or endpoint.app.app_id
            if tool.action == Action.RUN:
                submit = self._names[id(endpoint)][1]
                definition = types.Tool(
                    name=tool.name,
                    title=f"Run {title}" + (f" /{endpoint.spec.path}" if endpoint.spec.path else ""),
                    description=_run_description(endpoint, submit),
                    input_schema=schema,
                    annotations=types.ToolAnnotations(destructive_hint=False, idempotent_hint=False),
                )
            else:
                definition = types.Tool(
                    name=tool.name,
                    title=f"Queue {title}" + (f" /{endpoint.spec.path}" if endpoint.spec.path else ""),
                    description=_submit_description(endpoint),
                    input_schema=schema,
                    annotations=types.ToolAnnotations(destructive_hint=False, idempotent_hint=False),
                )
        self._definitions[tool.name] = definition
        return definition
