"""The Django demo project: the FastAPI demo's routes, logged by the ``MIDDLEWARE`` entry.

No database and no apps. Served by ``gunicorn example_app.django_project.wsgi:application``
(``scripts/demo --app django`` does it, broker included) or, through the ASGI door, by
``uvicorn example_app.django_project.asgi:application``.
"""
