"""What every admin page needs to know: how to show images until they are revealed."""

from django.conf import settings
from django.http import HttpRequest

from moderation.models import ImagePreference


def image_protection(request: HttpRequest) -> dict[str, object]:
    """The moderator's own image preferences, else the site's."""
    user = getattr(request, "user", None)
    preference = None
    if user is not None and user.is_authenticated and user.is_staff:
        preference = ImagePreference.objects.filter(user=user).first()
    if preference is None:
        preference = ImagePreference(
            blur=settings.HASHGUARD_IMAGE_BLUR,
            greyscale=settings.HASHGUARD_IMAGE_GREYSCALE,
            reveal=settings.HASHGUARD_IMAGE_REVEAL,
        )
    return {"image_protection": preference}
