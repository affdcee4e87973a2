"""OAUTHBEARER tokens: from the user's provider, or an OAuth 2.0 client-credentials grant.

One :class:`TokenSource` per producer holds the current token and fetches the next one
when 80 % of its lifetime has passed, so a connection never presents an expired token.
A provider may be synchronous (run in a thread: it may do I/O) or a coroutine function,
and returns the token, or ``(token, expires_at)`` with ``expires_at`` in seconds since
the epoch; a bare token's expiry is read from its JWT ``exp`` claim, else taken as one
hour. The client-credentials grant (Kong 3.15's ``token_endpoint_url``, ``client_id``,
``client_secret``, ``scopes``) is RFC 6749 §4.4 with HTTP basic client authentication.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from . import _log

if TYPE_CHECKING:
    from .security import OAuthBearer

Token = str | tuple[str, float]
TokenProvider = Callable[[], Token | Awaitable[Token]]
DEFAULT_LIFETIME = 3600.0
"""Seconds a token without a known expiry is used for."""
REFRESH_AT = 0.8
"""Fraction of a token's lifetime after which the next one is fetched."""
_ENDPOINT_TIMEOUT = 10.0
_RETRY = 5.0
"""Seconds before a failed refresh is tried again (while the current token is valid)."""


class TokenError(Exception):
    """No token: the provider or the token endpoint failed (the message names how, never
    a secret)."""


class TokenSource:
    """The current OAUTHBEARER token of one producer, refreshed before it expires."""

    def __init__(self, settings: OAuthBearer) -> None:
        self._settings = settings
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<TokenSource {'with a token' if self._token else 'empty'}>"

    def due(self) -> bool:
        """True when the next token should be fetched."""
        return self._token is None or time.time() >= self._refresh_at

    async def token(self) -> str:
        """A token valid now: the current one, or a fresh one when it is due. A failed
        refresh keeps the current token while it is valid, and is tried again later."""
        if self.due():
            async with self._lock:
                if self.due():
                    try:
                        await self._fetch()
                    except TokenError as exc:
                        now = time.time()
                        if self._token is None or now >= self._expires_at:
                            raise
                        self._refresh_at = now + min(_RETRY, (self._expires_at - now) / 2)
                        _log.warn(
                            "token", "kafka_log_middleware: cannot refresh the token: %s", exc
                        )
        assert self._token is not None
        return self._token

    def current(self) -> tuple[str, float]:
        """The token and its expiry (seconds since the epoch), for librdkafka."""
        if self._token is None:
            raise TokenError("no OAUTHBEARER token yet")
        return self._token, self._expires_at

    async def _fetch(self) -> None:
        settings = self._settings
        try:
            if settings.token_provider is not None:
                result = await _call(settings.token_provider)
            else:
                result = await asyncio.to_thread(_client_credentials, settings)
        except TokenError:
            raise
        except Exception as exc:
            raise TokenError(
                f"the OAUTHBEARER token provider raised {type(exc).__name__}"
            ) from None
        token, expires_at = _parsed(result)
        now = time.time()
        self._token, self._expires_at = token, expires_at
        self._refresh_at = now + (expires_at - now) * REFRESH_AT


async def _call(provider: TokenProvider) -> Any:
    if inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(
        getattr(provider, "__call__", None)  # noqa: B004 - an object with async __call__
    ):
        return await provider()  # type: ignore[misc]
    result = await asyncio.to_thread(provider)
    if inspect.isawaitable(result):
        return await result
    return result


def _parsed(result: Any) -> tuple[str, float]:
    """``(token, expires_at)`` from what a provider returned."""
    if isinstance(result, tuple) and len(result) == 2:
        token, expires_at = result
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
            raise TokenError("the OAUTHBEARER token provider's expiry is not a number")
    else:
        token, expires_at = result, None
    if not isinstance(token, str) or not token:
        raise TokenError("the OAUTHBEARER token provider returned no token (a non-empty str)")
    if expires_at is None:
        expires_at = _jwt_expiry(token) or time.time() + DEFAULT_LIFETIME
    return token, float(expires_at)


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, when ``token`` is one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _client_credentials(settings: OAuthBearer) -> tuple[str, float]:
    """One client-credentials grant against the token endpoint (blocking: in a thread)."""
    assert settings.token_endpoint_url and settings.client_id and settings.client_secret
    form = {"grant_type": "client_credentials"}
    if settings.scopes:
        form["scope"] = " ".join(settings.scopes)
    basic = f"{_form_quote(settings.client_id)}:{_form_quote(settings.client_secret)}"
    request = urllib.request.Request(
        settings.token_endpoint_url,
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(basic.encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        method="POST",
    )
    started = time.time()
    try:
        with urllib.request.urlopen(request, timeout=_ENDPOINT_TIMEOUT) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response and its socket
        raise TokenError(f"the OAuth token endpoint answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise TokenError(f"the OAuth token endpoint failed ({type(exc).__name__})") from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise TokenError("the OAuth token endpoint's answer has no access_token")
    lifetime = body.get("expires_in")
    if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0:
        return token, started + float(lifetime)
    return token, _jwt_expiry(token) or started + DEFAULT_LIFETIME


def _form_quote(text: str) -> str:
    """RFC 6749 §2.3.1: client credentials are form-encoded before basic authentication."""
    return urllib.parse.quote_plus(text)
