"""OAUTHBEARER tokens (oauth.py): refreshed before they expire, a failed refresh keeps a
valid token, expiries from the provider or the JWT, the client-credentials grant."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kafka_log_middleware import oauth
from kafka_log_middleware.oauth import TokenError, TokenSource
from kafka_log_middleware.security import OAuthBearer
from tests.oauth_server import token_endpoint, unsecured_token


class Clock:
    """``time.time`` for ``oauth``, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


async def test_a_token_is_reused_until_80_percent_of_its_lifetime(clock: Clock) -> None:
    issued: list[str] = []

    def provider() -> tuple[str, float]:
        issued.append(f"token-{len(issued)}")
        return issued[-1], clock.now + 100

    source = TokenSource(OAuthBearer(token_provider=provider))
    assert await source.token() == "token-0"
    clock.now += 79
    assert await source.token() == "token-0" and not source.due()
    clock.now += 2
    assert source.due()
    assert await source.token() == "token-1"
    assert source.current() == ("token-1", clock.now + 100)


async def test_a_failed_refresh_keeps_the_valid_token_and_tries_again_later(clock: Clock) -> None:
    calls = 0

    async def provider() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("identity provider down")
        return "first", clock.now + 100

    source = TokenSource(OAuthBearer(token_provider=provider))
    assert await source.token() == "first"
    clock.now += 85
    assert await source.token() == "first"  # refresh failed: still valid
    assert calls == 2 and not source.due()
    clock.now += 20  # expired, and the provider still fails
    with pytest.raises(TokenError, match="provider raised ConnectionError"):
        await source.token()


async def test_a_bare_token_expires_with_its_jwt_exp_claim_or_in_an_hour() -> None:
    jwt = unsecured_token("logger", lifetime=600)
    source = TokenSource(OAuthBearer(token_provider=lambda: jwt))
    assert await source.token() == jwt
    assert abs(source.current()[1] - (time.time() + 600)) < 5
    opaque = TokenSource(OAuthBearer(token_provider=lambda: "opaque-token"))
    await opaque.token()
    assert abs(opaque.current()[1] - (time.time() + oauth.DEFAULT_LIFETIME)) < 5


@pytest.mark.parametrize("result", [None, "", 42, ("token", "soon"), ("token", True)])
async def test_a_provider_returning_no_token_is_a_token_error(result: Any) -> None:
    source = TokenSource(OAuthBearer(token_provider=lambda: result))
    with pytest.raises(TokenError):
        await source.token()
    with pytest.raises(TokenError):
        source.current()


async def test_the_client_credentials_grant() -> None:
    secret = "s3cret with spaces & symbols"
    with token_endpoint("kafka log", secret) as (url, grants):
        grant = OAuthBearer(
            token_endpoint_url=url, client_id="kafka log", client_secret=secret, scopes=("a",)
        )
        token = await TokenSource(grant).token()
        wrong = OAuthBearer(token_endpoint_url=url, client_id="kafka log", client_secret="no")
        with pytest.raises(TokenError, match="HTTP 401") as caught:
            await TokenSource(wrong).token()
    assert token.count(".") == 2
    assert grants == [
        {"grant_type": "client_credentials", "scope": "a"},
        {"grant_type": "client_credentials"},
    ]
    assert "no" not in str(caught.value).replace("token", "")
