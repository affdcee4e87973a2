"""The package's ``MIDDLEWARE`` entry, and a handle on what logs this process's requests.

Django keeps no public handle on the middleware it loads, and the stats view needs one:
this subclass of ``kafka_log_middleware.django.KafkaLogMiddleware`` adds only that.
``asgi.py`` puts the ASGI door around Django, which then does the logging (the entry only
adds the route), so it takes the handle over.
"""

from __future__ import annotations

from typing import Protocol

from kafka_log_middleware import django


class Counted(Protocol):
    """What logs requests: the MIDDLEWARE entry or a door, both with ``stats()``."""

    def stats(self) -> dict[str, int]: ...


_in_charge: Counted | None = None


def in_charge(logger: Counted) -> None:
    """Make ``logger``'s the counters the stats view shows (the last one named wins)."""
    global _in_charge
    _in_charge = logger


def stats() -> dict[str, int]:
    """This process's counters; empty before Django has loaded its middleware."""
    return _in_charge.stats() if _in_charge is not None else {}


class KafkaLogMiddleware(django.KafkaLogMiddleware):
    """``kafka_log_middleware.django.KafkaLogMiddleware``, remembered when Django loads it."""

    def __init__(self, get_response: django.GetResponse) -> None:
        super().__init__(get_response)
        in_charge(self)
