"""Everything that changes state: uploads, banned fingerprints, files and the audit trail."""

import contextlib
import hashlib
import logging
import os
import stat
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from hashes.algorithms import (
    ALGORITHMS,
    Fingerprint,
    algorithm_versions,
    distinct_frames,
    parse_hash,
)
from hashes.detect import Detection, is_low_detail, probes, reference_features
from hashes.errors import ImageError
from hashes.loading import SNIFF_BYTES, LoadedImage, describe_content, image_kind, load_image
from hashes.local import LocalFeatures
from moderation import files
from moderation.blocklist import current_blocklist, match_rule
from moderation.models import (
    AuditEvent,
    BannedFingerprint,
    BlocklistVersion,
    Category,
    ErrorCode,
    Match,
    Upload,
)
from moderation.tasks import is_transient

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
    actor: User | None = None,
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


def _quarantine_name(upload: Upload) -> bytes:
    """Where an upload goes in quarantine: its id, then its file name as text (escaped
    where it is not UTF-8), or a short stand-in when that is too long for a name."""
    name = files.display(upload.relative_path().rsplit(b"/", 1)[-1])
    if len(name.encode()) > 200:
        name = "long-name" + os.path.splitext(name)[1][:16]
    return f"{upload.pk}/{name}".encode()


def _path_fields(relative: bytes) -> dict[str, object]:
    text = files.display(relative)
    return {
        "path": text,
        "raw_path": None if text.encode() == relative else relative,
        "path_key": hashlib.sha256(relative).hexdigest(),
    }


def upload_path_key(path: str | bytes | os.PathLike) -> str:
    """How the records of a file in the media tree are found: by its exact path bytes."""
    relative = files.relative_to_store(path, files.media_dir())
    return str(_path_fields(relative)["path_key"])


# --- uploads: the pipeline ------------------------------------------------------------

# States whose record still describes the file at its path; a newer file there supersedes
# them. Quarantined, held and released records stay: they are moderators' history.
_LIVE = [State.PENDING, State.PROCESSING, State.CLEAN, State.NOT_IMAGE, State.ERROR]


def upload_register(*, path: str | bytes | os.PathLike) -> tuple[Upload, bool]:
    """Record a file in the media tree and queue it, unless it is already recorded.

    A file is a new upload when its bytes or inode changed since its path was last
    recorded, or that record is closed (quarantined, held, an error, superseded); the
    same bytes again while the first copy waits for its decision are the same upload.
    A new upload supersedes the older live records of its path, and those of the same
    inode under a name it no longer has (a write-then-rename). Content that is no image
    is recorded as such at once and left alone; a file hashguard must not or cannot read
    (a symlink, a device, no permission) is recorded as an error with the reason.

    Returns the upload and whether it is new. Raises files.UnsafePath for paths outside
    the media tree or through a symlinked directory, and FileNotFoundError if the file
    is gone.
    """
    media = files.media_dir()
    relative = files.relative_to_store(path, media)
    info = files.lstat(media, relative)
    fields: dict[str, object] = {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "inode": info.st_ino,
        "file_mode": stat.S_IMODE(info.st_mode),
        "sha256": "",
    }
    problem = _unreadable(info)
    head = b""
    if problem is None:
        try:
            if info.st_size <= settings.HASHGUARD_MAX_BYTES:
                fields["sha256"], fields["size"], head = files.sha256_of_file(media, relative)
            else:  # the worker holds it as too large to check, if it is an image
                head = files.read_regular_file(media, relative, max_bytes=SNIFF_BYTES - 1)
        except PermissionError as exc:
            problem = (ErrorCode.UNREADABLE, f"hashguard may not read this file ({exc.strerror}).")
        except files.UnsafePath as exc:
            problem = (ErrorCode.UNSAFE_PATH, str(exc))
    if problem is not None:
        fields.update(state=State.ERROR, error_code=problem[0], error=problem[1])
    elif image_kind(head[:SNIFF_BYTES]) is None:
        fields.update(
            state=State.NOT_IMAGE,
            error_code=ErrorCode.NOT_IMAGE,
            error=f"The content is not an image{describe_content(head)}, whatever the name "
            "says; it was left alone.",
        )
    if fields.get("state") in (State.ERROR, State.NOT_IMAGE):
        fields["decided_at"] = timezone.now()
    path_fields = _path_fields(relative)
    try:
        with transaction.atomic():
            latest = (
                Upload.objects.select_for_update()
                .filter(path_key=path_fields["path_key"])
                .order_by("-id")
                .first()
            )
            if latest is not None and _same_upload(latest, fields):
                if latest.state in (State.PENDING, State.PROCESSING):
                    # Copied anew while it waits: the record describes the file there now.
                    for name in ("mtime_ns", "inode", "file_mode"):
                        setattr(latest, name, fields[name])
                    latest.save(update_fields=["mtime_ns", "inode", "file_mode"])
                return latest, False
            upload = Upload.objects.create(**path_fields, **fields)
            _supersede(upload)
            if upload.state == State.PENDING:
                upload_enqueue(upload_id=upload.pk)
    except IntegrityError:
        # Another process recorded the same file between the check and the insert.
        upload = Upload.objects.filter(path_key=path_fields["path_key"]).latest("id")
        return upload, False
    return upload, True


def _same_upload(latest: Upload, fields: Mapping[str, object]) -> bool:
    if latest.sha256 != fields["sha256"]:
        return False
    same_file = (latest.size, latest.mtime_ns, latest.inode) == (
        fields["size"],
        fields["mtime_ns"],
        fields["inode"],
    )
    if not latest.sha256:
        return same_file  # unhashed (unreadable, too large): only its metadata tells
    if latest.state in (State.PENDING, State.PROCESSING):
        return True  # the same bytes again while the first copy waits for its decision
    # A released file is put back as it was: it is the record's own file.
    return latest.state in (State.CLEAN, State.NOT_IMAGE, State.RELEASED) and same_file


def _supersede(upload: Upload) -> None:
    older = Upload.objects.filter(state__in=_LIVE).exclude(pk=upload.pk)
    at_path = older.filter(path_key=upload.path_key)
    renamed = [
        other.pk
        for other in older.filter(inode=upload.inode).exclude(path_key=upload.path_key)
        if not _still_there(other)
    ]
    (at_path | older.filter(pk__in=renamed)).update(
        state=State.SUPERSEDED, superseded_by=upload, lease_expires_at=None
    )


def _still_there(upload: Upload) -> bool:
    """Whether the file the record describes is still at its path."""
    try:
        info = files.lstat(files.media_dir(), upload.relative_path())
    except (OSError, files.UnsafePath):
        return False
    return info.st_ino == upload.inode


def _unreadable(info: os.stat_result) -> tuple[str, str] | None:
    if stat.S_ISLNK(info.st_mode):
        return ErrorCode.UNSAFE_PATH, "This is a symlink; hashguard never follows symlinks."
    if not stat.S_ISREG(info.st_mode):
        return ErrorCode.UNSAFE_PATH, "This is not a regular file."
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
            error_code=ErrorCode.QUEUE_UNAVAILABLE,
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
# A worker's claim on an upload lasts this long unless renewed; it renews it every third
# of it while it works, so an upload whose worker died is taken over within this time.
LEASE = timedelta(seconds=30)


def uploads_requeue_stale(*, older_than: timedelta, waiting_in_queue: int | None) -> int:
    """Queue again what a lost message, a dead worker or a broker outage left undecided.

    Uploads whose claim's lease ran out go back to the queue, as do uploads never sent.
    An upload sent more than older_than ago is sent again unless its message may still
    be waiting: the queue is first in, first out, so of the uploads sent, the newest
    waiting_in_queue (the broker's count, None when unknown) can still be in it.
    """
    now = timezone.now()
    Upload.objects.filter(state=State.PROCESSING).filter(
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True)
    ).update(state=State.PENDING, lease_expires_at=None, queued_at=None)
    pending = Upload.objects.filter(state=State.PENDING)
    never_sent = pending.filter(
        Q(queued_at__isnull=True) | Q(error_code=ErrorCode.QUEUE_UNAVAILABLE)
    )
    ids = list(never_sent.order_by("id").values_list("pk", flat=True)[:REQUEUE_BATCH])
    sent = pending.filter(queued_at__isnull=False).exclude(error_code=ErrorCode.QUEUE_UNAVAILABLE)
    outside_queue = REQUEUE_BATCH
    if waiting_in_queue is not None:
        outside_queue = min(REQUEUE_BATCH, max(0, sent.count() - waiting_in_queue))
    stale = sent.filter(queued_at__lt=now - older_than).order_by("queued_at", "id")
    ids += list(stale.values_list("pk", flat=True)[:outside_queue])
    count = 0
    for upload_id in ids:
        if not _send_to_worker(upload_id):
            break  # the queue is down: the next pass tries again
        count += 1
    return count


def upload_retry(*, upload_id: int, actor: User | None) -> Upload:
    """Check an upload that ended in an error or was held again, e.g. after a fault was
    fixed. A held file is checked where it waits, and put back if it is clean."""
    with transaction.atomic():
        failed = Upload.objects.filter(
            pk=upload_id, state__in=[State.ERROR, State.HELD]
        ).exclude(sha256="")
        if not failed.update(
            state=State.PENDING, error_code="", error="", decided_at=None, attempts=0
        ):
            raise ActionRefused(
                "Only an upload in error or held whose file could be read can be checked "
                "again; a file that could not be read is recorded anew once it changes."
            )
        upload = Upload.objects.get(pk=upload_id)
        _audit(Action.UPLOAD_RETRIED, actor=actor, upload=upload)
        upload_enqueue(upload_id=upload_id)
    return upload


class _Claim:
    """A worker's lease on one upload: decisions are written only while it holds."""

    def __init__(self, upload_id: int, claimed_at: datetime) -> None:
        self.upload_id = upload_id
        self.claimed_at = claimed_at

    @property
    def rows(self) -> QuerySet:
        return Upload.objects.filter(
            pk=self.upload_id, state=State.PROCESSING, claimed_at=self.claimed_at
        )

    @classmethod
    def take(cls, upload_id: int) -> "_Claim | None":
        """Claim a pending upload, or one whose last claim's lease ran out."""
        now = timezone.now()
        free = Q(state=State.PENDING) | Q(
            Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True),
            state=State.PROCESSING,
        )
        claimed = Upload.objects.filter(free, pk=upload_id).update(
            state=State.PROCESSING,
            claimed_at=now,
            lease_expires_at=now + LEASE,
            attempts=F("attempts") + 1,
        )
        return cls(upload_id, now) if claimed else None

    def renew(self) -> bool:
        return bool(self.rows.update(lease_expires_at=timezone.now() + LEASE))

    def give_back(self) -> None:
        """Hand the upload back after a fault that may pass: that attempt does not count
        towards MAX_ATTEMPTS, which is for files that kill their worker."""
        self.rows.update(
            state=State.PENDING, lease_expires_at=None, attempts=F("attempts") - 1
        )

    @contextlib.contextmanager
    def renewed(self) -> Iterator[None]:
        """Renew the lease from a thread for as long as the work inside takes."""
        stop = threading.Event()

        def renew() -> None:
            try:
                while not stop.wait(LEASE.total_seconds() / 3):
                    if not self.renew():
                        return
            except DatabaseError as exc:
                logger.warning("could not renew the claim on upload %s: %s", self.upload_id, exc)
            finally:
                connections.close_all()

        thread = threading.Thread(target=renew, name=f"lease-{self.upload_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def upload_process(*, upload_id: int) -> Upload | None:
    """Fingerprint one upload, match it, and quarantine it or record it as clean.

    Claims the upload first, under a lease that it renews while it works, so that a
    second delivery of the same task does nothing while the first works, and takes over
    once the first's worker died. The decision is written only if the claim still holds,
    so a worker that was presumed dead cannot overwrite its successor's. Files that
    cannot be checked are held for a moderator (HASHGUARD_UNCHECKABLE); database and
    filesystem faults are raised for the task to retry, with the claim given back.
    """
    claim = _Claim.take(upload_id)
    if claim is None:
        return Upload.objects.filter(pk=upload_id).first()
    upload = Upload.objects.get(pk=upload_id)
    if upload.attempts > MAX_ATTEMPTS:
        _decide_uncheckable(
            claim.rows,
            upload,
            ErrorCode.WORKER_DIED,
            f"Checking this file stopped a worker {MAX_ATTEMPTS} times (out of memory or a "
            "crash while decoding); it will not be tried again.",
        )
        return Upload.objects.get(pk=upload_id)
    try:
        with claim.renewed():
            _process_claimed(upload, claim.rows)
    except Exception:
        claim.give_back()
        raise
    return Upload.objects.get(pk=upload_id)


def upload_fail(*, upload_id: int, code: str, message: str) -> None:
    """Record that an upload could not be checked: held or left, by HASHGUARD_UNCHECKABLE."""
    rows = Upload.objects.filter(pk=upload_id, state__in=[State.PENDING, State.PROCESSING])
    upload = rows.first()
    if upload is not None:
        _decide_uncheckable(rows, upload, code, message)


def _process_claimed(upload: Upload, claim: QuerySet) -> None:
    media = files.media_dir()
    source = upload.relative_path()
    quarantined = _quarantine_name(upload)
    already_moved = False
    try:
        data = files.read_regular_file(media, source, max_bytes=settings.HASHGUARD_MAX_BYTES)
    except FileNotFoundError:
        if not files.exists(files.quarantine_dir(), quarantined):
            _decide_error(
                claim, ErrorCode.MISSING, "The file was removed before it could be checked."
            )
            return
        # An earlier attempt moved it but did not get to record that.
        data = files.read_regular_file(
            files.quarantine_dir(), quarantined, max_bytes=settings.HASHGUARD_MAX_BYTES
        )
        already_moved = True
    except files.UnsafePath as exc:
        _decide_error(claim, ErrorCode.UNSAFE_PATH, str(exc))
        return
    except PermissionError as exc:
        _decide_error(
            claim, ErrorCode.UNREADABLE, f"hashguard may not read this file ({exc.strerror})."
        )
        return
    sha256 = files.sha256_of(data)
    if upload.sha256 and sha256 != upload.sha256:
        _decide_error(
            claim,
            ErrorCode.CHANGED,
            "The file changed after it was recorded; its new content is a new upload.",
        )
        return
    blocklist = current_blocklist()
    decision: dict[str, object] = {"decided_at": timezone.now(), "error_code": "", "error": ""}
    try:
        loaded = _load(data)
    except ImageError as exc:
        if not blocklist.detector.bans_file(sha256):
            if exc.uncheckable:
                _decide_uncheckable(claim, upload, exc.code, str(exc), already_moved=already_moved)
            elif exc.code == ErrorCode.NOT_IMAGE:
                _decide_error(claim, exc.code, str(exc), state=State.NOT_IMAGE)
            else:
                _decide_error(claim, exc.code, str(exc))
            return
        checked = []  # an exact copy of a banned file is caught even if it cannot be decoded
    else:
        checked = probes(loaded)
        frames = [item.fingerprint for item in checked]
        decision.update(
            format=loaded.format,
            width=loaded.width,
            height=loaded.height,
            frame_count=loaded.frame_count,
            fingerprints=[{"hashes": f.hashes, "pdq_quality": f.pdq_quality} for f in frames],
        )
        if loaded.damage:
            decision["error"] = (
                f"The file is damaged or cut short ({loaded.damage}); it was checked as far "
                "as it decodes, as a browser would show it."
            )
    found = blocklist.detector.detect(checked, sha256)
    released = _released_keys(sha256, found)
    found = {key: hit for key, hit in found.items() if key not in released}
    with transaction.atomic():
        if not found:
            if claim.update(state=State.CLEAN, lease_expires_at=None, **decision) and (
                already_moved
            ):
                # The ban that quarantined it is gone: put the file back.
                files.move_file(
                    files.quarantine_dir(),
                    quarantined,
                    media,
                    source,
                    private=False,
                    mode=upload.file_mode,
                )
            return
        if not claim.update(
            state=State.QUARANTINED,
            quarantine_name=files.display(quarantined),
            lease_expires_at=None,
            **decision,
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
            files.move_file(media, source, files.quarantine_dir(), quarantined, private=True)


def _decide_error(claim: QuerySet, code: str, message: str, *, state: str = State.ERROR) -> None:
    claim.update(
        state=state,
        error_code=code,
        error=message,
        decided_at=timezone.now(),
        lease_expires_at=None,
    )


def _decide_uncheckable(
    rows: QuerySet, upload: Upload, code: str, message: str, *, already_moved: bool = False
) -> None:
    """A file that may show a picture but could not be checked: held in quarantine for a
    moderator, or left in place as an error, as HASHGUARD_UNCHECKABLE says."""
    if settings.HASHGUARD_UNCHECKABLE != "hold":
        _decide_error(rows, code, message)
        return
    quarantined = _quarantine_name(upload)
    try:
        with transaction.atomic():
            if not rows.update(
                state=State.HELD,
                error_code=code,
                error=f"Could not be checked, so it is held for a moderator: {message}",
                quarantine_name=files.display(quarantined),
                decided_at=timezone.now(),
                lease_expires_at=None,
            ):
                return
            _audit(Action.UPLOAD_HELD, upload=upload, detail=message)
            if not already_moved:
                files.move_file(
                    files.media_dir(),
                    upload.relative_path(),
                    files.quarantine_dir(),
                    quarantined,
                    private=True,
                )
    except FileNotFoundError:
        if files.exists(files.quarantine_dir(), quarantined):
            # An earlier attempt moved it and died before recording that.
            _decide_uncheckable(rows, upload, code, message, already_moved=True)
        else:
            _decide_error(rows, ErrorCode.MISSING, f"The file was removed. {message}")
    except (OSError, files.UnsafePath) as exc:
        if isinstance(exc, OSError) and is_transient(exc):
            raise  # the task tries again later
        _decide_error(
            rows, code, f"{message} It could not be moved to quarantine ({exc}); it was left."
        )


def _released_keys(sha256: str, found: Mapping[int, object]) -> set[int]:
    """Banned fingerprints a moderator said this same content may pass from now on."""
    if not found:
        return set()
    return set(
        Match.objects.filter(
            fingerprint_id__in=list(found),
            upload__sha256=sha256,
            upload__state=State.RELEASED,
            allowed=True,
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


def upload_confirm(*, upload_id: int, actor: User) -> Upload:
    """Keep a quarantined or held upload out of the media tree."""
    now = timezone.now()
    with transaction.atomic():
        updated = Upload.objects.filter(
            pk=upload_id, state__in=[State.QUARANTINED, State.HELD]
        ).update(state=State.CONFIRMED, reviewed_by=actor, reviewed_at=now)
        if not updated:
            raise ActionRefused("Only an upload waiting for review can be confirmed.")
        upload = Upload.objects.get(pk=upload_id)
        _audit(Action.UPLOAD_CONFIRMED, actor=actor, upload=upload)
    return upload


def upload_release(
    *, upload_id: int, actor: User, allow_copies: bool = False
) -> Upload:
    """Put a quarantined or held file back where it was.

    With allow_copies, later exact copies of the same file pass the bans this one
    matched; without, only this file goes back, and a copy uploaded again is caught.
    """
    with transaction.atomic():
        upload = (
            Upload.objects.select_for_update()
            .filter(pk=upload_id, state__in=[State.QUARANTINED, State.CONFIRMED, State.HELD])
            .first()
        )
        if upload is None:
            raise ActionRefused("Only a quarantined or held upload can be released.")
        source = upload.quarantine_name.encode()
        upload.state = State.RELEASED
        upload.quarantine_name = ""
        upload.reviewed_by = actor
        upload.reviewed_at = timezone.now()
        upload.save()
        if allow_copies:
            upload.matches.update(allowed=True)
        _audit(
            Action.UPLOAD_RELEASED,
            actor=actor,
            upload=upload,
            detail="exact copies may pass its bans from now on" if allow_copies else "",
        )
        try:
            files.move_file(
                files.quarantine_dir(),
                source,
                files.media_dir(),
                upload.relative_path(),
                private=False,
                mode=upload.file_mode,
            )
        except FileExistsError:
            raise ActionRefused(
                f"A file now exists at {upload.path}; move it away, then release again."
            ) from None
        except FileNotFoundError:
            raise ActionRefused(
                f"The quarantined file {upload.quarantine_name} is missing; nothing was released."
            ) from None
        except files.UnsafePath as exc:
            raise ActionRefused(f"{upload.path} cannot be put back safely: {exc}") from None
        # The watcher sees the file come back: as it is now, it is this record's own file.
        info = files.lstat(files.media_dir(), upload.relative_path())
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
    flaggable = [State.CLEAN, State.RELEASED]
    upload = Upload.objects.filter(pk=upload_id, state__in=flaggable).first()
    if upload is None:
        raise ActionRefused("Only a clean or released upload can be flagged as banned.")
    media = files.media_dir()
    source = upload.relative_path()
    try:
        data = files.read_regular_file(media, source, max_bytes=settings.HASHGUARD_MAX_BYTES)
        mode = stat.S_IMODE(files.lstat(media, source).st_mode)
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
        quarantined = _quarantine_name(upload)
        upload.state = State.CONFIRMED
        upload.quarantine_name = files.display(quarantined)
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
        _audit(Action.UPLOAD_FLAGGED, actor=actor, upload=upload, detail=reason)
        try:
            files.move_file(media, source, files.quarantine_dir(), quarantined, private=True)
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
    actor: User | None = None,
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
    actor: User | None,
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
    files.write_private(files.reference_dir(), reference_name.encode(), image.data)
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
    actor: User | None = None,
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


def banned_update(
    *, fingerprint_id: int, category: str, reason: str, actor: User | None
) -> BannedFingerprint:
    """Change a ban's category or reason; neither changes what it matches."""
    with transaction.atomic():
        row = BannedFingerprint.objects.select_for_update().get(pk=fingerprint_id)
        changes = [
            f"{name} {old or '(empty)'} → {new or '(empty)'}"
            for name, old, new in (
                ("category", row.category, category),
                ("reason", row.reason, reason),
            )
            if old != new
        ]
        if not changes:
            return row
        row.category, row.reason = category, reason
        row.save(update_fields=["category", "reason", "updated_at"])
        _audit(Action.BAN_CHANGED, actor=actor, fingerprint=row, detail="; ".join(changes))
    return row


def banned_set_active(
    *, fingerprint_ids: Iterable[int], active: bool, actor: User | None
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


def banned_delete(*, fingerprint_ids: Iterable[int], actor: User | None) -> int:
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
            transaction.on_commit(partial(files.unlink, files.reference_dir(), name.encode()))
    return len(rows)


def _features_stale(data: bytes | memoryview) -> bool:
    return LocalFeatures.from_bytes(bytes(data)).pixels is None


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
        or (
            row.reference_name
            and (row.colours is None or row.features is None or _features_stale(row.features))
        )
    ]
    by_reference: dict[str, list[BannedFingerprint]] = {}
    for row in stale:
        if row.reference_name:
            by_reference.setdefault(row.reference_name, []).append(row)
    recomputed = 0
    for name, rows in by_reference.items():
        data = files.read_regular_file(
            files.reference_dir(), name.encode(), max_bytes=settings.HASHGUARD_MAX_BYTES
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
