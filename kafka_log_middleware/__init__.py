"""Kong's kafka-log plugin as ASGI middleware: Kong-exact request logs, published to Kafka.

Data flow, one module each: ``config`` → ``asgi`` (the middleware) → ``capture`` (raw
facts, on the request path) → ``buffer`` → ``publisher`` (background) → ``serializer``
(+ ``nginx_vars``, ``custom_fields``) → ``producers`` → Kafka.
"""

from .asgi import KafkaLogMiddleware, find_middleware
from .capture import CapturedRequest
from .config import InvalidConfig, InvalidConfigType, KafkaLogConfig
from .custom_fields import set_serialize_value
from .routes import MatchedRoute, matched_route, starlette_route

__all__ = [
    "CapturedRequest",
    "InvalidConfig",
    "InvalidConfigType",
    "KafkaLogConfig",
    "KafkaLogMiddleware",
    "MatchedRoute",
    "find_middleware",
    "matched_route",
    "set_serialize_value",
    "starlette_route",
]
__version__ = "0.1.0"
