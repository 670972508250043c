"""Everything that changes state: uploads, banned fingerprints, files and the audit trail."""

import logging
import os
import stat
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from hashes.algorithms import (
    ALGORITHMS,
    Fingerprint,
    algorithm_versions,
    fingerprint_frames,
    parse_hash,
)
from hashes.errors import ImageError
from hashes.loading import LoadedImage, load_image
from moderation import files
from moderation.blocklist import current_blocklist
from moderation.models import (
    AuditEvent,
    BannedFingerprint,
    BlocklistVersion,
    Category,
    Match,
    Upload,
)

logger = logging.getLogger(__name__)

State = Upload.State
Action = AuditEvent.Action


class ActionRefused(Exception):
    """A moderator action that cannot be done in the object's current state."""


# --- helpers ------------------------------------------------------------------------


def _load(data: bytes) -> LoadedImage:
    return load_image(
        data,
        max_bytes=settings.HASHGUARD_MAX_BYTES,
        max_pixels=settings.HASHGUARD_MAX_PIXELS,
        max_frames=settings.HASHGUARD_MAX_FRAMES,
    )


def _audit(
    action: str,
    *,
    actor: AbstractBaseUser | None = None,
    upload: Upload | None = None,
    fingerprint: BannedFingerprint | None = None,
    detail: str = "",
) -> None:
    AuditEvent.objects.create(
        action=action, actor=actor, upload=upload, fingerprint=fingerprint, detail=detail
    )


def blocklist_bump() -> None:
    """Tell every worker that the banned fingerprints changed (call inside the change)."""
    BlocklistVersion.objects.update_or_create(pk=1, defaults={"token": uuid.uuid4().hex})


def _quarantine_name(upload: Upload) -> str:
    return f"{upload.pk}/{PurePosixPath(upload.path).name}"


# --- uploads: the pipeline ------------------------------------------------------------


def upload_register(*, path: Path) -> tuple[Upload, bool]:
    """Record a file in the media tree once per path and content, and queue it.

    Returns the upload and whether it is new. Raises files.UnsafePath for symlinks,
    non-regular files and paths outside the media tree, and OSError if the file is gone.
    """
    relative = files.relative_to_store(path, files.media_dir())
    sha256, size = files.sha256_of_file(path)
    existing = Upload.objects.filter(path=relative, sha256=sha256).first()
    if existing:
        return existing, False
    try:
        with transaction.atomic():
            upload = Upload.objects.create(path=relative, sha256=sha256, size=size)
            upload_enqueue(upload_id=upload.pk)
    except IntegrityError:
        # Another watcher pass recorded the same file between the check and the insert.
        return Upload.objects.get(path=relative, sha256=sha256), False
    return upload, True


def upload_enqueue(*, upload_id: int) -> None:
    """Queue the upload for a worker once the current transaction commits."""
    transaction.on_commit(lambda: _send_to_worker(upload_id))


def _send_to_worker(upload_id: int) -> None:
    from moderation.tasks import process_upload

    now = timezone.now()
    try:
        process_upload.delay(upload_id)
    except Exception as exc:  # the broker is down: keep the upload pending, say why
        logger.warning("could not queue upload %s: %s", upload_id, exc)
        Upload.objects.filter(pk=upload_id, state=State.PENDING).update(
            queued_at=now,
            error_code="queue_unavailable",
            error=f"Could not reach the task queue ({exc}); it will be queued again.",
        )
        return
    Upload.objects.filter(pk=upload_id, state=State.PENDING).update(
        queued_at=now, error_code="", error=""
    )


def uploads_requeue_stale(*, older_than: timedelta) -> int:
    """Queue again what a lost message, a dead worker or a broker outage left undecided."""
    cutoff = timezone.now() - older_than
    Upload.objects.filter(state=State.PROCESSING, claimed_at__lt=cutoff).update(state=State.PENDING)
    stale = Upload.objects.filter(state=State.PENDING).filter(
        Q(queued_at__isnull=True) | Q(queued_at__lt=cutoff) | Q(error_code="queue_unavailable")
    )
    ids = list(stale.values_list("pk", flat=True)[:10_000])
    for upload_id in ids:
        _send_to_worker(upload_id)
    return len(ids)


def upload_fail(*, upload_id: int, code: str, message: str) -> None:
    Upload.objects.filter(pk=upload_id, state__in=[State.PENDING, State.PROCESSING]).update(
        state=State.ERROR, error_code=code, error=message, decided_at=timezone.now()
    )


def upload_process(*, upload_id: int) -> Upload | None:
    """Fingerprint one upload, match it, and quarantine it or record it as clean.

    Claims the upload first, so a second delivery of the same task does nothing.
    Bad files end in the error state with a reason; database and filesystem faults are
    raised for the task to retry, with the claim given back.
    """
    claimed = Upload.objects.filter(pk=upload_id, state=State.PENDING).update(
        state=State.PROCESSING, claimed_at=timezone.now(), attempts=F("attempts") + 1
    )
    if not claimed:
        return Upload.objects.filter(pk=upload_id).first()
    try:
        return _process_claimed(Upload.objects.get(pk=upload_id))
    except Exception:
        Upload.objects.filter(pk=upload_id, state=State.PROCESSING).update(state=State.PENDING)
        raise


def _process_claimed(upload: Upload) -> Upload:
    source = files.in_store(upload.path, files.media_dir())
    quarantined = files.in_store(_quarantine_name(upload), files.quarantine_dir())
    already_moved = False
    try:
        data = files.read_regular_file(source, max_bytes=settings.HASHGUARD_MAX_BYTES)
    except FileNotFoundError:
        if not os.path.lexists(quarantined):
            return _fail(upload, "missing", "The file was removed before it could be checked.")
        # An earlier attempt moved it but did not get to record that.
        data = files.read_regular_file(quarantined, max_bytes=settings.HASHGUARD_MAX_BYTES)
        already_moved = True
    except files.UnsafePath as exc:
        return _fail(upload, "unsafe_path", str(exc))
    if files.sha256_of(data) != upload.sha256:
        return _fail(
            upload,
            "changed",
            "The file changed after it was recorded; its new content is a new upload.",
        )
    try:
        loaded = _load(data)
    except ImageError as exc:
        return _fail(upload, exc.code, str(exc))
    frames = fingerprint_frames(loaded)
    upload.format = loaded.format
    upload.width, upload.height = loaded.width, loaded.height
    upload.frame_count = loaded.frame_count
    upload.fingerprints = [
        {"hashes": frame.hashes, "pdq_quality": frame.pdq_quality} for frame in frames
    ]
    found = current_blocklist().match(frames, upload.sha256)
    released = _released_keys(upload, found)
    found = {key: hit for key, hit in found.items() if key not in released}
    upload.decided_at = timezone.now()
    upload.error_code = upload.error = ""
    if not found:
        upload.state = State.CLEAN
        upload.save()
        return upload
    with transaction.atomic():
        upload.state = State.QUARANTINED
        upload.quarantine_name = _quarantine_name(upload)
        if not already_moved:
            upload.file_mode = stat.S_IMODE(os.lstat(source).st_mode)
        upload.save()
        Match.objects.bulk_create(
            Match(
                upload=upload,
                fingerprint_id=key,
                distances=match.distances,
                rule=match.rule,
                frame=frame,
            )
            for key, (frame, match) in found.items()
        )
        _audit(Action.UPLOAD_QUARANTINED, upload=upload, detail=_describe(found))
        if not already_moved:
            files.move_file(source, quarantined, private=True)
    return upload


def _released_keys(upload: Upload, found: Mapping[int, object]) -> set[int]:
    """Banned fingerprints a moderator already released this same content from."""
    if not found:
        return set()
    return set(
        Match.objects.filter(
            fingerprint_id__in=list(found),
            upload__sha256=upload.sha256,
            upload__state=State.RELEASED,
        ).values_list("fingerprint_id", flat=True)
    )


def _describe(found: Mapping[int, tuple[int, object]]) -> str:
    parts = []
    for key, (frame, match) in found.items():
        distances = ", ".join(f"{name} {value}" for name, value in match.distances.items())
        where = f" (frame {frame})" if frame else ""
        parts.append(f"banned #{key} by {match.rule}{where}: {distances}")
    return "; ".join(parts)


def _fail(upload: Upload, code: str, message: str) -> Upload:
    upload.state = State.ERROR
    upload.error_code = code
    upload.error = message
    upload.decided_at = timezone.now()
    upload.save()
    return upload


# --- uploads: moderator actions -------------------------------------------------------


def upload_confirm(*, upload_id: int, actor: AbstractBaseUser) -> Upload:
    now = timezone.now()
    with transaction.atomic():
        updated = Upload.objects.filter(pk=upload_id, state=State.QUARANTINED).update(
            state=State.CONFIRMED, reviewed_by=actor, reviewed_at=now
        )
        if not updated:
            raise ActionRefused("Only an upload waiting for review can be confirmed.")
        upload = Upload.objects.get(pk=upload_id)
        _audit(Action.UPLOAD_CONFIRMED, actor=actor, upload=upload)
    return upload


def upload_release(*, upload_id: int, actor: AbstractBaseUser) -> Upload:
    """Put a quarantined file back where it was; the same match will not take it again."""
    with transaction.atomic():
        upload = (
            Upload.objects.select_for_update()
            .filter(pk=upload_id, state__in=[State.QUARANTINED, State.CONFIRMED])
            .first()
        )
        if upload is None:
            raise ActionRefused("Only a quarantined upload can be released.")
        source = files.in_store(upload.quarantine_name, files.quarantine_dir())
        destination = files.in_store(upload.path, files.media_dir())
        upload.state = State.RELEASED
        upload.quarantine_name = ""
        upload.reviewed_by = actor
        upload.reviewed_at = timezone.now()
        upload.save()
        _audit(Action.UPLOAD_RELEASED, actor=actor, upload=upload)
        try:
            files.move_file(source, destination, private=False)
        except FileExistsError:
            raise ActionRefused(
                f"A file now exists at {upload.path}; move it away, then release again."
            ) from None
        except FileNotFoundError:
            raise ActionRefused(
                f"The quarantined file {source} is missing; nothing was released."
            ) from None
        if upload.file_mode is not None:
            os.chmod(destination, upload.file_mode)
    return upload


def upload_flag(
    *,
    upload_id: int,
    actor: AbstractBaseUser,
    category: str = Category.OTHER,
    reason: str = "",
) -> Upload:
    """Ban an upload that was let through: add its fingerprints and quarantine it."""
    with transaction.atomic():
        upload = (
            Upload.objects.select_for_update()
            .filter(pk=upload_id, state__in=[State.CLEAN, State.RELEASED])
            .first()
        )
        if upload is None:
            raise ActionRefused("Only a clean or released upload can be flagged as banned.")
        source = files.in_store(upload.path, files.media_dir())
        try:
            data = files.read_regular_file(source, max_bytes=settings.HASHGUARD_MAX_BYTES)
        except FileNotFoundError:
            raise ActionRefused(f"{upload.path} is no longer in the media directory.") from None
        banned = banned_add_image(
            data=data,
            category=category,
            reason=reason,
            actor=actor,
            source=BannedFingerprint.Source.UPLOAD,
            source_upload=upload,
        )
        upload.state = State.CONFIRMED
        upload.quarantine_name = _quarantine_name(upload)
        upload.file_mode = stat.S_IMODE(os.lstat(source).st_mode)
        upload.reviewed_by = actor
        upload.reviewed_at = timezone.now()
        upload.save()
        frames = upload.frame_fingerprints()
        for row in banned:
            Match.objects.get_or_create(
                upload=upload,
                fingerprint=row,
                defaults={
                    "distances": frames[0].distance(row.fingerprint()) if frames else {},
                    "rule": "flagged by moderator",
                },
            )
        _audit(Action.UPLOAD_FLAGGED, actor=actor, upload=upload, detail=reason)
        try:
            files.move_file(
                source,
                files.in_store(upload.quarantine_name, files.quarantine_dir()),
                private=True,
            )
        except (FileExistsError, files.UnsafePath) as exc:
            raise ActionRefused(f"{upload.path} could not be quarantined: {exc}") from None
    return upload


# --- banned fingerprints --------------------------------------------------------------


def banned_add_image(
    *,
    data: bytes,
    category: str = Category.OTHER,
    reason: str = "",
    actor: AbstractBaseUser | None = None,
    source: str = BannedFingerprint.Source.IMAGE,
    source_upload: Upload | None = None,
) -> list[BannedFingerprint]:
    """Ban an image: one row per distinct frame, the image kept as the reference.

    Banning the same file again reactivates and returns the rows it made before.
    Raises hashes.errors.ImageError for files that are not usable images.
    """
    loaded = _load(data)
    frames = fingerprint_frames(loaded)
    sha256 = files.sha256_of(data)
    with transaction.atomic():
        existing = list(BannedFingerprint.objects.filter(sha256=sha256).order_by("frame"))
        if existing:
            inactive = [row for row in existing if not row.active]
            if inactive:
                banned_set_active(
                    fingerprint_ids=[r.pk for r in inactive], active=True, actor=actor
                )
                for row in inactive:
                    row.active = True
            return existing
        reference_name = f"{sha256}.{loaded.format.lower()}"
        files.write_private(files.reference_dir() / reference_name, data)
        rows = [
            BannedFingerprint.objects.create(
                **_hash_fields(frame),
                sha256=sha256,
                frame=index,
                reference_name=reference_name,
                algorithm_versions=algorithm_versions(),
                source=source,
                source_upload=source_upload,
                category=category,
                reason=reason,
                added_by=actor,
            )
            for index, frame in enumerate(frames)
        ]
        for row in rows:
            _audit(Action.BAN_ADDED, actor=actor, fingerprint=row, detail=reason)
        blocklist_bump()
    return rows


def _hash_fields(fingerprint: Fingerprint) -> dict[str, object]:
    fields: dict[str, object] = {name: fingerprint.hashes.get(name, "") for name in ALGORITHMS}
    fields["pdq_quality"] = fingerprint.pdq_quality if "pdq" in fingerprint.hashes else None
    return fields


def banned_add_hashes(
    *,
    hashes: Mapping[str, str],
    pdq_quality: int | None = None,
    category: str = Category.OTHER,
    reason: str = "",
    actor: AbstractBaseUser | None = None,
) -> BannedFingerprint:
    """Ban pasted hashes, e.g. PDQ hashes shared by another platform.

    Raises ValueError with a message for the moderator when a hash is malformed.
    """
    parsed = {name: parse_hash(name, text) for name, text in hashes.items() if text.strip()}
    if not parsed:
        raise ValueError("Give at least one hash: PDQ, pHash or dHash.")
    if "pdq" not in parsed:
        pdq_quality = None
    elif pdq_quality is None:
        pdq_quality = 100
    with transaction.atomic():
        row = BannedFingerprint.objects.create(
            **_hash_fields(Fingerprint(hashes=parsed, pdq_quality=pdq_quality)),
            algorithm_versions={name: ALGORITHMS[name].version for name in parsed},
            source=BannedFingerprint.Source.HASH,
            category=category,
            reason=reason,
            added_by=actor,
        )
        _audit(Action.BAN_ADDED, actor=actor, fingerprint=row, detail=reason)
        blocklist_bump()
    return row


def banned_set_active(
    *, fingerprint_ids: Iterable[int], active: bool, actor: AbstractBaseUser | None
) -> int:
    """Deactivate (or reactivate) banned fingerprints; returns how many changed."""
    with transaction.atomic():
        rows = list(
            BannedFingerprint.objects.select_for_update()
            .filter(pk__in=list(fingerprint_ids))
            .exclude(active=active)
        )
        if not rows:
            return 0
        BannedFingerprint.objects.filter(pk__in=[r.pk for r in rows]).update(
            active=active, updated_at=timezone.now()
        )
        action = Action.BAN_ACTIVATED if active else Action.BAN_DEACTIVATED
        for row in rows:
            _audit(action, actor=actor, fingerprint=row)
        blocklist_bump()
    return len(rows)


def banned_delete(*, fingerprint_ids: Iterable[int], actor: AbstractBaseUser | None) -> int:
    """Delete banned fingerprints, and their reference images once nothing uses them."""
    with transaction.atomic():
        rows = list(BannedFingerprint.objects.filter(pk__in=list(fingerprint_ids)))
        for row in rows:
            _audit(Action.BAN_DELETED, actor=actor, detail=f"{row} (sha256 {row.sha256})")
        BannedFingerprint.objects.filter(pk__in=[r.pk for r in rows]).delete()
        blocklist_bump()
        names = {row.reference_name for row in rows if row.reference_name}
        still_used = set(
            BannedFingerprint.objects.filter(reference_name__in=names).values_list(
                "reference_name", flat=True
            )
        )
        for name in names - still_used:
            path = files.in_store(name, files.reference_dir())
            transaction.on_commit(lambda path=path: path.unlink(missing_ok=True))
    return len(rows)


def banned_rehash() -> tuple[int, int]:
    """Recompute, from their reference images, fingerprints an older algorithm made.

    Returns (rows recomputed, rows left as they are because they were pasted as hashes
    and have no image to recompute from).
    """
    current = algorithm_versions()
    stale = [
        row
        for row in BannedFingerprint.objects.all().iterator()
        if any(
            row.algorithm_versions.get(name, version) != version
            for name, version in current.items()
        )
    ]
    by_reference: dict[str, list[BannedFingerprint]] = {}
    for row in stale:
        if row.reference_name:
            by_reference.setdefault(row.reference_name, []).append(row)
    recomputed = 0
    for name, rows in by_reference.items():
        data = files.read_regular_file(
            files.in_store(name, files.reference_dir()), max_bytes=settings.HASHGUARD_MAX_BYTES
        )
        frames = fingerprint_frames(_load(data))
        with transaction.atomic():
            for row in rows:
                if row.frame < len(frames):
                    for field, value in _hash_fields(frames[row.frame]).items():
                        setattr(row, field, value)
                row.algorithm_versions = current
                row.save()
                recomputed += 1
            blocklist_bump()
    return recomputed, len(stale) - recomputed
