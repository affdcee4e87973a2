"""WSGI entry point: ``gunicorn example_app.django_project.wsgi:application``.

The ``MIDDLEWARE`` entry logs every request; each gunicorn worker has its own publisher
and flushes what is pending when it exits.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_app.django_project.settings")
application = get_wsgi_application()
