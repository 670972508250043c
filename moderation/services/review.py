"""Moderators' decisions on uploads: confirm, release, flag."""

import os
import stat

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from moderation import files
from moderation.models import (
    BannedFingerprint,
    Category,
    Match,
    Transition,
    Upload,
)
from moderation.services.bans import BanImage, ban_image
from moderation.services.common import (
    Action,
    ActionRefused,
    State,
    audit,
    in_media,
    in_quarantine,
)

# --- uploads: moderator actions -------------------------------------------------------


def upload_confirm(*, upload_id: int, actor: User) -> Upload:
    """Keep a quarantined or held upload out of the media tree; one left in place for
    review (a review bank's match) is moved into quarantine now, if it is still the file
    that was checked."""
    seen = Upload.objects.filter(pk=upload_id).first()
    # Read before the transaction: on SQLite a transaction holds the write lock.
    before = _unchanged_in_place(seen) if seen and seen.state == State.REVIEW else None
    with transaction.atomic():
        upload = (
            Upload.objects.select_for_update()
            .filter(pk=upload_id, state__in=Transition.CONFIRM.sources)
            .first()
        )
        if upload is None:
            raise ActionRefused("Only an upload waiting for review can be confirmed.")
        in_place = upload.state == State.REVIEW
        if in_place:
            source = in_media(upload)
            info = _stat_in_place(upload)
            if before is None or _identity(info) != _identity(before):
                raise ActionRefused(
                    f"{upload.path} has changed since it was checked; nothing was done."
                )
            upload.file_mode = stat.S_IMODE(info.st_mode)
            upload.quarantine_name = files.display(in_quarantine(upload)[1])
        upload.state = State.CONFIRMED
        upload.reviewed_by = actor
        upload.reviewed_at = timezone.now()
        upload.save()
        audit(Action.UPLOAD_CONFIRMED, actor=actor, upload=upload)
        if in_place:
            try:
                files.move_file(*source, *in_quarantine(upload), private=True)
            except (OSError, files.UnsafePath) as exc:
                raise ActionRefused(f"{upload.path} could not be quarantined: {exc}") from None
    return upload


def _stat_in_place(upload: Upload) -> os.stat_result:
    try:
        return files.lstat(*in_media(upload))
    except FileNotFoundError:
        raise ActionRefused(f"{upload.path} is no longer in the media directory.") from None
    except (OSError, files.UnsafePath) as exc:
        raise ActionRefused(f"{upload.path} cannot be reached safely: {exc}") from None


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_ino, info.st_size, info.st_mtime_ns


def _unchanged_in_place(upload: Upload) -> os.stat_result:
    """The file of an upload left in place, once its bytes are shown to be the ones that
    were checked; ActionRefused otherwise."""
    info = _stat_in_place(upload)
    try:
        data = files.read_regular_file(*in_media(upload), max_bytes=settings.HASHGUARD_MAX_BYTES)
    except (OSError, files.UnsafePath) as exc:
        raise ActionRefused(f"{upload.path} cannot be read: {exc}") from None
    if files.sha256_of(data) != upload.sha256 or _identity(_stat_in_place(upload)) != _identity(
        info
    ):
        raise ActionRefused(f"{upload.path} has changed since it was checked; nothing was done.")
    return info


def upload_release(*, upload_id: int, actor: User, allow_copies: bool = False) -> Upload:
    """Put a quarantined or held file back where it was (one left in place for review
    stays where it is).

    With allow_copies, later exact copies of the same file pass the bans this one
    matched; without, only this file goes back, and a copy uploaded again is caught.
    """
    with transaction.atomic():
        upload = (
            Upload.objects.select_for_update()
            .filter(pk=upload_id, state__in=Transition.RELEASE.sources)
            .first()
        )
        if upload is None:
            raise ActionRefused("Only a quarantined or held upload can be released.")
        in_place = upload.state == State.REVIEW
        source = in_quarantine(upload)
        upload.state = State.RELEASED
        upload.quarantine_name = ""
        upload.reviewed_by = actor
        upload.reviewed_at = timezone.now()
        upload.save()
        if allow_copies:
            upload.matches.update(allowed=True)
        audit(
            Action.UPLOAD_RELEASED,
            actor=actor,
            upload=upload,
            detail="exact copies may pass its bans from now on" if allow_copies else "",
        )
        if in_place:
            return upload  # it never left the media tree
        try:
            files.move_file(*source, *in_media(upload), private=False, mode=upload.file_mode)
        except FileExistsError:
            raise ActionRefused(
                f"A file now exists at {upload.path}; move it away, then release again."
            ) from None
        except FileNotFoundError:
            raise ActionRefused(
                f"The quarantined file {files.display(source[1])} is missing; nothing was released."
            ) from None
        except files.UnsafePath as exc:
            raise ActionRefused(f"{upload.path} cannot be put back safely: {exc}") from None
        # The watcher sees the file come back: as it is now, it is this record's own file.
        info = files.lstat(*in_media(upload))
        upload.inode, upload.mtime_ns = info.st_ino, info.st_mtime_ns
        upload.save(update_fields=["inode", "mtime_ns"])
    return upload


def upload_flag(
    *,
    upload_id: int,
    actor: User,
    category: str = Category.OTHER,
    reason: str = "",
) -> Upload:
    """Ban an upload that was let through: add its fingerprints and quarantine it."""
    flaggable = Transition.FLAG.sources
    upload = Upload.objects.filter(pk=upload_id, state__in=flaggable).first()
    if upload is None:
        raise ActionRefused("Only a clean or released upload can be flagged as banned.")
    source = in_media(upload)
    try:
        data = files.read_regular_file(*source, max_bytes=settings.HASHGUARD_MAX_BYTES)
        mode = stat.S_IMODE(files.lstat(*source).st_mode)
    except FileNotFoundError:
        raise ActionRefused(f"{upload.path} is no longer in the media directory.") from None
    # Decoded before the transaction: on SQLite a transaction holds the write lock.
    image = BanImage.read(data)
    if image.sha256 != upload.sha256:
        raise ActionRefused(f"{upload.path} has changed since it was checked; nothing was done.")
    with transaction.atomic():
        upload = Upload.objects.select_for_update().filter(pk=upload_id).first()
        if upload is None or upload.state not in flaggable:
            raise ActionRefused("Only a clean or released upload can be flagged as banned.")
        banned = ban_image(
            image,
            category=category,
            reason=reason,
            actor=actor,
            source=BannedFingerprint.Source.UPLOAD,
            source_upload=upload,
        )
        quarantined = in_quarantine(upload)
        upload.state = State.CONFIRMED
        upload.quarantine_name = files.display(quarantined[1])
        upload.file_mode = mode
        upload.reviewed_by = actor
        upload.reviewed_at = timezone.now()
        upload.save()
        upload.matches.update(allowed=False)
        for row in banned:
            Match.objects.get_or_create(
                upload=upload,
                fingerprint=row,
                defaults={
                    "distances": image.frames[0].fingerprint.distance(row.fingerprint()),
                    "rule": "flagged by moderator",
                    "stage": Match.Stage.MODERATOR,
                },
            )
        audit(Action.UPLOAD_FLAGGED, actor=actor, upload=upload, detail=reason)
        try:
            files.move_file(*source, *quarantined, private=True)
        except (FileExistsError, files.UnsafePath) as exc:
            raise ActionRefused(f"{upload.path} could not be quarantined: {exc}") from None
    return upload
