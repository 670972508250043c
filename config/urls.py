from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from moderation import api, views

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/preferences/", views.image_preferences, name="image-preferences"),
    path("admin/", admin.site.urls),
    path("files/<str:kind>/<int:pk>/", views.protected_image, name="protected-image"),
    # The API for other services, on HMA 2.0's routes (moderation/api.py).
    path("m/lookup", api.lookup, name="api-lookup"),
    path("h/hash", api.hash_photo, name="api-hash"),
    path("c/banks", api.banks, name="api-banks"),
    path("c/bank/<slug:name>", api.bank, name="api-bank"),
    path("c/bank/<slug:name>/signal", api.bank_signal, name="api-bank-signal"),
    path("status", api.status, name="api-status"),
    path("metrics", api.prometheus, name="metrics"),
    path("api/schema/", api.schema, name="api-schema"),
]
