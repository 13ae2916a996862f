"""The operator's REST API: API keys (``/v1/keys``) and usage (``/v1/usage``).

- ``POST /v1/keys`` ``{"name", "apps": [..] | null, "admin": bool, "limits": {"requests_per_s",
  "max_sessions", "frames_per_s"}}`` → 201, the key's record plus ``key`` (``id:secret``,
  shown this once).
- ``GET /v1/keys[?revoked=1]``, ``GET /v1/keys/{id}`` → records (never secrets or hashes).
- ``PATCH /v1/keys/{id}`` with any of the create fields (``null`` clears a limit or the
  app scope) → the record; applies at once.
- ``DELETE /v1/keys/{id}`` → revokes at once (its tokens and open sessions end too).
- ``GET /v1/usage?key_id=&app=&start=&end=&granularity=minute|hour|day|total`` → a time
  series of per-key, per-app usage and totals (fal's ``endpoint_id`` and ``timeframe``
  are accepted for ``app`` and ``granularity``).

Key administration needs an admin key (``--api-key`` keys are admin). Usage is open to
every key, restricted to its own usage unless it is an admin key. With auth off
(local use) both are open, like every other surface.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from framewire.engine.api import EngineClient, split_app_id
from framewire.gateway import http
from framewire.gateway.platform.auth import Authenticator, AuthError, Limits, Principal, scope_matches
from framewire.gateway.platform.keys import KeyStore, NewKey, valid_key_id
from framewire.gateway.platform.usage import UsageMeter, UsageQuery, parse_time, report_json
from framewire.gateway.realtime import protocol

#: The window ``GET /v1/usage`` covers when ``start`` is not given.
DEFAULT_WINDOW_S = 24 * 3600.0


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_sessions: int | None = Field(None, ge=0)
    frames_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=200)
    apps: list[str] | None = Field(None, min_length=1, max_length=1000)
    admin: bool = False
    limits: LimitsBody | None = None


async def _body(request: Request, limits: http.BodyLimits) -> KeyBody | Response:
    try:
        data = await http.read_json(request, limits)
    except http.BodyError as exc:
        return exc.response()
    try:
        return KeyBody.model_validate(data)
    except ValidationError as exc:
        return JSONResponse({"detail": protocol.validation_detail(exc)}, status_code=422)


def _not_found(key_id: str) -> Response:
    return http.error(404, f"no key with id {key_id!r}")


class AdminRoutes:
    """``/v1/keys`` and ``/v1/usage``; see the module docstring."""

    def __init__(
        self, engine: EngineClient, auth: Authenticator, keys: KeyStore, usage: UsageMeter, body: http.BodyLimits
    ) -> None:
        self.engine = engine
        self.body = body
        self.auth = auth
        self.keys = keys
        self.usage = usage

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/keys", self.list_keys, methods=["GET"]),
            Route("/v1/keys", self.create_key, methods=["POST"]),
            Route("/v1/keys/{key_id}", self.key_endpoint, methods=["GET", "PATCH", "DELETE"]),
            Route("/v1/usage", self.usage_report, methods=["GET"]),
        ]

    def _caller(self, request: Request, *, admin: bool) -> Principal | Response:
        try:
            principal = self.auth.request(request.headers)
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        if admin and self.auth.enabled and not principal.admin:
            return http.error(403, "this needs an admin key (create one with `framewire keys create --admin`)")
        return principal

    def _unknown_apps(self, apps: list[str] | None) -> Response | None:
        registry = self.engine.registry
        names = [registry.names_of(app) for app in registry]
        for i, app in enumerate(apps or ()):
            if not any(scope_matches([app], n) for n in names):
                return JSONResponse(
                    {"detail": [{"loc": ["body", "apps", i], "msg": f"no app named {app!r}", "type": "value_error"}]},
                    status_code=422,
                )
        return None

    async def create_key(self, request: Request) -> Response:
        caller = self._caller(request, admin=True)
        if isinstance(caller, Response):
            return caller
        body = await _body(request, self.body)
        if isinstance(body, Response):
            return body
        unknown = self._unknown_apps(body.apps)
        if unknown is not None:
            return unknown
        limits = Limits(**body.limits.model_dump()) if body.limits is not None else Limits()
        new = NewKey(body.name, None if body.apps is None else tuple(body.apps), body.admin, limits)
        record, key = await self.keys.create(new)
        return JSONResponse({**record.to_json(), "key": key}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        caller = self._caller(request, admin=True)
        if isinstance(caller, Response):
            return caller
        revoked = request.query_params.get("revoked", "").lower() in ("1", "true", "yes")
        records = await self.keys.list(include_revoked=revoked)
        return JSONResponse({"keys": [r.to_json() for r in records]})

    async def key_endpoint(self, request: Request) -> Response:
        caller = self._caller(request, admin=True)
        if isinstance(caller, Response):
            return caller
        key_id = request.path_params["key_id"]
        if not valid_key_id(key_id):
            return _not_found(key_id)
        if request.method == "GET":
            record = await self.keys.get(key_id)
        elif request.method == "DELETE":
            record = await self.keys.revoke(key_id)
        else:
            body = await _body(request, self.body)
            if isinstance(body, Response):
                return body
            unknown = self._unknown_apps(body.apps)
            if unknown is not None:
                return unknown
            changes: dict[str, Any] = {k: getattr(body, k) for k in body.model_fields_set if k != "limits"}
            if body.limits is not None:
                changes.update({k: getattr(body.limits, k) for k in body.limits.model_fields_set})
            elif "limits" in body.model_fields_set:  # "limits": null clears every limit
                changes.update(requests_per_s=None, max_sessions=None, frames_per_s=None)
            try:
                record = await self.keys.update(key_id, changes)
            except LookupError as exc:
                return http.error(409, str(exc))
            except ValueError as exc:
                return http.error(422, str(exc))
        if record is None:
            return _not_found(key_id)
        return JSONResponse(record.to_json())

    def _app_id(self, name: str) -> str:
        """The app id usage is recorded under for a name the caller gives (id, alias id or bare alias)."""
        registry = self.engine.registry
        try:
            app = registry.get(split_app_id(name)[0])
        except ValueError:
            app = next((a for a in registry if scope_matches([name], registry.names_of(a))), None)
        return app.app_id if app is not None else name

    async def usage_report(self, request: Request) -> Response:
        caller = self._caller(request, admin=False)
        if isinstance(caller, Response):
            return caller
        q = request.query_params
        key_id = q.get("key_id")
        if self.auth.enabled and not caller.admin:
            if key_id is not None and key_id != caller.key_id:
                return http.error(403, "a key that is not an admin key can only read its own usage")
            key_id = caller.key_id
        app = q.get("app") or q.get("endpoint_id")
        try:
            end = parse_time(q["end"], "end") if q.get("end") else None
            start = parse_time(q["start"], "start") if q.get("start") else (end or time.time()) - DEFAULT_WINDOW_S
            query = UsageQuery(
                key_id=key_id,
                app=None if app is None else self._app_id(app),
                start=start,
                end=end,
                granularity=q.get("granularity") or q.get("timeframe") or "hour",
            )
        except ValueError as exc:
            return http.error(422, str(exc))
        rows = await self.usage.query(query)
        return JSONResponse(report_json(query, rows))
