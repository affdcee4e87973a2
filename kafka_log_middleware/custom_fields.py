"""Kong's ``kong.log.set_serialize_value``: add, replace or remove fields of the entry.

An app handler records edits during the request with :func:`set_serialize_value`; the
serializer applies them last, after redaction, with :func:`apply_edits`. Dotted keys
(``"request.headers.x-foo"``) address nested fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from . import _log
from .capture import request_state

Mode = Literal["set", "add", "replace"]
Edit = tuple[str, Any, str]
"""One recorded edit: ``(dotted key, value, mode)``; a None value removes the field."""

EDITS_KEY = "kafka_log_middleware.serialize_values"
"""Scope key holding the request's list of edits (a middleware may pre-create the list)."""

_MODES = ("set", "add", "replace")


def set_serialize_value(request_or_scope: Any, key: str, value: Any, mode: Mode = "set") -> None:
    """Record an edit of this request's log entry: ``set`` (always), ``add`` (only if
    absent) or ``replace`` (only if present); ``value=None`` removes the field.

    ``request_or_scope`` is an ASGI request (anything with ``.scope``: Starlette's,
    Django's under ASGI) or its scope, a WSGI request (anything with ``.environ``:
    Flask's, Django's under WSGI) or its environ.
    """
    scope = request_state(request_or_scope, "set_serialize_value")
    check_key(key)
    if mode not in _MODES:
        raise ValueError(f"mode must be 'set', 'add' or 'replace', not {mode!r}")
    edits = scope.get(EDITS_KEY)
    if edits is None:
        scope[EDITS_KEY] = edits = []
    edits.append((key, value, mode))


def check_key(key: Any) -> None:
    """Reject what is not a dotted field name (``"a.b"``; no empty part)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string, not {key!r}")
    if key.startswith(".") or key.endswith(".") or ".." in key:
        raise ValueError(f"key {key!r} is not a dotted field name")


def request_edits(scope: Mapping[str, Any]) -> Sequence[Edit]:
    """The edits recorded for this request, in call order."""
    edits: Sequence[Edit] = scope.get(EDITS_KEY, ())
    return edits


def apply_edits(entry: dict[str, Any], edits: Iterable[Edit]) -> None:
    """Apply edits in order, as Kong's ``edit_result`` does."""
    for key, value, mode in edits:
        apply_edit(entry, key, value, mode)


def apply_edit(entry: dict[str, Any], key: str, value: Any, mode: str = "set") -> None:
    """Apply one edit; ``set``/``add`` create missing parent objects, ``replace`` does not.

    Parent objects on the path are copied before they are changed, so a mapping shared
    with the config or a hook (``service``…) is never modified. A parent that is not an
    object skips the edit with a warning (Kong raises there and loses the entry).
    """
    parts = key.split(".")
    node = entry
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            if mode == "replace":
                return
            child = {}
        elif isinstance(child, Mapping):
            child = dict(child)
        else:
            _log.warn(
                "serialize_value",
                "set_serialize_value: %r skipped: %r is a %s, not an object",
                key,
                part,
                type(child).__name__,
            )
            return
        node[part] = child
        node = child
    last = parts[-1]
    if mode == "add" and node.get(last) is not None:
        return
    if mode == "replace" and node.get(last) is None:
        return
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
