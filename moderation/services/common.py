"""What the services share: the refusal moderators see, image loading with the configured
limits, the audit trail, and where a quarantined upload goes."""

import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from hashes.loading import LoadedImage, load_image
from moderation import files
from moderation.models import (
    AuditEvent,
    BannedFingerprint,
    Upload,
)

State = Upload.State
Action = AuditEvent.Action


class ActionRefused(Exception):
    """A moderator action that cannot be done in the object's current state."""


class StaleDecision(ActionRefused):
    """A decision on an upload that changed since the moderator saw it."""


def check_seen(upload: Upload, seen: str | None) -> None:
    """Refuse a decision made on a view of the upload that is out of date (``seen`` is
    Upload.seen() as the moderator's page had it; None: no view to compare)."""
    if seen is None or seen == upload.seen():
        return
    last = (
        AuditEvent.objects.filter(upload=upload)
        .select_related("actor")
        .order_by("-created_at", "-id")
        .first()
    )
    if last is None:
        raise StaleDecision(
            f"This upload changed since you saw it (it is now {upload.get_state_display().lower()}"
            "); nothing was done."
        )
    who = f"{last.actor.get_username()}" if last.actor else "hashguard"
    when = timezone.localtime(last.created_at).strftime("%Y-%m-%d %H:%M:%S")
    raise StaleDecision(
        f"{who}: {last.get_action_display().lower()} at {when}, after you loaded the page "
        f"(it is now {upload.get_state_display().lower()}); nothing was done."
    )


# --- helpers ------------------------------------------------------------------------


def load(data: bytes, *, full_size: bool = False) -> LoadedImage:
    return load_image(
        data,
        max_bytes=settings.HASHGUARD_MAX_BYTES,
        max_pixels=settings.HASHGUARD_MAX_PIXELS,
        max_frames=settings.HASHGUARD_MAX_FRAMES,
        full_size=full_size,
    )


def audit(
    action: str,
    *,
    actor: User | None = None,
    upload: Upload | None = None,
    fingerprint: BannedFingerprint | None = None,
    detail: str = "",
    note: str = "",
    label: str = "",
) -> None:
    AuditEvent.objects.create(
        action=action,
        actor=actor,
        upload=upload,
        fingerprint=fingerprint,
        detail=detail,
        note=note,
        label=label,
    )


# --- where files live: a store and a path inside it -------------------------------------

Location = tuple[Path, bytes]


def in_media(upload: Upload) -> Location:
    """Where the upload's file is in the media tree (or was, or goes back to)."""
    return files.media_dir(), upload.relative_path()


def in_quarantine(upload: Upload) -> Location:
    """Where the upload's file is or goes in quarantine: its id, then its file name as text
    (escaped where it is not UTF-8), or a short stand-in when that is too long."""
    if upload.quarantine_name:
        return files.quarantine_dir(), upload.quarantine_name.encode()
    name = files.display(upload.relative_path().rsplit(b"/", 1)[-1])
    if len(name.encode()) > 200:
        name = "long-name" + os.path.splitext(name)[1][:16]
    return files.quarantine_dir(), f"{upload.pk}/{name}".encode()


def where_is(upload: Upload) -> Location:
    """Where the upload's file is now."""
    return in_quarantine(upload) if upload.quarantine_name else in_media(upload)


def reference_of(banned: BannedFingerprint) -> Location:
    """Where a banned image's reference file is kept."""
    return files.reference_dir(), banned.reference_name.encode()
