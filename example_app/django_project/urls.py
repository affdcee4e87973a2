"""The demo's URLs: the FastAPI demo's paths; each name is the entry's ``route.name``."""

from __future__ import annotations

from django.urls import path

from example_app.django_project import views

urlpatterns = [
    path("orders/<int:order_id>", views.get_order, name="order"),
    path("orders", views.Orders.as_view(), name="orders"),
    path("me", views.me, name="me"),
    path("stream", views.stream, name="stream"),
    path("boom", views.boom, name="boom"),
    path("_kafka_log/stats", views.stats, name="kafka-log-stats"),
]
