"""ASGI entry point: ``uvicorn example_app.django_project.asgi:application``.

uvicorn ends its process with the signal that stopped it, so exit hooks cannot flush: the
ASGI door around Django's handler logs instead, and flushes at lifespan shutdown (same
``settings.KAFKA_LOG``); the ``MIDDLEWARE`` entry then only adds the route.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from example_app.django_project import middleware
from kafka_log_middleware import KafkaLogMiddleware
from kafka_log_middleware.django import config_from_settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_app.django_project.settings")
application = KafkaLogMiddleware(get_asgi_application(), config_from_settings())
middleware.in_charge(application)
