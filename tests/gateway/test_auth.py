from __future__ import annotations

import time

import jwt
import pytest

from framewire.gateway.platform.auth import (
    Authenticator,
    AuthError,
    Principal,
    StaticKeys,
    TokenIssuer,
    scope_matches,
)
from framewire.gateway.platform.origins import origin_allowed


def make(enabled: bool = True) -> Authenticator:
    return Authenticator(enabled, StaticKeys(["k1:s3cret"]), TokenIssuer("test-secret-0123456789abcdef0123456789"))


def test_key_header_authenticates_and_wrong_secret_is_refused() -> None:
    auth = make()
    assert auth.request({"authorization": "Key k1:s3cret"}).key_id == "k1"
    with pytest.raises(AuthError) as err:
        auth.request({"authorization": "Key k1:wrong"})
    assert err.value.status == 401


def test_missing_credentials_are_refused_only_when_auth_is_on() -> None:
    with pytest.raises(AuthError, match="missing credentials"):
        make().request({})
    assert make(enabled=False).request({}).key_id == "anonymous"


def test_token_round_trip_keeps_scope_and_subject() -> None:
    auth = make()
    token = auth.tokens.issue(Principal("k1"), ["echo"], 60)
    principal = auth.request({}, token)
    assert principal.key_id == "k1" and principal.apps == frozenset({"echo"})
    assert auth.request({"authorization": f"Bearer {token}"}).apps == frozenset({"echo"})


def test_expired_token_is_refused_with_a_hint() -> None:
    issuer = TokenIssuer("test-secret-0123456789abcdef0123456789")
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "framewire",
            "aud": "framewire:realtime",
            "sub": "k1",
            "apps": ["echo"],
            "iat": now - 100,
            "exp": now - 10,
        },
        "test-secret-0123456789abcdef0123456789",
        algorithm="HS256",
    )
    with pytest.raises(AuthError, match="expired"):
        issuer.verify(token)


def test_token_signed_with_another_secret_is_refused() -> None:
    other = TokenIssuer("other-secret-0123456789abcdef0123456789").issue(Principal("k1"), ["echo"], 60)
    with pytest.raises(AuthError, match="invalid token"):
        TokenIssuer("test-secret-0123456789abcdef0123456789").verify(other)


def test_scope_matches_bare_aliases_like_fal_clients_send() -> None:
    names = ["fal-ai/fast-lcm-diffusion", "framewire/lcm"]
    assert scope_matches(["fast-lcm-diffusion"], names)
    assert scope_matches(["framewire/lcm"], names)
    assert scope_matches(["lcm"], names)
    assert not scope_matches(["echo"], names)


def test_check_app_refuses_other_apps_with_403() -> None:
    auth = make()
    with pytest.raises(AuthError) as err:
        auth.check_app(Principal("k1", frozenset({"echo"})), ["framewire/lcm"])
    assert err.value.status == 403


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "h:1", (), True),
        ("http://h:1", "h:1", (), True),
        ("http://evil.example", "h:1", (), False),
        ("http://evil.example", "h:1", ("*",), True),
        ("https://app.example", "h:1", ("https://app.example",), True),
        ("https://app.example.evil", "h:1", ("https://app.example",), False),
    ],
)
def test_origin_allowlist(origin: str | None, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok
