"""Which requests are logged: ``exclude_paths`` on the request path, ``should_log`` after.

``exclude_paths`` is compiled when the config is made into the cheapest test that
answers it (a frozenset's ``__contains__`` for exact paths), which a door applies to the
request's path before it captures anything: an excluded request is served untouched and
only counted. The grammar, kept small on purpose:

- ``/health``: that path exactly (not ``/health/``, not ``/healthz``);
- ``*`` matches any characters within one segment (never ``/``): ``/v*/status``,
  ``/health*`` (``/healthz``, not ``/health/live``);
- a trailing ``/**`` matches every path below: ``/static/**`` is ``/static/`` and
  everything under it (not ``/static`` itself).

Patterns start with ``/``, match the decoded path without the query string (no ``?`` or
``#`` in them), case-sensitively. ``should_log`` runs in the publisher, with the
captured request, before its entry is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .serializer import warn_hook

if TYPE_CHECKING:
    from .capture import CapturedRequest

PathTest = Callable[[str], bool]
"""True for a path ``exclude_paths`` excludes."""
_NOTHING: frozenset[str] = frozenset()
EXCLUDED = "excluded"
"""The door key's value on a request a door excluded (an inner door leaves it alone)."""


def check_path_pattern(pattern: str) -> str:
    """``pattern`` if it is one of the grammar's, else ``ValueError`` saying why."""
    if not pattern.startswith("/"):
        raise ValueError(f"{pattern!r} must start with '/' (a path, e.g. '/health')")
    if "?" in pattern or "#" in pattern:
        raise ValueError(f"{pattern!r}: paths are matched without the query string (no '?' or '#')")
    if "**" in pattern and (pattern.count("**") > 1 or not pattern.endswith("/**")):
        raise ValueError(f"{pattern!r}: '**' only as the last segment ('/static/**')")
    return pattern


class PathPatterns(tuple[str, ...]):
    """``exclude_paths`` as checked: the patterns, and their ``test`` compiled once."""

    test: PathTest
    """True for a path the patterns match."""

    def __new__(cls, patterns: Iterable[str]) -> PathPatterns:
        self = super().__new__(cls, patterns)
        self.test = path_test(self) or _NOTHING.__contains__
        return self


def excluded(patterns: tuple[str, ...], path: str) -> bool:
    """True when ``path`` matches ``patterns`` (a config's ``exclude_paths``: the doors
    skip the call when it is empty, so a config without filters costs a length test)."""
    test: PathTest = patterns.test  # type: ignore[attr-defined]  # a PathPatterns, checked
    return test(path)


def path_test(patterns: Iterable[str]) -> PathTest | None:
    """The test of ``patterns`` (checked), or None when there are none (nothing to test)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    globs: list[str] = []
    for pattern in patterns:
        if "*" not in pattern:
            exact.add(pattern)
        elif pattern.endswith("/**") and "*" not in pattern[:-3]:
            prefixes.append(pattern[:-2])
        else:
            globs.append(_regex(pattern))
    if not (exact or prefixes or globs):
        return None
    if not (prefixes or globs):
        return frozenset(exact).__contains__  # one C call per request
    glob = re.compile("|".join(globs)).fullmatch if globs else None
    return _PathFilter(frozenset(exact), tuple(prefixes), glob).excludes


NO_PATHS = PathPatterns(())
"""``exclude_paths``' default: no path excluded."""


def _regex(pattern: str) -> str:
    """``pattern`` as a regular expression: ``*`` within a segment, ``/**`` below."""
    body, below = (pattern[:-3], True) if pattern.endswith("/**") else (pattern, False)
    regex = "[^/]*".join(re.escape(part) for part in body.split("*"))
    return f"(?:{regex}/.*)" if below else f"(?:{regex})"


class _PathFilter:
    """Exact paths, prefixes (``/**``) and one regular expression for the other globs."""

    __slots__ = ("exact", "glob", "prefixes")

    def __init__(
        self,
        exact: frozenset[str],
        prefixes: tuple[str, ...],
        glob: Callable[[str], re.Match[str] | None] | None,
    ) -> None:
        self.exact = exact
        self.prefixes = prefixes
        self.glob = glob

    def excludes(self, path: str) -> bool:
        """True when ``path`` matches one of the patterns."""
        if path in self.exact or path.startswith(self.prefixes):
            return True
        return self.glob is not None and self.glob(path) is not None


def should_log(request: CapturedRequest) -> bool:
    """The ``should_log`` hook's verdict on ``request`` (it has one); a hook that raises
    logs the entry, with a rate-limited warning (an entry lost to a bug would be unseen)."""
    hook = request.config.should_log
    try:
        return hook is None or bool(hook(request))
    except Exception as exc:
        warn_hook("should_log", exc, "entry logged")
        return True
