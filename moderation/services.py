"""Everything that changes state: uploads, banned fingerprints, files and the audit trail."""

import logging
import os
import stat
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from hashes.algorithms import (
    ALGORITHMS,
    Fingerprint,
    algorithm_versions,
    distinct_frames,
    parse_hash,
)
from hashes.detect import Detection, is_low_detail, probe, reference_features
from hashes.errors import ImageError
from hashes.loading import LoadedImage, load_image
from hashes.local import LocalFeatures
from moderation import files
from moderation.blocklist import current_blocklist, match_rule
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

    Returns the upload and whether it is new. A file hashguard must not or cannot read
    (a symlink, a device, no permission, over HASHGUARD_MAX_BYTES) is recorded at once
    as an error with the reason. Raises files.UnsafePath for paths outside the media tree
    or that the database cannot store, and FileNotFoundError if the file is gone.
    """
    relative = files.relative_to_store(path, files.media_dir())
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise files.UnsafePath(
            f"{path!r}: the file name is not valid UTF-8; rename it to check it"
        ) from None
    if len(relative) > Upload._meta.get_field("path").max_length:
        raise files.UnsafePath(f"{relative[:80]}...: the path is too long to record")
    info = os.lstat(path)
    fields = {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "inode": info.st_ino,
        "file_mode": stat.S_IMODE(info.st_mode),
    }
    problem = _unreadable(path, info)
    if problem is None:
        try:
            fields["sha256"], fields["size"] = files.sha256_of_file(path)
        except PermissionError as exc:
            problem = ("unreadable", f"hashguard may not read this file ({exc.strerror}).")
        except files.UnsafePath as exc:
            problem = ("unsafe_path", str(exc))
    if problem is not None:
        fields.update(
            sha256="",
            state=State.ERROR,
            error_code=problem[0],
            error=problem[1],
            decided_at=timezone.now(),
        )
    existing = Upload.objects.filter(path=relative, sha256=fields.get("sha256", "")).first()
    if existing:
        return existing, False
    try:
        with transaction.atomic():
            upload = Upload.objects.create(path=relative, **fields)
            if upload.state == State.PENDING:
                upload_enqueue(upload_id=upload.pk)
    except IntegrityError:
        # Another watcher pass recorded the same file between the check and the insert.
        return Upload.objects.get(path=relative, sha256=fields.get("sha256", "")), False
    return upload, True


def _unreadable(path: Path, info: os.stat_result) -> tuple[str, str] | None:
    if stat.S_ISLNK(info.st_mode):
        return "unsafe_path", "This is a symlink; hashguard never follows symlinks."
    if not stat.S_ISREG(info.st_mode):
        return "unsafe_path", "This is not a regular file."
    if info.st_size > settings.HASHGUARD_MAX_BYTES:
        return "file_too_large", (
            f"The file is {info.st_size:,} bytes, over HASHGUARD_MAX_BYTES "
            f"({settings.HASHGUARD_MAX_BYTES:,}); it was not checked."
        )
    return None


def upload_enqueue(*, upload_id: int) -> None:
    """Queue the upload for a worker once the current transaction commits."""
    transaction.on_commit(lambda: _send_to_worker(upload_id))


def _send_to_worker(upload_id: int) -> bool:
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
        return False
    Upload.objects.filter(pk=upload_id, state=State.PENDING).update(
        queued_at=now, error_code="", error=""
    )
    return True


# A file that stopped a worker this often (out of memory, a decoder crash) is not retried.
MAX_ATTEMPTS = 3
REQUEUE_BATCH = 1000


def uploads_requeue_stale(*, older_than: timedelta) -> int:
    """Queue again what a lost message, a dead worker or a broker outage left undecided.

    Uploads queued long ago are only queued again when no upload at all was decided
    since: while workers make progress, their messages are still waiting in the queue.
    """
    cutoff = timezone.now() - older_than
    stalled = Upload.objects.filter(state=State.PROCESSING, claimed_at__lt=cutoff)
    stalled.filter(attempts__gte=MAX_ATTEMPTS).update(
        state=State.ERROR,
        error_code="worker_died",
        error=(
            f"Checking this file stopped a worker {MAX_ATTEMPTS} times (out of memory or "
            "a crash while decoding); it will not be tried again."
        ),
        decided_at=timezone.now(),
    )
    stalled.update(state=State.PENDING)
    waiting = Q(queued_at__isnull=True) | Q(error_code="queue_unavailable")
    if not Upload.objects.filter(decided_at__gte=cutoff).exists():
        waiting |= Q(queued_at__lt=cutoff)
    ids = Upload.objects.filter(state=State.PENDING).filter(waiting).values_list("pk", flat=True)
    sent = 0
    for upload_id in ids[:REQUEUE_BATCH]:
        if not _send_to_worker(upload_id):
            break  # the queue is down: the next pass tries again
        sent += 1
    return sent


def upload_retry(*, upload_id: int, actor: AbstractBaseUser | None) -> Upload:
    """Check an upload that ended in an error again, e.g. after a fault was fixed."""
    with transaction.atomic():
        errored = Upload.objects.filter(pk=upload_id, state=State.ERROR).exclude(sha256="")
        if not errored.update(
            state=State.PENDING, error_code="", error="", decided_at=None, attempts=0
        ):
            raise ActionRefused(
                "Only an upload in error whose file could be read can be checked again; "
                "a file that could not be read is recorded anew once it changes."
            )
        upload = Upload.objects.get(pk=upload_id)
        _audit(Action.UPLOAD_RETRIED, actor=actor, upload=upload)
        upload_enqueue(upload_id=upload_id)
    return upload


def upload_fail(*, upload_id: int, code: str, message: str) -> None:
    Upload.objects.filter(pk=upload_id, state__in=[State.PENDING, State.PROCESSING]).update(
        state=State.ERROR, error_code=code, error=message, decided_at=timezone.now()
    )


def upload_process(*, upload_id: int) -> Upload | None:
    """Fingerprint one upload, match it, and quarantine it or record it as clean.

    Claims the upload first, so a second delivery of the same task does nothing, and
    writes the decision only if the claim still holds, so a worker that was presumed
    dead cannot overwrite the decision of the one that took over. Bad files end in the
    error state with a reason; database and filesystem faults are raised for the task to
    retry, with the claim given back.
    """
    claimed_at = timezone.now()
    claimed = Upload.objects.filter(pk=upload_id, state=State.PENDING).update(
        state=State.PROCESSING, claimed_at=claimed_at, attempts=F("attempts") + 1
    )
    if not claimed:
        return Upload.objects.filter(pk=upload_id).first()
    claim = Upload.objects.filter(pk=upload_id, state=State.PROCESSING, claimed_at=claimed_at)
    try:
        _process_claimed(Upload.objects.get(pk=upload_id), claim)
    except Exception:
        claim.update(state=State.PENDING)
        raise
    return Upload.objects.get(pk=upload_id)


def _process_claimed(upload: Upload, claim: QuerySet) -> None:
    source = files.in_store(upload.path, files.media_dir())
    quarantined = files.in_store(_quarantine_name(upload), files.quarantine_dir())
    already_moved = False
    try:
        data = files.read_regular_file(source, max_bytes=settings.HASHGUARD_MAX_BYTES)
    except FileNotFoundError:
        if not os.path.lexists(quarantined):
            _decide_error(claim, "missing", "The file was removed before it could be checked.")
            return
        # An earlier attempt moved it but did not get to record that.
        data = files.read_regular_file(quarantined, max_bytes=settings.HASHGUARD_MAX_BYTES)
        already_moved = True
    except files.UnsafePath as exc:
        _decide_error(claim, "unsafe_path", str(exc))
        return
    if files.sha256_of(data) != upload.sha256:
        _decide_error(
            claim,
            "changed",
            "The file changed after it was recorded; its new content is a new upload.",
        )
        return
    blocklist = current_blocklist()
    decision: dict[str, object] = {"decided_at": timezone.now(), "error_code": "", "error": ""}
    try:
        loaded = _load(data)
    except ImageError as exc:
        if upload.sha256 not in blocklist.by_sha256:
            _decide_error(claim, exc.code, str(exc))
            return
        probes = []  # an exact copy of a banned file is caught even if it cannot be decoded
    else:
        distinct = distinct_frames(loaded)
        frames = [fingerprint for _, fingerprint in distinct]
        # Views and local features for the first frame; later frames are checked whole.
        probes = [
            probe(frame, fingerprint, regions=index == 0)
            for index, (frame, fingerprint) in enumerate(distinct)
        ]
        decision.update(
            format=loaded.format,
            width=loaded.width,
            height=loaded.height,
            frame_count=loaded.frame_count,
            fingerprints=[{"hashes": f.hashes, "pdq_quality": f.pdq_quality} for f in frames],
        )
    found = blocklist.match(probes, upload.sha256)
    released = _released_keys(upload, found)
    found = {key: hit for key, hit in found.items() if key not in released}
    with transaction.atomic():
        if not found:
            if claim.update(state=State.CLEAN, **decision) and already_moved:
                # The ban that quarantined it is gone: put the file back.
                files.move_file(quarantined, source, private=False)
                if upload.file_mode is not None:
                    os.chmod(source, upload.file_mode)
            return
        if not claim.update(
            state=State.QUARANTINED, quarantine_name=_quarantine_name(upload), **decision
        ):
            return
        Match.objects.bulk_create(
            Match(
                upload=upload,
                fingerprint_id=key,
                distances=detection.distances,
                rule=detection.rule,
                stage=detection.stage,
                variant=detection.variant[:255],
                frame=detection.frame,
            )
            for key, detection in found.items()
        )
        _audit(Action.UPLOAD_QUARANTINED, upload=upload, detail=_describe(found))
        if not already_moved:
            files.move_file(source, quarantined, private=True)


def _decide_error(claim: QuerySet, code: str, message: str) -> None:
    claim.update(state=State.ERROR, error_code=code, error=message, decided_at=timezone.now())


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


def _describe(found: Mapping[int, Detection]) -> str:
    parts = []
    for key, detection in found.items():
        distances = ", ".join(f"{name} {value}" for name, value in detection.distances.items())
        where = f" (frame {detection.frame})" if detection.frame else ""
        parts.append(
            f"banned #{key} by {detection.stage} ({detection.rule}){where}, "
            f"{detection.variant}: {distances}"
        )
    return "; ".join(parts)


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
    flaggable = [State.CLEAN, State.RELEASED]
    upload = Upload.objects.filter(pk=upload_id, state__in=flaggable).first()
    if upload is None:
        raise ActionRefused("Only a clean or released upload can be flagged as banned.")
    source = files.in_store(upload.path, files.media_dir())
    try:
        data = files.read_regular_file(source, max_bytes=settings.HASHGUARD_MAX_BYTES)
    except FileNotFoundError:
        raise ActionRefused(f"{upload.path} is no longer in the media directory.") from None
    # Decoded before the transaction: on SQLite a transaction holds the write lock.
    image = _BanImage.read(data)
    if image.sha256 != upload.sha256:
        raise ActionRefused(f"{upload.path} has changed since it was checked; nothing was done.")
    with transaction.atomic():
        upload = Upload.objects.select_for_update().filter(pk=upload_id).first()
        if upload is None or upload.state not in flaggable:
            raise ActionRefused("Only a clean or released upload can be flagged as banned.")
        banned = _ban_image(
            image,
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
        for row in banned:
            Match.objects.get_or_create(
                upload=upload,
                fingerprint=row,
                defaults={
                    "distances": image.frames[0].fingerprint.distance(row.fingerprint()),
                    "rule": "flagged by moderator",
                    "stage": "moderator",
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


@dataclass(frozen=True)
class _BanFrame:
    fingerprint: Fingerprint
    colours: bytes
    features: bytes

    @classmethod
    def of(cls, loaded: LoadedImage) -> "list[_BanFrame]":
        frames = []
        for frame, fingerprint in distinct_frames(loaded):
            features, colours = reference_features(frame)
            frames.append(cls(fingerprint, colours.tobytes(), features.to_bytes()))
        return frames

    def fields(self) -> dict[str, object]:
        return {
            **_hash_fields(self.fingerprint),
            "colours": self.colours,
            "features": self.features,
        }


@dataclass(frozen=True)
class _BanImage:
    data: bytes
    sha256: str
    format: str
    frames: list[_BanFrame]

    @classmethod
    def read(cls, data: bytes) -> "_BanImage":
        loaded = _load(data)
        return cls(data, files.sha256_of(data), loaded.format, _BanFrame.of(loaded))


def banned_low_detail(*, rows: Iterable[BannedFingerprint]) -> list[BannedFingerprint]:
    """The rows too plain to match fuzzily: only exact copies of their file are caught."""
    minimum = match_rule().pdq_min_quality
    return [row for row in rows if is_low_detail(row.fingerprint(), minimum)]


def low_detail_message(row: BannedFingerprint) -> str:
    """Why a ban catches exact copies only, for the moderator who made it."""
    quality = f"PDQ quality {row.pdq_quality}" if row.pdq_quality is not None else "its hashes"
    return (
        f"#{row.pk} is too plain to match edited copies ({quality}, below "
        f"{match_rule().pdq_min_quality}): a flat colour, gradient or near-blank image hashes "
        "like every other smooth image, so matching it approximately would quarantine "
        "innocent uploads. Only exact copies of this file will be caught."
    )


def banned_add_image(
    *,
    data: bytes,
    category: str = Category.OTHER,
    reason: str = "",
    actor: AbstractBaseUser | None = None,
) -> list[BannedFingerprint]:
    """Ban an image: one row per distinct frame, the image kept as the reference.

    Banning the same file again reactivates and returns the rows it made before.
    Raises hashes.errors.ImageError for files that are not usable images.
    """
    image = _BanImage.read(data)
    with transaction.atomic():
        return _ban_image(
            image,
            category=category,
            reason=reason,
            actor=actor,
            source=BannedFingerprint.Source.IMAGE,
            source_upload=None,
        )


def _ban_image(
    image: _BanImage,
    *,
    category: str,
    reason: str,
    actor: AbstractBaseUser | None,
    source: str,
    source_upload: Upload | None,
) -> list[BannedFingerprint]:
    existing = list(BannedFingerprint.objects.filter(sha256=image.sha256).order_by("frame"))
    if existing:
        inactive = [row for row in existing if not row.active]
        if inactive:
            banned_set_active(fingerprint_ids=[r.pk for r in inactive], active=True, actor=actor)
            for row in inactive:
                row.active = True
        return existing
    reference_name = f"{image.sha256}.{image.format.lower()}"
    files.write_private(files.reference_dir() / reference_name, image.data)
    rows = [
        BannedFingerprint.objects.create(
            **frame.fields(),
            sha256=image.sha256,
            frame=index,
            reference_name=reference_name,
            algorithm_versions=algorithm_versions(),
            source=source,
            source_upload=source_upload,
            category=category,
            reason=reason,
            added_by=actor,
        )
        for index, frame in enumerate(image.frames)
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
    fingerprint = Fingerprint(hashes=parsed, pdq_quality=pdq_quality)
    if is_low_detail(fingerprint, match_rule().pdq_min_quality):
        raise ValueError(
            "These hashes are of a plain picture (a flat colour, gradient or near-blank image: "
            "almost all bits are the same, or the PDQ quality is too low). They would match "
            "every other smooth image, so they cannot be banned as hashes; ban the image file "
            "instead to catch exact copies of it."
        )
    with transaction.atomic():
        row = BannedFingerprint.objects.create(
            **_hash_fields(fingerprint),
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


def _features_stale(data: bytes | None) -> bool:
    return data is None or LocalFeatures.from_bytes(bytes(data)).pixels is None


def banned_rehash() -> tuple[int, int]:
    """Recompute, from their reference images, fingerprints an older algorithm made,
    and the second stage's colours and features where they are missing or lack the grey
    copy that the photometric check compares.

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
        or (row.reference_name and (row.colours is None or _features_stale(row.features)))
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
        frames = _BanFrame.of(_load(data))
        with transaction.atomic():
            for row in rows:
                if row.frame < len(frames):
                    for field, value in frames[row.frame].fields().items():
                        setattr(row, field, value)
                row.algorithm_versions = current
                row.save()
                recomputed += 1
            blocklist_bump()
    return recomputed, len(stale) - recomputed
