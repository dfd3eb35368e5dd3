"""``path("hitrate/", include("hitrate.contrib.django.urls"))``: the dashboard (staff only
unless ``HITRATE_DASHBOARD_ALLOW`` says otherwise)."""

from django.urls import path

from . import views

app_name = "hitrate"
urlpatterns = [
    path("", views.page, name="dashboard"),
    path("api/stats", views.api_stats, name="stats"),
    path("static/<path:name>", views.static, name="static"),
]
