from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from moderation import views

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("files/<str:kind>/<int:pk>/", views.protected_image, name="protected-image"),
]
