"""Images from the protected stores, shown to staff only.

Files are never served as they are: the first frame is decoded and re-encoded as JPEG,
so a hostile file (HTML named .jpg, say) cannot run in a moderator's browser.
"""

import io
from pathlib import Path

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from hashes.errors import ImageError
from hashes.loading import load_image
from moderation import files
from moderation.context import image_protection
from moderation.forms import ImagePreferenceForm
from moderation.models import BannedFingerprint, ImagePreference, Upload
from moderation.services.common import reference_of, where_is

THUMBNAIL_SIZE = (240, 240)
FULL_SIZE = (1600, 1600)


def _upload_file(request: HttpRequest, pk: int) -> tuple[Path, bytes]:
    upload = get_object_or_404(Upload, pk=pk)
    if upload.purged_at is not None:
        raise Http404("This file was deleted for the retention period.")
    needed = "review_upload" if upload.quarantine_name else "view_upload"
    if not request.user.has_perm(f"moderation.{needed}"):
        raise PermissionDenied
    return where_is(upload)


def _reference_file(request: HttpRequest, pk: int) -> tuple[Path, bytes]:
    # Reviewers see the banned image beside each match even without the blocklist's pages.
    if not (
        request.user.has_perm("moderation.view_bannedfingerprint")
        or request.user.has_perm("moderation.review_upload")
    ):
        raise PermissionDenied
    banned = get_object_or_404(BannedFingerprint, pk=pk)
    if not banned.reference_name:
        raise Http404("This banned fingerprint was pasted as a hash; it has no image.")
    return reference_of(banned)


@require_GET
@staff_member_required
def protected_image(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    if kind == "upload":
        store, relative = _upload_file(request, pk)
    elif kind == "reference":
        store, relative = _reference_file(request, pk)
    else:
        raise Http404
    try:
        data = files.read_regular_file(store, relative, max_bytes=settings.HASHGUARD_MAX_BYTES)
        image = load_image(
            data,
            max_bytes=settings.HASHGUARD_MAX_BYTES,
            max_pixels=settings.HASHGUARD_MAX_PIXELS,
            max_frames=1,
            full_size=True,
        ).frames[0]
    except (OSError, files.UnsafePath, ImageError) as exc:
        raise Http404(f"Cannot show this image: {exc}") from None
    image.thumbnail(THUMBNAIL_SIZE if request.GET.get("size") == "thumb" else FULL_SIZE)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    response = HttpResponse(buffer.getvalue(), content_type="image/jpeg")
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'"
    return response


@staff_member_required
def image_preferences(request: HttpRequest) -> HttpResponse:
    """A moderator's own choice of how images are shown until revealed."""
    current = ImagePreference.objects.filter(user=request.user.pk).first()
    if current is None:
        protection = image_protection(request)["image_protection"]
        current = ImagePreference(
            user=request.user,  # type: ignore[misc]
            blur=protection.blur,  # type: ignore[attr-defined]
            greyscale=protection.greyscale,  # type: ignore[attr-defined]
            reveal=protection.reveal,  # type: ignore[attr-defined]
        )
    form = ImagePreferenceForm(request.POST or None, instance=current)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Your image preferences are saved.")
        return redirect("image-preferences")
    return TemplateResponse(
        request,
        "admin/moderation/image_preferences.html",
        {**admin.site.each_context(request), "title": "Image preferences", "form": form},
    )
