"""The demo apps: FastAPI (``app.py``), Flask (``flask_app.py``), a Django project
(``django_project/``), and a Starlette gateway (``gateway.py``), all logged by this package."""
