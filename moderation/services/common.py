"""What the services share: the refusal moderators see, image loading with the configured
limits, the audit trail, and where a quarantined upload goes."""

import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User

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


# --- helpers ------------------------------------------------------------------------


def load(data: bytes) -> LoadedImage:
    return load_image(
        data,
        max_bytes=settings.HASHGUARD_MAX_BYTES,
        max_pixels=settings.HASHGUARD_MAX_PIXELS,
        max_frames=settings.HASHGUARD_MAX_FRAMES,
    )


def audit(
    action: str,
    *,
    actor: User | None = None,
    upload: Upload | None = None,
    fingerprint: BannedFingerprint | None = None,
    detail: str = "",
) -> None:
    AuditEvent.objects.create(
        action=action, actor=actor, upload=upload, fingerprint=fingerprint, detail=detail
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
