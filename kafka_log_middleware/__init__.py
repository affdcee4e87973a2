"""Kong's kafka-log plugin as ASGI/WSGI middleware: Kong-exact request logs, to Kafka.

Data flow, one module each: ``config`` → a door, ``asgi`` or ``wsgi`` (+ ``environ``),
over the shared ``pipeline`` → ``capture`` (raw facts, on the request path) → ``buffer``
→ ``publisher`` (background; for WSGI in a ``loop_thread``) → ``serializer`` (+
``nginx_vars``, ``custom_fields``, ``routes``) → ``producers`` → Kafka.
"""

from .asgi import KafkaLogMiddleware, find_middleware
from .capture import CapturedRequest
from .config import InvalidConfig, InvalidConfigType, KafkaLogConfig
from .custom_fields import set_serialize_value
from .routes import MatchedRoute, matched_route, starlette_route
from .wsgi import KafkaLogWSGIMiddleware

__all__ = [
    "CapturedRequest",
    "InvalidConfig",
    "InvalidConfigType",
    "KafkaLogConfig",
    "KafkaLogMiddleware",
    "KafkaLogWSGIMiddleware",
    "MatchedRoute",
    "find_middleware",
    "matched_route",
    "set_serialize_value",
    "starlette_route",
]
__version__ = "0.1.0"
