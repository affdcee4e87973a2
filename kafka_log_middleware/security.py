"""Kafka security: SASL authentication and TLS, configured as Kong Enterprise's kafka-log.

``authentication={"strategy": "sasl", "mechanism": ..., "user": ..., "password": ...}``
and ``security={"ssl": True, "ssl_verify": ..., "cafile": ..., ...}`` (plain values, as
in a Kong plugin config) become a :class:`SaslAuthentication` and a :class:`TlsSettings`,
checked when the config is built: a missing password or an unreadable key fails there,
naming the field, never later in the background. Both map onto each client's own
settings (``aiokafka_options``, ``librdkafka_options``). Secrets (passwords, key
passwords) are never shown by ``repr`` nor quoted in an error.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .oauth import TokenProvider

Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
MECHANISMS: tuple[Mechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OAUTHBEARER = "OAUTHBEARER"
HIDDEN = "<hidden>"
"""What a ``repr`` shows in place of a secret."""

_AUTHENTICATION_KEYS = ("strategy", "mechanism", "user", "password", "tokenauth")
_OAUTH_KEYS = (
    "strategy",
    "mechanism",
    "token_provider",
    "token_endpoint_url",
    "client_id",
    "client_secret",
    "scopes",
)
_SECURITY_KEYS = (
    "ssl",
    "ssl_verify",
    "cafile",
    "capath",
    "certfile",
    "keyfile",
    "keyfile_password",
    "check_hostname",
    "ssl_context",
)


class SecurityError(ValueError):
    """A refused ``authentication`` or ``security`` value; ``field`` is the config field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True, kw_only=True)
class SaslAuthentication:
    """SASL with a user name and password (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``)."""

    mechanism: Mechanism
    user: str
    password: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        shown = f"mechanism={self.mechanism!r}, user={self.user!r}, password={HIDDEN}"
        return f"SaslAuthentication({shown})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OAuthBearer:
    """SASL OAUTHBEARER: tokens from ``token_provider`` (a function, sync or async), or
    from an OAuth 2.0 token endpoint by the client-credentials grant (see ``oauth.py``)."""

    token_provider: TokenProvider | None = None
    token_endpoint_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    mechanism: Literal["OAUTHBEARER"] = "OAUTHBEARER"

    def __repr__(self) -> str:
        if self.token_provider is not None:
            return f"OAuthBearer(token_provider={self.token_provider!r})"
        shown = f"token_endpoint_url={self.token_endpoint_url!r}, client_id={self.client_id!r}"
        return f"OAuthBearer({shown}, client_secret={HIDDEN}, scopes={self.scopes!r})"


Authentication = SaslAuthentication | OAuthBearer


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS towards the brokers: whom to trust, and the client certificate for mTLS.

    ``ssl_context`` is the context aiokafka uses, built once from the other fields when
    the config is made (so a bad file fails there), or the one the user gave.
    """

    ssl_verify: bool = True
    cafile: str | None = None
    capath: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = dataclasses.field(default=None, repr=False)
    check_hostname: bool = True
    ssl_context: ssl.SSLContext = dataclasses.field(compare=False, repr=False)
    user_context: bool = False
    """The context is the user's own (librdkafka cannot take one)."""

    def __repr__(self) -> str:
        if self.user_context:
            return "TlsSettings(ssl_context=<the given SSLContext>)"
        shown = [f"ssl_verify={self.ssl_verify!r}"]
        for name in ("cafile", "capath", "certfile", "keyfile"):
            value = getattr(self, name)
            if value is not None:
                shown.append(f"{name}={value!r}")
        if self.keyfile_password is not None:
            shown.append(f"keyfile_password={HIDDEN}")
        if not self.check_hostname:
            shown.append("check_hostname=False")
        return f"TlsSettings({', '.join(shown)})"

    def _identity(self) -> tuple[Any, ...]:
        # A user's context is itself the setting: two of them are never alike.
        context = id(self.ssl_context) if self.user_context else None
        return (
            self.ssl_verify,
            self.cafile,
            self.capath,
            self.certfile,
            self.keyfile,
            self.keyfile_password,
            self.check_hostname,
            context,
        )

    def __hash__(self) -> int:
        return hash(self._identity())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TlsSettings):
            return NotImplemented
        return self._identity() == other._identity()


def security_protocol(authentication: Authentication | None, tls: TlsSettings | None) -> str:
    """Kafka's ``security.protocol`` for these settings."""
    if authentication is None:
        return "PLAINTEXT" if tls is None else "SSL"
    return "SASL_PLAINTEXT" if tls is None else "SASL_SSL"


def aiokafka_security(
    authentication: Authentication | None, tls: TlsSettings | None
) -> dict[str, Any]:
    """``AIOKafkaProducer`` keyword arguments for these settings (for OAUTHBEARER, the
    producer adds its token provider)."""
    options: dict[str, Any] = {"security_protocol": security_protocol(authentication, tls)}
    if tls is not None:
        options["ssl_context"] = tls.ssl_context
    if authentication is not None:
        options["sasl_mechanism"] = authentication.mechanism
    if isinstance(authentication, SaslAuthentication):
        options["sasl_plain_username"] = authentication.user
        options["sasl_plain_password"] = authentication.password
    return options


def librdkafka_security(
    authentication: Authentication | None, tls: TlsSettings | None
) -> dict[str, Any]:
    """librdkafka properties for these settings (a user's ``SSLContext`` is refused earlier;
    for OAUTHBEARER, the producer adds its ``oauth_cb``)."""
    options: dict[str, Any] = {"security.protocol": security_protocol(authentication, tls)}
    if tls is not None:
        options["enable.ssl.certificate.verification"] = tls.ssl_verify
        options["ssl.endpoint.identification.algorithm"] = (
            "https" if tls.ssl_verify and tls.check_hostname else "none"
        )
        if tls.cafile is not None or tls.capath is not None:
            options["ssl.ca.location"] = tls.cafile if tls.cafile is not None else tls.capath
        if tls.certfile is not None:
            options["ssl.certificate.location"] = tls.certfile
            options["ssl.key.location"] = tls.keyfile if tls.keyfile is not None else tls.certfile
        if tls.keyfile_password is not None:
            options["ssl.key.password"] = tls.keyfile_password
    if authentication is not None:
        options["sasl.mechanism"] = authentication.mechanism
    if isinstance(authentication, SaslAuthentication):
        options["sasl.username"] = authentication.user
        options["sasl.password"] = authentication.password
    return options


# -- checks: plain values (or our objects) in, our objects out ----------------------------


def check_authentication(field: str, value: Any) -> Authentication | None:
    """``authentication`` as Kong gives it (a mapping), or None for no SASL."""
    if value is None or isinstance(value, SaslAuthentication | OAuthBearer):
        return value
    if not isinstance(value, Mapping):
        raise SecurityError(
            field,
            f"{field} must be a mapping such as {{'strategy': 'sasl', ...}}, not {_kind(value)}",
        )
    if value.get("mechanism") == OAUTHBEARER:
        return _check_oauth(field, value)
    _only_known(field, value, _AUTHENTICATION_KEYS)
    strategy = value.get("strategy", "sasl")
    if strategy != "sasl":
        raise SecurityError(field, f"{field}.strategy must be 'sasl' (Kong's only strategy)")
    if value.get("tokenauth"):
        raise SecurityError(
            field, f"{field}.tokenauth (delegation tokens) is not supported by the Python clients"
        )
    mechanism = value.get("mechanism")
    if mechanism not in MECHANISMS:
        shown = ", ".join((*MECHANISMS, OAUTHBEARER))
        if isinstance(mechanism, str):
            raise SecurityError(
                field, f"{field}.mechanism must be one of {shown}, not {mechanism!r}"
            )
        raise SecurityError(field, f"{field}.mechanism must be one of {shown}")
    user = _required_text(field, value, "user", mechanism)
    password = _required_text(field, value, "password", mechanism)
    return SaslAuthentication(mechanism=mechanism, user=user, password=password)


def _check_oauth(field: str, value: Mapping[str, Any]) -> OAuthBearer:
    """OAUTHBEARER: a token provider, or the client-credentials grant's four settings."""
    _only_known(field, value, _OAUTH_KEYS)
    if value.get("strategy", "sasl") != "sasl":
        raise SecurityError(field, f"{field}.strategy must be 'sasl' (Kong's only strategy)")
    provider = value.get("token_provider")
    grant = [
        key
        for key in ("token_endpoint_url", "client_id", "client_secret", "scopes")
        if key in value
    ]
    if provider is not None:
        if grant:
            raise SecurityError(
                field, f"{field}: give token_provider or {', '.join(grant)}, not both"
            )
        if not callable(provider):
            raise SecurityError(
                field, f"{field}.token_provider must be a function, not {_kind(provider)}"
            )
        try:
            inspect.signature(provider).bind()
        except TypeError:
            raise SecurityError(field, f"{field}.token_provider must take no arguments") from None
        except ValueError:
            pass  # a builtin without a signature: trust it
        try:
            hash(provider)
        except TypeError:
            raise SecurityError(
                field, f"{field}.token_provider must be hashable (the config is)"
            ) from None
        return OAuthBearer(token_provider=provider)
    if not grant:
        raise SecurityError(
            field,
            f"{field}: OAUTHBEARER needs a token_provider, or token_endpoint_url, client_id "
            "and client_secret (the client-credentials grant)",
        )
    url = _required_text(field, value, "token_endpoint_url", OAUTHBEARER)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise SecurityError(field, f"{field}.token_endpoint_url must be an http(s) URL")
    client_id = _required_text(field, value, "client_id", OAUTHBEARER)
    secret = _required_text(field, value, "client_secret", OAUTHBEARER)
    scopes = value.get("scopes", ())
    if isinstance(scopes, str) or not isinstance(scopes, Iterable):
        raise SecurityError(field, f"{field}.scopes must be a list of strings")
    scopes = tuple(scopes)
    if not all(isinstance(scope, str) and scope and " " not in scope for scope in scopes):
        raise SecurityError(field, f"{field}.scopes must be non-empty strings without spaces")
    return OAuthBearer(
        token_endpoint_url=url, client_id=client_id, client_secret=secret, scopes=scopes
    )


def check_security(field: str, value: Any) -> TlsSettings | None:
    """``security`` as Kong gives it (a mapping with ``ssl``), an ``SSLContext``, or None."""
    if value is None or isinstance(value, TlsSettings):
        return value
    if isinstance(value, ssl.SSLContext):
        return TlsSettings(ssl_context=value, user_context=True)
    if not isinstance(value, Mapping):
        raise SecurityError(
            field,
            f"{field} must be a mapping such as {{'ssl': True}} or an ssl.SSLContext, "
            f"not {_kind(value)}",
        )
    _only_known(field, value, _SECURITY_KEYS)
    enabled = _flag(field, value, "ssl", False)
    context = value.get("ssl_context")
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise SecurityError(
                field, f"{field}.ssl_context must be an ssl.SSLContext, not {_kind(context)}"
            )
        others = [key for key in value if key not in ("ssl", "ssl_context")]
        if others:
            raise SecurityError(
                field, f"{field}.ssl_context replaces {', '.join(others)}: give one or the other"
            )
        return TlsSettings(ssl_context=context, user_context=True)
    if not enabled:
        others = [key for key in value if key != "ssl"]
        if others:
            raise SecurityError(field, f"{field}: {', '.join(others)} need ssl=True")
        return None
    verify = _flag(field, value, "ssl_verify", True)
    check_hostname = _flag(field, value, "check_hostname", True)
    cafile = _path(field, value, "cafile", directory=False)
    capath = _path(field, value, "capath", directory=True)
    certfile = _path(field, value, "certfile", directory=False)
    keyfile = _path(field, value, "keyfile", directory=False)
    password = value.get("keyfile_password")
    if password is not None and not isinstance(password, str):
        raise SecurityError(
            field, f"{field}.keyfile_password must be a string, not {_kind(password)}"
        )
    if keyfile is not None and certfile is None:
        raise SecurityError(
            field, f"{field}.keyfile needs {field}.certfile (the client certificate)"
        )
    if password is not None and certfile is None:
        raise SecurityError(field, f"{field}.keyfile_password needs {field}.certfile and keyfile")
    if certfile is not None and not verify:
        raise SecurityError(
            field,
            f"{field}: a client certificate (certfile) with ssl_verify=False would be sent to "
            "a broker that is not verified; verify it, or drop the certificate",
        )
    if not verify and (cafile is not None or capath is not None):
        raise SecurityError(field, f"{field}: cafile/capath are unused with ssl_verify=False")
    context = _context(field, verify, check_hostname, cafile, capath, certfile, keyfile, password)
    return TlsSettings(
        ssl_verify=verify,
        cafile=cafile,
        capath=capath,
        certfile=certfile,
        keyfile=keyfile,
        keyfile_password=password,
        check_hostname=check_hostname,
        ssl_context=context,
    )


def _context(
    field: str,
    verify: bool,
    check_hostname: bool,
    cafile: str | None,
    capath: str | None,
    certfile: str | None,
    keyfile: str | None,
    password: str | None,
) -> ssl.SSLContext:
    """The client context for these settings; a file that does not load fails here."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = check_hostname
        if cafile is not None or capath is not None:
            try:
                context.load_verify_locations(cafile=cafile, capath=capath)
            except (ssl.SSLError, OSError) as exc:
                which = "cafile" if cafile is not None else "capath"
                raise SecurityError(
                    field, f"{field}.{which} holds no usable CA certificate ({_reason(exc)})"
                ) from None
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile, password)
        except (ssl.SSLError, OSError) as exc:
            raise SecurityError(
                field,
                f"{field}: the client certificate and key do not load ({_reason(exc)}): "
                "check certfile, keyfile and keyfile_password",
            ) from None
    return context


def _reason(exc: BaseException) -> str:
    """An SSL/OS error's cause, without its text (which can quote a file's content)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _only_known(field: str, value: Mapping[Any, Any], known: tuple[str, ...]) -> None:
    for key in value:
        if key not in known:
            raise SecurityError(
                field, f"{field}: {key!r} is not one of its keys ({', '.join(known)})"
            )


def _required_text(field: str, value: Mapping[str, Any], key: str, mechanism: str) -> str:
    text = value.get(key)
    if text is None or text == "":
        raise SecurityError(field, f"{field}.{key} is required for {mechanism}")
    if not isinstance(text, str):
        raise SecurityError(field, f"{field}.{key} must be a string, not {_kind(text)}")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise SecurityError(field, f"{field}.{key} is not valid Unicode") from None
    return text


def _flag(field: str, value: Mapping[str, Any], key: str, default: bool) -> bool:
    flag = value.get(key, default)
    if not isinstance(flag, bool):
        raise SecurityError(field, f"{field}.{key} must be True or False, not {_kind(flag)}")
    return flag


def _path(field: str, value: Mapping[str, Any], key: str, *, directory: bool) -> str | None:
    """A readable file (or directory), as an absolute path: the client reads it later."""
    path = value.get(key)
    if path is None:
        return None
    if not isinstance(path, str | os.PathLike):
        raise SecurityError(field, f"{field}.{key} must be a path, not {_kind(path)}")
    text = os.path.abspath(os.fspath(path))
    kind = "directory" if directory else "file"
    exists = os.path.isdir(text) if directory else os.path.isfile(text)
    if not exists:
        raise SecurityError(field, f"{field}.{key}: no such {kind}: {text!r}")
    if not os.access(text, os.R_OK | (os.X_OK if directory else 0)):
        raise SecurityError(field, f"{field}.{key}: {text!r} is not readable")
    return text


def _kind(value: Any) -> str:
    return type(value).__name__
