"""``POST /tokens/``: trade an API key for a short-lived realtime token.

Body ``{"allowed_apps": ["<alias>"], "token_expiration": <seconds>}`` as fal clients
send it; the answer is the token as a bare JSON string.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from framewire.engine.api import EngineClient
from framewire.gateway import http
from framewire.gateway.platform.auth import Authenticator, AuthError, scope_matches
from framewire.gateway.realtime import protocol


class TokenRequest(BaseModel):
    allowed_apps: list[str] = Field(min_length=1, max_length=64)
    token_expiration: int = Field(120, ge=1)


class TokenRoutes:
    """``POST /tokens/`` (and ``/tokens``); see the module docstring."""

    def __init__(self, engine: EngineClient, auth: Authenticator, body: http.BodyLimits) -> None:
        self.engine = engine
        self.auth = auth
        self.body = body

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/tokens/", self.create_token, methods=["POST"]),
            Route("/tokens", self.create_token, methods=["POST"]),
        ]

    async def create_token(self, request: Request) -> JSONResponse:
        try:
            principal = self.auth.request(request.headers)
        except AuthError as exc:
            return JSONResponse({"detail": exc.reason}, status_code=exc.status)
        if principal.expires_at is not None:  # else a token could mint longer ones, forever
            return JSONResponse(
                {"detail": "tokens are issued for API keys only: send 'Authorization: Key <id>:<secret>'"},
                status_code=403,
            )
        try:
            req = TokenRequest.model_validate(await http.read_json(request, self.body))
        except http.BodyError as exc:
            return exc.response()
        except ValidationError as exc:
            return JSONResponse({"detail": protocol.validation_detail(exc)}, status_code=422)
        limit = self.auth.tokens.max_expiration_s
        if req.token_expiration > limit:
            return JSONResponse(
                {"detail": f"token_expiration must be at most {limit} seconds, got {req.token_expiration}"},
                status_code=422,
            )
        registry = self.engine.registry
        apps = [registry.names_of(app) for app in registry]
        for i, name in enumerate(req.allowed_apps):
            names = next((n for n in apps if scope_matches([name], n)), None)
            if names is None:
                return JSONResponse({"detail": f"allowed_apps[{i}]: no app named {name!r}"}, status_code=422)
            if not principal.may_use(names):
                return JSONResponse({"detail": f"this key may not use {name!r}"}, status_code=403)
        token = self.auth.tokens.issue(principal, req.allowed_apps, req.token_expiration)
        return JSONResponse(token)
