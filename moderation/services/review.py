"""Moderators' decisions on uploads: confirm, release, flag."""

import os
import stat
from collections.abc import Iterable, Mapping
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
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
    check_seen,
    in_media,
    in_quarantine,
)

# --- uploads: moderator actions -------------------------------------------------------


def _lock(upload_id: int, seen: str | None, transition: Transition, refusal: str) -> Upload:
    """The upload, locked for a decision, once it is known to be as the moderator saw it
    (``seen``) and in a state the decision applies to."""
    upload = Upload.objects.select_for_update().filter(pk=upload_id).first()
    if upload is None:
        raise ActionRefused("This upload no longer exists.")
    check_seen(upload, seen)
    if upload.state not in transition.sources:
        raise ActionRefused(refusal)
    return upload


def _decided_by(upload: Upload, actor: User) -> None:
    upload.reviewed_by = actor
    upload.reviewed_at = timezone.now()
    upload.claimed_by = None
    upload.claim_expires_at = None


def upload_confirm(
    *, upload_id: int, actor: User, seen: str | None = None, note: str = "", label: str = ""
) -> Upload:
    """Keep a quarantined or held upload out of the media tree; one left in place for
    review (a review bank's match) is moved into quarantine now, if it is still the file
    that was checked. ``seen``: the upload as the moderator saw it (Upload.seen());
    a decision on an out-of-date view is refused (StaleDecision)."""
    current = Upload.objects.filter(pk=upload_id).first()
    # Read before the transaction: on SQLite a transaction holds the write lock.
    before = _unchanged_in_place(current) if current and current.state == State.REVIEW else None
    with transaction.atomic():
        upload = _lock(
            upload_id,
            seen,
            Transition.CONFIRM,
            "Only an upload waiting for review can be confirmed.",
        )
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
        _decided_by(upload, actor)
        upload.save()
        audit(Action.UPLOAD_CONFIRMED, actor=actor, upload=upload, note=note, label=label)
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


def upload_release(
    *,
    upload_id: int,
    actor: User,
    allow_copies: bool = False,
    seen: str | None = None,
    note: str = "",
    label: str = "",
) -> Upload:
    """Put a quarantined or held file back where it was (one left in place for review
    stays where it is).

    With allow_copies, later exact copies of the same file pass the bans this one
    matched; without, only this file goes back, and a copy uploaded again is caught.
    """
    with transaction.atomic():
        upload = _lock(
            upload_id,
            seen,
            Transition.RELEASE,
            "Only a quarantined or held upload can be released.",
        )
        if upload.purged_at is not None:
            raise ActionRefused(
                "Its file was deleted for the retention period; there is nothing to release."
            )
        in_place = upload.state == State.REVIEW
        source = in_quarantine(upload)
        upload.state = State.RELEASED
        upload.quarantine_name = ""
        _decided_by(upload, actor)
        upload.save()
        if allow_copies:
            upload.matches.update(allowed=True)
        audit(
            Action.UPLOAD_RELEASED,
            actor=actor,
            upload=upload,
            detail="exact copies may pass its bans from now on" if allow_copies else "",
            note=note,
            label=label,
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
    seen: str | None = None,
    note: str = "",
    label: str = "",
) -> Upload:
    """Ban an upload that was let through: add its fingerprints and quarantine it."""
    upload = Upload.objects.filter(pk=upload_id).first()
    if upload is None:
        raise ActionRefused("This upload no longer exists.")
    check_seen(upload, seen)
    if upload.state not in Transition.FLAG.sources:
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
        upload = _lock(
            upload_id,
            seen,
            Transition.FLAG,
            "Only a clean or released upload can be flagged as banned.",
        )
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
        _decided_by(upload, actor)
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
        audit(
            Action.UPLOAD_FLAGGED, actor=actor, upload=upload, detail=reason, note=note, label=label
        )
        try:
            files.move_file(*source, *quarantined, private=True)
        except (FileExistsError, files.UnsafePath) as exc:
            raise ActionRefused(f"{upload.path} could not be quarantined: {exc}") from None
    return upload


def upload_confirm_group(
    *, fingerprint_id: int, seen: Mapping[int, str], actor: User, note: str = ""
) -> tuple[int, list[str]]:
    """Confirm the uploads waiting for review that matched one ban, as the moderator's
    page showed them (``seen``: upload id to Upload.seen()): one decided or changed
    since, or no longer waiting with that match, is left as it is. Returns how many were
    confirmed and why the others were not."""
    from moderation.selectors import waiting_for_ban

    waiting = set(
        waiting_for_ban(fingerprint_id=fingerprint_id)
        .filter(pk__in=list(seen))
        .values_list("pk", flat=True)
    )
    done, refused = 0, []
    for upload_id, token in seen.items():
        if upload_id not in waiting:
            current = Upload.objects.filter(pk=upload_id).first()
            try:
                if current is not None:
                    check_seen(current, token)  # says who decided it, if someone did
                refused.append(f"upload #{upload_id} no longer waits with ban #{fingerprint_id}")
            except ActionRefused as exc:
                refused.append(f"upload #{upload_id}: {exc}")
            continue
        try:
            upload_confirm(
                upload_id=upload_id,
                actor=actor,
                seen=token,
                note=note or f"with every upload that matched ban #{fingerprint_id}",
            )
            done += 1
        except ActionRefused as exc:
            refused.append(f"upload #{upload_id}: {exc}")
    return done, refused


# --- the review queue: batches handed to moderators ----------------------------------


def review_claim(*, actor: User, queue: QuerySet, size: int | None = None) -> list[int]:
    """Hand a moderator the next uploads of ``queue`` to review, oldest first: those they
    hold already (renewed), then ones no colleague holds, up to ``size``, each held for
    HASHGUARD_REVIEW_LEASE_SECONDS. A lease that runs out returns its upload to the
    queue. Returns the ids in queue order."""
    size = settings.HASHGUARD_REVIEW_BATCH if size is None else size
    now = timezone.now()
    until = now + timedelta(seconds=settings.HASHGUARD_REVIEW_LEASE_SECONDS)
    # As a subquery: the queue may be filtered through its matches (DISTINCT), which
    # cannot be locked row by row.
    ordered = Upload.objects.filter(pk__in=queue.values("pk")).order_by("decided_at", "id")
    with transaction.atomic():
        mine = list(
            ordered.filter(claimed_by=actor, claim_expires_at__gt=now).values_list("pk", flat=True)[
                :size
            ]
        )
        free = (
            ordered.exclude(pk__in=mine)
            .filter(Q(claimed_by=None) | Q(claim_expires_at__lte=now) | Q(claimed_by=actor))
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[: max(0, size - len(mine))]
        )
        taken = list(free)
        Upload.objects.filter(pk__in=mine + taken).update(claimed_by=actor, claim_expires_at=until)
    held = set(mine + taken)
    return [pk for pk in ordered.filter(pk__in=held).values_list("pk", flat=True)]


def review_renew(*, actor: User) -> int:
    """Keep what a moderator holds for another lease: they are still at work."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.HASHGUARD_REVIEW_LEASE_SECONDS)
    return Upload.objects.filter(claimed_by=actor, claim_expires_at__gt=now).update(
        claim_expires_at=until
    )


# --- retention ----------------------------------------------------------------------


PURGE_BATCH = 500


def uploads_purge_expired() -> int:
    """Delete the files of confirmed quarantined uploads confirmed more than
    HASHGUARD_RETENTION_DAYS ago, unless on legal hold; each purge is audited. Returns how
    many were purged (0 when the setting keeps everything)."""
    days = settings.HASHGUARD_RETENTION_DAYS
    if days <= 0:
        return 0
    now = timezone.now()
    expired = Upload.objects.filter(
        state=State.CONFIRMED,
        legal_hold=False,
        purged_at=None,
        reviewed_at__lt=now - timedelta(days=days),
    ).exclude(quarantine_name="")
    purged = 0
    # At most PURGE_BATCH a run: the watcher runs it between file events.
    for upload_id in list(
        expired.order_by("reviewed_at").values_list("pk", flat=True)[:PURGE_BATCH]
    ):
        with transaction.atomic():
            upload = expired.select_for_update().filter(pk=upload_id).first()
            if upload is None:
                continue  # put on hold or released meanwhile
            store, relative = in_quarantine(upload)
            files.unlink(store, relative)
            upload.purged_at = now
            upload.save(update_fields=["purged_at"])
            audit(
                Action.UPLOAD_PURGED,
                upload=upload,
                detail=f"file deleted {days} days after its quarantine was confirmed",
            )
            purged += 1
    return purged


def upload_set_legal_hold(*, upload_ids: Iterable[int], hold: bool, actor: User) -> int:
    """Keep uploads' files whatever the retention (or stop keeping them)."""
    with transaction.atomic():
        uploads = list(
            Upload.objects.select_for_update()
            .filter(pk__in=list(upload_ids))
            .exclude(legal_hold=hold)
        )
        Upload.objects.filter(pk__in=[u.pk for u in uploads]).update(legal_hold=hold)
        for upload in uploads:
            audit(
                Action.LEGAL_HOLD_SET if hold else Action.LEGAL_HOLD_LIFTED,
                actor=actor,
                upload=upload,
            )
    return len(uploads)
