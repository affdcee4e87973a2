"""Settings of the Django demo project: no database, no apps, one ``MIDDLEWARE`` entry.

``KAFKA_LOG`` comes from the environment (``KAFKA_LOG_BOOTSTRAP_SERVERS``,
``KAFKA_LOG_TOPIC``, any other ``KAFKA_LOG_*``), over the demo's defaults.
"""

from __future__ import annotations

import os

from example_app.demo_config import bearer_consumer, demo_config

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-a-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "example_app.django_project.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# The package's entry (kafka_log_middleware.django.KafkaLogMiddleware), first so that
# its timings cover the rest; middleware.py only remembers it for the stats view.
MIDDLEWARE = ["example_app.django_project.middleware.KafkaLogMiddleware"]
KAFKA_LOG = demo_config(bearer_consumer)
