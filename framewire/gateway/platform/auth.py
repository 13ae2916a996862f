"""Who is calling: API keys and short-lived realtime tokens (browser origins: :mod:`.origins`).

Keys arrive as ``Authorization: Key <id>:<secret>``. Browsers cannot set headers on a
WebSocket, so they first trade a key for a short-lived token at ``POST /tokens/`` and
pass it as ``fal_jwt_token``. Tokens are JWTs (HS256) scoped to apps and never wider
than the key that asked for them: when the key store can look keys up by id, a token is
checked against its key on every use, so revoking the key ends its tokens too, and the
key's limits and current scope apply to them.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import jwt

TOKEN_ISSUER = "framewire"
TOKEN_AUDIENCE = "framewire:realtime"


class AuthError(Exception):
    """Refused: ``status`` is 401 (who are you?) or 403 (not for you)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def code(self) -> str:
        return "UNAUTHORIZED" if self.status == 401 else "FORBIDDEN"


@dataclass(frozen=True)
class Limits:
    """Per-key limits; None means unlimited.

    ``requests_per_s`` applies to calls that start work (sync run, stream, queue submit),
    ``max_sessions`` to realtime sessions open at once, ``frames_per_s`` to realtime
    frames summed over the key's sessions.
    """

    requests_per_s: float | None = None
    max_sessions: int | None = None
    frames_per_s: float | None = None

    @property
    def any(self) -> bool:
        return self.requests_per_s is not None or self.max_sessions is not None or self.frames_per_s is not None


NO_LIMITS = Limits()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``apps`` None means every app.

    A token's principal carries the token's scope in ``apps`` and, in ``key_apps``, the
    scope its key has now: both must allow an app (a token only ever narrows its key).
    ``expires_at`` (unix seconds) is when the token expires (None for a key): nothing
    issued to a token may outlive it.
    """

    key_id: str
    apps: frozenset[str] | None = None
    admin: bool = False
    limits: Limits = NO_LIMITS
    key_apps: frozenset[str] | None = None
    expires_at: int | None = None

    def may_use(self, names: Iterable[str]) -> bool:
        names = list(names)
        if self.key_apps is not None and not scope_matches(self.key_apps, names):
            return False
        return self.apps is None or scope_matches(self.apps, names)


ANONYMOUS = Principal("anonymous")


def scope_matches(scope: Iterable[str], names: Iterable[str]) -> bool:
    """True when a scope entry names the app: its id, an alias id, or a bare alias.

    fal clients put only the alias in ``allowed_apps`` (``fast-lcm-diffusion`` for
    ``fal-ai/fast-lcm-diffusion``), so a bare alias matches any owner.
    """
    wanted = set(scope)
    return any(name in wanted or name.rsplit("/", 1)[-1] in wanted for name in names)


class KeyVerifier(Protocol):
    def verify(self, key: str) -> Principal | None:
        """The principal for a full ``id:secret`` key, or None if it is not valid."""


@runtime_checkable
class KeyDirectory(Protocol):
    """A :class:`KeyVerifier` that can also look a key up by id (to check tokens against it)."""

    def verify(self, key: str) -> Principal | None: ...

    def principal(self, key_id: str) -> Principal | None:
        """The current principal of a key id, or None when the key is unknown or revoked."""


class StaticKeys:
    """Keys given on the command line or in the environment (full access each)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._secrets = {}
        for key in keys:
            key_id, _, secret = key.partition(":")
            self._secrets[key_id] = secret.encode()

    def verify(self, key: str) -> Principal | None:
        key_id, _, secret = key.partition(":")
        expected = self._secrets.get(key_id)
        if expected is None or not hmac.compare_digest(expected, secret.encode()):
            return None
        return Principal(key_id, admin=True)

    def principal(self, key_id: str) -> Principal | None:
        return Principal(key_id, admin=True) if key_id in self._secrets else None


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    apps: frozenset[str]
    expires_at: int


class TokenIssuer:
    """Signs and checks realtime tokens."""

    def __init__(self, secret: str | None, max_expiration_s: int = 3600) -> None:
        self._secret = secret or secrets.token_urlsafe(32)
        self.max_expiration_s = max_expiration_s

    def issue(self, principal: Principal, apps: Sequence[str], expiration_s: int) -> str:
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "aud": TOKEN_AUDIENCE,
            "sub": principal.key_id,
            "apps": list(apps),
            "iat": now,
            "exp": now + expiration_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=TOKEN_AUDIENCE,
                issuer=TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token expired; fetch a new one from /tokens/") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, f"invalid token ({exc})") from None
        apps = claims.get("apps")
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise AuthError(401, "invalid token (no app scope)")
        return TokenClaims(claims["sub"], frozenset(apps), int(claims["exp"]))


class Authenticator:
    """Turns request credentials into a :class:`Principal`, or refuses."""

    def __init__(self, enabled: bool, keys: KeyVerifier, tokens: TokenIssuer) -> None:
        self.enabled = enabled
        self.keys = keys
        self.tokens = tokens

    def from_header(self, authorization: str | None, *, bearer_keys: bool = False) -> Principal | None:
        """The principal of an ``Authorization`` header (``Key …`` or ``Bearer <token>``).

        With ``bearer_keys``, ``Bearer <id>:<secret>`` is a key too (the form MCP clients
        send a static credential in; a token never contains a colon). Returns None when
        there is no header; raises :class:`AuthError` when it is wrong.
        """
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        if value and (scheme == "key" or (scheme == "bearer" and bearer_keys and ":" in value)):
            principal = self.keys.verify(value)
            if principal is None:
                raise AuthError(401, "invalid API key")
            return principal
        if scheme == "bearer" and value:
            return self.token_principal(self.tokens.verify(value))
        raise AuthError(401, "Authorization header must be 'Key <id>:<secret>' or 'Bearer <token>'")

    def request(self, headers: Mapping[str, str], token: str | None = None, *, bearer_keys: bool = False) -> Principal:
        """Authenticate an HTTP or WebSocket request (header first, then a query token)."""
        if not self.enabled:
            return ANONYMOUS
        principal = self.from_header(headers.get("authorization"), bearer_keys=bearer_keys)
        if principal is not None:
            return principal
        if token:
            return self.token_principal(self.tokens.verify(token))
        raise AuthError(401, "missing credentials: send 'Authorization: Key <id>:<secret>' or fal_jwt_token")

    def subject(self, key_id: str) -> Principal | None:
        """The current principal of the key a token was issued to (None: revoked or unknown).

        With a verifier that cannot look keys up, a token stands on its own signature.
        """
        if isinstance(self.keys, KeyDirectory):
            return self.keys.principal(key_id)
        return Principal(key_id)

    def token_principal(self, claims: TokenClaims) -> Principal:
        """A token's principal: the token's scope within its key's current scope and limits."""
        key = self.subject(claims.subject)
        if key is None:
            raise AuthError(401, "the key this token was issued for has been revoked")
        return Principal(
            claims.subject, claims.apps, admin=False, limits=key.limits, key_apps=key.apps, expires_at=claims.expires_at
        )

    def check_app(self, principal: Principal, app_names: Sequence[str]) -> None:
        if not principal.may_use(app_names):
            raise AuthError(403, f"credentials are not valid for {app_names[0]!r}")
